"""The standard SR benchmark protocol, on image files, for any model.

HR is cropped to a multiple of 4, LR is made from it (bicubic x4 with MATLAB semantics, rounded
to the file's dtype as a saved image would be), the model upscales LR through the same tiled
engine users run, and PSNR / SSIM are measured on Y (RGB) or grey with a 4-pixel border crop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_srgan.engine.upscale import upscale
from napari_srgan.messages import shown
from napari_srgan.models.interface import SRModel
from napari_srgan.training.degradations import Bicubic, Degradation, bicubic_upscale, modcrop
from napari_srgan.training.metrics import Quality, measurable, sr_quality

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, plus the images inside given folders (sorted)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {shown(path)}")
    if not found:
        raise FileNotFoundError(f"no images found in {', '.join(map(shown, paths))}")
    return found


def make_lr(hr: np.ndarray, degradation: Degradation, seed: int = 0) -> np.ndarray:
    """LR for an 8/16-bit ``(h, w[, c])`` HR image, rounded and clipped to its dtype."""
    info = np.iinfo(hr.dtype)
    unit = torch.from_numpy(hr.astype(np.float64) / info.max)
    unit = unit.permute(2, 0, 1) if hr.ndim == 3 else unit[None]
    lr = degradation(unit[None], torch.Generator().manual_seed(seed))[0]
    lr = lr.permute(1, 2, 0) if hr.ndim == 3 else lr[0]
    return np.clip(np.rint(lr.numpy() * info.max), 0, info.max).astype(hr.dtype)


def bicubic_baseline(lr: np.ndarray) -> np.ndarray:
    info = np.iinfo(lr.dtype)
    image = torch.from_numpy(lr.astype(np.float64))
    image = image.permute(2, 0, 1) if lr.ndim == 3 else image
    up = bicubic_upscale(image)
    up = up.permute(1, 2, 0) if lr.ndim == 3 else up
    return np.clip(np.rint(up.numpy()), 0, info.max).astype(lr.dtype)


@dataclass(frozen=True)
class ImageScore:
    name: str
    model: Quality
    bicubic: Quality


def evaluate_images(
    model: SRModel,
    images: Sequence[tuple[str, np.ndarray]],
    *,
    degradation: Degradation | None = None,
    device: str = "auto",
    tile: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    ensemble: bool = False,
) -> list[ImageScore]:
    """Score ``model`` and bicubic on ``(name, hr)`` pairs of 8/16-bit images;
    ``progress(done, total)`` counts images; ``ensemble`` runs the 8-fold self-ensemble."""
    degradation = degradation or Bicubic()
    check_benchmark_images(images)
    scores = []
    for index, (name, hr) in enumerate(images):
        hr = modcrop(hr[..., :3] if hr.ndim == 3 else hr)
        lr = make_lr(hr, degradation, seed=index)
        sr = upscale(lr, model, rgb=hr.ndim == 3, device=device, tile=tile, ensemble=ensemble)
        scores.append(ImageScore(name, _quality(sr, hr), _quality(bicubic_baseline(lr), hr)))
        if progress is not None:
            progress(index + 1, len(images))
    return scores


#: The smallest HR side scored: after modcrop and the 4-pixel border, SSIM's Gaussian window
#: (11 pixels) must fit (the LR is then at least 5 pixels, enough for every model).
MIN_SIDE = 20


def check_benchmark_images(images: Sequence[tuple[str, np.ndarray]]) -> None:
    """Raise ValueError naming the first image the protocol cannot score, before any work:
    8/16-bit, one grey ``(h, w)`` or colour ``(h, w, 3|4)`` image, large enough (a stack or a
    thumbnail failed deep in the resampling with a traceback), not flat."""
    for name, hr in images:
        if hr.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"{shown(name)}: the benchmark protocol needs 8- or 16-bit images, not {hr.dtype}"
            )
        _check_shape(name, hr)


def _check_shape(name: str, hr: np.ndarray) -> None:
    if not (hr.ndim == 2 or (hr.ndim == 3 and hr.shape[-1] in (3, 4))):
        raise ValueError(
            f"{shown(name)}: the benchmark protocol scores one grey or RGB image, not shape {hr.shape}"
        )
    if min(hr.shape[:2]) < MIN_SIDE:
        raise ValueError(
            f"{shown(name)}: {hr.shape[0]}x{hr.shape[1]} pixels is too small to score "
            f"(at least {MIN_SIDE}x{MIN_SIDE})"
        )
    if not measurable(modcrop(hr[..., :3] if hr.ndim == 3 else hr)):
        # bicubic reproduces a flat image exactly: "inf dB", and an average of inf
        raise ValueError(
            f"{shown(name)} is one constant value where it is scored: PSNR and SSIM cannot be "
            "measured on it"
        )


def _quality(result: np.ndarray, reference: np.ndarray) -> Quality:
    """RGB on Y needs the 0-255 scale; grey is compared on its own full range."""
    peak = float(np.iinfo(reference.dtype).max)
    if reference.ndim == 3:
        factor = 255.0 / peak
        return sr_quality(result * factor, reference * factor, data_range=255.0)
    return sr_quality(result, reference, data_range=peak)


def mean_quality(scores: Sequence[ImageScore]) -> tuple[Quality, Quality]:
    """(model, bicubic) averaged over images, as papers report."""

    def average(qualities: list[Quality]) -> Quality:
        return Quality(
            float(np.mean([q.psnr for q in qualities])), float(np.mean([q.ssim for q in qualities]))
        )

    return average([s.model for s in scores]), average([s.bicubic for s in scores])
