"""Where models live (bundled, trained or added by the user) and how any of them is opened.

A model's name is its file name without ``.safetensors``. User models shadow nothing: a user
model with a bundled model's name is listed as ``user:<name>``. :func:`load_model` opens every
source behind one :class:`~napari_srgan.models.interface.SRModel`: native files, converted
community files, ``.pth/.pt/.ckpt/.safetensors`` files spandrel recognises, and bioimage.io
packages (``.zip`` or folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from napari_srgan.io.atomic_files import OutputExistsError
from napari_srgan.messages import printable, shown
from napari_srgan.models.headers import ModelFileError, safetensors_metadata

if TYPE_CHECKING:
    from torch import nn

    from napari_srgan.models.interface import ModelCard, SRModel

#: The model used when none is named: the bundled RGB photo model.
DEFAULT_MODEL = "srresnet-rgb-x4"
#: The bundled 1-channel model for grey data (trained on a mixture of clean and noisy LR).
DEFAULT_GREY_MODEL = "srresnet-em-grey-x4"
#: What the bundled models are for (their cards predate the ``intended_use`` field).
BUNDLED_USES = {
    DEFAULT_MODEL: "RGB photos and natural images (bicubic-downscaled)",
    DEFAULT_GREY_MODEL: "grey microscopy (EM), clean or noisy (blur, shot and read noise)",
}
#: Set this to keep user models somewhere other than the platform's user data folder.
MODEL_DIR_ENV = "NAPARI_SRGAN_MODEL_DIR"
SUFFIX = ".safetensors"
#: What a model path may end with: weights files and bioimage.io packages (folders too).
MODEL_SUFFIXES = (SUFFIX, ".pth", ".pt", ".ckpt", ".zip")


def default_model(rgb: bool) -> str:
    """The model used when none is named: the bundled one for data with or without colour."""
    return DEFAULT_MODEL if rgb else DEFAULT_GREY_MODEL


def bundled_model_dir() -> Path:
    return Path(__file__).parent.parent / "weights"


def user_model_dir() -> Path:
    override = os.environ.get(MODEL_DIR_ENV)
    if override:
        return Path(override)
    return Path(platformdirs.user_data_dir("napari-srgan", appauthor=False)) / "models"


def available_models() -> dict[str, Path]:
    """Bundled models first (default first), then the user's, by name."""
    models: dict[str, Path] = {}
    bundled = sorted(bundled_model_dir().glob(f"*{SUFFIX}"), key=lambda p: p.stem != DEFAULT_MODEL)
    for path in bundled:
        models[path.stem] = path
    user_dir = user_model_dir()
    if user_dir.is_dir():
        for path in sorted(p for p in user_dir.glob(f"*{SUFFIX}") if p.is_file()):
            models[path.stem if path.stem not in models else f"user:{path.stem}"] = path
    return models


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """A model name from :func:`available_models`, or a path to a model file or package."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    models = available_models()
    if str(name_or_path) in models:
        return models[str(name_or_path)]
    path = Path(name_or_path)
    if path.suffix.lower() in MODEL_SUFFIXES or path.exists():
        if not path.exists():
            raise ModelFileError(f"model file not found: {shown(path)}")
        if not (path.is_file() or path.is_dir()):  # reading a pipe or device would block
            raise ModelFileError(f"{shown(path)} is not a model file (a pipe, socket or device)")
        return path
    known = ", ".join(map(printable, models)) or "none installed"
    raise ModelFileError(f"no model named {str(name_or_path)!r}; available: {known}")


def is_bioimageio(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".zip"


def load_model(
    name_or_path: str | os.PathLike | None = None,
    device: str = "cpu",
    *,
    trust_code: bool = False,
) -> SRModel:
    """Open any model by name or path: native, converted or spandrel-recognised weights, or a
    bioimage.io package (whose Python architecture code runs only with ``trust_code``)."""
    from napari_srgan.models.files import FORMAT_KEY, FORMAT_VERSION

    path = resolve_model(name_or_path)
    if is_bioimageio(path):
        from napari_srgan.models.bioimageio import load_bioimageio

        return load_bioimageio(path, device, trust_code=trust_code)
    if path.suffix.lower() == SUFFIX:
        metadata = safetensors_metadata(path)
        if metadata.get(FORMAT_KEY) == FORMAT_VERSION:
            from napari_srgan.models.files import load_model as load_native

            return load_native(path, device)
        from napari_srgan.models.community import CONVERTED_FORMAT, load_converted

        if metadata.get(FORMAT_KEY) == CONVERTED_FORMAT:
            return load_converted(path, metadata, device)
    from napari_srgan.models.community import load_community_file

    return load_community_file(path, device)


def read_card(name_or_path: str | os.PathLike | None = None) -> ModelCard:
    """A model's card; from file metadata alone where the file has one (native and converted
    files), else by opening the model."""
    from napari_srgan.models.files import FORMAT_KEY, FORMAT_VERSION, read_metadata

    path = resolve_model(name_or_path)
    if path.suffix.lower() == SUFFIX:
        metadata = safetensors_metadata(path)
        if metadata.get(FORMAT_KEY) == FORMAT_VERSION:
            return read_metadata(path)[1]
        from napari_srgan.models.community import CONVERTED_FORMAT, read_converted_card

        if metadata.get(FORMAT_KEY) == CONVERTED_FORMAT:
            return read_converted_card(path, metadata)
    return load_model(path).card


def add_model(
    path: str | os.PathLike, name: str | None = None, *, trust_code: bool = False
) -> Path:
    """Convert a community or bioimage.io model into the user model folder (``.safetensors``
    with a model card), so it is listed by name and reloads without the original file."""
    from napari_srgan.models.community import SpandrelNetwork, save_converted
    from napari_srgan.models.halo import measure_tiling

    source = Path(path)
    if not source.exists():
        raise ModelFileError(f"model file not found: {shown(source)}")
    name = name or source.stem
    _check_model_name(name)  # name and target before the (slow) conversion
    target = user_model_dir() / f"{name}{SUFFIX}"
    if name in available_models() or os.path.lexists(target):  # a dangling link is taken too
        raise ModelFileError(f"a model named {name!r} exists already; choose another --name")
    model = load_model(source, trust_code=trust_code)
    if not isinstance(model.network, SpandrelNetwork):
        raise ModelFileError(
            f"{shown(source.name)} is a {model.card.source} model; only spandrel architectures can be "
            "converted (use it directly with --model)"
        )
    model.card.name = name
    measure_tiling(model)
    try:
        return save_converted(model, target)
    except OutputExistsError:  # another `models add` of this name finished meanwhile
        raise ModelFileError(
            f"a model named {name!r} was added meanwhile; choose another --name"
        ) from None


def _check_model_name(name: str) -> None:
    """A model name is typed after ``--model`` and is a file name in every OS: no path parts,
    no hidden file, no ``:`` (``user:<name>`` marks a user model that shares a bundled one's
    name; Windows forbids it), no control characters or edge spaces, at most 200 bytes."""
    if (
        not name
        or not name.isprintable()
        or name != name.strip()
        or name.startswith(".")
        or any(c in name for c in '/\\:*?"<>|')
        or len(name.encode()) > 200
    ):
        raise ModelFileError(
            f"'{shown(name)[:60]}' is not a usable model name (printable, at most 200 bytes, "
            "none of / \\ : * ? \" < > |, not starting with '.'); pass another --name"
        )


def save_trained(
    path: str | os.PathLike,
    network: nn.Module,
    card: ModelCard,
    *,
    half: bool = False,
    overwrite: bool = False,
) -> Path:
    """Save a trained network in the project's ``.safetensors`` format: a native generator as a
    native model (its halo is measured when it first loads), a spandrel network as a converted
    one that keeps its architecture id, its tiling checked now as ``models add`` does."""
    from napari_srgan.models.community import SpandrelNetwork, save_converted
    from napari_srgan.models.files import save_model
    from napari_srgan.models.halo import measure_tiling
    from napari_srgan.models.interface import SRModel

    if not isinstance(network, SpandrelNetwork):
        return save_model(path, network, card, half=half, overwrite=overwrite)
    model = SRModel(network.cpu(), card)
    measure_tiling(model)
    return save_converted(model, path, half=half, overwrite=overwrite)
