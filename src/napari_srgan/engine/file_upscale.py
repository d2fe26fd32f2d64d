"""Upscale files: in memory for ordinary images, streamed tile by tile (or on a dask scheduler)
into OME-Zarr for images larger than memory. Used by the CLI and the widget's zarr output."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

from napari_srgan.engine.geometry import upscaled_placement
from napari_srgan.engine.lazy import upscale_lazy
from napari_srgan.engine.provenance import provenance
from napari_srgan.engine.schedulers import (
    SCHEDULERS,
    dask_scheduler,
    parse_scheduler,
    probe_scheduler,
)
from napari_srgan.engine.tiling import check_tile_size
from napari_srgan.engine.upscale import ImageLayout, check_image, upscale
from napari_srgan.io.atomic_files import (
    OutputExistsError,
    check_name_length,
    check_writable,
    disk_full_is_one_line,
    is_own_store,
    refuse_existing,
    refuse_same_file,
)
from napari_srgan.io.disk_space import check_output_space, space_check_skipped
from napari_srgan.io.images import (
    PLAIN_SUFFIXES,
    TIFF_SUFFIXES,
    ImageFile,
    check_fits_in_memory,
    check_output_format,
    guess_rgb,
    pillow_quiet,
    read_image,
    tiff_metadata,
    write_image,
)
from napari_srgan.io.zarr_files import CHUNK, OmeZarrWriter, is_zarr, open_lazy
from napari_srgan.messages import shown
from napari_srgan.models.interface import SRModel

#: A grid of SAMPLE_GRID x SAMPLE_GRID input patches, upscaled to one zarr chunk each, stands in
#: for the result when its compressed size is estimated.
SAMPLE_GRID = 3

#: What a folder contributes to a batch: image files (and OME-Zarr stores, by their suffix).
INPUT_SUFFIXES = (*TIFF_SUFFIXES, *PLAIN_SUFFIXES, ".webp", ".zarr")


@dataclass(frozen=True)
class UpscaleSettings:
    #: Kept tile size in input pixels (None: from the memory budget).
    tile: int | None = None
    batch_size: int = 1
    device: str = "auto"
    precision: str = "fp32"
    #: Overlap tiles by the theoretical receptive field instead of the measured halo.
    exact: bool = False
    #: Bytes for activations and tile buffers (None: the device's default budget).
    memory_limit: int | None = None
    #: None streams tiles in this process; "threads", "processes", "synchronous" or a
    #: dask.distributed scheduler address ("tcp://host:8786") computes blocks with dask.
    scheduler: str | None = None
    #: Average the 8 flips and rotations (self-ensemble): a little sharper, 8x the time.
    ensemble: bool = False
    #: Write without checking the free space first (a disk that reports it wrongly).
    skip_space_check: bool = False

    def engine_options(self) -> dict:
        """Keyword arguments for :func:`napari_srgan.engine.upscale.upscale`."""
        return {
            "tile": self.tile,
            "batch_size": self.batch_size,
            "device": self.device,
            "precision": self.precision,
            "ensemble": self.ensemble,
            "exact": self.exact,
            "memory_limit": self.memory_limit,
        }


def open_input(path: Path, stream: bool, scale: int = 4) -> ImageFile:
    """Zarr inputs always open lazily; TIFFs do when the output is streamed (big files). An
    input read whole must fit in memory, with its ``scale``-times larger result unless that
    is streamed (checked from the file's header before reading)."""
    if is_zarr(path) or (stream and path.suffix.lower() in TIFF_SUFFIXES):
        image = open_lazy(path)
        if not stream:  # a store read whole: a huge one failed only after the work began
            shape = tuple(image.data.shape)
            size = math.prod(shape) * np.dtype(image.data.dtype).itemsize
            check_fits_in_memory(path, 1 + scale**2, declared=(shape, size))
        return image
    return read_image(path, memory_factor=1 if stream else 1 + scale**2)


def folder_inputs(folder: Path) -> list[Path]:
    """The images and OME-Zarr stores directly inside ``folder``, sorted by name."""
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in INPUT_SUFFIXES)
    if not found:
        raise ValueError(f"no images in {shown(folder)} (looked for {', '.join(INPUT_SUFFIXES)})")
    return found


def input_stem(source: Path) -> str:
    """A file's name without its format suffix (``cells.ome.tif`` -> ``cells``)."""
    stem = source.stem
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") else stem


def batch_output(source: Path, folder: Path, scale: int, suffix: str) -> Path:
    """``<stem>_x<scale><suffix>`` in ``folder``: results sort beside their inputs and never
    replace them, even when written into the input folder."""
    return folder / f"{input_stem(source)}_x{scale}{suffix}"


def input_is_rgb(path: Path) -> bool:
    """Whether an input's last axis is colour, from its header where the format allows (to pick
    the model before reading the pixels)."""
    if is_zarr(path):
        return open_lazy(path).rgb
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {shown(path)}")
    if path.suffix.lower() in TIFF_SUFFIXES:
        return tiff_metadata(path).rgb
    try:
        with pillow_quiet():
            return guess_rgb(tuple(iio.improps(path).shape))
    except Exception as error:
        raise ValueError(f"cannot read {shown(path)} as an image: {error}") from None


def check_output(path: Path, *, overwrite: bool = False) -> None:
    """A known format in a writable folder, not replacing anything unless ``overwrite``."""
    if not (is_zarr(path) or path.suffix.lower() in TIFF_SUFFIXES + PLAIN_SUFFIXES):
        raise ValueError(f"unknown output format {path.suffix!r}; use .tif, .png, .jpg or .zarr")
    check_name_length(path)
    refuse_existing(path, overwrite=overwrite)
    if is_zarr(path) and os.path.lexists(path) and not is_own_store(path):  # a file: found now,
        # not when the store is created, after the work began
        raise OutputExistsError(
            f"{shown(path)} is not a store napari-srgan wrote; not replacing it"
        )
    check_writable(path.parent)


def result_sample(data, layout: ImageLayout, factor: int) -> list[np.ndarray]:
    """Patches like the result, for estimating how well it compresses: a grid over the middle
    plane, each upscaled bicubically in the result's type to the size of a zarr chunk (the
    codec finds more repeats in a small buffer). They are smoother than a network's output,
    so they compress a little better and the estimate errs towards starting a job."""
    plane = tuple(size // 2 for size in layout.leading_shape)
    side = -(-CHUNK // factor)
    side_y, side_x = min(side, layout.height), min(side, layout.width)
    dtype = np.dtype(data.dtype)
    sample = []
    for row in range(SAMPLE_GRID):
        for column in range(SAMPLE_GRID):
            y = (layout.height - side_y) * row // (SAMPLE_GRID - 1)
            x = (layout.width - side_x) * column // (SAMPLE_GRID - 1)
            patch = np.asarray(data[(*plane, slice(y, y + side_y), slice(x, x + side_x))])
            pixels = torch.from_numpy(patch.astype(np.float32))
            pixels = pixels.permute(2, 0, 1) if layout.rgb else pixels[None]
            upscaled = F.interpolate(pixels[None], scale_factor=factor, mode="bicubic")[0]
            upscaled = upscaled.permute(1, 2, 0) if layout.rgb else upscaled[0]
            result = upscaled.numpy()
            if dtype.kind in "iu":
                limits = np.iinfo(dtype)
                result = np.clip(np.rint(result), limits.min, limits.max)
            sample.append(result.astype(dtype))
    return sample


def check_space(
    output: Path, data, layout: ImageLayout, factor: int, *, skip: bool = False
) -> None:
    """Refuse, before any work, a result that will not fit on the output's disk (a TIFF's size
    is exact: only compressed outputs read a sample of the input), unless ``skip`` or
    :func:`space_check_skipped`: a disk that then fills up fails in one line, losing nothing."""
    if skip or space_check_skipped():
        return
    tiff = output.suffix.lower() in TIFF_SUFFIXES
    sample = [] if tiff else result_sample(data, layout, factor)
    check_output_space(
        output, layout.output_shape(factor), data.dtype, rgb=layout.rgb, sample=sample
    )


def upscale_to_zarr(
    data,
    model: SRModel,
    output: str | os.PathLike,
    *,
    layout: ImageLayout,
    scale: tuple[float, ...],
    translate: tuple[float, ...],
    unit: str | None,
    record: dict,
    settings: UpscaleSettings,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    before_work: Callable[[], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the upscaled result of ``data`` to an OME-Zarr store; ``scale`` / ``translate`` are the
    result's. Memory stays at a few tiles (or dask blocks) whatever the image size. An existing
    store (one this package wrote) is replaced only with ``overwrite``, atomically. A store that
    will not fit on its disk is refused before ``before_work`` and any work."""
    dtype = np.dtype(data.dtype)
    if settings.scheduler is not None:
        parse_scheduler(settings.scheduler)
    check_space(Path(output), data, layout, model.scale, skip=settings.skip_space_check)
    if before_work is not None:
        before_work()
    writer = OmeZarrWriter(
        output,
        layout.output_shape(model.scale),
        dtype,
        rgb=layout.rgb,
        scale=scale,
        translate=translate,
        unit=unit,
        provenance=record,
        overwrite=overwrite,
    )
    try:
        with disk_full_is_one_line(output):
            if settings.scheduler is None:
                upscale(
                    data,
                    model,
                    rgb=layout.rgb,
                    out=writer.level0,
                    progress=progress,
                    should_stop=should_stop,
                    **settings.engine_options(),
                )
            else:
                if model.path is None:
                    raise ValueError("computing with dask needs a model saved to a file")
                result = upscale_lazy(
                    data,
                    model.path,
                    rgb=layout.rgb,
                    tile=settings.tile,
                    device=settings.device,
                    ensemble=settings.ensemble,
                    exact=settings.exact,
                    memory_limit=settings.memory_limit,
                )
                if layout.rgb:
                    result = da.moveaxis(result, -1, -3)
                with dask_scheduler(settings.scheduler):
                    da.store(result.rechunk(writer.array.chunks), writer.array, lock=False)
            return writer.finish()
    except BaseException:
        writer.abort()
        raise


@dataclass(frozen=True)
class FileResult:
    output: Path
    input_shape: tuple[int, int]
    output_shape: tuple[int, int]


def upscale_file(
    source: str | os.PathLike,
    output: str | os.PathLike,
    model: SRModel,
    *,
    rgb: bool | None = None,
    settings: UpscaleSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
    before_work: Callable[[], None] | None = None,
    overwrite: bool = False,
) -> FileResult:
    """Read ``source``, upscale it and write ``output`` with pixel size and provenance.

    Everything is validated before any work (``before_work`` runs then, e.g. to print
    warnings), so bad input changes nothing on disk. An existing ``output`` is replaced only
    with ``overwrite``; the input itself never is.
    """
    source, output = Path(source), Path(output)
    settings = settings or UpscaleSettings()
    refuse_same_file(source, output)
    check_output(output, overwrite=overwrite)
    if settings.scheduler is not None and not is_zarr(output):
        raise ValueError("computing with a dask scheduler writes to a .zarr output")
    image = open_input(source, stream=is_zarr(output), scale=model.scale)
    layout = check_image(image.data, image.rgb if rgb is None else rgb)
    if not is_zarr(output):
        check_output_format(output, image.data.dtype, rgb=layout.rgb, colours=layout.shape[-1])
    if settings.tile is not None:
        check_tile_size(settings.tile)
    if settings.scheduler is not None and settings.scheduler not in SCHEDULERS:
        probe_scheduler(settings.scheduler)
    spatial = [len(image.scale) - 2, len(image.scale) - 1]
    try:
        scale, translate = upscaled_placement(
            image.scale, image.translate, spatial, factor=model.scale
        )
    except ValueError as error:
        raise ValueError(f"{shown(source)}: {error}") from None
    record = provenance(model, source=str(source))
    if is_zarr(output):
        upscale_to_zarr(
            image.data,
            model,
            output,
            layout=layout,
            scale=scale,
            translate=translate,
            unit=image.unit,
            record=record,
            settings=settings,
            progress=progress,
            before_work=before_work,
            overwrite=overwrite,
        )
    else:
        check_space(output, image.data, layout, model.scale, skip=settings.skip_space_check)
        if before_work is not None:
            before_work()
        result = upscale(
            np.asarray(image.data),
            model,
            rgb=layout.rgb,
            progress=progress,
            **settings.engine_options(),
        )
        write_image(
            output,
            result,
            rgb=layout.rgb,
            scale=scale,
            translate=translate,
            unit=image.unit,
            provenance=record,
            overwrite=overwrite,
        )
    return FileResult(
        output,
        (layout.height, layout.width),
        (layout.height * model.scale, layout.width * model.scale),
    )
