"""Upscaling speed on a CUDA GPU: untiled vs tiled, fp32 vs fp16 / bf16 autocast.

    python benchmarks/gpu.py [--size 1024] [--tiles 256 512] [--batch 4]

Runs the bundled default model on one random RGB image. Each row gives the best of three runs
(after a warm-up), its ratio to the untiled fp32 time, output megapixels/s, achieved GFLOP/s
next to one large 64->64 3x3 convolution timed in the same run and precision, peak GPU memory,
and the largest difference from the untiled fp32 output on a [0, 1] scale. Exits with a message
where no CUDA device is present.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from napari_srgan.engine.upscale import upscale
from napari_srgan.models.files import load_model
from napari_srgan.models.registry import DEFAULT_MODEL, resolve_model
from napari_srgan.models.srresnet import SCALE

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def reference_conv_gflops(precision: str, repeat: int = 10) -> float:
    """GFLOP/s of one 64->64 3x3 convolution on a channels-last 1x64x2048x2048 input."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).cuda().to(memory_format=torch.channels_last)
    x = torch.rand(1, 64, 2048, 2048, device="cuda").contiguous(memory_format=torch.channels_last)
    dtype = DTYPES[precision]
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        seconds = best_time(lambda: conv(x), repeat)
    return 2 * 64 * 64 * 9 * 2048 * 2048 / seconds / 1e9


def best_time(run, repeat: int = 3) -> float:
    run()  # warm-up: cuDNN picks its kernels on the first call
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU; none is visible to torch")
    model = load_model(resolve_model(DEFAULT_MODEL))
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3)).astype(np.uint8)
    gflop = 2 * model.network.config.macs_per_input_pixel * args.size**2 / 1e9
    megapixels = (args.size * SCALE) ** 2 / 1e6
    runs = [("untiled", None, "fp32")] + [(f"tile {t}", t, "fp32") for t in args.tiles]
    runs += [(f"tile {args.tiles[-1]}", args.tiles[-1], p) for p in ("fp16", "bf16")]
    runs += [("untiled", None, p) for p in ("fp16", "bf16")]
    references = {p: reference_conv_gflops(p) for p in DTYPES}
    print(
        f"{args.size}x{args.size} RGB -> {args.size * SCALE}x{args.size * SCALE}, {DEFAULT_MODEL} "
        f"({gflop:.0f} GFLOP per image), {torch.cuda.get_device_name()}, torch {torch.__version__}"
    )
    print(
        "reference 64->64 3x3 conv GFLOP/s: "
        + ", ".join(f"{p} {g:.0f}" for p, g in references.items())
        + "\n"
    )
    print(
        "| run | precision | time (s) | vs untiled fp32 | output MP/s | GFLOP/s "
        "| of reference conv | peak GPU memory (GB) | max abs diff vs untiled fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    baseline, untiled_seconds = None, None
    for name, tile, precision in runs:
        out = np.empty((args.size * SCALE, args.size * SCALE, 3), np.uint8)

        def run(tile=tile, precision=precision, out=out):
            upscale(
                image,
                model,
                tile=tile or args.size,
                batch_size=args.batch,
                device="cuda",
                precision=precision,
                out=out,
            )

        torch.cuda.reset_peak_memory_stats()
        seconds = best_time(run)
        peak = torch.cuda.max_memory_allocated() / 1e9
        if baseline is None:
            baseline, untiled_seconds = out.copy(), seconds
        difference = np.abs(out.astype(np.int16) - baseline).max() / 255
        print(
            f"| {name} | {precision} | {seconds:.3f} | {seconds / untiled_seconds:.2f} "
            f"| {megapixels / seconds:.1f} | {gflop / seconds:.0f} "
            f"| {gflop / seconds / references[precision]:.2f} | {peak:.2f} | {difference:.4f} |",
            flush=True,
        )
    print("\nTimes include reading tiles from and writing them to host (numpy) memory.")


if __name__ == "__main__":
    main()
