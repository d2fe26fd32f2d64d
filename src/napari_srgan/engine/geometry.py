"""Where an upscaled image sits in world coordinates so that it overlays its input exactly.

Input pixel ``i`` covers ``[i - 0.5, i + 0.5]`` (times scale, plus translate). Its ``s`` output
pixels per axis have centres at ``i - 0.5 + (k + 0.5) / s`` for ``k = 0 .. s-1`` (at 4x:
``i - 0.375, i - 0.125, i + 0.125, i + 0.375``), so output pixel ``j`` of the upscaled axis sits
at ``translate - (s - 1) / (2s) * scale + j * scale / s``.
"""

from __future__ import annotations

from collections.abc import Sequence


def upscaled_placement(
    scale: Sequence[float],
    translate: Sequence[float],
    spatial_axes: Sequence[int],
    *,
    factor: int,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(scale, translate)`` of data upscaled ``factor`` times, changed only on
    ``spatial_axes``."""
    if factor < 1:
        raise ValueError(f"the upscaling factor must be a positive integer, got {factor}")
    new_scale, new_translate = list(scale), list(translate)
    for axis in spatial_axes:
        new_scale[axis] = scale[axis] / factor
        new_translate[axis] = translate[axis] - (factor - 1) / (2 * factor) * scale[axis]
    return tuple(new_scale), tuple(new_translate)
