"""Training speed of the default architecture and what a short budget buys on Set5.

    python benchmarks/training.py [--steps 100]

Trains the shipped recipe (16 blocks x 64, no BN, bicubic input skip, MSE) from scratch on
../shared/data/train with batch 16 of 96x96 HR patches, then measures Set5 Y-PSNR with the
standard protocol (bicubic x4 LR, 4-pixel border).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from _common import photo_training_images, short_run
from napari_srgan.models.srresnet import GeneratorConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    config = GeneratorConfig(batch_norm=False, input_skip=True)
    seconds, quality, bicubic = short_run(photo_training_images(), config, "mse", args.steps)
    print(
        f"default architecture, batch 16 of 96x96 HR, CPU ({os.cpu_count()} cores), "
        f"torch {torch.__version__}"
    )
    print("| steps | s/step | steps/s | HR px/s | Set5 PSNR-Y (dB) | SSIM-Y | bicubic (dB) |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.steps} | {seconds:.2f} | {1 / seconds:.3f} | {16 * 96 * 96 / seconds:,.0f} "
        f"| {quality.psnr:.2f} | {quality.ssim:.4f} | {bicubic.psnr:.2f} |"
    )
    widget = widget_defaults_seconds_per_step()
    print(
        f"\nTrain widget defaults (fine-tune the bundled model, batch 8 of 64x64): {widget:.2f} "
        f"s/step, so its default 1000 steps take about {1000 * widget / 60:.0f} minutes here."
    )


def widget_defaults_seconds_per_step(steps: int = 20) -> float:
    """Seconds per step of the Train widget's defaults, fine-tuning the bundled RGB model."""
    from napari_srgan.models.files import load_model
    from napari_srgan.models.normalization import NormalizationSpec
    from napari_srgan.models.registry import DEFAULT_MODEL, resolve_model
    from napari_srgan.training.patches import PatchSampler
    from napari_srgan.training.trainer import Trainer, TrainingConfig

    model = load_model(resolve_model(DEFAULT_MODEL))
    sampler = PatchSampler(
        photo_training_images()[:20],
        patch_size=64,
        channels=3,
        normalization=NormalizationSpec(),
        skip_small=True,
    )
    config = TrainingConfig(
        patch_size=64, batch_size=8, pretrain_steps=2, learning_rate=1e-4, device="cpu"
    )
    trainer = Trainer(model.network.train(), sampler, config)
    trainer.run()  # warm-up: oneDNN picks its kernels
    config.pretrain_steps += steps
    started = time.perf_counter()
    trainer.run()
    return (time.perf_counter() - started) / steps


if __name__ == "__main__":
    main()
