"""Open TIFFs and OME-Zarr stores with pixel size, translate and napari-srgan provenance."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari_srgan.io.images import PROVENANCE_KEY, TIFF_SUFFIXES, ImageFile, read_image, unit_name
from napari_srgan.io.zarr_files import is_zarr, open_pyramid


def get_reader(path: str | list[str]) -> Callable | None:
    if isinstance(path, list):
        return None
    if str(path).lower().endswith(TIFF_SUFFIXES):
        return read_tiff_layer
    if is_zarr(path) and Path(path).is_dir():
        return read_zarr_layer
    return None


def layer_options(image: ImageFile) -> dict:
    options = {
        "rgb": image.rgb,
        "scale": image.scale,
        "translate": image.translate,
        "metadata": {PROVENANCE_KEY: image.provenance} if image.provenance else {},
    }
    if image.unit:
        options["units"] = unit_name(image.unit)
    name = image.provenance.get("layer", {}).get("name")
    if name:
        options["name"] = name
    return options


def read_tiff_layer(path: str) -> list[tuple]:
    image = read_image(path)
    return [(image.data, layer_options(image), "image")]


def read_zarr_layer(path: str) -> list[tuple]:
    """OME-Zarr opens lazily as a multiscale layer: napari reads only what it shows."""
    levels, image = open_pyramid(path)
    options = layer_options(image)
    options.setdefault("name", Path(path).stem)
    data = levels if len(levels) > 1 else levels[0]
    return [(data, {**options, "multiscale": len(levels) > 1}, "image")]
