"""Read images and write results with their pixel size and provenance.

Results go to OME-TIFF: the physical pixel size in the OME-XML, and napari-srgan's provenance
(model, scale, source, translate) as JSON in a private TIFF tag, so a file read back restores the
layer exactly. Writes go to a temporary file that is renamed only when complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import imageio.v3 as iio
import numpy as np
import psutil
import tifffile
from PIL import Image

from napari_srgan.io.atomic_files import atomic_write, refuse_existing
from napari_srgan.messages import first_line, shown, with_type

log = logging.getLogger(__name__)

#: Private TIFF tag (in the 65000+ reusable range) holding the provenance JSON.
PROVENANCE_TAG = 65420
PROVENANCE_KEY = "napari_srgan"
TIFF_SUFFIXES = (".tif", ".tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: Pixel types OME-XML can describe (int64, uint64 and float16 have no OME name).
OME_DTYPES = ("int8", "int16", "int32", "uint8", "uint16", "uint32", "float32", "float64")
#: Pixel types each plain format holds.
PLAIN_DTYPES = {
    ".png": ("uint8", "uint16"),
    ".jpg": ("uint8",),
    ".jpeg": ("uint8",),
    ".bmp": ("uint8",),
}


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
#: Other spellings of length units (ImageJ's "um" and "micron", pint's and OME-Zarr's full
#: names).
_UNIT_ALIASES = {
    "um": "µm", "\u03bcm": "µm", "micron": "µm", "microns": "µm", "micrometer": "µm",
    "micrometre": "µm", "nanometer": "nm", "nanometre": "nm", "millimeter": "mm",
    "millimetre": "mm", "centimeter": "cm", "centimetre": "cm", "meter": "m", "metre": "m",
    "picometer": "pm", "angstrom": "Å", "inch": "in",
    # the rest of OME-Zarr's (UDUNITS-2) length names
    "yoctometer": "ym", "zeptometer": "zm", "attometer": "am", "femtometer": "fm",
    "decimeter": "dm", "hectometer": "hm", "kilometer": "km", "megameter": "Mm",
    "gigameter": "Gm", "terameter": "Tm", "petameter": "Pm", "exameter": "Em",
    "zettameter": "Zm", "yottameter": "Ym", "foot": "ft", "yard": "yd", "mile": "mi",
    "parsec": "pc",
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


class ImageTooLargeError(ValueError):
    """A file's header claims more pixels than fit in memory (checked before reading)."""


class UnsupportedColoursError(ValueError):
    """A file's colour model cannot be read as grey or RGB (CMYK, L*a*b*...)."""


#: The most TIFF pages an OME-XML may declare: tifffile lists every declared page before reading
#: any, so a 1 kB file declaring billions would take all memory (2**24 entries: 128 MB).
MAX_OME_PAGES = 2**24


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_holding = threading.local()


@contextlib.contextmanager
def tifffile_warnings(path: str | os.PathLike) -> Iterator[None]:
    """Hold back tifffile's log lines (what it repaired or could not read) until the read
    succeeds, then pass them on naming the file, each once: a read that fails says it in its
    one error line, without tifffile's lines before it. Nested, the outermost holds them (a
    read that opens the file twice, the second time failing, printed the first's lines)."""
    if getattr(_holding, "active", False):
        yield
        return
    logger, handler = logging.getLogger("tifffile"), _Records()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    _holding.active = True
    try:
        yield
    finally:
        _holding.active = False
        logger.removeHandler(handler)
        logger.propagate = propagate
    for message in dict.fromkeys(record.getMessage() for record in handler.records):
        log.warning("%s: %s", shown(path), message)


def open_tiff(path: str | os.PathLike) -> tifffile.TiffFile:
    """A TIFF whose OME-XML has been checked, so that ``tif.series`` cannot exhaust memory."""
    tif = tifffile.TiffFile(path)
    try:
        _check_ome_pages(tif, Path(path))
        _check_series(tif)
    except BaseException:
        tif.close()
        raise
    return tif


def _check_series(tif: tifffile.TiffFile) -> None:
    """Parse the series now: tifffile reads them from ImageJ or OME metadata on first use, and a
    malformed value there raises whatever Python raises (a KeyError for an OME Pixels element
    without SizeZ, a TypeError for ImageJ's ``images=abc``), which no caller expects."""
    try:
        tif.series  # noqa: B018 (a cached property: parsed once, here)
    except (tifffile.TiffFileError, MemoryError):
        raise
    except Exception as error:
        kind = "OME-XML" if tif.is_ome else "ImageJ" if tif.is_imagej else "TIFF"
        raise tifffile.TiffFileError(
            f"its {kind} metadata is malformed ({with_type(error)})"
        ) from None


def _check_ome_pages(tif: tifffile.TiffFile, path: Path) -> None:
    """Refuse OME-XML declaring more pages than :data:`MAX_OME_PAGES`, counted as tifffile
    does: each image's pixels over the first page's, plus every TiffData's plane count."""
    if not tif.is_ome or not tif.ome_metadata:
        return
    try:
        root = ElementTree.fromstring(tif.ome_metadata)
    except ElementTree.ParseError:
        return  # tifffile reads such a file as a plain TIFF
    page_size = max(tif.pages.first.size, 1)
    declared = 0
    for element in root.iter():
        kind = element.tag.rsplit("}", 1)[-1]
        try:
            if kind == "Pixels":
                sizes = [int(element.attrib.get(f"Size{axis}", 1)) for axis in "XYZCT"]
                declared += max(math.prod(sizes), 0) // page_size
            elif kind == "TiffData":
                count = element.attrib.get("PlaneCount", element.attrib.get("NumPlanes", 0))
                declared += max(int(element.attrib.get("IFD", 0)) + int(count), 0)
        except ValueError:
            message = f"its OME-XML {kind} element has a size that is not a whole number"
            raise tifffile.TiffFileError(message) from None
    if declared > MAX_OME_PAGES:
        raise ImageTooLargeError(
            f"{shown(path)}: its OME-XML declares {declared} image planes (the file has "
            f"{len(tif.pages)}); a header that large is refused"
        )


#: A chunk (a zarr chunk, a TIFF tile) is decoded whole to read any pixel of it, and a few at a
#: time (tiles read in parallel, each decoded, then copied): chunks this many times their
#: decoded size must fit in free memory.
CHUNKS_IN_MEMORY = 4


def check_chunk_size(path: str | os.PathLike, chunk_shape: tuple[int, ...], dtype) -> None:
    """Refuse a file whose chunks would not fit in memory when decoded: the image's size says
    nothing about them (a 2 MB zarr claiming one 46000x46000 chunk for a 16x16 image takes
    4.7 GB to read, and a 20 MB one would take all of it)."""
    size = math.prod(chunk_shape) * np.dtype(dtype).itemsize
    free = psutil.virtual_memory().available
    if size * CHUNKS_IN_MEMORY > free:
        raise ImageTooLargeError(
            f"{shown(path)}: its chunks of {'x'.join(map(str, chunk_shape))} values take "
            f"{size / 1e9:.1f} GB each when read, {free / 1e9:.1f} GB of memory is free; "
            "rewrite it in smaller chunks (tiles)"
        )


def pixels_unreadable(path: str | os.PathLike, error: Exception) -> ValueError:
    """The one-line error for pixels that do not decode (a corrupt or truncated chunk or strip:
    codecs raise their own types, imagecodecs' RuntimeErrors, zlib.error...)."""
    return ValueError(
        f"cannot read {shown(path)}: its pixel data is corrupt or truncated ({first_line(error)})"
    )


#: TIFF colour models whose values are not grey or RGB intensities: converting them needs what
#: such files rarely hold or this package cannot apply (the printing inks' colour profile for
#: CMYK, the white point for L*a*b*), and upscaling the stored values as planes or as RGBA gave a
#: result in the wrong colours. Refused in one line when the pixels are read.
_FOREIGN_COLOURS = {
    tifffile.PHOTOMETRIC.SEPARATED: "CMYK (separated colour)",
    tifffile.PHOTOMETRIC.CIELAB: "CIE L*a*b*",
    tifffile.PHOTOMETRIC.ICCLAB: "ICC L*a*b*",
    tifffile.PHOTOMETRIC.ITULAB: "ITU L*a*b*",
}
#: The compressions whose codec decodes YCbCr into RGB (OJPEG, JPEG, JPEG XL; as tifffile names
#: the samples): other YCbCr TIFFs hold luma and chroma values.
_RGB_DECODING = frozenset({6, 7, 33007, 34892})


@dataclass(frozen=True)
class TiffColours:
    """How a TIFF's stored values become the pixels a viewer shows, which the model is trained on
    and the result keeps: palette indices become their colours (interpolating indices is
    meaningless), white-is-zero values are turned round (the result is written black-is-zero),
    1-bit values become 0 and 255 (uint8: the model's intensity scale for 8 bits), and colour
    stored plane by plane (planar configuration "separate") gets its colour axis last, as napari
    and the engine expect it (it was upscaled as three grey planes and written as a Z-stack)."""

    #: The palette as a (colours, 3) lookup table, or None.
    palette: np.ndarray | None = None
    #: The stored value of black in a white-is-zero image, or None.
    black: int | None = None
    #: Whether the stored samples are red, green, blue (and alpha).
    rgb_samples: bool = False
    #: The stored axis (negative) of red, green, blue stored plane by plane, else None.
    planes_axis: int | None = None
    #: Why the pixels cannot be read (said by :meth:`check`; the metadata still opens).
    refused: str | None = None

    def check(self, path: str | os.PathLike) -> None:
        if self.refused:
            raise UnsupportedColoursError(f"{shown(path)}: {self.refused}")

    def notice(self) -> str | None:
        """What the reading changed, for a warning line (None: nothing)."""
        if self.palette is not None:
            return "a palette (indexed-colour) image: read as the RGB colours it shows, not its indices"
        if self.black is not None:
            return (
                "white is zero in this file (TIFF WhiteIsZero): read inverted, as viewers show it"
            )
        return None

    def shape(self, stored: tuple[int, ...]) -> tuple[int, ...]:
        if self.palette is not None:
            return (*stored, 3)
        if self.planes_axis is not None:
            axes = list(stored)
            return (
                *axes[: self.planes_axis],
                *axes[self.planes_axis + 1 :],
                axes[self.planes_axis],
            )
        return tuple(stored)

    def dtype(self, stored) -> np.dtype:
        if self.palette is not None:
            return self.palette.dtype
        return np.dtype(np.uint8) if np.dtype(stored) == bool else np.dtype(stored)

    def whole(self, stored: np.ndarray, path: str | os.PathLike) -> np.ndarray:
        """The pixels of the whole image, from its ``stored`` values."""
        if self.planes_axis is not None:
            stored = np.moveaxis(stored, self.planes_axis, -1)
        return self.values(stored, path)

    def part(self, read: Callable, key, ndim: int, path: str | os.PathLike) -> np.ndarray:
        """The pixels at ``key`` (ints and slices, as numpy takes them, into the ``ndim`` axes of
        :meth:`shape`), from ``read``, which takes such a key into the stored values."""
        if self.palette is None and self.planes_axis is None:
            return self.values(read(key), path)
        key = _full_key(key, ndim)
        if self.palette is not None:  # the colour axis is the lookup's
            return self.values(read(key[:-1]), path)[..., key[-1]]
        at = ndim + self.planes_axis
        stored = (*key[:at], key[-1], *key[at:-1])
        values = read(stored)
        if isinstance(key[-1], slice):  # the colour axis is kept: after those kept before it
            values = np.moveaxis(values, sum(isinstance(k, slice) for k in key[:at]), -1)
        return self.values(values, path)

    def values(self, values: np.ndarray, path: str | os.PathLike) -> np.ndarray:
        """``values`` as stored (any part of the image, its axes as the pixels') as the pixels
        they show."""
        if self.palette is not None:
            indices = values.astype(np.uint8) if values.dtype == bool else values
            if indices.size and int(indices.max()) >= len(self.palette):
                raise ValueError(
                    f"cannot read {shown(path)}: a pixel has palette index {int(indices.max())}, "
                    f"its colormap has {len(self.palette)} colours"
                )
            return self.palette[indices]
        if self.black is not None:
            values = (
                ~values if values.dtype == bool else self.black - np.minimum(values, self.black)
            )
        if values.dtype == bool:
            return bilevel_as_grey(values)
        return values


def _full_key(key, ndim: int) -> tuple:
    """An index (ints, slices, one Ellipsis) as one int or slice per axis."""
    key = key if isinstance(key, tuple) else (key,)
    if any(part is Ellipsis for part in key):
        at = next(i for i, part in enumerate(key) if part is Ellipsis)
        key = (*key[:at], *(slice(None),) * (ndim - len(key) + 1), *key[at + 1 :])
    if len(key) > ndim or not all(isinstance(k, slice | int | np.integer) for k in key):
        raise IndexError(f"unsupported index {key!r} for an array of {ndim} dimensions")
    return (*key, *(slice(None),) * (ndim - len(key)))


def bilevel_as_grey(values: np.ndarray) -> np.ndarray:
    """1-bit values as 8-bit grey, 0 and 255 (not through their bytes: imageio's hold 255 for
    True)."""
    return np.where(values, np.uint8(255), np.uint8(0))


def tiff_colours(series: tifffile.TiffPageSeries) -> TiffColours:
    """How the pixels of a TIFF series are read (:class:`TiffColours`), from its first page."""
    page = series.keyframe
    photometric, dtype = page.photometric, np.dtype(series.dtype)
    if photometric in _FOREIGN_COLOURS:
        return TiffColours(
            refused=f"{_FOREIGN_COLOURS[photometric]} TIFFs are not supported: their colours "
            "depend on a colour profile; convert it to RGB first"
        )
    if photometric == tifffile.PHOTOMETRIC.YCBCR and page.compression not in _RGB_DECODING:
        return TiffColours(
            refused="YCbCr TIFFs are supported JPEG-compressed only (this one holds luma and "
            "chroma values); convert it to RGB first"
        )
    if photometric == tifffile.PHOTOMETRIC.PALETTE:
        return TiffColours(palette=_palette(series))
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE and dtype.kind in "bu":
        return TiffColours(black=2**page.bitspersample - 1)
    rgb = photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
    planes = series.axes.find("S") - len(series.axes)  # negative; -1: last, or no samples axis
    if rgb and -len(series.axes) <= planes < -1 and series.shape[planes] in (3, 4):
        return TiffColours(rgb_samples=True, planes_axis=planes)
    return TiffColours(rgb_samples=rgb)


def _palette(series: tifffile.TiffPageSeries) -> np.ndarray:
    """The series' colormap as a (colours, 3) lookup table. The TIFF standard's colormaps are
    16-bit; one whose values are 8-bit colours (scaled by 256 or 257, or, as some writers store
    them, up to 255: libtiff reads those so too) gives uint8 colours, so an 8-bit palette image
    reads as the 8-bit RGB image it shows."""
    page = series.keyframe
    colormap = page.colormap
    if page.samplesperpixel != 1:
        raise tifffile.TiffFileError("a palette image with extra samples is not supported")
    if (
        not isinstance(colormap, np.ndarray)
        or colormap.ndim != 2
        or colormap.shape[0] != 3
        or colormap.shape[1] < 1
        or colormap.dtype.kind not in "iu"
        or colormap.min() < 0
        or colormap.max() > 65535
    ):
        raise tifffile.TiffFileError("a palette image without a valid colormap (3 x colours)")
    pages = [other for other in series.pages if isinstance(other, tifffile.TiffPage)]
    if any(not np.array_equal(other.colormap, colormap) for other in pages):
        raise tifffile.TiffFileError("its pages have different palettes")
    table = np.ascontiguousarray(colormap.T.astype(np.uint16))
    if table.max() <= 255:
        return table.astype(np.uint8)
    high = table >> 8
    if not (table & 0xFF).any() or np.array_equal(high * 257, table):
        return high.astype(np.uint8)
    return table


#: Values per pixel and bytes per value of Pillow's modes (palette images may expand to RGBA).
_PIL_MODES = {"1": (1, 1), "L": (1, 1), "P": (4, 1), "LA": (2, 1), "RGB": (3, 1)}
_PIL_MODES |= {"RGBA": (4, 1), "I;16": (1, 2), "I": (1, 4), "F": (1, 4), "CMYK": (4, 1)}


@contextlib.contextmanager
def pillow_quiet() -> Iterator[None]:
    """Pillow warns (two lines on stderr) about any image over 89 million pixels as a possible
    decompression bomb; the size is checked against free memory here instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def declared_bytes(path: str | os.PathLike) -> tuple[tuple[int, ...], int]:
    """The shape a file's header claims and the bytes its pixels take, without decoding them
    (a 130-byte TIFF may claim 100000x100000 pixels)."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile_warnings(path), open_tiff(path) as tif:
                series = tif.series[0]
                page = series.keyframe
                colours = tiff_colours(series)
                colours.check(path)  # before any pixel is decoded
                if math.prod(page.chunks) > page.size:  # a tile larger than its image: the
                    # image's size (checked by the caller) says nothing about it
                    check_chunk_size(path, page.chunks, series.dtype)
                shape = colours.shape(tuple(series.shape))
                return shape, math.prod(shape) * colours.dtype(series.dtype).itemsize
        with pillow_quiet(), Image.open(path) as image:
            if image.mode == "CMYK":  # imageio read it as RGBA
                raise UnsupportedColoursError(
                    f"{shown(path)}: CMYK images are not supported: their colours depend on a "
                    "colour profile; convert it to RGB first"
                )
            values, size = _PIL_MODES.get(image.mode, (4, 4))
            frames = getattr(image, "n_frames", 1)
            shape = (frames, image.height, image.width, values)
            return shape, math.prod(shape) * size
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"{shown(path)}: {error}; use a .zarr or TIFF input") from None
    except (ImageTooLargeError, UnsupportedColoursError):
        raise
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, SyntaxError) as error:
        raise ValueError(f"cannot read {shown(path)} as an image: {error}") from None


def check_fits_in_memory(
    path: str | os.PathLike,
    factor: float = 1.0,
    declared: tuple[tuple[int, ...], int] | None = None,
) -> None:
    """Refuse a file whose pixels (times ``factor``: e.g. input plus result) would not fit in
    the memory available now; ``declared``: its (shape, bytes) where already known (a lazily
    opened store), else read from its header."""
    shape, size = declared or declared_bytes(path)
    need, free = size * factor, psutil.virtual_memory().available
    if need > free:
        raise ImageTooLargeError(
            f"{shown(path)} declares {'x'.join(map(str, shape))} pixels: {need / 1e9:.1f} GB needed in "
            f"memory, {free / 1e9:.1f} GB free; write a .zarr output to stream it tile by tile"
        )


def read_image(path: str | os.PathLike, *, memory_factor: float = 1.0) -> ImageFile:
    """Read PNG / JPEG / BMP / WebP / TIFF (plain, ImageJ or OME, with pixel sizes).

    The header's size is checked against free memory first (``memory_factor`` times the
    pixels: callers that also hold a result say so), so a huge claim fails in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {shown(path)}")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        with tifffile_warnings(path):  # the header check and the read: their lines once
            check_fits_in_memory(path, memory_factor)
            return _read_tiff(path)
    check_fits_in_memory(path, memory_factor)
    try:
        data = _read_frames(path)
    except Exception as error:
        raise ValueError(f"cannot read {shown(path)} as an image: {error}") from None
    rgb = guess_rgb(data.shape) or (data.ndim == 3 and data.shape[-1] == 2)  # grey + alpha
    count = _spatial_axes_count(data.shape, rgb)
    return ImageFile(data, rgb, (1.0,) * count, (0.0,) * count)


def _read_frames(path: Path) -> np.ndarray:
    """Every frame of an animated file as a stack (imageio reads only the first of an animated
    WebP by default), a single frame as itself; turned as its EXIF orientation says, as viewers
    show it (a phone photo taken upright is stored on its side). A 1-bit image (a scanned page,
    a mask) reads as 8-bit grey, 0 and 255, as it shows; palette images read as their colours
    (imageio's doing)."""
    with pillow_quiet():
        data = np.asarray(iio.imread(path, index=..., rotate=True))
    if data.dtype == bool:
        data = bilevel_as_grey(data)
    return data[0] if data.shape[0] == 1 else data


def _read_tiff(path: Path, load: bool = True) -> ImageFile:
    """The TIFF's pixels (``load``) or only what is known about them (``data`` is then None)."""
    try:
        with tifffile_warnings(path), open_tiff(path) as tif:
            series = tif.series[0]
            colours = tiff_colours(series)
            if load:
                colours.check(path)
                data = colours.whole(_decode(series, path), path)
            else:
                data = None
            shape = colours.shape(tuple(series.shape))
            page = tif.pages[0]
            tag = page.tags.get(PROVENANCE_TAG)
            provenance = _provenance(path, tag.value) if tag is not None else {}
            pixel_size, unit = _tiff_pixel_size(tif, path)
            z_spacing = _tiff_z_spacing(tif)
    except (tifffile.TiffFileError, OSError, IndexError) as error:
        raise ValueError(f"cannot read {shown(path)} as a TIFF: {error}") from None
    if load and colours.notice():
        log.warning("%s: %s", shown(path), colours.notice())
    rgb = (colours.palette is not None or colours.rgb_samples) and guess_rgb(shape)
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


def _decode(series: tifffile.TiffPageSeries, path: Path) -> np.ndarray:
    try:
        return series.asarray()
    except MemoryError:
        raise
    except Exception as error:
        raise pixels_unreadable(path, error) from None


def _provenance(path: Path, text) -> dict:
    """The provenance tag's JSON, checked field by field (a bad one is named in one line)."""
    try:
        record = json.loads(text)
    except (TypeError, ValueError, RecursionError) as error:  # too deeply nested: Recursion
        raise ValueError(
            f"{shown(path)}: provenance tag {PROVENANCE_TAG} is not JSON ({first_line(error)})"
        ) from None
    return checked_provenance(record, path, f"provenance tag {PROVENANCE_TAG}")


def checked_provenance(record, path: str | os.PathLike, where: str) -> dict:
    """A file's provenance (``where``: the tag or attribute holding it) checked field by field,
    so that a bad one is named in one line: readers use the layer's scale, translate, name and
    colour flag as they are."""
    if not isinstance(record, dict):
        raise ValueError(f"{shown(path)}: {where} is not a JSON object")
    layer = record.get("layer", {})
    if not isinstance(layer, dict):
        raise ValueError(f"{shown(path)}: provenance field 'layer' is not an object")
    for name in ("scale", "translate"):
        values = layer.get(name, [])
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        ):
            raise ValueError(
                f"{shown(path)}: provenance field 'layer.{name}' is not a list of numbers"
            )
        if name == "scale" and any(v <= 0 for v in values):
            raise ValueError(f"{shown(path)}: provenance field 'layer.scale' has a value <= 0")
    if not isinstance(layer.get("name", ""), str):
        raise ValueError(f"{shown(path)}: provenance field 'layer.name' is not text")
    if not isinstance(layer.get("rgb", False), bool):
        raise ValueError(f"{shown(path)}: provenance field 'layer.rgb' is not true or false")
    return record


def positive_pixel_size(values, path, field: str) -> tuple[float, ...] | None:
    """Pixel sizes as floats, or None (with a warning) if any is not a positive number: a
    size <= 0 would turn into a negative or empty layer scale."""
    try:
        sizes = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{shown(path)}: {field} is not a number: {values!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in sizes):
        log.warning("%s: ignoring %s %s (not a positive number)", path, field, list(values))
        return None
    return sizes


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


def _ome_pixels(tif: tifffile.TiffFile, path: Path) -> dict:
    """The first image's ``Pixels`` element of the OME-XML, or a one-line error naming it."""
    try:
        root = tifffile.xml2dict(tif.ome_metadata)
    except Exception as error:  # tifffile passes on ElementTree's parse errors
        raise ValueError(f"{shown(path)}: the OME-XML does not parse ({error})") from None
    image = root.get("OME", {}).get("Image") if isinstance(root.get("OME"), dict) else None
    image = image[0] if isinstance(image, list) and image else image
    pixels = image.get("Pixels") if isinstance(image, dict) else None
    if not isinstance(pixels, dict):
        raise ValueError(f"{shown(path)}: the OME-XML has no OME/Image/Pixels element")
    return pixels


def _tiff_pixel_size(
    tif: tifffile.TiffFile, path: Path
) -> tuple[tuple[float, float] | None, str | None]:
    """(y, x) pixel size and unit from OME-XML, else ImageJ resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        pixels = _ome_pixels(tif, path)
        if "PhysicalSizeX" in pixels and "PhysicalSizeY" in pixels:
            unit = pixels.get("PhysicalSizeXUnit", "µm")
            sizes = (pixels["PhysicalSizeY"], pixels["PhysicalSizeX"])
            sizes = positive_pixel_size(sizes, path, "OME PhysicalSizeY/X")
            return sizes, unit if sizes else None
    if tif.is_imagej:
        page = tif.pages[0]
        x_res, y_res = page.tags.get("XResolution"), page.tags.get("YResolution")
        if x_res is not None and y_res is not None:
            x_num, x_den = x_res.value
            y_num, y_den = y_res.value
            if x_num and y_num:
                unit = (tif.imagej_metadata or {}).get("unit")
                sizes = (y_den / y_num, x_den / x_num)
                sizes = positive_pixel_size(sizes, path, "ImageJ resolution")
                return sizes, unit if sizes else None
    return None, None


def check_output_format(path: str | os.PathLike, dtype, *, rgb: bool, colours: int = 3) -> None:
    """Raise ValueError, before any work, if the output's format cannot hold ``dtype`` data
    (``colours``: the length of the colour axis when ``rgb``)."""
    path = Path(path)
    suffix, name = path.suffix.lower(), np.dtype(dtype).name
    if suffix in TIFF_SUFFIXES:
        if name not in OME_DTYPES:
            raise ValueError(
                f"OME-TIFF cannot hold {name} pixels ({shown(path)}); write a .zarr output instead"
            )
        if rgb and colours == 2:
            raise ValueError(
                f"OME-TIFF output of grey + alpha is not supported ({shown(path)}); write a .png"
            )
        return
    if suffix not in PLAIN_SUFFIXES:
        raise ValueError(
            f"unknown output format {suffix!r}; use one of {TIFF_SUFFIXES + PLAIN_SUFFIXES}"
        )
    if name not in PLAIN_DTYPES[suffix]:
        kind = "JPEG" if suffix in (".jpg", ".jpeg") else suffix[1:].upper()
        bits = "8-bit" if PLAIN_DTYPES[suffix] == ("uint8",) else "8- or 16-bit unsigned"
        raise ValueError(f"{kind} holds {bits} data only, this image is {name}; write a TIFF")


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
    overwrite: bool = False,
) -> Path:
    """Write OME-TIFF with the pixel size of the last two spatial axes and the provenance
    (which also keeps the layer's full scale, translate and name). An existing ``path`` is
    replaced only with ``overwrite``."""
    path = Path(path)
    data = np.asarray(data)
    refuse_existing(path, overwrite=overwrite)
    check_output_format(path, data.dtype, rgb=rgb, colours=data.shape[-1])
    count = _spatial_axes_count(data.shape, rgb)
    scale = tuple(scale or (1.0,) * count)
    translate = tuple(translate or (0.0,) * count)
    if not is_placeable(scale, translate):  # reading the file back would refuse it
        raise ValueError(
            f"cannot write {shown(path)}: the pixel size {list(scale)} or position "
            f"{list(translate)} is not a finite number (pixel size > 0)"
        )
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
        overwrite=overwrite,
    )


def is_placeable(scale, translate) -> bool:
    """Whether a pixel size (finite, > 0) and position (finite) can be written into a file and
    read back: this package's readers refuse any other."""
    return all(math.isfinite(v) and v > 0 for v in scale) and all(
        math.isfinite(v) for v in translate
    )


def write_image(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    rgb: bool,
    overwrite: bool = False,
    **tiff_options,
) -> Path:
    """TIFF (with metadata) or a plain format chosen by the file's suffix; an existing ``path``
    is replaced only with ``overwrite``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return write_tiff(path, data, rgb=rgb, overwrite=overwrite, **tiff_options)
    refuse_existing(path, overwrite=overwrite)
    check_output_format(path, data.dtype, rgb=rgb, colours=data.shape[-1])
    return atomic_write(
        path, lambda temp: iio.imwrite(temp, data, extension=suffix), overwrite=overwrite
    )
