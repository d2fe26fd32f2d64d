"""Where an upscaled image sits in world coordinates so that it overlays its input exactly.

Input pixel ``i`` covers ``[i - 0.5, i + 0.5]`` (times scale, plus translate). Its ``s`` output
pixels per axis have centres at ``i - 0.5 + (k + 0.5) / s`` for ``k = 0 .. s-1`` (at 4x:
``i - 0.375, i - 0.125, i + 0.125, i + 0.375``), so output pixel ``j`` of the upscaled axis sits
at ``translate - (s - 1) / (2s) * scale + j * scale / s``.

A rotated or sheared image (napari's data-to-world map ``linear @ diag(scale) @ i + translate``)
keeps its rotation and shear; the shift of the first output pixel is then rotated and sheared
too, so it is applied to the translate through ``linear``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_srgan.io.images import is_placeable


def upscaled_placement(
    scale: Sequence[float],
    translate: Sequence[float],
    spatial_axes: Sequence[int],
    *,
    factor: int,
    linear: np.ndarray | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(scale, translate)`` of data upscaled ``factor`` times, changed only on
    ``spatial_axes``. ``linear`` is the image's rotation and shear (applied after its scale,
    before its translate), as an ``ndim x ndim`` matrix; None means neither."""
    if factor < 1:
        raise ValueError(f"the upscaling factor must be a positive integer, got {factor}")
    new_scale = [float(s) for s in scale]
    shift = np.zeros(len(new_scale))
    for axis in spatial_axes:
        new_scale[axis] = scale[axis] / factor
        shift[axis] = -(factor - 1) / (2 * factor) * scale[axis]
    if linear is not None:
        shift = np.asarray(linear, dtype=float) @ shift
    with np.errstate(over="ignore"):
        new_translate = tuple(float(t + d) for t, d in zip(translate, shift, strict=True))
    if not is_placeable(new_scale, new_translate):  # near float's limits: it cannot be placed
        raise ValueError(
            f"the result's pixel size or position is out of range (pixel size {list(scale)}, "
            f"position {list(translate)})"
        )
    return tuple(new_scale), new_translate
