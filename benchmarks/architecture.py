"""Which generator variant to ship: a short, equal training budget for each, scored on Set5.

    python benchmarks/architecture.py [--steps 120]

Each variant trains from scratch on ../shared/data/train (T91 + BSD200, bicubic x4 LR) with the
same seed, batch 16 of 96x96 HR patches, Adam 2e-4 (cosine), then Set5 Y-PSNR is measured with
the standard protocol. Early-training speed is what this measures, not converged quality.
"""

from __future__ import annotations

import argparse
import time

import torch

from _data import data_dir
from napari_srgan.evaluation import evaluate_images, image_files, mean_quality
from napari_srgan.image_io import read_image
from napari_srgan.model_files import ModelCard, SRModel
from napari_srgan.models import Generator, GeneratorConfig, parameter_count
from napari_srgan.normalization import NormalizationSpec
from napari_srgan.patches import PatchSampler, TrainingImage
from napari_srgan.training import Trainer, TrainingConfig

VARIANTS = {
    "paper SRResNet (BN, MSE)": (GeneratorConfig(batch_norm=True), "mse"),
    "BN, L1": (GeneratorConfig(batch_norm=True), "l1"),
    "no BN, L1": (GeneratorConfig(batch_norm=False), "l1"),
    "no BN, bicubic skip, L1": (GeneratorConfig(batch_norm=False, input_skip=True), "l1"),
    "no BN, bicubic skip, MSE": (GeneratorConfig(batch_norm=False, input_skip=True), "mse"),
    "no BN, skip, res-scale 0.1, L1": (
        GeneratorConfig(batch_norm=False, input_skip=True, residual_scale=0.1),
        "l1",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--only", nargs="*", help="variant names to run")
    args = parser.parse_args()
    train = [
        read_image(p) for p in image_files([data_dir("train", "T91"), data_dir("train", "BSD200")])
    ]
    images = [TrainingImage(f.data, rgb=f.rgb, name=str(i)) for i, f in enumerate(train)]
    set5 = [(p.name, read_image(p).data) for p in image_files([data_dir("val", "Set5")])]
    rows = []
    for name, (config, loss) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        spec = NormalizationSpec()
        sampler = PatchSampler(
            images, patch_size=96, channels=3, normalization=spec, seed=0, skip_small=True
        )
        torch.manual_seed(0)
        generator = Generator(config)
        training = TrainingConfig(pretrain_steps=args.steps, pixel_loss=loss, device="cpu")
        trainer = Trainer(generator, sampler, training)
        started = time.perf_counter()
        trainer.run()
        seconds = (time.perf_counter() - started) / args.steps
        model = SRModel(trainer.model.eval(), ModelCard(name, normalization=spec))
        quality, bicubic = mean_quality(evaluate_images(model, set5, device="cpu"))
        rows.append((name, parameter_count(generator), seconds, quality.psnr, quality.ssim))
        print(f"done {name}: {quality.psnr:.2f} dB", flush=True)
    print(f"\nSet5 x4 after {args.steps} steps (batch 16, 96x96 HR), bicubic {bicubic.psnr:.2f} dB")
    print("| variant | parameters | s/step | Set5 PSNR-Y (dB) | SSIM-Y |")
    print("|---|---|---|---|---|")
    for name, params, seconds, psnr, ssim in rows:
        print(f"| {name} | {params / 1e6:.2f}M | {seconds:.2f} | {psnr:.2f} | {ssim:.4f} |")


if __name__ == "__main__":
    main()
