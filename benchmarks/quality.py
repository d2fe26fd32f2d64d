"""Quality of the bundled models with the standard SR protocol, next to published numbers.

    python benchmarks/quality.py [--figure docs/comparison.png]

Photo models: Set5 and Set14 (../shared/data/val), HR cropped to a multiple of 4, LR by MATLAB-style
bicubic x4, PSNR/SSIM on Y (BT.601) with 4 pixels cropped per border, grey images on grey.
Microscopy model: the held-out EM slices 24-29 of ../shared/data/microscopy/em_isbi2012_train
(it trains on 0-23), LR made by its own degradation (the crappifier, seeded) and by plain bicubic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import data_dir, load_set
from napari_srgan.engine.upscale import upscale
from napari_srgan.io.images import read_image
from napari_srgan.models.files import load_model
from napari_srgan.models.registry import bundled_model_dir
from napari_srgan.training.degradations import Bicubic, degradation_from_dict
from napari_srgan.training.evaluation import (
    bicubic_baseline,
    evaluate_images,
    make_lr,
    mean_quality,
)

PUBLISHED = [  # Y-PSNR / SSIM, 4x (Ledig et al. 2017, Table 2; bicubic as they report it)
    ("bicubic (published)", 28.43, 0.8109, 25.99, 0.7027),
    ("SRResNet (published)", 32.05, 0.9019, 28.49, 0.8184),
    ("SRGAN (published)", 29.40, 0.8472, 26.02, 0.7397),
]
EM_TEST_SLICES = range(24, 30)


def em_slices(indices) -> list[tuple[str, np.ndarray]]:
    folder = data_dir("microscopy", "em_isbi2012_train")
    return [(f"{i}.png", read_image(folder / f"{i}.png").data) for i in indices]


def bundled_models():
    return [load_model(path) for path in sorted(bundled_model_dir().glob("*.safetensors"))]


def photo_table(models) -> None:
    sets = {name: load_set(name) for name in ("Set5", "Set14")}
    rows = []
    bicubic = {}
    for model in models:
        scores = {}
        for name, images in sets.items():
            quality, bicubic[name] = mean_quality(evaluate_images(model, images))
            scores[name] = quality
        rows.append((model.card.name, scores))
    print("4x, Y-channel PSNR (dB) / SSIM, 4-pixel border, MATLAB-style bicubic LR")
    print("| method | Set5 PSNR | Set5 SSIM | Set14 PSNR | Set14 SSIM |")
    print("|---|---|---|---|---|")
    print(
        f"| bicubic (this protocol) | {bicubic['Set5'].psnr:.2f} | {bicubic['Set5'].ssim:.4f} "
        f"| {bicubic['Set14'].psnr:.2f} | {bicubic['Set14'].ssim:.4f} |"
    )
    for name, scores in rows:
        print(
            f"| {name} | {scores['Set5'].psnr:.2f} | {scores['Set5'].ssim:.4f} "
            f"| {scores['Set14'].psnr:.2f} | {scores['Set14'].ssim:.4f} |"
        )
    for name, p5, s5, p14, s14 in PUBLISHED:
        print(f"| {name} | {p5:.2f} | {s5:.4f} | {p14:.2f} | {s14:.4f} |")


def em_table(model) -> None:
    images = em_slices(EM_TEST_SLICES)
    degradation = degradation_from_dict(model.card.training["degradation"])
    print(
        f"\nEM slices {EM_TEST_SLICES.start}-{EM_TEST_SLICES.stop - 1} (held out), "
        f"model {model.card.name}, PSNR (dB) / SSIM on grey, 4-pixel border"
    )
    print("| LR made by | bicubic | model | gain (dB) |")
    print("|---|---|---|---|")
    for label, kind in [
        ("crappifier (seeded; the model's degradation)", degradation),
        ("bicubic only", Bicubic()),
    ]:
        quality, bicubic = mean_quality(evaluate_images(model, images, degradation=kind))
        print(
            f"| {label} | {bicubic.psnr:.2f} / {bicubic.ssim:.4f} | {quality.psnr:.2f} / "
            f"{quality.ssim:.4f} | {quality.psnr - bicubic.psnr:+.2f} |"
        )


def figure(models, path: Path) -> None:
    """LR (nearest), bicubic, each model, HR for a photo and an EM crop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    photo = dict(load_set("Set14"))["zebra.png"][100:228, 200:328]
    em = em_slices([27])[0][1][192:320, 192:320]
    grey_models = [m for m in models if m.in_channels == 1]
    cases = [("photo (Set14 zebra)", photo, [m for m in models if m.in_channels == 3], Bicubic())]
    if grey_models:
        degradation = degradation_from_dict(grey_models[0].card.training["degradation"])
        cases.append(("EM (slice 27, crappified LR)", em, grey_models, degradation))
    columns = 3 + max(len(c[2]) for c in cases)
    fig, axes = plt.subplots(len(cases), columns, figsize=(2.4 * columns, 2.6 * len(cases)))
    axes = np.atleast_2d(axes)
    for row, (title, hr, row_models, degradation) in enumerate(cases):
        lr = make_lr(hr, degradation, seed=0)
        panels = [
            ("LR (nearest)", np.kron(lr, np.ones((4, 4, 1) if lr.ndim == 3 else (4, 4), lr.dtype))),
            ("bicubic", bicubic_baseline(lr)),
        ]
        panels += [(m.card.name, upscale(lr, m, rgb=lr.ndim == 3)) for m in row_models]
        panels.append(("HR", hr))
        for column, axis in enumerate(axes[row]):
            axis.axis("off")
            if column < len(panels):
                label, image = panels[column]
                axis.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                axis.set_title(label, fontsize=8)
        axes[row][0].text(
            -0.1,
            0.5,
            title,
            transform=axes[row][0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", type=Path, help="also write the side-by-side figure here")
    args = parser.parse_args()
    models = bundled_models()
    photo = [m for m in models if m.in_channels == 3]
    grey = [m for m in models if m.in_channels == 1]
    if photo:
        photo_table(photo)
    for model in grey:
        em_table(model)
    if args.figure:
        figure(models, args.figure)


if __name__ == "__main__":
    main()
