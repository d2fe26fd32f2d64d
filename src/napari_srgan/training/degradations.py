"""Low-resolution synthesis: MATLAB-style bicubic resizing and a microscopy "crappifier".

The SR literature makes its LR images with MATLAB's ``imresize(hr, 1/4, 'bicubic')`` (Keys
cubic, a = -0.5, kernel widened by 4 when shrinking so it also low-pass filters, symmetric
borders). PSNR figures are only comparable when LR is made the same way, so this module
reproduces those semantics exactly; its resize is a pair of small matrix products, which runs
batched on any torch device during training.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from napari_srgan.models.srresnet import SCALE
from napari_srgan.training.degradation_defaults import CRAPPIFIER, MIXTURE


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=256)
def resize_matrix(in_length: int, out_length: int) -> np.ndarray:
    """The ``(out_length, in_length)`` matrix of MATLAB's ``imresize`` along one axis."""
    scale = out_length / in_length
    shrinking = scale < 1
    kernel_width = 4.0 / scale if shrinking else 4.0
    out_index = np.arange(1, out_length + 1, dtype=np.float64)
    centre = out_index / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(centre - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    index = left[:, None] + np.arange(taps)[None, :]
    distance = centre[:, None] - index
    weights = scale * _cubic(scale * distance) if shrinking else _cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    # MATLAB mirrors the border symmetrically (edge pixel repeated), 1-based indices.
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    source = mirror[np.mod(index.astype(np.int64) - 1, 2 * in_length)]
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_length), taps), source.ravel()), weights.ravel())
    return matrix


def imresize(images: torch.Tensor, out_height: int, out_width: int) -> torch.Tensor:
    """Resize the last two axes like MATLAB ``imresize(..., 'bicubic')`` (no rounding)."""
    height, width = images.shape[-2:]
    rows = _resize_operator(height, out_height, images.dtype, images.device)
    cols = _resize_operator(width, out_width, images.dtype, images.device)
    return rows @ images @ cols.T


@functools.lru_cache(maxsize=64)
def _resize_operator(
    in_length: int, out_length: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """:func:`resize_matrix` as a tensor on ``device``, made once: copying it from host memory on
    every call would make a GPU wait for the host each training batch."""
    return torch.as_tensor(resize_matrix(in_length, out_length), dtype=dtype, device=device)


def bicubic_downscale(hr: torch.Tensor, factor: int = SCALE) -> torch.Tensor:
    """HR -> LR by antialiased bicubic, the benchmark convention. HR sides must divide by
    ``factor``."""
    height, width = hr.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"HR size {height}x{width} is not a multiple of {factor}")
    if factor == 1:
        return hr
    return imresize(hr, height // factor, width // factor)


def bicubic_upscale(lr: torch.Tensor, factor: int = SCALE) -> torch.Tensor:
    """The bicubic baseline every SR result is compared with."""
    height, width = lr.shape[-2:]
    return imresize(lr, height * factor, width * factor)


def modcrop(image: np.ndarray, factor: int = SCALE) -> np.ndarray:
    """Crop the bottom/right so both spatial sides divide by ``factor`` (image is ``(h, w[, c])``)."""
    height, width = image.shape[:2]
    return image[: height - height % factor, : width - width % factor]


@dataclass(frozen=True)
class Bicubic:
    """LR = antialiased bicubic x4 downscale of HR."""

    def __call__(
        self, hr: torch.Tensor, generator: torch.Generator | None = None, factor: int = SCALE
    ) -> torch.Tensor:
        return bicubic_downscale(hr, factor)

    def describe(self) -> dict:
        return {"kind": "bicubic"}


#: Largest blur sigma (HR pixels): its kernel (3 sigma each side) must fit in the smallest
#: window the samplers and validation blur (a 16 px patch with its border context, a 32 px crop).
MAX_BLUR_SIGMA = 10.0
#: Photon counts at intensity 1 outside this range make the float32 noise arithmetic overflow
#: or divide 0 by 0 (NaN training pairs).
PHOTON_LIMITS = (0.01, 1e9)
#: Read noise is a sigma on the [0, 1] scale: more than 1 drowns any signal.
MAX_READ_NOISE = 1.0


def _check_ranges(kind: str, degradation: Crappifier | Mixture) -> None:
    """Each range 0 <= low <= high, within limits that keep every training pair finite."""
    limits = {
        "blur_sigma": (0.0, MAX_BLUR_SIGMA),
        "photons": PHOTON_LIMITS,
        "read_noise": (0.0, MAX_READ_NOISE),
    }
    for name, (smallest, largest) in limits.items():
        low, high = getattr(degradation, name)
        if not 0 <= low <= high:
            raise ValueError(f"{kind}.{name} must be a range 0 <= low <= high, got {low, high}")
        if not smallest <= low <= high <= largest:
            raise ValueError(
                f"{kind}.{name} must lie within {smallest:g}..{largest:g}, got {low, high}"
            )


@dataclass(frozen=True)
class Crappifier:
    """Microscopy degradation (after PSSR, Fang et al. 2021): optical blur, x4 downsampling, shot
    noise and read noise. Each sample draws its strengths uniformly from the given ranges
    (equal ends fix them).

    ``blur_sigma`` is in HR pixels; ``photons`` is the expected photon count at intensity 1 (fewer
    photons, more Poisson noise); ``read_noise`` is a Gaussian sigma on the [0, 1] scale.
    """

    blur_sigma: tuple[float, float] = CRAPPIFIER["blur_sigma"]
    photons: tuple[float, float] = CRAPPIFIER["photons"]
    read_noise: tuple[float, float] = CRAPPIFIER["read_noise"]

    def __post_init__(self) -> None:
        _check_ranges("Crappifier", self)

    def __call__(
        self, hr: torch.Tensor, generator: torch.Generator | None = None, factor: int = SCALE
    ) -> torch.Tensor:
        batch, device = hr.shape[0], hr.device
        draws = _uniform(3 * batch, generator, device).reshape(3, batch)

        lr = bicubic_downscale(batched_blur(hr, _between(self.blur_sigma, draws[0])), factor)
        photons = _between(self.photons, draws[1])
        return _add_noise(lr, photons, _between(self.read_noise, draws[2]), generator)

    def describe(self) -> dict:
        return {"kind": "crappifier", **asdict(self)}


def _uniform(count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``count`` uniform draws in float64, from ``generator`` on its own device."""
    source = generator.device if generator is not None else device
    return torch.rand(count, generator=generator, device=source, dtype=torch.float64).to(device)


def _between(bounds: tuple[float, float], draw: torch.Tensor) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * draw


def _add_noise(
    lr: torch.Tensor,
    photons: torch.Tensor,
    read_noise: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Poisson shot noise (``photons`` at intensity 1) plus Gaussian read noise, per sample."""
    shape = (lr.shape[0],) + (1,) * (lr.dim() - 1)
    photons = photons.to(lr.dtype).reshape(shape)
    source = generator.device if generator is not None else lr.device
    rate = (lr.clamp(min=0) * photons).to(source)
    shot = torch.poisson(rate, generator=generator).to(lr.device) / photons
    gauss = torch.randn(lr.shape, generator=generator, device=source, dtype=lr.dtype)
    return shot + gauss.to(lr.device) * read_noise.to(lr.dtype).reshape(shape)


def batched_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each ``(b, c, h, w)`` sample with its own sigma (0: unchanged), as two
    grouped 1-D convolutions with reflected borders: one kernel launch for the whole batch."""
    batch, channels, height, width = images.shape
    radius = max(math.ceil(3 * float(sigmas.max())), 1)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float64)
    safe = sigmas.to(torch.float64).clamp(min=1e-6)[:, None]
    kernels = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
    kernels = torch.where(sigmas[:, None] > 0, kernels, (offsets == 0).to(torch.float64)[None])
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).to(images.dtype)
    kernels = kernels.repeat_interleave(channels, dim=0)  # (b*c, k)
    flat = images.reshape(1, batch * channels, height, width)
    flat = torch.nn.functional.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = torch.nn.functional.conv2d(flat, kernels[:, None, None, :], groups=batch * channels)
    flat = torch.nn.functional.conv2d(flat, kernels[:, None, :, None], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


@dataclass(frozen=True)
class Mixture:
    """A mixture of degradations, for one model that works on clean and noisy data alike.

    Each sample independently gets, with probability ``blur_probability``, a Gaussian blur
    (sigma uniform in ``blur_sigma``, HR pixels); then x4 bicubic; then, with probability
    ``noise_probability``, shot noise (photons at intensity 1 drawn log-uniformly from
    ``photons``, so weak and strong noise are equally represented) plus Gaussian read noise
    (sigma uniform in ``read_noise``, 0-1 scale). Samples with neither are plain bicubic LR.
    ``factor`` 1 makes restoration pairs on one pixel grid (blur and noise only).
    Fully batched torch ops: runs on the training device, reproducible from ``generator``.
    """

    blur_probability: float = MIXTURE["blur_probability"]
    blur_sigma: tuple[float, float] = MIXTURE["blur_sigma"]
    noise_probability: float = MIXTURE["noise_probability"]
    photons: tuple[float, float] = MIXTURE["photons"]
    read_noise: tuple[float, float] = MIXTURE["read_noise"]

    def __post_init__(self) -> None:
        for name in ("blur_probability", "noise_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"Mixture.{name} must be in [0, 1]")
        _check_ranges("Mixture", self)

    def __call__(
        self, hr: torch.Tensor, generator: torch.Generator | None = None, factor: int = SCALE
    ) -> torch.Tensor:
        batch, device = hr.shape[0], hr.device
        draws = _uniform(5 * batch, generator, device).reshape(5, batch)
        blurred = draws[0] < self.blur_probability
        sigma = torch.where(blurred, _between(self.blur_sigma, draws[1]), 0.0)
        lr = bicubic_downscale(batched_blur(hr, sigma) if bool(blurred.any()) else hr, factor)
        noisy = draws[2] < self.noise_probability
        log_photons = _between((math.log(self.photons[0]), math.log(self.photons[1])), draws[3])
        read = _between(self.read_noise, draws[4])
        degraded = _add_noise(lr, torch.exp(log_photons), read, generator)
        return torch.where(noisy.reshape((batch,) + (1,) * (lr.dim() - 1)), degraded, lr)

    def describe(self) -> dict:
        return {"kind": "mixture", **asdict(self)}


Degradation = Bicubic | Crappifier | Mixture
DEGRADATIONS = {"bicubic": Bicubic, "crappifier": Crappifier, "mixture": Mixture}


def degradation_from_dict(values: dict) -> Degradation:
    values = dict(values)
    kind = values.pop("kind", "bicubic")
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; choose one of {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[kind](
        **{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    )
