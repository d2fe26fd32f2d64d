"""Model files: ``.safetensors`` weights with the architecture and a model card in the metadata.

safetensors stores tensors only, so loading a file can never run code (unlike a pickled
checkpoint). The metadata makes a file self-describing: which generator it fits, how its inputs
are normalised, what it was trained on and how well it did.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import BinaryIO

import psutil
import torch
from safetensors import SafetensorError, safe_open

from napari_srgan.io.atomic_files import atomic_write_stream
from napari_srgan.messages import brief, shown
from napari_srgan.models.halo import cached_halo, measure_halo
from napari_srgan.models.headers import ModelFileError, parse_json
from napari_srgan.models.interface import ModelCard, SRModel
from napari_srgan.models.srresnet import Generator, GeneratorConfig

FORMAT_KEY = "napari_srgan_format"
FORMAT_VERSION = "1"


def load_weights_only(path: str | os.PathLike, map_location="cpu"):
    """``torch.load`` with torch's tensors-only unpickler (no code in the file can run), minus
    its warnings ("Detected pickle protocol", sparse tensor checks): the refusal or result
    says all, in one line. A zip that unpacks to more than the free memory is refused first."""
    _check_unpacked_size(Path(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True, mmap=False)


def check_fits_memory(path: Path) -> None:
    """Weights are read whole (and fp16 ones doubled to fp32): refuse a file larger than the
    free memory before reading it, with a line, not a kill by the system. A sparse file of
    50 GB takes no disk space, and unpacks from a small archive."""
    size, free = path.stat().st_size, psutil.virtual_memory().available
    if size > free:
        raise ModelFileError(
            f"{shown(path)} is {size / 1e9:.1f} GB, more than the {free / 1e9:.1f} GB of free "
            "memory it would be read into"
        )


def _check_unpacked_size(path: Path) -> None:
    """torch reads a zip's (deflated) entries whole, and a 200 kB file of zeros unpacks to 200 MB
    (20 MB to 20 GB): refuse, before reading, an archive whose declared sizes (which bound what
    it unpacks to) exceed the free memory. Files torch does not read as a zip are left alone."""
    with path.open("rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return
    try:
        with zipfile.ZipFile(path) as archive:
            size = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"a broken zip archive ({error})") from None
    free = psutil.virtual_memory().available
    if size > free:
        raise ValueError(
            f"it unpacks to {size / 1e9:.1f} GB, more than the {free / 1e9:.1f} GB of free memory"
        )


def save_model(
    path: str | os.PathLike,
    generator: Generator,
    card: ModelCard,
    *,
    half: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``generator`` and ``card`` to ``path`` atomically (a crash leaves no partial file).

    ``half`` stores fp16 weights (half the size; inference upcasts them to fp32 on load). An
    existing ``path`` is replaced only with ``overwrite``.
    """
    path = Path(path)
    card = describe_network(card, generator.config)
    tensors = {
        name: (t.detach().half() if half and t.is_floating_point() else t.detach())
        .cpu()
        .contiguous()
        for name, t in generator.state_dict().items()
    }
    metadata = {
        FORMAT_KEY: FORMAT_VERSION,
        "generator_config": json.dumps(generator.config.to_dict(), sort_keys=True),
        "model_card": card.to_json(),
    }
    return write_safetensors(path, tensors, metadata, overwrite=overwrite)


def write_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    *,
    overwrite: bool,
) -> Path:
    """Write a ``.safetensors`` file atomically (see :func:`atomic_write_stream`: not with
    safetensors' ``save_file``, whose own temporary file a kill leaves in the model folder),
    streamed tensor by tensor from the tensors' own memory: safetensors' ``save`` builds the
    whole file as one bytes object first, a second copy of a model of hundreds of MB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header, order = _safetensors_header(tensors, metadata)
    return atomic_write_stream(
        path, lambda stream: _write_tensors(stream, header, order), overwrite=overwrite
    )


#: The safetensors format's names of the torch dtypes (those this torch has), in the order
#: safetensors' own writer puts tensors into a file (widest elements first).
_DTYPE_CODES = {
    getattr(torch, name): code
    for name, code in (
        ("uint64", "U64"),
        ("int64", "I64"),
        ("float64", "F64"),
        ("complex64", "C64"),
        ("float32", "F32"),
        ("uint32", "U32"),
        ("int32", "I32"),
        ("bfloat16", "BF16"),
        ("float16", "F16"),
        ("uint16", "U16"),
        ("int16", "I16"),
        ("float8_e4m3fn", "F8_E4M3"),
        ("float8_e5m2", "F8_E5M2"),
        ("int8", "I8"),
        ("uint8", "U8"),
        ("bool", "BOOL"),
    )
    if hasattr(torch, name)
}
_DTYPE_ORDER = {dtype: place for place, dtype in enumerate(_DTYPE_CODES)}


def _safetensors_header(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> tuple[bytes, list[torch.Tensor]]:
    """The file's first part (8-byte little-endian header length, JSON header padded with
    spaces to a multiple of 8) and the tensors in the order their bytes follow it, that of
    safetensors' own writer: widest elements first, so every tensor starts at a multiple of
    its element size."""
    if sys.byteorder != "little":  # the format is little-endian; tensors are written as they are
        raise ModelFileError("model files can only be written on a little-endian machine")
    if "__metadata__" in tensors:
        raise ModelFileError("a tensor may not be named __metadata__ in a .safetensors file")
    unknown = sorted({str(t.dtype) for t in tensors.values() if t.dtype not in _DTYPE_CODES})
    if unknown:
        raise ModelFileError(f"weights of type {', '.join(unknown)} cannot be saved")
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    names = sorted(tensors, key=lambda name: (_DTYPE_ORDER[tensors[name].dtype], name))
    offset = 0
    for name in names:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPE_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, [tensors[name] for name in names]


def _write_tensors(stream: BinaryIO, header: bytes, tensors: list[torch.Tensor]) -> None:
    """Write the header, then each tensor's bytes straight from its memory (a copy only of a
    tensor that is not contiguous in CPU memory, one at a time)."""
    stream.write(header)
    for tensor in tensors:
        stream.write(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy())


def read_metadata(path: str | os.PathLike) -> tuple[GeneratorConfig, ModelCard]:
    """The architecture and card of a model file, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {shown(path)}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(
            f"{shown(path)} is not a readable .safetensors file ({error})"
        ) from None
    if metadata.get(FORMAT_KEY) == "spandrel-1":
        raise ModelFileError(
            f"{shown(path.name)} is a community model converted from spandrel, not a native SRResNet "
            "file; open it with napari_srgan.models.registry.load_model"
        )
    if metadata.get(FORMAT_KEY) != FORMAT_VERSION:
        raise ModelFileError(
            f"{shown(path)} is a safetensors file but not a napari-srgan model "
            f"(metadata {FORMAT_KEY!r} is {metadata.get(FORMAT_KEY)!r}, expected {FORMAT_VERSION!r})"
        )
    try:
        config = GeneratorConfig.from_dict(parse_json(metadata["generator_config"]))
        card = ModelCard.from_json(metadata["model_card"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{shown(path)} has broken model metadata: {error}") from None
    return config, describe_network(card, config, path)


def describe_network(
    card: ModelCard, config: GeneratorConfig, path: Path | None = None
) -> ModelCard:
    """The card with what the architecture fixes (scale, channels, theoretical halo) filled in;
    a card that contradicts its network is refused."""
    facts = {
        "scale": config.scale,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "theoretical_halo": config.tile_margin,
        "architecture": "srresnet",
    }
    defaults = ModelCard(card.name)
    for name, value in facts.items():
        stated = getattr(card, name)
        if stated != value and stated != getattr(defaults, name):
            raise ModelFileError(
                f"{shown(path) if path else card.name}: the model card says {name} {stated}, "
                f"but the network has {value}"
            )
        setattr(card, name, value)
    return card


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, measure: bool = True
) -> SRModel:
    """Build the generator the file describes and load its weights (fp32, eval mode). A card
    without a measured halo gets one (:mod:`~napari_srgan.models.halo`, cached by file hash)
    unless ``measure`` is False."""
    path = Path(path)
    config, card = read_metadata(path)
    check_fits_memory(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            # Shapes first, from the header: a config claiming a huge network (or a file with
            # a huge stray tensor) is refused before anything that size is allocated.
            _check_fits(path, config, {name: handle.get_slice(name).get_shape() for name in names})
            tensors = {name: handle.get_tensor(name) for name in names}
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{shown(path)}: cannot read weights ({error})") from None
    generator = Generator(config)
    tensors = {name: t.float() for name, t in tensors.items()}
    refuse_nonfinite(shown(path), tensors)
    generator.load_state_dict(tensors)
    generator.eval()
    model = native_model(generator, card, path)
    if measure and card.measured_halo is None:  # measured once per file, then cached by its hash
        card.measured_halo = cached_halo(path, lambda: measure_halo(model))
    generator.to(device)
    return model


def refuse_nonfinite(label: str, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse weights with NaN or infinite values: every output would be NaN. Checked on the
    32-bit floats the network computes with (fp8 has no finiteness test; a float64 beyond
    the float32 range becomes infinite)."""
    broken = sorted(
        n for n, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()
    )
    if broken:
        raise ModelFileError(
            f"{label}: weights contain NaN or infinite values ({', '.join(broken[:3])}"
            f"{', ...' if len(broken) > 3 else ''}); the file is damaged or the training diverged"
        )


def native_model(generator: Generator, card: ModelCard, path: Path | None = None) -> SRModel:
    """An SRResNet generator as an :class:`SRModel`, its card completed from the network."""
    return SRModel(generator, describe_network(card, generator.config, path), path)


def _check_fits(path: Path, config: GeneratorConfig, shapes: dict[str, list[int]]) -> None:
    """Refuse weights whose names or shapes are not those of ``config``'s network, comparing
    with a network built on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in Generator(config).state_dict().items()}
    found = {name: tuple(shape) for name, shape in shapes.items()}
    problems = [f"missing {name}" for name in sorted(expected.keys() - found.keys())]
    # the file's own tensor names: escaped, as a notification shows them whole
    problems += [f"unexpected {brief(name)}" for name in sorted(found.keys() - expected.keys())]
    problems += [
        f"{name} has shape {found[name]}, the architecture needs {expected[name]}"
        for name in sorted(expected.keys() & found.keys())
        if expected[name] != found[name]
    ]
    if problems:
        listed = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise ModelFileError(
            f"{shown(path)}: weights do not fit the architecture in its metadata "
            f"({config}): {listed}"
        )
