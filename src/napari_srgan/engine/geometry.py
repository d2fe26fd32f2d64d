"""Where an upscaled image sits in world coordinates so that it overlays its input exactly.

Input pixel ``i`` covers ``[i - 0.5, i + 0.5]`` (times scale, plus translate). Its 4x4 output
pixels have centres at ``i - 0.375, i - 0.125, i + 0.125, i + 0.375``: output pixel ``j`` of the
upscaled axis sits at ``translate - 0.375 * scale + j * scale / 4``.
"""

from __future__ import annotations

from collections.abc import Sequence

from napari_srgan.models.srresnet import SCALE


def upscaled_placement(
    scale: Sequence[float], translate: Sequence[float], spatial_axes: Sequence[int]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(scale, translate)`` of the upscaled data, changed only on ``spatial_axes``."""
    new_scale, new_translate = list(scale), list(translate)
    for axis in spatial_axes:
        new_scale[axis] = scale[axis] / SCALE
        new_translate[axis] = translate[axis] - (0.5 - 0.5 / SCALE) * scale[axis]
    return tuple(new_scale), tuple(new_translate)
