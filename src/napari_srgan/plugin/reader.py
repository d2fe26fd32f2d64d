"""Open TIFFs with their pixel size, translate and napari-srgan provenance restored."""

from __future__ import annotations

from collections.abc import Callable

from ..image_io import PROVENANCE_KEY, TIFF_SUFFIXES, read_image


def get_reader(path: str | list[str]) -> Callable | None:
    if isinstance(path, list) or not str(path).lower().endswith(TIFF_SUFFIXES):
        return None
    return read_tiff_layer


def read_tiff_layer(path: str) -> list[tuple]:
    image = read_image(path)
    metadata = {PROVENANCE_KEY: image.provenance} if image.provenance else {}
    options = {
        "rgb": image.rgb,
        "scale": image.scale,
        "translate": image.translate,
        "metadata": metadata,
    }
    if image.unit:
        options["units"] = image.unit.replace("µm", "micrometer")
    stored = image.provenance.get("layer", {})
    if "name" in stored:
        options["name"] = stored["name"]
    return [(image.data, options, "image")]
