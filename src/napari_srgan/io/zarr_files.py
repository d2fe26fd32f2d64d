"""Zarr and OME-Zarr in and out, for images larger than memory.

Inputs open lazily (plain zarr arrays, OME-Zarr multiscale groups at full resolution, big TIFFs
through tifffile's zarr view). Outputs are OME-Zarr (NGFF 0.4, zarr format 2, which napari and
Fiji read): axes, the new pixel size, provenance, and a 2x mean pyramid so viewers stay fast.
A store is written under a unique temporary name and swapped in atomically when complete
(:mod:`napari_srgan.io.atomic_files`); an existing store is replaced only with ``overwrite``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import dask
import dask.array as da
import numcodecs
import numpy as np
import tifffile
import zarr

from napari_srgan.io.atomic_files import disk_full_is_one_line, new_store, replace_store
from napari_srgan.io.images import (
    PROVENANCE_KEY,
    ImageFile,
    TiffColours,
    check_chunk_size,
    checked_provenance,
    ome_unit,
    open_tiff,
    pixels_unreadable,
    positive_pixel_size,
    tiff_colours,
    tiff_metadata,
    tifffile_warnings,
    unit_name,
)
from napari_srgan.messages import first_line, shown
from napari_srgan.threads import joined_pool

log = logging.getLogger(__name__)

#: Output chunks on the two image axes: a good size for napari tiles and for compression.
CHUNK = 512
NGFF_VERSION = "0.4"
#: The most resolution levels an OME-Zarr store may list: 64 halvings shrink any image to a
#: pixel (a 2.6 MB .zattrs listing 100000 took minutes to open, level by level).
MAX_LEVELS = 64
#: The chunks' codec (zarr's default for format 2, named so the disk space check uses the same).
COMPRESSOR = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)


def is_zarr(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".zarr"


def open_lazy(path: str | os.PathLike) -> ImageFile:
    """An image whose ``data`` reads from disk on slicing (zarr, OME-Zarr, or TIFF)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image: {shown(path)}")
    if is_zarr(path):
        return _open_zarr(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        inode = os.stat(path).st_ino  # tiles are read by path too: see CheckedReads
        with tifffile_warnings(path):  # the file is opened twice: its lines once
            try:
                with open_tiff(path) as tif:
                    colours = tiff_colours(tif.series[0])
                    colours.check(path)
                    store = tif.aszarr()
            except (tifffile.TiffFileError, OSError, IndexError) as error:
                raise ValueError(f"cannot read {shown(path)} as a TIFF: {error}") from None
            data = zarr.open(store, mode="r")
            if isinstance(data, zarr.Group):  # a pyramidal TIFF: level 0
                data = data["0"]
            image = tiff_metadata(path)
        if colours.notice():
            log.warning("%s: %s", shown(path), colours.notice())
        image.data = CheckedReads(data, path, inode, colours)
        return image
    raise ValueError(f"{shown(path)}: lazy reading needs .zarr or .tif, not {path.suffix!r}")


class CheckedReads:
    """A lazily read array whose corrupt or truncated chunks fail in one line naming the file
    (the codecs' own errors would surface deep inside the engine, as a traceback).

    With ``inode`` (the store folder's or file's when opened), a store or file another writer
    swapped in at ``path`` meanwhile fails too: chunks are read by path, so the rest of a
    result would have come from another image.

    With ``colours`` (a TIFF's), the values read are the pixels they show: a palette image has a
    colour axis more than its store."""

    def __init__(
        self, array, path: Path, inode: int | None = None, colours: TiffColours | None = None
    ) -> None:
        if any(side < 1 for side in array.chunks):  # zarr opens it, then divides by zero
            raise ValueError(f"cannot read {shown(path)}: its chunk shape {array.chunks} has a 0")
        self.array, self.path, self.inode, self.colours = array, path, inode, colours
        self.shape, self.dtype, self.chunks = array.shape, array.dtype, array.chunks
        if colours is not None:
            self.shape, self.dtype = colours.shape(self.shape), colours.dtype(self.dtype)
            self.chunks = colours.shape(self.chunks)
            if colours.palette is not None or colours.planes_axis is not None:
                self.chunks = (*self.chunks[:-1], self.shape[-1])  # a pixel's colours: one chunk
        self.ndim = len(self.shape)
        check_chunk_size(path, self.chunks, self.dtype)

    def __getitem__(self, key):
        if self.colours is None:
            return self._read(key)
        return self.colours.part(self._read, key, self.ndim, self.path)

    def _read(self, key):
        try:
            values = self.array[key]
        except (IndexError, TypeError, MemoryError):
            raise
        except Exception as error:
            if self.inode is not None:
                self._check_store()  # a swap halfway (old store aside) may fail the read
            raise pixels_unreadable(self.path, error) from None
        if self.inode is not None:
            self._check_store()
        return values

    def _check_store(self) -> None:
        try:
            inode = os.stat(self.path).st_ino
        except OSError:
            inode = None
        if inode != self.inode:
            raise ValueError(f"{shown(self.path)} was replaced by another writer while it was read")

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __dask_tokenize__(self) -> tuple:
        colours = (
            None if self.colours is None else (self.colours.palette is not None, self.colours.black)
        )
        return ("CheckedReads", str(self.path), self.inode, self.shape, str(self.dtype), colours)


def _open_zarr(path: Path) -> ImageFile:
    inode = os.stat(path).st_ino  # before opening: a swap in between is seen at the first read
    return _zarr_image(_open_node(path), path, inode)


def _open_node(path: Path):
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:
        raise ValueError(f"cannot open {shown(path)} as zarr: {error}") from None
    if not isinstance(node.metadata.attributes, dict):  # zarr reads any JSON: attrs.get fails
        raise ValueError(f"{shown(path)}: its zarr attributes are not a JSON object")
    return node


def _multiscales(group: zarr.Group, path: Path) -> dict:
    """The first OME-Zarr multiscale of ``group`` (NGFF 0.4, or 0.5's ``ome`` key), checked:
    a malformed one fails in one line naming the field."""
    ome = group.attrs.get("ome", {})
    multiscales = group.attrs.get("multiscales") or (
        ome.get("multiscales") if isinstance(ome, dict) else None
    )
    if not multiscales:
        raise ValueError(f"{shown(path)} is a zarr group without OME-Zarr multiscales metadata")
    if not isinstance(multiscales, list) or not isinstance(multiscales[0], dict):
        raise ValueError(f"{shown(path)}: OME-Zarr field 'multiscales' is not a list of objects")
    datasets = multiscales[0].get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise ValueError(
            f"{shown(path)}: OME-Zarr field 'multiscales[0].datasets' is missing or empty"
        )
    if len(datasets) > MAX_LEVELS:  # each is opened: 100000 took minutes
        raise ValueError(
            f"{shown(path)}: OME-Zarr field 'multiscales[0].datasets' lists {len(datasets)} "
            f"levels; more than {MAX_LEVELS} is refused"
        )
    for index, dataset in enumerate(datasets):
        if not isinstance(dataset, dict) or not isinstance(dataset.get("path"), str):
            raise ValueError(f"{shown(path)}: OME-Zarr field 'datasets[{index}].path' is missing")
        try:
            array = group.get(dataset["path"])
        except Exception as error:  # zarr refuses "..", "." (ValueError); broken metadata
            # raises what its parser raises (TypeError for a list, RecursionError for nesting)
            raise ValueError(
                f"{shown(path)}: OME-Zarr dataset {dataset['path']!r} (datasets[{index}]) cannot "
                f"be opened: {first_line(error)}"
            ) from None
        if not isinstance(array, zarr.Array):
            raise ValueError(
                f"{shown(path)}: OME-Zarr dataset {dataset['path']!r} (datasets[{index}]) is not an array"
            )
    return multiscales[0]


def _transforms(dataset: dict, ndim: int, path: Path) -> tuple[list[float], list[float]]:
    """The scale and translation of a dataset; a pixel size <= 0 or a translation that is not
    finite is ignored with a warning."""
    scale, translate = [1.0] * ndim, [0.0] * ndim
    transforms = dataset.get("coordinateTransformations", [])
    if not isinstance(transforms, list):
        raise ValueError(f"{shown(path)}: OME-Zarr field 'coordinateTransformations' is not a list")
    for transform in transforms:
        kind = transform.get("type") if isinstance(transform, dict) else None
        values = transform.get(kind) if kind in ("scale", "translation") else None
        if kind not in ("scale", "translation"):
            continue
        if not isinstance(values, list) or len(values) != ndim:
            raise ValueError(f"{shown(path)}: OME-Zarr {kind} is not a list of {ndim} numbers")
        if kind == "scale":
            scale = list(positive_pixel_size(values, path, "OME-Zarr scale") or scale)
        else:
            try:
                offsets = [float(v) for v in values]
            except (TypeError, ValueError):
                raise ValueError(f"{shown(path)}: OME-Zarr translation is not numbers") from None
            if all(math.isfinite(v) for v in offsets):
                translate = offsets
            else:  # NaN or infinity would pass on to the result, which no reader then opens
                log.warning(
                    "%s: ignoring OME-Zarr translation %s (not finite)", shown(path), values
                )
    return scale, translate


def _zarr_image(node, path: Path, inode: int | None = None) -> ImageFile:
    """A plain zarr array, or the full-resolution level of an OME-Zarr group, with metadata
    (``inode``: see :class:`CheckedReads`)."""
    where = f"the {PROVENANCE_KEY!r} attribute"
    provenance = dict(checked_provenance(node.attrs.get(PROVENANCE_KEY, {}), path, where))
    if isinstance(node, zarr.Array):
        rgb = node.ndim >= 3 and node.shape[-1] in (3, 4)
        count = node.ndim - rgb
        return ImageFile(
            CheckedReads(node, path, inode), rgb, (1.0,) * count, (0.0,) * count, None, provenance
        )
    first = _multiscales(node, path)
    dataset = first["datasets"][0]
    data = node[dataset["path"]]
    scale, translate = _transforms(dataset, data.ndim, path)
    axes = first.get("axes", [])
    axes = axes if isinstance(axes, list) else []
    unit = next(
        (a.get("unit") for a in axes if isinstance(a, dict) and a.get("type") == "space"), None
    )
    if unit is not None and not (isinstance(unit, str) and ome_unit(unit)):
        # not a length: a number or list failed later in a traceback, text went on to the result
        log.warning(
            "%s: ignoring OME-Zarr axis unit %s (not a length unit)", shown(path), shown(repr(unit))
        )
        unit = None
    return ImageFile(
        CheckedReads(data, path, inode), False, tuple(scale), tuple(translate), unit, provenance
    )


def open_pyramid(path: str | os.PathLike) -> tuple[list[da.Array], ImageFile]:
    """All resolution levels of an OME-Zarr store as dask arrays (napari's multiscale input),
    in napari's layout (a colour axis written by this package moves back to the end), and the
    full-resolution level's metadata. A plain zarr array is a pyramid of one level."""
    path = Path(path)
    node = _open_node(path)
    image = _zarr_image(node, path)
    if isinstance(node, zarr.Array):
        arrays = [node]
    else:
        arrays = [node[d["path"]] for d in _multiscales(node, path)["datasets"]]
    for index, array in enumerate(arrays):  # napari fails on these deep in a layer's setup
        if array.ndim != arrays[0].ndim:
            raise ValueError(
                f"{shown(path)}: OME-Zarr level {index} has {array.ndim} axes, level 0 has "
                f"{arrays[0].ndim}"
            )
        if np.dtype(array.dtype).kind not in "buif":
            raise ValueError(
                f"{shown(path)}: OME-Zarr level {index} holds {array.dtype} values, not numbers"
            )
    # a corrupt chunk fails in one line naming the store, when napari shows it too
    levels = [da.from_array(CheckedReads(array, path), chunks=array.chunks) for array in arrays]
    if image.provenance.get("layer", {}).get("rgb"):
        if arrays[0].ndim < 3 or arrays[0].shape[-3] not in (3, 4):
            raise ValueError(
                f"{shown(path)}: its provenance says RGB, but it has no colour axis of 3 or 4 "
                f"before y, x (shape {arrays[0].shape})"
            )
        levels = [da.moveaxis(level, -3, -1) for level in levels]
        scale, translate = list(image.scale), list(image.translate)
        del scale[-3], translate[-3]
        image.rgb, image.scale, image.translate = True, tuple(scale), tuple(translate)
    image.data = levels[0]
    return levels, image


def _axes(ndim: int, unit: str | None) -> list[dict]:
    names = ["t", "c", "z", "y", "x"][5 - ndim :]
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    axes = []
    for name in names:
        axis = {"name": name, "type": kinds[name]}
        if kinds[name] == "space" and unit:
            axis["unit"] = unit_name(unit)
        axes.append(axis)
    return axes


class ChannelsFirst:
    """Writes ``(..., y, x, c)`` blocks into a ``(..., c, y, x)`` array (OME-Zarr's order)."""

    def __init__(self, array) -> None:
        self.array = array
        self.shape = (*array.shape[:-3], *array.shape[-2:], array.shape[-3])
        self.dtype = array.dtype

    def __setitem__(self, key: tuple, value: np.ndarray) -> None:
        *leading, ys, xs = key
        self.array[(*leading, slice(None), ys, xs)] = np.moveaxis(value, -1, -3)


def stored_shape(shape: Sequence[int], *, rgb: bool) -> tuple[int, ...]:
    """The array shape in the store of an image of ``shape`` in napari's layout (colour moves
    before y, x)."""
    return (*shape[:-3], shape[-1], *shape[-3:-1]) if rgb else tuple(shape)


def store_levels(shape: Sequence[int], *, rgb: bool) -> list[tuple[tuple[int, ...], tuple]]:
    """(shape, chunks) of every level a store of an image of ``shape`` (napari layout) holds:
    level 0 in chunks of one plane (with all its colours) of :data:`CHUNK` x :data:`CHUNK`,
    then 2x means until the image axes fit one chunk."""
    stored = stored_shape(shape, rgb=rgb)
    chunks = (1,) * (len(stored) - 2) + (CHUNK, CHUNK)
    if rgb:
        chunks = (*chunks[:-3], stored[-3], CHUNK, CHUNK)
    levels = [(stored, chunks)]
    while max(stored[-2:]) > CHUNK and min(stored[-2:]) >= 2:
        stored = (*stored[:-2], stored[-2] // 2, stored[-1] // 2)
        levels.append((stored, tuple(min(c, s) for c, s in zip(chunks, stored, strict=True))))
    return levels


class OmeZarrWriter:
    """Creates ``path`` (under a temporary name) for an image of ``shape`` (napari layout:
    ``(..., y, x[, rgb])``), takes level 0 through :attr:`level0`, then :meth:`finish` builds
    the pyramid, writes the metadata and renames the store into place."""

    def __init__(
        self,
        path: str | os.PathLike,
        shape: tuple[int, ...],
        dtype,
        *,
        rgb: bool,
        scale: tuple[float, ...],
        translate: tuple[float, ...],
        unit: str | None = None,
        provenance: dict | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.rgb = rgb
        self.levels = store_levels(shape, rgb=rgb)
        stored, chunks = self.levels[0]
        if len(stored) > 5:
            raise ValueError(f"OME-Zarr holds at most 5 axes; this image has {len(stored)}")
        scale, translate = list(scale), list(translate)
        if rgb:  # the channel axis sits before y, x
            scale.insert(len(scale) - 2, 1.0)
            translate.insert(len(translate) - 2, 0.0)
        self.scale, self.translate, self.unit = scale, translate, unit
        self.provenance = dict(provenance or {})
        self.provenance["layer"] = {**self.provenance.get("layer", {}), "rgb": rgb}
        self.temporary = new_store(self.path, overwrite=overwrite)
        try:
            with disk_full_is_one_line(self.path):
                self.group = zarr.open_group(str(self.temporary), mode="a", zarr_format=2)
                self.array = self.group.create_array(
                    "0", shape=stored, dtype=dtype, chunks=chunks, compressors=COMPRESSOR
                )
        except BaseException:
            self.abort()
            raise
        self.level0 = ChannelsFirst(self.array) if rgb else self.array

    def finish(self) -> Path:
        levels = self._pyramid()
        datasets = []
        for level in range(levels):
            factor = 2**level
            level_scale, level_translate = list(self.scale), list(self.translate)
            for axis in (-2, -1):  # pixel centres of a 2x2 mean sit between the originals
                level_scale[axis] = self.scale[axis] * factor
                level_translate[axis] = self.translate[axis] + (factor - 1) / 2 * self.scale[axis]
            datasets.append(
                {
                    "path": str(level),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": level_scale},
                        {"type": "translation", "translation": level_translate},
                    ],
                }
            )
        self.group.attrs["multiscales"] = [
            {
                "version": NGFF_VERSION,
                "name": self.path.stem,
                "axes": _axes(self.array.ndim, self.unit),
                "datasets": datasets,
                "type": "mean",
            }
        ]
        self.group.attrs[PROVENANCE_KEY] = self.provenance
        return replace_store(self.temporary, self.path, overwrite=self.overwrite)

    def abort(self) -> None:
        """Remove the unfinished store (after an error, Ctrl-C or SIGTERM), once no write into
        it is in flight: a write the caller stopped waiting for still runs on zarr's IO thread
        and would recreate the folders after they were removed."""
        _zarr_writes_finished()
        shutil.rmtree(self.temporary, ignore_errors=True)

    def _pyramid(self) -> int:
        """The 2x mean levels of :func:`store_levels`; dask keeps memory to a few chunks."""
        previous = da.from_zarr(self.array)
        for level, (shape, chunks) in enumerate(self.levels[1:], 1):
            axes = {previous.ndim - 2: 2, previous.ndim - 1: 2}
            even = previous[..., : shape[-2] * 2, : shape[-1] * 2]
            mean = da.coarsen(np.mean, even.astype(np.float32), axes)
            if np.issubdtype(self.array.dtype, np.integer):
                mean = mean.round()
            mean = mean.astype(self.array.dtype)
            target = self.group.create_array(
                str(level),
                shape=shape,
                dtype=self.array.dtype,
                chunks=chunks,
                compressors=COMPRESSOR,
            )
            with dask_threads():
                da.store(mean.rechunk(target.chunks), target, lock=False)
            previous = da.from_zarr(target)
        return len(self.levels)


def _zarr_writes_finished() -> None:
    """Wait for whatever runs on zarr's IO event loop (zarr 3 does every read and write there;
    the calling thread only waits for it, and an exception raised in that thread by a signal
    ends the wait, not the write)."""
    from zarr.core.sync import sync

    async def the_others() -> None:
        current = asyncio.current_task()
        running = [task for task in asyncio.all_tasks() if task is not current]
        await asyncio.gather(*running, return_exceptions=True)

    sync(the_others())


@contextlib.contextmanager
def dask_threads() -> Iterator[None]:
    """dask's threaded scheduler on a pool of its own: when the computation fails or is
    interrupted (Ctrl-C, SIGTERM), the blocks already running finish before the caller goes on
    (dask's shared pool runs them on, and they would write into a store being removed)."""
    from dask.system import CPU_COUNT

    with joined_pool(CPU_COUNT) as pool, dask.config.set(scheduler="threads", pool=pool):
        yield


def stores_read_by(data) -> set[Path]:
    """The zarr folders a lazily read array (dask, zarr, a list of pyramid levels) reads from,
    so a new result is never written over a store that an open image still reads."""
    arrays = list(data) if isinstance(data, list | tuple) else [data]
    found = set()
    for array in arrays:
        graph = getattr(array, "dask", None)
        nodes = graph.values() if graph is not None else [array]
        for node in nodes:
            node = node.array if isinstance(node, CheckedReads) else node
            root = getattr(getattr(node, "store", None), "root", None)
            if isinstance(node, zarr.Array) and root is not None:
                found.add(Path(root).resolve())
    return found
