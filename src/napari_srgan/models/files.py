"""Model files: ``.safetensors`` weights with the architecture and a model card in the metadata.

safetensors stores tensors only, so loading a file can never run code (unlike a pickled
checkpoint). The metadata makes a file self-describing: which generator it fits, how its inputs
are normalised, what it was trained on and how well it did.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path

import psutil
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

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
    safetensors' ``save_file``, whose own temporary file a kill leaves in the model folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_stream(
        path, lambda stream: stream.write(save(tensors, metadata=metadata)), overwrite=overwrite
    )


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
