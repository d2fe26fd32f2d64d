"""Upscaling speed on a CUDA GPU: untiled vs auto / fixed tiles, fp32 vs fp16 / bf16 autocast.

    python benchmarks/gpu.py [--sizes 1024 4096] [--channels 3 1] [--tiles 512] [--batch 4]

Runs the bundled default model on random uint8 images (RGB, and grey through the RGB model).
Each row gives the best of three runs (after a warm-up), its ratio to the untiled time in the
same precision, output megapixels/s, achieved GFLOP/s next to one large 64->64 3x3 convolution
timed in the same run and precision, peak GPU memory, and the largest difference from the
untiled fp32 output on a [0, 1] scale. A run that does not fit in GPU memory says so. Exits with
a message where no CUDA device is present.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
import torch

from napari_srgan.engine.upscale import upscale
from napari_srgan.models.files import load_model
from napari_srgan.models.registry import DEFAULT_MODEL, resolve_model

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
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--channels", type=int, nargs="+", default=[3, 1], choices=[1, 3])
    parser.add_argument("--tiles", type=int, nargs="+", default=[512])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"])
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU; none is visible to torch")
    model = load_model(resolve_model(DEFAULT_MODEL))
    scale = model.scale
    references = {p: reference_conv_gflops(p) for p in args.precisions}
    print(
        f"{DEFAULT_MODEL} (measured halo {model.card.halo} px), {torch.cuda.get_device_name()}, "
        f"torch {torch.__version__}; reference 64->64 3x3 conv GFLOP/s: "
        + ", ".join(f"{p} {g:.0f}" for p, g in references.items())
    )
    print(
        "\n| input | run | precision | time (s) | vs untiled | output MP/s | GFLOP/s "
        "| of reference conv | peak GPU memory (GB) | max diff vs untiled fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for channels in args.channels:
            shape = (size, size, 3) if channels == 3 else (size, size)
            image = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
            table(model, image, scale, args, references)
    print("\nTimes include reading tiles from and writing them to host (numpy) memory.")


class Retries(logging.Handler):
    """Collects the engine's out-of-memory retry warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def clear(self) -> None:
        self.messages.clear()

    def __bool__(self) -> bool:
        return bool(self.messages)


retries = Retries()
logging.getLogger("napari_srgan.engine.upscale").addHandler(retries)


def table(model, image: np.ndarray, scale: int, args, references: dict) -> None:
    size = image.shape[0]
    gflop = 2 * model.network.config.macs_per_input_pixel * size**2 / 1e9
    megapixels = (size * scale) ** 2 / 1e6
    kind = "RGB" if image.ndim == 3 else "grey"
    baseline = None
    for precision in args.precisions:
        untiled_seconds = None
        runs = [("untiled", 10**6), ("auto tile", None)] + [(f"tile {t}", t) for t in args.tiles]
        for name, tile in runs:
            out = np.empty((size * scale, size * scale, *image.shape[2:]), np.uint8)

            def run(tile=tile, precision=precision, out=out):
                upscale(
                    image,
                    model,
                    tile=tile,
                    batch_size=args.batch,
                    device="cuda",
                    precision=precision,
                    out=out,
                )

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            retries.clear()
            label = f"| {size}^2 {kind} | {name} | {precision} "
            try:
                seconds = best_time(run)
            except torch.OutOfMemoryError:
                print(label + "| does not fit in GPU memory | | | | | | |", flush=True)
                continue
            peak = torch.cuda.max_memory_allocated() / 1e9
            if retries:  # the engine ran out of memory and fell back to smaller tiles
                label = label.replace(f"| {name} ", f"| {name} (out of memory: smaller tiles) ")
            if untiled_seconds is None:
                untiled_seconds = seconds
            if baseline is None and precision == "fp32" and tile == 10**6:
                baseline = out.copy()
            difference = (
                f"{np.abs(out.astype(np.int16) - baseline).max() / 255:.4f}"
                if baseline is not None
                else "n/a"
            )
            print(
                label + f"| {seconds:.3f} | {seconds / untiled_seconds:.2f} "
                f"| {megapixels / seconds:.1f} | {gflop / seconds:.0f} "
                f"| {gflop / seconds / references[precision]:.2f} | {peak:.2f} | {difference} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
