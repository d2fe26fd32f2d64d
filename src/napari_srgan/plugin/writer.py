"""Save an image layer as OME-TIFF with its pixel size, translate and provenance."""

from __future__ import annotations

import math

import numpy as np
from napari.utils.notifications import show_error

from napari_srgan.io.images import PROVENANCE_KEY, check_fits_in_memory, write_tiff
from napari_srgan.messages import shown


def length_unit(units) -> str | None:
    """The OME unit symbol of the layer's x axis, if it is a length (pint units in napari)."""
    if not units:
        return None
    unit = units[-1]
    if getattr(unit, "dimensionality", None) != {"[length]": 1}:
        return None
    return f"{unit:~}"


def _declared(data) -> tuple[tuple[int, ...], int]:
    """The shape of ``data`` and the bytes it takes in memory."""
    shape = tuple(data.shape)
    return shape, math.prod(shape) * np.dtype(data.dtype).itemsize


def write_image_layer(path: str, data, meta: dict) -> list[str]:
    metadata = meta.get("metadata")
    provenance = metadata.get(PROVENANCE_KEY) if isinstance(metadata, dict) else None
    provenance = dict(provenance) if isinstance(provenance, dict) else {}  # not ours otherwise
    provenance.pop("layer", None)
    if meta.get("multiscale"):  # the levels: the full-resolution one is the image
        data = data[0]
    try:
        check_fits_in_memory(path, declared=_declared(data))  # a lazy layer is read whole
        written = write_tiff(
            path,
            data,
            rgb=bool(meta.get("rgb", False)),
            scale=tuple(meta.get("scale", ())) or None,
            translate=tuple(meta.get("translate", ())) or None,
            unit=length_unit(meta.get("units")),
            name=meta.get("name"),
            provenance=provenance,
            overwrite=True,  # napari's save dialog has asked the user already
        )
    except (ValueError, OSError) as error:
        # napari reports a writer's ValueError only as "not a valid writer": say why here
        name = shown(meta["name"]) if meta.get("name") else "the layer"
        show_error(f"napari-srgan: cannot save {name}: {error}")
        return []
    return [str(written)]
