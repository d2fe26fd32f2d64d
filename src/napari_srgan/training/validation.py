"""Fixed validation pairs and their SR quality next to bicubic's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from napari_srgan.models.srresnet import SCALE
from napari_srgan.training.degradations import (
    Degradation,
    bicubic_downscale,
    bicubic_upscale,
    modcrop,
)
from napari_srgan.training.metrics import sr_quality


@dataclass(frozen=True)
class ValidationImage:
    """An HR image and the LR made from it once, both ``(c, h, w)`` float32 on the unit scale."""

    hr: np.ndarray
    lr: np.ndarray
    name: str = "validation"


#: Names of the preview's panels, a 2x2 grid row by row (see :func:`preview_panels`).
PREVIEW_PANELS = ("LR", "bicubic", "model", "HR")
#: Pixels between two preview panels.
PREVIEW_GAP = 4


def textured_corner(hr_unit: np.ndarray, crop: int) -> tuple[int, int]:
    """The top-left corner of the ``crop``-sized window with the most detail (mean gradient
    magnitude), on a grid of a quarter crop: a preview of flat background says nothing."""
    grey = hr_unit.mean(axis=0)
    detail = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1]
    integral = np.pad(detail.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    size = min(crop, detail.shape[0]), min(crop, detail.shape[1])
    stride = max(1, crop // 4)
    best, corner = -1.0, (0, 0)
    for top in [*range(0, detail.shape[0] - size[0], stride), detail.shape[0] - size[0]]:
        for left in [*range(0, detail.shape[1] - size[1], stride), detail.shape[1] - size[1]]:
            bottom, right = top + size[0], left + size[1]
            total = (
                integral[bottom, right]
                - integral[top, right]
                - integral[bottom, left]
                + integral[top, left]
            )
            if total > best:
                best, corner = total, (top, left)
    return corner


def make_validation_image(
    hr_unit: np.ndarray,
    degradation: Degradation,
    *,
    name: str = "validation",
    crop: int | None = 256,
    seed: int = 0,
    scale: int = SCALE,
    paired_lr: np.ndarray | None = None,
    crop_at: str = "centre",
) -> ValidationImage:
    """Crop ``hr_unit`` (``(c, h, w)``) to at most ``crop`` pixels a side (a multiple of
    ``scale``) at its centre or (``crop_at="texture"``) where it has the most detail, and
    degrade it with a fixed seed, so every validation sees the same LR. ``paired_lr``
    (``(c, h, w)``: on the HR grid, or 1/scale of its size) replaces the degradation when
    given."""
    _, height, width = hr_unit.shape
    top = left = 0
    if crop:
        if crop_at == "texture" and (height > crop or width > crop):
            top, left = (at // scale * scale for at in textured_corner(hr_unit, crop))
        else:
            top = max(0, (height - crop) // 2) // scale * scale
            left = max(0, (width - crop) // 2) // scale * scale
    if paired_lr is not None and paired_lr.shape != hr_unit.shape:  # LR at 1/scale
        small = crop // scale if crop else None
        lr = _crop(paired_lr, top // scale, left // scale, small, 1)
        hr_unit = _crop(hr_unit, top, left, crop, scale)[
            :, : lr.shape[1] * scale, : lr.shape[2] * scale
        ]
        return ValidationImage(hr_unit.astype(np.float32), lr.astype(np.float32), name)
    hr_unit = _crop(hr_unit, top, left, crop, scale)
    if paired_lr is not None:
        lr = torch.from_numpy(_crop(paired_lr, top, left, crop, scale))[None].double()
        lr = bicubic_downscale(lr, scale)[0].float().numpy()
        return ValidationImage(hr_unit.astype(np.float32), lr, name)
    generator = torch.Generator().manual_seed(seed)
    lr = degradation(torch.from_numpy(hr_unit)[None].double(), generator, scale)
    return ValidationImage(hr_unit.astype(np.float32), lr[0].float().numpy(), name)


def _crop(unit: np.ndarray, top: int, left: int, crop: int | None, scale: int) -> np.ndarray:
    if crop:
        unit = unit[:, top : top + crop, left : left + crop]
    return np.ascontiguousarray(np.moveaxis(modcrop(np.moveaxis(unit, 0, -1), scale), -1, 0))


@dataclass(frozen=True)
class EvaluationResult:
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    preview: np.ndarray | None


def preview_panels(lr: np.ndarray, bicubic: np.ndarray, sr: np.ndarray, hr: np.ndarray):
    """LR (each pixel repeated, so it is as big as the others) and bicubic above, model and HR
    below (:data:`PREVIEW_PANELS`), ``(h, w[, 3])`` on the unit scale, :data:`PREVIEW_GAP`
    empty pixels apart."""
    scale = hr.shape[-1] // lr.shape[-1]
    nearest = lr.repeat(scale, axis=-2).repeat(scale, axis=-1)
    channels, height, width = hr.shape
    panels = [np.clip(p[:, :height, :width], 0, 1) for p in (nearest, bicubic, sr, hr)]
    grid = np.zeros((channels, 2 * height + PREVIEW_GAP, 2 * width + PREVIEW_GAP), np.float32)
    for panel, (top, left) in zip(panels, preview_corners(grid.shape[1:]), strict=True):
        grid[:, top : top + height, left : left + width] = panel
    return grid[0] if channels == 1 else np.moveaxis(grid, 0, -1)


def preview_corners(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Top-left pixel of each panel of a preview of ``shape`` (``(h, w[, 3])``), in the order
    of :data:`PREVIEW_PANELS`."""
    height, width = (shape[0] - PREVIEW_GAP) // 2, (shape[1] - PREVIEW_GAP) // 2
    rows, columns = (0, height + PREVIEW_GAP), (0, width + PREVIEW_GAP)
    return [(top, left) for top in rows for left in columns]


def to_8bit_layout(unit: np.ndarray) -> np.ndarray:
    """``(c, h, w)`` unit-scale to ``(h, w[, 3])`` on the 0-255 scale, rounded like a saved image."""
    image = np.rint(np.clip(unit, 0.0, 1.0) * 255.0)
    return image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)


def evaluate(
    generator: torch.nn.Module, images: Sequence[ValidationImage], device: torch.device
) -> EvaluationResult:
    """Mean PSNR / SSIM (Y channel for RGB, 4-pixel border crop) of the model and of bicubic."""
    generator.eval()
    scale = generator.training_spec().scale
    scores, bicubic_scores, preview = [], [], None
    with torch.inference_mode():
        for image in images:
            lr = torch.from_numpy(image.lr)[None].to(device)
            sr = generator(lr)[0].float().cpu().numpy()
            bicubic = bicubic_upscale(torch.from_numpy(image.lr).double(), scale).float().numpy()
            reference = to_8bit_layout(image.hr)
            scores.append(sr_quality(to_8bit_layout(sr), reference))
            bicubic_scores.append(sr_quality(to_8bit_layout(bicubic), reference))
            if preview is None:
                preview = preview_panels(image.lr, bicubic, sr, image.hr)
    if not scores:
        raise ValueError("no validation images")
    return EvaluationResult(
        float(np.mean([s.psnr for s in scores])),
        float(np.mean([s.ssim for s in scores])),
        float(np.mean([s.psnr for s in bicubic_scores])),
        float(np.mean([s.ssim for s in bicubic_scores])),
        preview,
    )
