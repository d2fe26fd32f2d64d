"""Where models live: the ones bundled in the package and the ones a user trained.

A model's name is its file name without ``.safetensors``. User models shadow nothing: a user
model with a bundled model's name is listed as ``user:<name>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from napari_srgan.models.headers import ModelFileError

#: The model used when none is named: the bundled RGB photo model.
DEFAULT_MODEL = "srresnet-rgb-x4"
#: The bundled 1-channel microscopy model (trained with the crappifier).
DEFAULT_GREY_MODEL = "srresnet-em-grey-x4"
#: What the bundled models are for (their cards predate the ``intended_use`` field).
BUNDLED_USES = {
    DEFAULT_MODEL: "RGB photos and natural images (bicubic-downscaled)",
    DEFAULT_GREY_MODEL: "noisy, low-light grey microscopy (EM; blur, shot and read noise)",
}
#: Set this to keep user models somewhere other than the platform's user data folder.
MODEL_DIR_ENV = "NAPARI_SRGAN_MODEL_DIR"
SUFFIX = ".safetensors"


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
        for path in sorted(user_dir.glob(f"*{SUFFIX}")):
            models[path.stem if path.stem not in models else f"user:{path.stem}"] = path
    return models


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """A model name from :func:`available_models`, or a path to a ``.safetensors`` file."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    models = available_models()
    if str(name_or_path) in models:
        return models[str(name_or_path)]
    path = Path(name_or_path)
    if path.suffix == SUFFIX or path.exists():
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        return path
    known = ", ".join(models) or "none installed"
    raise ModelFileError(f"no model named {str(name_or_path)!r}; available: {known}")
