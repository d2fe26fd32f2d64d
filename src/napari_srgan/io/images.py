"""Read images and write results with their pixel size and provenance.

Results go to OME-TIFF: the physical pixel size in the OME-XML, and napari-srgan's provenance
(model, scale, source, translate) as JSON in a private TIFF tag, so a file read back restores the
layer exactly. Writes go to a temporary file that is renamed only when complete.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from napari_srgan.io.atomic_files import atomic_write

#: Private TIFF tag (in the 65000+ reusable range) holding the provenance JSON.
PROVENANCE_TAG = 65420
PROVENANCE_KEY = "napari_srgan"
TIFF_SUFFIXES = (".tif", ".tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class ImageFile:
    """Pixels plus what is known about them."""

    #: numpy when read whole; any sliceable array (zarr...) when opened lazily.
    data: object
    rgb: bool
    #: World units per pixel along every axis of ``data`` but a colour axis (1.0 if unknown).
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    #: A length unit for the spatial axes (e.g. "µm"), or None if the file does not say.
    unit: str | None = None
    provenance: dict = field(default_factory=dict)


def guess_rgb(shape: tuple[int, ...]) -> bool:
    """napari's convention: a last axis of 3 or 4 after at least two spatial axes is colour."""
    return len(shape) >= 3 and shape[-1] in (3, 4)


def unit_name(unit: str) -> str:
    """A length unit's full name ("micrometer"), as OME-Zarr and napari (pint) spell it, for
    the symbols OME-TIFF and ImageJ use."""
    return {"µm": "micrometer", "um": "micrometer", "nm": "nanometer", "mm": "millimeter"}.get(
        unit, unit
    )


#: OME's UnitsLength symbols for lengths (the schema's enumeration, pixel units excluded).
OME_LENGTH_UNITS = (
    "Ym", "Zm", "Em", "Pm", "Tm", "Gm", "Mm", "km", "hm", "dam", "m", "dm", "cm", "mm", "µm",
    "nm", "pm", "fm", "am", "zm", "ym", "Å", "thou", "li", "in", "ft", "yd", "mi", "ua", "ly",
    "pc", "pt",
)  # fmt: skip
#: Other spellings of length units (ImageJ's "um" and "micron", pint's full names).
_UNIT_ALIASES = {
    "um": "µm", "\u03bcm": "µm", "micron": "µm", "microns": "µm", "micrometer": "µm",
    "micrometre": "µm", "nanometer": "nm", "nanometre": "nm", "millimeter": "mm",
    "millimetre": "mm", "centimeter": "cm", "centimetre": "cm", "meter": "m", "metre": "m",
    "picometer": "pm", "angstrom": "Å", "inch": "in",
}  # fmt: skip


def ome_unit(unit: str | None) -> str | None:
    """A length unit in OME's UnitsLength spelling ("um" -> "µm"), or None for pixel units and
    names OME cannot say (the pixel size is then not claimed to be physical)."""
    if not unit:
        return None
    unit = unit.strip()
    unit = _UNIT_ALIASES.get(unit, _UNIT_ALIASES.get(unit.lower(), unit))
    return unit if unit in OME_LENGTH_UNITS else None


def _spatial_axes_count(shape: tuple[int, ...], rgb: bool) -> int:
    return len(shape) - (1 if rgb else 0)


def read_image(path: str | os.PathLike) -> ImageFile:
    """Read PNG / JPEG / BMP / WebP / TIFF (plain, ImageJ or OME, with pixel sizes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path)
    try:
        data = np.asarray(iio.imread(path))
    except Exception as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from None
    rgb = guess_rgb(data.shape)
    count = _spatial_axes_count(data.shape, rgb)
    return ImageFile(data, rgb, (1.0,) * count, (0.0,) * count)


def _read_tiff(path: Path, load: bool = True) -> ImageFile:
    """The TIFF's pixels (``load``) or only what is known about them (``data`` is then None)."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(series.shape)
            data = series.asarray() if load else None
            page = tif.pages[0]
            tag = page.tags.get(PROVENANCE_TAG)
            provenance = json.loads(tag.value) if tag is not None else {}
            pixel_size, unit = _tiff_pixel_size(tif)
            z_spacing = _tiff_z_spacing(tif)
            photometric = page.photometric
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as error:
        raise ValueError(f"cannot read {path} as a TIFF: {error}") from None
    rgb = bool(photometric == tifffile.PHOTOMETRIC.RGB and guess_rgb(shape))
    count = _spatial_axes_count(shape, rgb)
    scale = [1.0] * count
    translate = [0.0] * count
    if pixel_size is not None:
        scale[-2], scale[-1] = pixel_size
        if count >= 3 and z_spacing is not None:
            scale[-3] = z_spacing
    stored = provenance.get("layer", {})
    if len(stored.get("scale", ())) == count:
        scale = list(stored["scale"])
    if len(stored.get("translate", ())) == count:
        translate = list(stored["translate"])
    return ImageFile(data, rgb, tuple(scale), tuple(translate), ome_unit(unit), provenance)


def tiff_metadata(path: str | os.PathLike) -> ImageFile:
    """Pixel size, provenance and layout of a TIFF without reading its pixels."""
    return _read_tiff(Path(path), load=False)


def _tiff_z_spacing(tif: tifffile.TiffFile) -> float | None:
    """The distance between Z planes: OME PhysicalSizeZ, else ImageJ's spacing."""
    value = None
    if tif.is_ome and tif.ome_metadata:
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        value = (image[0] if isinstance(image, list) else image)["Pixels"].get("PhysicalSizeZ")
    elif tif.is_imagej:
        value = (tif.imagej_metadata or {}).get("spacing")
    try:
        value = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _tiff_pixel_size(tif: tifffile.TiffFile) -> tuple[tuple[float, float] | None, str | None]:
    """(y, x) pixel size and unit from OME-XML, else ImageJ resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
        if "PhysicalSizeX" in pixels and "PhysicalSizeY" in pixels:
            unit = pixels.get("PhysicalSizeXUnit", "µm")
            return (float(pixels["PhysicalSizeY"]), float(pixels["PhysicalSizeX"])), unit
    if tif.is_imagej:
        page = tif.pages[0]
        x_res, y_res = page.tags.get("XResolution"), page.tags.get("YResolution")
        if x_res is not None and y_res is not None:
            x_num, x_den = x_res.value
            y_num, y_den = y_res.value
            if x_num and y_num:
                unit = (tif.imagej_metadata or {}).get("unit")
                return (y_den / y_num, x_den / x_num), unit
    return None, None


def write_tiff(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    rgb: bool,
    scale: tuple[float, ...] | None = None,
    translate: tuple[float, ...] | None = None,
    unit: str | None = None,
    name: str | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write OME-TIFF with the pixel size of the last two spatial axes and the provenance
    (which also keeps the layer's full scale, translate and name)."""
    path = Path(path)
    data = np.asarray(data)
    count = _spatial_axes_count(data.shape, rgb)
    scale = tuple(scale or (1.0,) * count)
    translate = tuple(translate or (0.0,) * count)
    # Leading axes are planes of a Z-stack (then time): never OME channels (SizeC).
    spatial = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX"}.get(count)
    if spatial is None:
        raise ValueError(f"cannot write {data.ndim}-dimensional data to OME-TIFF")
    metadata: dict = {"axes": spatial + ("S" if rgb else "")}
    symbol = ome_unit(unit)
    if symbol:  # a physical pixel size; pixel units (a photo) write none
        metadata |= {"PhysicalSizeY": float(scale[-2]), "PhysicalSizeX": float(scale[-1])}
        metadata |= {"PhysicalSizeYUnit": symbol, "PhysicalSizeXUnit": symbol}
        if count >= 3:
            metadata |= {"PhysicalSizeZ": float(scale[-3]), "PhysicalSizeZUnit": symbol}
    record = dict(provenance or {})
    record["layer"] = {"scale": list(scale), "translate": list(translate)}
    if name:
        record["layer"]["name"] = name
    extratags = [(PROVENANCE_TAG, "s", 0, json.dumps(record), True)]
    return atomic_write(
        path,
        lambda temp: tifffile.imwrite(
            temp,
            data,
            ome=True,
            photometric="rgb" if rgb else "minisblack",
            metadata=metadata,
            extratags=extratags,
        ),
    )


def write_image(path: str | os.PathLike, data: np.ndarray, *, rgb: bool, **tiff_options) -> Path:
    """TIFF (with metadata) or a plain format chosen by the file's suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return write_tiff(path, data, rgb=rgb, **tiff_options)
    if suffix not in PLAIN_SUFFIXES:
        raise ValueError(
            f"unknown output format {suffix!r}; use one of {TIFF_SUFFIXES + PLAIN_SUFFIXES}"
        )
    if suffix in (".jpg", ".jpeg") and data.dtype != np.uint8:
        raise ValueError(f"JPEG holds 8-bit data only, this image is {data.dtype}; write a TIFF")
    return atomic_write(path, lambda temp: iio.imwrite(temp, data, extension=suffix))
