"""Geometric self-ensemble (Lim et al. 2017, "EDSR+"): the mean of the 8 flips and rotations.

It wraps a tile batch's forward function, so it runs inside the exact tiled engine: each tile is
transformed, upscaled, transformed back, and the 8 results are averaged. The tiles' overlaps
are symmetric, so every kept output pixel sees the same context as in a whole-image pass of the
transformed image: the result equals the mean of the 8 transformed whole-image passes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: (quarter turns, horizontal flip): the 8 symmetries of the square (the dihedral group D4).
TRANSFORMS: tuple[tuple[int, bool], ...] = tuple(
    (turns, flip) for turns in range(4) for flip in (False, True)
)


def transform(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """Flip the last axis (if ``flip``), then turn the last two axes by ``turns`` quarters."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, turns, dims=(-2, -1))


def invert(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """Undo :func:`transform`."""
    x = torch.rot90(x, -turns, dims=(-2, -1))
    return x.flip(-1) if flip else x


def self_ensemble(
    forward: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward`` averaged over the 8 symmetries; one pass at a time, so peak memory is that
    of a single pass (the cost is 8 passes)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        total = None
        for turns, flip in TRANSFORMS:
            result = invert(forward(transform(x, turns, flip)).float(), turns, flip)
            total = result if total is None else total + result
        return total / len(TRANSFORMS)

    return run
