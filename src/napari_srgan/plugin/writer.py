"""Save an image layer as OME-TIFF with its pixel size, translate and provenance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_warning

from napari_srgan.io.images import PROVENANCE_KEY, check_fits_in_memory, write_tiff
from napari_srgan.messages import shown


class PlanesNotComputed(RuntimeError):
    """A lazy result was read whole on the GUI thread before all its planes were computed (no
    ValueError: napari reports those of any writer, its own too, as "not a valid writer")."""


def length_unit(units) -> str | None:
    """The OME unit symbol of the layer's x axis, if it is a length (pint units in napari)."""
    if not units:
        return None
    unit = units[-1]
    if getattr(unit, "dimensionality", None) != {"[length]": 1}:
        return None
    return f"{unit:~}"


def in_one_length_unit(
    scale, translate, units
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None, str | None]:
    """``scale`` and ``translate`` with every length axis in the x axis's unit, and that unit's
    OME symbol (None when x is no length). A file has one length unit: a layer in nm on y and
    µm on x was written with its y pixel size read as µm, 1000 times too big."""
    scale = tuple(float(v) for v in scale) if scale is not None and len(scale) else None
    translate = (
        tuple(float(v) for v in translate) if translate is not None and len(translate) else None
    )
    unit = length_unit(units)
    if unit is None:
        return scale, translate, None
    target = units[-1]
    factors = [
        (1.0 * axis).to(target).magnitude
        if getattr(axis, "dimensionality", None) == target.dimensionality
        else 1.0
        for axis in units
    ]
    if scale is not None and len(scale) == len(factors):
        scale = tuple(v * f for v, f in zip(scale, factors, strict=True))
    if translate is not None and len(translate) == len(factors):
        translate = tuple(v * f for v, f in zip(translate, factors, strict=True))
    return scale, translate, unit


def _declared(data) -> tuple[tuple[int, ...], int]:
    """The shape of ``data`` and the bytes it takes in memory."""
    shape = tuple(data.shape)
    return shape, math.prod(shape) * np.dtype(data.dtype).itemsize


def _layer_name(meta: dict) -> str:
    return shown(meta["name"]) if meta.get("name") else "the layer"


def show_save_warnings(warnings: list[str]) -> None:
    """What :func:`save_image_layer` says the user should be warned of, as notifications."""
    for warning in warnings:
        show_warning(f"napari-srgan: {warning}")


def write_image_layer(path: str, data, meta: dict) -> list[str]:
    """napari's writer: called on the GUI thread, problems go to notifications."""
    try:
        written, warnings = save_image_layer(path, data, meta)
    except (ValueError, OSError, PlanesNotComputed) as error:
        # napari reports a writer's ValueError only as "not a valid writer": say why here
        show_error(f"napari-srgan: cannot save {_layer_name(meta)}: {error}")
        return []
    show_save_warnings(warnings)
    return [str(written)]


def save_image_layer(path: str, data, meta: dict) -> tuple[Path, list[str]]:
    """Write a layer (napari's data and meta) as OME-TIFF, atomically; returns the file and what
    the user should be warned of. Shows nothing itself, so it can run in a worker thread;
    raises ValueError, OSError or :class:`PlanesNotComputed`."""
    name = _layer_name(meta)
    warnings = []
    metadata = meta.get("metadata")
    provenance = metadata.get(PROVENANCE_KEY) if isinstance(metadata, dict) else None
    provenance = dict(provenance) if isinstance(provenance, dict) else {}  # not ours otherwise
    provenance.pop("layer", None)
    if not _is_json(provenance):  # a script put Python objects there: save the image without it
        warnings.append(f"{name}'s provenance is not JSON; saved without it")
        provenance = {}
    if meta.get("multiscale"):  # the levels: the full-resolution one is the image
        data = data[0]
    scale, translate, unit = in_one_length_unit(
        meta.get("scale"), meta.get("translate"), meta.get("units")
    )
    check_fits_in_memory(path, declared=_declared(data))  # a lazy layer is read whole
    written = write_tiff(
        path,
        data,
        rgb=bool(meta.get("rgb", False)),
        scale=scale,
        translate=translate,
        unit=unit,
        name=meta.get("name"),
        provenance=provenance,
        overwrite=True,  # napari's save dialog has asked the user already
    )
    if not written.name.lower().endswith((".ome.tif", ".ome.tiff")):
        warnings.append(
            f"saved {shown(written.name)} as OME-TIFF, but napari opens a plain .tif with its "
            "own reader, without the pixel size: name it .ome.tif to keep it"
        )
    dropped = _not_stored(meta)
    if dropped:
        warnings.append(
            f"saved {name} without its {' and '.join(dropped)}: an OME-TIFF holds pixel size "
            "and position only, so it opens unrotated"
        )
    return written, warnings


def _is_json(value) -> bool:
    """Whether ``value`` can be stored as the file's JSON provenance tag."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):  # an object, a circular reference, NaN
        return False
    return True


def _not_stored(meta: dict) -> list[str]:
    """The layer's placements an OME-TIFF cannot hold (lost silently before)."""
    checks = {
        "rotation": (meta.get("rotate"), None),
        "shear": (meta.get("shear"), 0.0),
        "affine transform": (meta.get("affine"), None),
    }
    dropped = []
    for label, (value, identity) in checks.items():
        if value is None:
            continue
        value = np.asarray(value, dtype=float)
        expected = np.eye(len(value)) if identity is None else np.zeros_like(value)
        if value.shape == expected.shape and not np.allclose(value, expected):
            dropped.append(label)
    return dropped
