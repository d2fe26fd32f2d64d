"""Inference speed and memory of the default generator on the CPU, tiled and untiled.

    python benchmarks/inference.py [--size 256] [--tiles 64 128 192] [--repeat 2]

Each configuration runs in a fresh subprocess (so peak RSS is its own) on the same random
256x256 RGB input; the table gives the best of ``--repeat`` runs. A single large 64->64 3x3
convolution is timed in the same run as the reference for achievable GFLOP/s on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from napari_srgan.engine.devices import cpu_has_native_bf16
from napari_srgan.models.srresnet import SCALE, GeneratorConfig

WORKER = r"""
import json, resource, sys, time
import numpy as np, torch
from napari_srgan.models.files import native_model
from napari_srgan.models.interface import ModelCard
from napari_srgan.models.srresnet import Generator, GeneratorConfig
from napari_srgan.engine.upscale import upscale

size, tile, repeat, channels = (int(a) for a in sys.argv[1:5])
precision = sys.argv[5]
torch.manual_seed(0)
model = native_model(Generator(GeneratorConfig(batch_norm=False, input_skip=True)).eval(),
                ModelCard("benchmark"))
shape = (size, size, 3) if channels == 3 else (size, size)
image = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
times = []
for _ in range(repeat):
    started = time.perf_counter()
    upscale(image, model, tile=None if tile < 0 else tile or size, device="cpu",
            precision=precision)
    times.append(time.perf_counter() - started)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": min(times), "peak_mb": peak}))
"""


def reference_conv_gflops(repeat: int = 3) -> float:
    """GFLOP/s of one 64->64 3x3 convolution on a 1x64x512x512 input (2 FLOP per MAC), in the
    faster of the two memory layouts (channels-last is faster with oneDNN)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.rand(1, 64, 512, 512)
    best = float("inf")
    with torch.inference_mode():
        for layout in (torch.contiguous_format, torch.channels_last):
            conv, x = conv.to(memory_format=layout), x.contiguous(memory_format=layout)
            best = min(best, _best_time(conv, x, repeat))
    return 2 * 64 * 64 * 9 * 512 * 512 / best / 1e9


def _best_time(module: torch.nn.Module, x: torch.Tensor, repeat: int) -> float:
    module(x)  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        module(x)
        times.append(time.perf_counter() - started)
    return min(times)


def run(size: int, tile: int, repeat: int, channels: int, precision: str = "fp32") -> dict:
    result = subprocess.run(
        [sys.executable, "-c", WORKER, *map(str, (size, tile, repeat, channels, precision))],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def tiling_table(size: int, tiles: list[int], repeat: int, channels: int) -> None:
    """Untiled and tiled runs of the default architecture, each in its own process."""
    config = GeneratorConfig(batch_norm=False, input_skip=True)
    gflop = 2 * config.macs_per_input_pixel * size**2 / 1e9
    reference = reference_conv_gflops()
    rows = [("untiled", run(size, 0, repeat, channels))]
    rows += [(f"tile {tile}", run(size, tile, repeat, channels)) for tile in tiles]
    rows.append(("auto tile (from free memory)", run(size, -1, repeat, channels)))
    if cpu_has_native_bf16():  # what --precision auto picks on such a CPU
        rows.append(("auto tile, bf16 autocast", run(size, -1, repeat, channels, "bf16")))
    untiled = rows[0][1]["seconds"]
    megapixels = (size * SCALE) ** 2 / 1e6
    kind = "RGB" if channels == 3 else "grey"
    print(
        f"{size}x{size} {kind} -> {size * SCALE}x{size * SCALE}, default architecture (16 blocks "
        f"x 64, {gflop:.0f} GFLOP per image, overlap {config.tile_margin} px), CPU, "
        f"{os.cpu_count()} cores, torch {torch.__version__}"
    )
    print(f"reference: one 64->64 3x3 conv on 64x512x512: {reference:.1f} GFLOP/s\n")
    print(
        "| run | time (s) | vs untiled | output MP/s | GFLOP/s | of reference conv | peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, result in rows:
        seconds = result["seconds"]
        print(
            f"| {name} | {seconds:.2f} | {seconds / untiled:.2f} | {megapixels / seconds:.3f} "
            f"| {gflop / seconds:.1f} | {gflop / seconds / reference:.2f} | {result['peak_mb']:.0f} |",
            flush=True,
        )
    print(
        "\nGFLOP/s counts useful work only (the untiled FLOPs), so tiling overhead shows as a "
        "lower rate."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tiles", type=int, nargs="+", default=[96, 128, 192])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    tiling_table(args.size, args.tiles, args.repeat, channels=3)


if __name__ == "__main__":
    main()
