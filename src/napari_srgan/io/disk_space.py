"""Refuse, before any work, an output the disk cannot hold: a long upscale of a huge image
should not run for hours and then fail with "no space left on device".

Uncompressed TIFF needs an exact number of bytes. Compressed outputs (zarr chunks, PNG, JPEG)
cannot be known before the pixels exist, so their size is estimated at the compression that a
stand-in of the result (a few input patches upscaled bicubically, which compress a little
better than a network's sharper output) gets with the output's own codec: the check errs
towards starting a job, and refuses only one that its estimate says cannot fit.

Some file systems report their free space wrongly (network shares, FUSE mounts, quotas, thin
volumes), so the check can be skipped (the CLI's ``--skip-space-check``, or
:data:`SKIP_SPACE_CHECK_ENV` for napari); a disk that then fills up still fails in one line,
leaving no partial output and any earlier output as it was (the writers are atomic).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from shutil import disk_usage

import imageio.v3 as iio
import numpy as np

from napari_srgan.io.atomic_files import DiskFullError
from napari_srgan.io.images import TIFF_SUFFIXES
from napari_srgan.io.zarr_files import COMPRESSOR, is_zarr, store_levels
from napari_srgan.messages import shown

#: TIFF beyond its pixels: header and OME-XML, and per page an IFD with its tags (a BigTIFF
#: IFD is about 300 bytes) and the provenance JSON on the first.
TIFF_MARGIN, TIFF_PAGE_MARGIN = 1 << 20, 1 << 10
#: A zarr store's metadata files; per chunk file Blosc's header and the file system's last,
#: partly used block.
STORE_MARGIN, CHUNK_MARGIN = 64 << 10, 16 + 4096
#: Zeros padding an edge chunk to the full chunk shape compress at least 4x better than the
#: pixels beside them (measured: 4.5x beside noise, which does not compress).
PADDING_SHARE = 1 / 4
#: Set to 1 to write without checking the free space (napari's widget has no option for it).
SKIP_SPACE_CHECK_ENV = "NAPARI_SRGAN_SKIP_SPACE_CHECK"


class NotEnoughSpaceError(DiskFullError):
    """The output will not fit on its disk (found before any work)."""


def output_bytes(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype,
    *,
    rgb: bool,
    sample: Sequence[np.ndarray] = (),
) -> int:
    """Bytes the result of ``shape`` (napari layout: ``(..., y, x[, colour])``) takes when
    written to ``path``: exact for TIFF; for a zarr store (its pyramid included), PNG or JPEG,
    at the compression ``sample`` (patches like the result) gets with that format's codec (none
    without a sample)."""
    path = Path(path)
    itemsize = np.dtype(dtype).itemsize
    pixels = math.prod(shape) * itemsize
    if path.suffix.lower() in TIFF_SUFFIXES:
        pages = math.prod(shape[: -3 if rgb else -2])
        return pixels + TIFF_MARGIN + pages * TIFF_PAGE_MARGIN
    if is_zarr(path):
        stored = [np.moveaxis(patch, -1, 0) for patch in sample] if rgb else sample
        fraction = compressed_fraction(stored, lambda patch: len(COMPRESSOR.encode(patch)))
        total = STORE_MARGIN
        for level_shape, chunks in store_levels(shape, rgb=rgb):
            count = math.prod(
                -(-size // chunk) for size, chunk in zip(level_shape, chunks, strict=True)
            )
            data = math.prod(level_shape) * itemsize
            padding = count * math.prod(chunks) * itemsize - data
            total += math.ceil(data * fraction + padding * fraction * PADDING_SHARE)
            total += count * CHUNK_MARGIN
        return total
    suffix = path.suffix.lower()
    fraction = compressed_fraction(sample, lambda patch: len(_encoded(patch, suffix)))
    return math.ceil(pixels * fraction) + STORE_MARGIN


def _encoded(patch: np.ndarray, suffix: str) -> bytes:
    return iio.imwrite("<bytes>", patch, extension=suffix)


def compressed_fraction(sample: Sequence[np.ndarray], size) -> float:
    """Compressed bytes per raw byte of ``sample`` (``size``: one patch's compressed bytes);
    1 without a sample."""
    raw = sum(patch.nbytes for patch in sample)
    if raw == 0:
        return 1.0
    return min(1.0, sum(size(np.ascontiguousarray(patch)) for patch in sample) / raw)


def space_check_skipped() -> bool:
    """Whether :data:`SKIP_SPACE_CHECK_ENV` asks to write without checking the free space."""
    return os.environ.get(SKIP_SPACE_CHECK_ENV, "").strip() not in ("", "0")


def check_output_space(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype,
    *,
    rgb: bool,
    sample: Sequence[np.ndarray] = (),
) -> None:
    """Raise :class:`NotEnoughSpaceError` unless the result (see :func:`output_bytes`) fits in
    the free space where ``path`` (and its temporary file or store, written beside it) goes.
    An output it replaces stays until the new one is complete, so its space is not free."""
    path = Path(path)
    needed = output_bytes(path, shape, dtype, rgb=rgb, sample=sample)
    directory = path.absolute().parent
    try:
        usage = disk_usage(directory)
    except OSError:  # a missing or unreadable folder: the writer says so in its own words
        return
    if usage.total == 0:  # some network and FUSE file systems do not report sizes
        return
    if needed > usage.free:
        about = "about" if path.suffix.lower() in TIFF_SUFFIXES else "an estimated"
        raise NotEnoughSpaceError(
            f"{shown(path)} needs {about} {human_bytes(needed)} but only {human_bytes(usage.free)} "
            f"is free on {mount_point(directory)}"
        )


def mount_point(directory: Path) -> Path:
    """The mount point of the file system that holds ``directory``."""
    directory = directory.resolve()
    while not os.path.ismount(directory) and directory != directory.parent:
        directory = directory.parent
    return directory


def human_bytes(size: int) -> str:
    """``12.3 GiB``, ``512.0 MiB``... (binary units, as ``df -h`` counts)."""
    if size < 1024:
        return f"{size} bytes"
    exponent = min(int(math.log(size, 1024)), 4)
    return f"{size / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB', 'TiB')[exponent - 1]}"
