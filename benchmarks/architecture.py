"""Which generator variant to ship: a short, equal training budget for each, scored on Set5.

    python benchmarks/architecture.py [--steps 150] [--only NAME ...]

Each variant trains from scratch on ../shared/data/train (T91 + BSD200, bicubic x4 LR) with the
same seed, batch 16 of 96x96 HR patches, Adam 2e-4 (cosine), then Set5 Y-PSNR is measured with
the standard protocol. This measures early-training speed, not converged quality.
"""

from __future__ import annotations

import argparse

from _common import photo_training_images, short_run
from napari_srgan.models.srresnet import Generator, GeneratorConfig, parameter_count

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
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--only", nargs="*", help="variant names to run")
    args = parser.parse_args()
    images = photo_training_images()
    rows = []
    bicubic = None
    for name, (config, loss) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        seconds, quality, bicubic = short_run(images, config, loss, args.steps)
        rows.append((name, parameter_count(Generator(config)), seconds, quality))
        print(f"done {name}: {quality.psnr:.2f} dB", flush=True)
    print(f"\nSet5 x4 after {args.steps} steps (batch 16, 96x96 HR), bicubic {bicubic.psnr:.2f} dB")
    print("| variant | parameters | s/step | Set5 PSNR-Y (dB) | SSIM-Y |")
    print("|---|---|---|---|---|")
    for name, params, seconds, quality in rows:
        print(
            f"| {name} | {params / 1e6:.2f}M | {seconds:.2f} | {quality.psnr:.2f} | {quality.ssim:.4f} |"
        )


if __name__ == "__main__":
    main()
