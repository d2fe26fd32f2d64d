"""Split a plane into overlapping tiles whose trimmed outputs tile the whole output exactly.

``tile`` is the size of the part of each tile that is kept. Each axis is split into
``n = ceil(length / tile)`` parts of equal size (within one pixel), so no tile is a sliver; every
tile reads its part plus ``halo`` extra input pixels on each side that has a neighbour, and all
tiles of a batch read windows of one shape (windows at the image border are shifted inward
rather than cut), so they can be batched; one tile at a time, border windows are cut instead. Tiles never reach past the image: the network's own
zero padding at the border is the same as in a whole-image pass.

Models that need inputs of a multiple of ``size_multiple`` pixels (window attention) see the
plane padded at its bottom and right border by repeating the last row / column (the same for
every tile, and for a whole-image pass), windows of a multiple of that size starting at
multiples of it, and the padding is cropped from the output.

Models that are not exact when tiled (global pooling or attention: RCAN, HAT, SAN) cannot be
cut and stitched without visible steps at tile borders, so :class:`BlendedPlane` cross-fades
neighbouring tiles instead: across each border, a raised-cosine ramp ``ramp`` input pixels wide
takes one tile's output to its neighbour's. The ramps of the two sides of a border add up to 1,
so the weights are a partition of unity everywhere (image borders included) without a weight
map, and a single tile is the whole-image pass unchanged.

``run_tiles`` keeps the device busy: the next batch is read and the previous one written on
other threads while the current one is computed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from napari_srgan.threads import joined_pool


class Cancelled(Exception):
    """Raised when the caller's stop flag is set; nothing partial is returned."""


@dataclass(frozen=True)
class Span:
    """One tile along one axis: input ``[start, stop)`` is read, the outputs of input
    ``[keep_start, keep_stop)`` are written."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int

    def read(self) -> slice:
        return slice(self.start, self.stop)

    def kept(self, scale: int) -> tuple[slice, slice]:
        """(where the kept part lies in this tile's output, where it goes in the whole output)."""
        inner = slice((self.keep_start - self.start) * scale, (self.keep_stop - self.start) * scale)
        outer = slice(self.keep_start * scale, self.keep_stop * scale)
        return inner, outer


def check_tile_size(tile: int) -> None:
    """A tile must keep at least one pixel (any kept size works with any halo)."""
    if tile < 1:
        raise ValueError(f"the tile size must be at least 1 pixel, got {tile}")


def padded_length(length: int, multiple: int = 1) -> int:
    """``length`` rounded up to a multiple of ``multiple``."""
    return math.ceil(length / multiple) * multiple


def axis_spans(
    length: int, tile: int, halo: int, multiple: int = 1, *, uniform: bool = True
) -> list[Span]:
    """Balanced spans over ``[0, padded_length(length, multiple))``; their kept parts partition
    it. With ``uniform`` every span reads the same number of pixels (windows at the border are
    shifted inward: batchable); otherwise border windows are cut at the image (less work)."""
    check_tile_size(tile)
    total = padded_length(length, multiple)
    count = math.ceil(total / tile)
    if count == 1:
        return [Span(0, total, 0, total)]
    bounds = [round(i * total / count) for i in range(count + 1)]
    largest = max(b - a for a, b in itertools.pairwise(bounds))
    # Window starts are rounded down to a multiple, so the window needs `multiple - 1` more.
    read = min(total, padded_length(largest + 2 * halo + (multiple - 1), multiple))
    spans = []
    for keep_start, keep_stop in itertools.pairwise(bounds):
        start = max((keep_start - halo) // multiple * multiple, 0)
        if uniform:
            start = min(start, total - read)
            stop = start + read
        else:
            stop = min(padded_length(keep_stop + halo, multiple), total)
        spans.append(Span(start, stop, keep_start, keep_stop))
    return spans


def plane_tiles(
    height: int, width: int, tile: int, halo: int, multiple: int = 1, *, uniform: bool = True
) -> list[tuple[Span, Span]]:
    return [
        (y, x)
        for y in axis_spans(height, tile, halo, multiple, uniform=uniform)
        for x in axis_spans(width, tile, halo, multiple, uniform=uniform)
    ]


def tile_work(
    height: int, width: int, tile: int, halo: int, multiple: int = 1, *, uniform: bool = True
) -> float:
    """Input pixels the network processes per image pixel (1.0: no overlap overhead)."""
    tiles = plane_tiles(height, width, tile, halo, multiple, uniform=uniform)
    read = sum((ys.stop - ys.start) * (xs.stop - xs.start) for ys, xs in tiles)
    return read / (height * width)


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for index in range(0, len(items), size):
        yield items[index : index + size]


def run_tiles(
    tiles: Sequence[tuple[Span, Span]],
    read: Callable[[slice, slice], np.ndarray],
    forward: Callable[[torch.Tensor], torch.Tensor],
    write: Callable[[Span, Span, np.ndarray], None],
    *,
    batch_size: int = 1,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Read, run and write every tile of one plane.

    ``read(ys, xs)`` returns a ``(h, w, c)`` tile (any dtype ``forward`` accepts), ``forward``
    maps a ``(b, c, h, w)`` batch on ``device`` to ``(b, c, scale*h, scale*w)``, ``write(ys, xs,
    output)`` stores the ``(h, w, c)`` output of the tile read at ``ys, xs`` (tiles arrive in
    row-major order). ``on_batch(n)`` reports ``n`` finished tiles.
    Reading the next batch and writing the previous one run on two helper threads while the
    current batch is computed; host buffers are pinned on CUDA so copies do not block.
    """
    groups = list(batched(tiles, batch_size))
    pin = device.type == "cuda"

    def load(group: Sequence[tuple[Span, Span]]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack([read(ys.read(), xs.read()) for ys, xs in group]))
        return batch.pin_memory() if pin else batch

    def store(group: Sequence[tuple[Span, Span]], outputs: torch.Tensor, ready) -> None:
        if ready is not None:
            ready.synchronize()
        blocks = outputs.numpy()
        for (ys, xs), output in zip(group, blocks, strict=True):
            write(ys, xs, output)
        if on_batch is not None:
            on_batch(len(group))

    with joined_pool(1) as reader, joined_pool(1) as writer:  # both ended when it stops
        upcoming: Future = reader.submit(load, groups[0])
        written: Future | None = None
        for index, group in enumerate(groups):
            if should_stop is not None and should_stop():
                raise Cancelled("stopped by the user")
            batch = upcoming.result()
            if index + 1 < len(groups):
                upcoming = reader.submit(load, groups[index + 1])
            inputs = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)
            with torch.inference_mode():
                outputs = forward(inputs).permute(0, 2, 3, 1)
                ready = None
                if pin:
                    host = torch.empty(outputs.shape, dtype=outputs.dtype, pin_memory=True)
                    host.copy_(outputs, non_blocking=True)
                    ready = torch.cuda.Event()
                    ready.record()
                else:
                    host = outputs.contiguous()
            if written is not None:
                written.result()
            written = writer.submit(store, group, host, ready)
        if written is not None:
            written.result()


def crop_kept(
    write: Callable[[slice, slice, np.ndarray], None], scale: int
) -> Callable[[Span, Span, np.ndarray], None]:
    """The exact path: each tile's kept part, written where it belongs (crop and stitch)."""

    def place(ys: Span, xs: Span, output: np.ndarray) -> None:
        inner_y, outer_y = ys.kept(scale)
        inner_x, outer_x = xs.kept(scale)
        write(outer_y, outer_x, output[inner_y, inner_x])

    return place


@dataclass(frozen=True)
class AxisBlend:
    """Where one span's output counts along one axis: output ``[start, stop)`` (in the whole
    output), with ``weights`` of that length."""

    start: int
    stop: int
    weights: np.ndarray


def axis_blends(spans: Sequence[Span], scale: int, ramp: int) -> list[AxisBlend]:
    """Weights of each span along an axis: 1 inside, a raised-cosine cross-fade ``ramp`` input
    pixels wide centred on every border with a neighbour (never wider than the narrowest kept
    part, so the two ramps of one span do not meet). The weights of all spans sum to 1."""
    width = max(1, min(ramp, *(span.keep_stop - span.keep_start for span in spans))) * scale
    rise = (0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)).astype(np.float32)
    blends = []
    for index, span in enumerate(spans):
        start, stop = span.keep_start * scale, span.keep_stop * scale
        if index > 0:
            start -= width // 2
        if index < len(spans) - 1:
            stop += width - width // 2
        weights = np.ones(stop - start, np.float32)
        if index > 0:
            weights[:width] = rise
        if index < len(spans) - 1:
            weights[-width:] = 1 - rise
        blends.append(AxisBlend(start, stop, weights))
    return blends


class BlendedPlane:
    """Accumulates cross-faded tile outputs of one plane and hands finished rows to ``flush``.

    Tiles arrive row by row, so only one row of tiles (plus its ramp) is held: a float32 band of
    ``(tile + ramp) * scale`` output rows by the plane's output width, the price of blending
    over crop-and-stitch. ``flush(row_start, row_stop, rows)`` receives each block of finished
    rows (float32, as the network gave them) once; :meth:`finish` flushes the last ones.
    """

    def __init__(
        self,
        y_spans: Sequence[Span],
        x_spans: Sequence[Span],
        *,
        scale: int,
        ramp: int,
        channels: int,
        flush: Callable[[int, int, np.ndarray], None],
    ):
        self.rows = dict(zip(y_spans, axis_blends(y_spans, scale, ramp), strict=True))
        self.columns = dict(zip(x_spans, axis_blends(x_spans, scale, ramp), strict=True))
        self.scale, self.channels, self.flush = scale, channels, flush
        self.width = x_spans[-1].keep_stop * scale
        self.current: Span | None = None
        self.band_start = 0
        self.band = np.zeros((0, self.width, channels), np.float32)

    def __call__(self, ys: Span, xs: Span, output: np.ndarray) -> None:
        rows, columns = self.rows[ys], self.columns[xs]
        if ys != self.current:  # the first tile of a new row: rows above its ramp are final
            done = rows.start - self.band_start
            if done:
                self.flush(self.band_start, rows.start, self.band[:done])
            band = np.zeros((rows.stop - rows.start, self.width, self.channels), np.float32)
            band[: len(self.band) - done] = self.band[done:]
            self.current, self.band_start, self.band = ys, rows.start, band
        top, left = ys.start * self.scale, xs.start * self.scale
        block = output[
            rows.start - top : rows.stop - top, columns.start - left : columns.stop - left
        ]
        weights = rows.weights[:, None, None] * columns.weights[None, :, None]
        self.band[:, columns.start : columns.stop] += block * weights

    def finish(self) -> None:
        if len(self.band):
            self.flush(self.band_start, self.band_start + len(self.band), self.band)
        self.band = self.band[:0]
