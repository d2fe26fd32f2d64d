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


def make_validation_image(
    hr_unit: np.ndarray,
    degradation: Degradation,
    *,
    name: str = "validation",
    crop: int | None = 256,
    seed: int = 0,
    scale: int = SCALE,
    paired_lr: np.ndarray | None = None,
) -> ValidationImage:
    """Centre-crop ``hr_unit`` (``(c, h, w)``) to at most ``crop`` pixels a side (a multiple of
    ``scale``) and degrade it with a fixed seed, so every validation sees the same LR.
    ``paired_lr`` (``(c, h, w)``: on the HR grid, or 1/scale of its size) replaces the
    degradation when given."""
    _, height, width = hr_unit.shape
    top = left = 0
    if crop:
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


def to_8bit_layout(unit: np.ndarray) -> np.ndarray:
    """``(c, h, w)`` unit-scale to ``(h, w[, 3])`` on the 0-255 scale, rounded like a saved image."""
    image = np.rint(np.clip(unit, 0.0, 1.0) * 255.0)
    return image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)


def evaluate(
    generator: torch.nn.Module, images: Sequence[ValidationImage], device: torch.device
) -> EvaluationResult:
    """Mean PSNR / SSIM (Y channel for RGB, 4-pixel border crop) of the model and of bicubic."""
    generator.eval()
    scale = generator.config.scale
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
                preview = np.clip(sr[0] if sr.shape[0] == 1 else np.moveaxis(sr, 0, -1), 0, 1)
    if not scores:
        raise ValueError("no validation images")
    return EvaluationResult(
        float(np.mean([s.psnr for s in scores])),
        float(np.mean([s.ssim for s in scores])),
        float(np.mean([s.psnr for s in bicubic_scores])),
        float(np.mean([s.ssim for s in bicubic_scores])),
        preview,
    )
