"""Pick the compute device, its fastest safe precision, and a tile size that fits its memory."""

from __future__ import annotations

import math

import psutil
import torch

from napari_srgan.engine.folding import STRIP_VALUES
from napari_srgan.models.interface import SRModel
from napari_srgan.models.srresnet import Generator

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: Fraction of free memory one batch of tiles may use by default.
MEMORY_FRACTION = {"cuda": 0.5, "mps": 0.3, "cpu": 0.25}
#: Most bytes the CPU default budget takes, however much memory is free.
CPU_MEMORY_CAP = 2 << 30
#: Smallest automatic kept tile size (input pixels per side).
MIN_AUTO_TILE = 16


def choose_device(preference: str | torch.device | None = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU for ``"auto"``; a named device must exist."""
    if isinstance(preference, torch.device):
        return preference
    preference = (preference or "auto").lower()
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = preference.partition(":")
    if kind not in DEVICE_CHOICES or (kind == "auto" and index) or (index and not index.isdigit()):
        raise ValueError(
            f"unknown device {preference!r}; choose one of {DEVICE_CHOICES} (cuda:N for a GPU)"
        )
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but no CUDA GPU is available")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device {preference!r}: there are {torch.cuda.device_count()} CUDA GPUs")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for, but Apple MPS is not available")
    return torch.device(preference)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN then runs bf16 convolutions about twice as fast as fp32 (on
    other CPUs bf16 is emulated and slower)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def auto_precision(device: torch.device) -> str:
    """fp16 on CUDA; bf16 on a CPU with native bf16; fp32 elsewhere. Measured on Set5 with the
    bundled model: bf16 on the CPU changes PSNR by -0.002 dB and outputs by 1-2 8-bit levels."""
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def memory_budget(device: torch.device) -> int:
    """Default bytes for activations plus tile buffers: on the CPU the smaller of
    :data:`MEMORY_FRACTION` of free memory and :data:`CPU_MEMORY_CAP` (other processes, dask
    workers, napari itself need the rest); on a GPU a fraction of free device memory."""
    budget = int(free_memory_bytes(device) * MEMORY_FRACTION.get(device.type, 0.25))
    return min(budget, CPU_MEMORY_CAP) if device.type == "cpu" else budget


def bytes_per_input_pixel(model: SRModel, bytes_per_value: int = 4) -> int:
    """Peak memory per input pixel of a tile: the activations of an inference pass plus the
    tile's input and output buffers (raw, float32, pinned and device copies).

    The native SRResNet runs folded (:mod:`~napari_srgan.engine.folding`): its last stage goes
    in strips of fixed size, so the peak is in the stages before it, three ``C``-channel
    tensors at the resolution before the last shuffle (``3 (s/f)² C`` values per input pixel;
    measured 3.2 kB per pixel at 4x with C = 64). Other architectures are assumed to peak like
    an unfolded SRResNet: three tensors of 64 features at the output resolution.
    """
    network = model.network
    if isinstance(network, Generator) and network.config.stages:
        config = network.config
        before_last = (config.scale // config.stages[-1]) ** 2
        activations = 3 * before_last * config.channels
    else:
        activations = 3 * model.scale**2 * 64
    buffers = 4 * model.in_channels * (1 + model.scale**2)
    return (activations + buffers) * bytes_per_value


def fixed_bytes(model: SRModel, bytes_per_value: int = 4) -> int:
    """Memory a pass takes whatever the tile size: the folded stage's strips."""
    if isinstance(model.network, Generator) and model.network.config.stages:
        return 3 * STRIP_VALUES * bytes_per_value
    return 0


def auto_tile_size(
    model: SRModel,
    device: torch.device,
    batch_size: int = 1,
    *,
    memory_limit: int | None = None,
    halo: int | None = None,
) -> int:
    """The largest kept tile size (input pixels per side) whose batch of tiles, halo included,
    fits in ``memory_limit`` bytes (default :func:`memory_budget`); at least :data:`MIN_AUTO_TILE`."""
    budget = memory_budget(device) if memory_limit is None else memory_limit
    halo = model.card.halo if halo is None else halo
    per_tile = max(budget - fixed_bytes(model), 0) // batch_size
    read = math.isqrt(per_tile // bytes_per_input_pixel(model))
    return max(MIN_AUTO_TILE, read - 2 * halo)


def available_devices() -> list[str]:
    """The device choices this machine has: "auto" and "cpu", plus CUDA and MPS when present."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices
