"""Inference speed of the bundled RGB model on the CPU: untiled, auto tile, fixed tiles, and a
Real-ESRGAN-style tiler with the same network, with the tail formulations side by side.

    python benchmarks/inference.py --sizes 256 600 [--tiles 128 256] [--repeat 1] [--tail]

All rows of one size run in this process, one after the other, on the same random RGB input
(uint8). ``vs untiled`` divides by the untiled time of the same run; ``max diff`` is the largest
|tiled - untiled| on the [0, 1] scale (before rounding to 8 bits). GFLOP/s counts the useful work
of the original network (the untiled FLOPs) and is given as a fraction of one large 64->64 3x3
convolution timed in the same run (the machine's achievable rate for this kind of layer).
``--tail`` times the 9x9 64->3 tail convolution at output resolution against its folded form
(:mod:`napari_srgan.engine.folding`). Sizes whose untiled pass does not fit in ``--untiled-max``
(default 1024) are run tiled only.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from napari_srgan.engine.devices import auto_tile_size
from napari_srgan.engine.folding import fold_tail, inference_network
from napari_srgan.engine.tiling import tile_work
from napari_srgan.engine.upscale import upscale
from napari_srgan.models.files import load_model
from napari_srgan.models.registry import DEFAULT_MODEL, resolve_model

#: Real-ESRGAN's default overlap (tile_pad) in input pixels.
REALESRGAN_PAD = 10


def reference_conv_gflops(repeat: int = 3) -> float:
    """GFLOP/s of one 64->64 3x3 convolution on a 1x64x512x512 input (2 FLOP per MAC), in the
    faster of the two memory layouts (channels-last is faster with oneDNN)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.rand(1, 64, 512, 512)
    best = float("inf")
    with torch.inference_mode():
        for layout in (torch.contiguous_format, torch.channels_last):
            conv, x = conv.to(memory_format=layout), x.contiguous(memory_format=layout)
            best = min(best, best_time(lambda c=conv, t=x: c(t), repeat))
    return 2 * 64 * 64 * 9 * 512 * 512 / best / 1e9


def best_time(run: Callable[[], object], repeat: int, warm_up: bool = True) -> float:
    if warm_up:
        run()  # oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def realesrgan_tiles(network: torch.nn.Module, image: torch.Tensor, tile: int, scale: int):
    """Real-ESRGAN's ``tile_process``: kept tiles of ``tile`` px on a regular grid (the last
    ones smaller), each read with ``REALESRGAN_PAD`` px more where the image allows."""
    _, channels, height, width = image.shape
    out = image.new_zeros(1, channels, height * scale, width * scale)
    pad = REALESRGAN_PAD
    with torch.inference_mode():
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                y1, x1 = min(y + tile, height), min(x + tile, width)
                ya, xa = max(y - pad, 0), max(x - pad, 0)
                yb, xb = min(y1 + pad, height), min(x1 + pad, width)
                block = image[..., ya:yb, xa:xb].contiguous(memory_format=torch.channels_last)
                result = network(block)
                out[..., y * scale : y1 * scale, x * scale : x1 * scale] = result[
                    ...,
                    (y - ya) * scale : (y1 - ya) * scale,
                    (x - xa) * scale : (x1 - xa) * scale,
                ]
    return out


def realesrgan_work(height: int, width: int, tile: int) -> float:
    read = 0
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            rows = min(y + tile + REALESRGAN_PAD, height) - max(y - REALESRGAN_PAD, 0)
            cols = min(x + tile + REALESRGAN_PAD, width) - max(x - REALESRGAN_PAD, 0)
            read += rows * cols
    return read / (height * width)


def size_table(model, size: int, tiles: list[int], repeat: int, reference: float, untiled_max: int):
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)
    gflop = 2 * model.network.config.macs_per_input_pixel * size**2 / 1e9
    halo = model.card.halo
    auto = auto_tile_size(model, torch.device("cpu"), halo=halo)
    unit = image.astype(np.float32) / 255
    outputs: dict[str, np.ndarray] = {}

    def ours(name: str, tile: int | None) -> Callable[[], None]:
        def run() -> None:
            outputs[name] = upscale(unit, model, tile=tile, device="cpu")

        return run

    rows: list[tuple[str, float, float]] = []
    if size <= untiled_max:
        rows.append(("untiled", best_time(ours("untiled", 10**6), repeat, False), 1.0))
    name = f"auto tile ({auto} kept, halo {halo})"
    rows.append(
        (
            name,
            best_time(ours(name, None), repeat, False),
            tile_work(size, size, auto, halo, uniform=False),
        )
    )
    for tile in tiles:
        name = f"tile {tile} (halo {halo})"
        seconds = best_time(ours(name, tile), repeat, False)
        rows.append((name, seconds, tile_work(size, size, tile, halo, uniform=False)))
    network = inference_network(model.network).to(memory_format=torch.channels_last)
    tensor = torch.from_numpy(unit).permute(2, 0, 1)[None]
    for tile in tiles:
        name = f"Real-ESRGAN-style tile {tile} (pad {REALESRGAN_PAD})"

        def theirs(name: str = name, tile: int = tile) -> None:
            result = realesrgan_tiles(network, tensor, tile, model.scale)
            outputs[name] = result[0].permute(1, 2, 0).numpy()

        rows.append((name, best_time(theirs, repeat, False), realesrgan_work(size, size, tile)))
    untiled = rows[0][1] if rows[0][0] == "untiled" else None
    print(f"\n{size}x{size} RGB -> {size * 4}x{size * 4}, {gflop:.0f} GFLOP untiled")
    print(
        "| run | time (s) | vs untiled | tile work | max diff vs untiled | GFLOP/s "
        "| of reference conv |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, seconds, work in rows:
        ratio = f"{seconds / untiled:.2f}" if untiled else "untiled not run"
        diff = "n/a"
        if "untiled" in outputs:
            diff = f"{np.abs(outputs[name] - outputs['untiled']).max():.1e}"
        rate = gflop / seconds
        print(
            f"| {name} | {seconds:.2f} | {ratio} | {work:.2f} | {diff} | {rate:.1f} "
            f"| {rate / reference:.2f} |",
            flush=True,
        )


def tail_table(model, size: int, repeat: int) -> None:
    """The tail at output resolution against its folded form, on the features of a size^2
    input, and the whole untiled network plain vs folded."""
    generator = model.network.to(memory_format=torch.channels_last)
    features = torch.rand(1, 64, 4 * size, 4 * size).contiguous(memory_format=torch.channels_last)
    before = torch.rand(1, 256, 2 * size, 2 * size).contiguous(memory_format=torch.channels_last)
    folded_tail = fold_tail(2, generator.tail).to(memory_format=torch.channels_last)
    macs = 81 * 64 * 3 * (4 * size) ** 2
    with torch.inference_mode():
        plain = best_time(lambda: generator.tail(features), repeat)
        folded = best_time(lambda: folded_tail(before), repeat)
        x = torch.rand(1, 3, size, size).contiguous(memory_format=torch.channels_last)
        folded_net = inference_network(generator).to(memory_format=torch.channels_last)
        whole_plain = best_time(lambda: generator(x), repeat)
        whole_folded = best_time(lambda: folded_net(x), repeat)
        difference = float((generator(x) - folded_net(x)).abs().max())
    print(f"\ntail of a {size}x{size} input (9x9 conv 64->3 at {4 * size}x{4 * size}):")
    print("| formulation | time (s) | useful GFLOP/s |")
    print("|---|---|---|")
    print(f"| 9x9 64->3 at 4x (plain) | {plain:.3f} | {2 * macs / plain / 1e9:.1f} |")
    print(
        f"| folded: 5x5 256->12 at 2x, then shuffle | {folded:.3f} | {2 * macs / folded / 1e9:.1f} |"
    )
    print(
        f"whole network, untiled {size}x{size}: plain {whole_plain:.2f} s, folded "
        f"{whole_folded:.2f} s ({whole_plain / whole_folded:.2f}x), max diff {difference:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 600, 1024, 2048])
    parser.add_argument("--tiles", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--untiled-max", type=int, default=1024)
    parser.add_argument("--tail", type=int, default=0, help="input size for the tail table")
    parser.add_argument("--no-tables", action="store_true", help="only the tail table")
    args = parser.parse_args()
    model = load_model(resolve_model(DEFAULT_MODEL))
    reference = reference_conv_gflops()
    print(
        f"{DEFAULT_MODEL}, CPU ({os.cpu_count()} cores), fp32, torch {torch.__version__}; "
        f"reference 64->64 3x3 conv: {reference:.1f} GFLOP/s; measured halo {model.card.halo} px"
    )
    if args.tail:
        tail_table(model, args.tail, args.repeat)
    if not args.no_tables:
        for size in args.sizes:
            size_table(model, size, args.tiles, args.repeat, reference, args.untiled_max)


if __name__ == "__main__":
    main()
