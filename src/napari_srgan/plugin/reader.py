"""Open OME-TIFFs and OME-Zarr stores with pixel size, translate and napari-srgan provenance.

napari picks readers by file name alone and asks the user whenever two plugins match, so this
reader claims only names it can add something to: ``*.ome.tif(f)`` (this package writes its
results so) and ``.zarr`` folders. Even for those, :func:`get_reader` looks inside and returns
None for a file without this package's provenance or a physical pixel size, leaving it to
napari's own reader. A plain ``*.tif`` is never claimed and opens with no dialog.

A claimed file that turns out damaged is reported by this reader itself, in one notification
line: napari wraps an exception from a reader in "Tried opening with napari-srgan, but failed.
... Scroll up to see the full stack trace" (in the reader dialog, or as an error with a
traceback), and a get_reader that declines instead makes napari say only that no reader could
open the file, losing the reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from napari.utils.notifications import show_error

from napari_srgan.io.images import (
    PROVENANCE_KEY,
    TIFF_SUFFIXES,
    ImageFile,
    read_image,
    tiff_metadata,
    unit_name,
)
from napari_srgan.io.zarr_files import is_zarr, open_pyramid
from napari_srgan.messages import first_line, shown


def get_reader(path: str | list[str]) -> Callable | None:
    """A reader for OME-Zarr stores and for TIFFs that carry this package's provenance or a
    physical pixel size; None for anything else (napari's reader does as well there)."""
    if isinstance(path, list):
        return None
    path = Path(path)
    if path.is_dir():
        return reporting_errors(read_zarr_layer) if is_zarr(path) else None
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        try:
            image = tiff_metadata(path)
        except ValueError:
            return None  # napari's reader reports what is wrong with the file
        return reporting_errors(read_tiff_layer) if image.provenance or image.unit else None
    return None


def reporting_errors(read: Callable[[str], list[tuple]]) -> Callable[[str], list[tuple]]:
    """``read`` for napari: a damaged file is reported as one error notification line naming
    it, and napari gets no layers (npe2's null-layer result), so napari adds no wrapper,
    traceback or reader dialog of its own. ``viewer.open`` then returns no layers."""

    @functools.wraps(read)
    def read_or_report(path: str) -> list[tuple]:
        try:
            return read(path)
        except (ValueError, OSError) as error:
            reason = first_line(error)
            named = Path(path).name in reason
            show_error(
                f"napari-srgan: {reason if named else f'cannot open {shown(path)}: {reason}'}"
            )
            return [(None,)]  # npe2's null-layer result: handled, nothing to add

    return read_or_report


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
