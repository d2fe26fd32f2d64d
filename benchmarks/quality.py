"""Quality of the bundled models with the standard SR protocol, next to published numbers.

    python benchmarks/quality.py [--model NAME_OR_PATH ...] [--ensemble both|off|on]
                                 [--limit N] [--crop PX] [--skip-photo] [--skip-em]
                                 [--device auto|cpu|cuda] [--figure docs/comparison.png]

Photo table: Set5 and Set14 (../shared/data/val), HR cropped to a multiple of 4, LR by
MATLAB-style bicubic x4, PSNR/SSIM on Y (BT.601) with 4 pixels cropped per border, grey images
on grey. EM table: the held-out slices 24-29 of ../shared/data/microscopy/em_isbi2012_train (the
grey models train on 0-23), with clean LR (bicubic x4) and noisy LR (bicubic x4, then Poisson
noise at 30 photons for the brightest level and Gaussian read noise of 2 photons, seeded), PSNR
on grey with the 4-pixel border. Every model runs through the tiled engine users run, plain and
with the 8-fold self-ensemble (``--ensemble``); the time column is seconds per image on this
machine. ``--limit`` (first N images of each set) and ``--crop`` (centre crop of each HR image)
make a quicker, partial run: the header says when they were used.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _common import data_dir, load_set
from napari_srgan.engine.upscale import upscale
from napari_srgan.io.images import read_image
from napari_srgan.models.files import load_model
from napari_srgan.models.registry import bundled_model_dir, resolve_model
from napari_srgan.training.degradations import Bicubic, Crappifier
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
#: The issue's noisy EM condition: 30 photons at the brightest level, read noise of 2 photons.
NOISY = Crappifier(blur_sigma=(0.0, 0.0), photons=(30.0, 30.0), read_noise=(2 / 30, 2 / 30))


def em_slices(indices) -> list[tuple[str, np.ndarray]]:
    folder = data_dir("microscopy", "em_isbi2012_train")
    return [(f"{i}.png", read_image(folder / f"{i}.png").data) for i in indices]


def bundled_models():
    return [load_model(path) for path in sorted(bundled_model_dir().glob("*.safetensors"))]


def centre_crop(images, crop: int | None, limit: int | None):
    """The first ``limit`` images, each centre-cropped to at most ``crop`` pixels a side."""
    chosen = images[:limit] if limit else images
    if not crop:
        return chosen
    cropped = []
    for name, image in chosen:
        top, left = max(0, (image.shape[0] - crop) // 2), max(0, (image.shape[1] - crop) // 2)
        cropped.append((name, image[top : top + crop, left : left + crop]))
    return cropped


def variants(ensemble: str) -> list[bool]:
    return {"off": [False], "on": [True], "both": [False, True]}[ensemble]


def score(model, images, ensemble: bool, device: str, degradation=None):
    """(model quality, bicubic quality, seconds per image)."""
    started = time.perf_counter()
    scores = evaluate_images(
        model, images, degradation=degradation, ensemble=ensemble, device=device
    )
    seconds = (time.perf_counter() - started) / len(images)
    quality, bicubic = mean_quality(scores)
    return quality, bicubic, seconds


def label(model, ensemble: bool) -> str:
    """The model's name, and its file where it is not a bundled one (e.g. a new version)."""
    path = model.path
    name = model.card.name
    if path is not None and path.resolve().parent != bundled_model_dir().resolve():
        name = f"{name} ({path})"
    return f"{name}{' + self-ensemble' if ensemble else ''}"


def photo_table(models, args) -> None:
    sets = {name: centre_crop(load_set(name), args.crop, args.limit) for name in ("Set5", "Set14")}
    rows, bicubic = [], {}
    for model in models:
        for ensemble in variants(args.ensemble):
            scores, seconds = {}, 0.0
            for name, images in sets.items():
                scores[name], bicubic[name], per_image = score(model, images, ensemble, args.device)
                seconds += per_image * len(images)
            rows.append((label(model, ensemble), scores, seconds / sum(map(len, sets.values()))))
    partial = f" (partial: limit {args.limit}, crop {args.crop})" if args.limit or args.crop else ""
    print(f"4x, Y-channel PSNR (dB) / SSIM, 4-pixel border, MATLAB-style bicubic LR{partial}")
    print("| method | Set5 PSNR | Set5 SSIM | Set14 PSNR | Set14 SSIM | s/image |")
    print("|---|---|---|---|---|---|")
    print(
        f"| bicubic (this protocol) | {bicubic['Set5'].psnr:.2f} | {bicubic['Set5'].ssim:.4f} "
        f"| {bicubic['Set14'].psnr:.2f} | {bicubic['Set14'].ssim:.4f} | - |"
    )
    for name, scores, seconds in rows:
        print(
            f"| {name} | {scores['Set5'].psnr:.2f} | {scores['Set5'].ssim:.4f} "
            f"| {scores['Set14'].psnr:.2f} | {scores['Set14'].ssim:.4f} | {seconds:.1f} |"
        )
    for name, p5, s5, p14, s14 in PUBLISHED:
        print(f"| {name} | {p5:.2f} | {s5:.4f} | {p14:.2f} | {s14:.4f} | - |")


def em_table(models, args) -> None:
    images = centre_crop(em_slices(EM_TEST_SLICES), args.crop, args.limit)
    conditions = [("clean LR", Bicubic()), ("noisy LR", NOISY)]
    rows, bicubic = [], {}
    for model in models:
        for ensemble in variants(args.ensemble):
            row = {}
            for name, degradation in conditions:
                quality, bicubic[name], seconds = score(
                    model, images, ensemble, args.device, degradation
                )
                row[name] = quality
            rows.append((label(model, ensemble), row, seconds))
    partial = f" (partial: limit {args.limit}, crop {args.crop})" if args.limit or args.crop else ""
    print(
        f"\nEM slices {EM_TEST_SLICES.start}-{EM_TEST_SLICES.stop - 1} (held out){partial}: PSNR "
        "(dB) / SSIM on grey, 4-pixel border; noisy LR: 30 photons peak, read noise 2 photons"
    )
    print("| method | clean LR | gain (dB) | noisy LR | gain (dB) | s/image |")
    print("|---|---|---|---|---|---|")
    clean, noisy = bicubic["clean LR"], bicubic["noisy LR"]
    print(
        f"| bicubic | {clean.psnr:.2f} / {clean.ssim:.4f} | - "
        f"| {noisy.psnr:.2f} / {noisy.ssim:.4f} | - | - |"
    )
    for name, row, seconds in rows:
        a, b = row["clean LR"], row["noisy LR"]
        print(
            f"| {name} | {a.psnr:.2f} / {a.ssim:.4f} | {a.psnr - clean.psnr:+.2f} "
            f"| {b.psnr:.2f} / {b.ssim:.4f} | {b.psnr - noisy.psnr:+.2f} | {seconds:.1f} |"
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
        cases.append(("EM (slice 27, noisy LR)", em, grey_models, NOISY))
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
    parser.add_argument(
        "--model", nargs="+", help="models to score (names or paths; default: the bundled ones)"
    )
    parser.add_argument("--ensemble", choices=["both", "off", "on"], default="both")
    parser.add_argument("--limit", type=int, help="only the first N images of each set")
    parser.add_argument("--crop", type=int, help="centre crop of each HR image (pixels)")
    parser.add_argument("--skip-photo", action="store_true", help="no Set5/Set14 table")
    parser.add_argument("--skip-em", action="store_true", help="no EM table")
    parser.add_argument("--figure", type=Path, help="also write the side-by-side figure here")
    parser.add_argument("--device", default="auto", help="where the models run (auto, cpu, cuda)")
    args = parser.parse_args()
    models = (
        [load_model(resolve_model(name)) for name in args.model] if args.model else bundled_models()
    )
    if not args.skip_photo and any(m.in_channels == 3 for m in models):
        photo_table([m for m in models if m.in_channels == 3], args)
    if not args.skip_em:
        em_table(models, args)
    if args.figure:
        figure(models, args.figure)


if __name__ == "__main__":
    main()
