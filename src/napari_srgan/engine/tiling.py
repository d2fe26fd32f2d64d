"""Split a plane into overlapping tiles whose trimmed outputs tile the whole output exactly.

Each tile reads ``margin`` extra input pixels on every side that is inside the image, where
``margin`` is at least the generator's receptive radius; those pixels' outputs are discarded. The
pixels that are kept therefore saw exactly what they would see in a whole-image pass, so the tiled
result equals the untiled one up to float rounding. Tiles never extend past the image (the network
zero-pads the image border itself), and the last tile on each axis is shifted inward so all tiles
have one shape and can be batched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


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


def check_tile_size(tile: int, margin: int) -> None:
    """A tile must keep at least one pixel after ``margin`` is trimmed from both sides."""
    if tile < 2 * margin + 1:
        raise ValueError(
            f"tile size {tile} is too small for the overlap: this model needs {margin} pixels of "
            f"overlap on each side, so tiles must be at least {2 * margin + 1} pixels"
        )


def axis_spans(length: int, tile: int, margin: int) -> list[Span]:
    """Spans covering ``[0, length)``; their kept parts partition it."""
    check_tile_size(tile, margin)
    if tile >= length:
        return [Span(0, length, 0, length)]
    step = tile - 2 * margin
    starts = [*range(0, length - tile, step), length - tile]
    spans: list[Span] = []
    kept_until = 0
    for start in starts:
        stop = start + tile
        keep_stop = length if stop == length else stop - margin
        spans.append(Span(start, stop, kept_until, keep_stop))
        kept_until = keep_stop
    return spans


def plane_tiles(height: int, width: int, tile: int, margin: int) -> list[tuple[Span, Span]]:
    return [
        (y, x) for y in axis_spans(height, tile, margin) for x in axis_spans(width, tile, margin)
    ]


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for index in range(0, len(items), size):
        yield items[index : index + size]


def run_tiles(
    tiles: Sequence[tuple[Span, Span]],
    read: Callable[[slice, slice], np.ndarray],
    forward: Callable[[torch.Tensor], torch.Tensor],
    write: Callable[[slice, slice, np.ndarray], None],
    *,
    scale: int,
    batch_size: int = 1,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Read, run and write every tile of one plane.

    ``read(ys, xs)`` returns a float32 ``(h, w, c)`` tile, ``forward`` maps a ``(b, c, h, w)``
    batch to ``(b, c, scale*h, scale*w)``, ``write(ys, xs, tile)`` stores a ``(h, w, c)`` output
    block. ``on_batch(n)`` reports ``n`` finished tiles.
    """
    for group in batched(tiles, batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled("stopped by the user")
        batch = np.stack([read(ys.read(), xs.read()) for ys, xs in group])
        inputs = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)
        with torch.inference_mode():
            outputs = forward(inputs).float().permute(0, 2, 3, 1).cpu().numpy()
        for (ys, xs), output in zip(group, outputs, strict=True):
            inner_y, outer_y = ys.kept(scale)
            inner_x, outer_x = xs.kept(scale)
            write(outer_y, outer_x, output[inner_y, inner_x])
        if on_batch is not None:
            on_batch(len(group))
