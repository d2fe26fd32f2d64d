"""PSNR and SSIM the way SR papers report them.

RGB images are compared on the Y channel of ITU-R BT.601 YCbCr (16-235 range) after a
``SCALE``-pixel border is cropped on every side; grey images are compared as they are, with the
same crop. SSIM is scikit-image's with the Gaussian window of Wang et al. (sigma 1.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_srgan.models.srresnet import SCALE

_BT601 = np.array([65.481, 128.553, 24.966]) / 255.0


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Y of BT.601 in [16, 235] for an RGB image with values on the 0-255 scale."""
    return 16.0 + image[..., :3].astype(np.float64) @ _BT601


@dataclass(frozen=True)
class Quality:
    psnr: float
    ssim: float


def measurable(reference: np.ndarray, *, border: int = SCALE) -> bool:
    """Whether PSNR and SSIM against ``reference`` (``(h, w[, c])``) mean anything: not one value
    where they are measured (Y for RGB, inside the border). Against a flat reference any flat
    result scores an infinite PSNR (bicubic always does), which breaks averages and plots."""
    if reference.ndim == 3 and reference.shape[-1] in (3, 4):
        reference = rgb_to_y(reference)
    if border:
        reference = reference[border:-border, border:-border]
    return reference.size > 0 and bool(np.ptp(reference) > 0)


def sr_quality(
    result: np.ndarray, reference: np.ndarray, *, data_range: float = 255.0, border: int = SCALE
) -> Quality:
    """PSNR (dB) and SSIM of ``result`` against ``reference``.

    Both are on one intensity scale whose full range is ``data_range`` (255 for 8-bit). RGB is
    reduced to Y (the 255 scale is then required, as in the papers).
    """
    if result.shape != reference.shape:
        raise ValueError(f"shapes differ: result {result.shape}, reference {reference.shape}")
    if result.ndim == 3 and result.shape[-1] in (3, 4):
        if data_range != 255.0:
            raise ValueError("RGB images are compared on Y, which needs the 0-255 scale")
        result, reference = rgb_to_y(result), rgb_to_y(reference)
    result = np.asarray(result, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if border:
        result = result[border:-border, border:-border]
        reference = reference[border:-border, border:-border]
    with np.errstate(divide="ignore"):  # identical images: PSNR is +inf, not a warning
        psnr = peak_signal_noise_ratio(reference, result, data_range=data_range)
    ssim = structural_similarity(
        reference,
        result,
        data_range=data_range,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    return Quality(float(psnr), float(ssim))
