"""A lazy upscaled result as a dask array: computed block by block, on any dask scheduler.

Each block is read with ``margin`` extra input pixels on every side that has a neighbour (dask's
``overlap`` with ``boundary="none"``), upscaled by the in-memory engine with one intensity range
for the whole array, and trimmed back. Since the margin covers the generator's receptive field,
the result equals the in-memory engine's, without seams. Models that are not exact when tiled
have their tiles blended by the engine, which dask blocks cannot do across their borders
(overlap-add between blocks is not cheap): such a model gets one block per plane where the
plane's output fits the memory budget (then the result is the in-memory engine's), and a warning
that block borders are stitched where it does not. Workers load the model from its file
(once per process), so nothing big travels through the scheduler.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import dask.array as da
import numpy as np
import torch

from napari_srgan.engine.devices import memory_budget
from napari_srgan.engine.upscale import (
    blending_notice,
    blends_tiles,
    check_image,
    colour_range,
    tiling_halo,
    upscale,
)
from napari_srgan.models.interface import SRModel
from napari_srgan.models.normalization import IntensityRange
from napari_srgan.models.registry import load_model

log = logging.getLogger(__name__)

#: Image-axis chunk size of the input blocks when the input's own chunks are unsuitable.
BLOCK = 512


@functools.lru_cache(maxsize=4)
def _worker_model(path: str, device: str) -> SRModel:
    return load_model(path, device)


def _upscale_block(
    block: np.ndarray,
    *,
    model_path: str,
    rgb: bool,
    spatial: tuple[int, int],
    margin: int,
    scale: int,
    intensity: IntensityRange,
    tile: int | None,
    device: str,
    ensemble: bool,
    exact: bool,
    memory_limit: int | None,
    block_info=None,
) -> np.ndarray:
    model = _worker_model(model_path, device)
    result = upscale(
        block,
        model,
        rgb=rgb,
        tile=tile,
        device=device,
        intensity=intensity,
        exact=exact,
        memory_limit=memory_limit,
        ensemble=ensemble,
    )
    location, counts = block_info[None]["chunk-location"], block_info[None]["num-chunks"]
    trim = [slice(None)] * result.ndim
    for axis in spatial:
        start = margin * scale if location[axis] > 0 else 0
        stop = -margin * scale if location[axis] < counts[axis] - 1 else None
        trim[axis] = slice(start, stop)
    return result[tuple(trim)]


def upscale_lazy(
    data,
    model_path: str | os.PathLike,
    *,
    rgb: bool | None = None,
    intensity: IntensityRange | None = None,
    tile: int | None = None,
    device: str = "cpu",
    block: int = BLOCK,
    ensemble: bool = False,
    exact: bool = False,
    memory_limit: int | None = None,
) -> da.Array:
    """The upscaled result of ``data`` (numpy, zarr or dask) as a dask array of the same dtype.

    Leading axes are chunked one plane at a time, so a napari layer of this array computes a
    plane when the slider reaches it. Models that are not exact when tiled are computed a
    whole plane per block when its output (as float32) fits ``memory_limit`` (default: the CPU
    budget), else with a warning that block borders are stitched. ``device="auto"`` means the CPU here: several dask
    workers would otherwise contend for one GPU's memory; name ``"cuda"`` to use it.
    """
    model_path = str(Path(model_path))
    device = "cpu" if device == "auto" else device
    layout = check_image(data, rgb)
    model = _worker_model(model_path, "cpu")  # measures the halo once if the card lacks it
    card = model.card
    margin, scale = tiling_halo(model, exact), card.scale
    channels = layout.shape[-1] if layout.rgb else 1
    plane_bytes = layout.height * layout.width * scale**2 * channels * 4
    budget = memory_budget(torch.device("cpu")) if memory_limit is None else memory_limit
    whole_planes = blends_tiles(card, exact) and plane_bytes <= budget
    notice = blending_notice(card, exact, lazy=not whole_planes)
    if notice is not None:
        log.warning(notice)
    source = data if isinstance(data, da.Array) else da.from_array(data, chunks="auto")
    y_axis = source.ndim - (3 if layout.rgb else 2)
    spatial = (y_axis, y_axis + 1)
    chunks = {axis: 1 for axis in range(y_axis)}
    for axis in spatial:
        if whole_planes:
            chunks[axis] = -1
        elif min(source.chunks[axis]) < 2 * margin:  # overlap needs blocks wider than the margin
            chunks[axis] = block
    if layout.rgb:
        chunks[source.ndim - 1] = -1
    source = source.rechunk(chunks)
    if intensity is None:
        intensity = colour_range(source, layout, card.normalization)
    overlapped = da.overlap.overlap(
        source,
        depth={axis: margin for axis in spatial},
        boundary={axis: "none" for axis in spatial},
    )
    out_chunks = tuple(
        tuple(size * scale for size in sizes) if axis in spatial else sizes
        for axis, sizes in enumerate(source.chunks)
    )
    return overlapped.map_blocks(
        _upscale_block,
        model_path=model_path,
        rgb=layout.rgb,
        spatial=spatial,
        margin=margin,
        scale=scale,
        intensity=intensity,
        tile=tile,
        device=device,
        ensemble=ensemble,
        exact=exact,
        memory_limit=memory_limit,
        chunks=out_chunks,
        dtype=intensity.dtype,
        meta=np.empty((0,) * source.ndim, dtype=intensity.dtype),
    )
