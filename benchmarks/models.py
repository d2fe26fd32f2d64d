"""Community architectures (spandrel) and the bundled model through the engine on this CPU.

    python benchmarks/models.py [--size 512] [--models esrgan swinir-light ...] [--tile 128]

For each model: parameters, the theoretical halo (the receptive field found by the gradient
probe, "unbounded" past 64 px) and the measured one (``napari_srgan.models.halo``, as
``models add`` and first loads store it: cut probes bisected to 1e-4, plus a safety margin,
verified on held-back images), the untiled time and the time at
the automatic tile for a ``--size``² RGB (or grey) input, the tiled time at ``--tile``, output
MP/s, and whether the tiled output equals the untiled one within 1e-4. The community networks
have random weights (nothing is downloaded): their measured halos are upper bounds for trained
weights, whose influence decays faster.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from skimage import data as samples
from skimage.transform import resize

from napari_srgan.engine.upscale import upscale
from napari_srgan.models.community import community_model
from napari_srgan.models.halo import TOLERANCE, measure_halo
from napari_srgan.models.interface import SRModel
from napari_srgan.models.registry import DEFAULT_MODEL, load_model


def _build(name: str):
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR

    def swinir_light(scale: int):
        return SwinIR(
            upscale=scale,
            in_chans=3,
            img_size=64,
            window_size=8,
            embed_dim=60,
            depths=[6, 6, 6, 6],
            num_heads=[6, 6, 6, 6],
            mlp_ratio=2,
            upsampler="pixelshuffledirect",
            resi_connection="1conv",
        )

    return {
        "esrgan": lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4),
        "swinir-light": lambda: swinir_light(4),
        "span": lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4),
        "swinir-light-x2": lambda: swinir_light(2),
        "compact-grey": lambda: Compact(num_in_ch=1, num_out_ch=1, num_feat=64, num_conv=32),
    }[name]()


LABELS = {
    "bundled": f"{DEFAULT_MODEL} (bundled)",
    "esrgan": "ESRGAN / Real-ESRGAN x4plus size (RRDBNet 64nf 23 blocks) x4",
    "swinir-light": "SwinIR-light x4",
    "span": "SPAN (48 features) x4",
    "swinir-light-x2": "SwinIR-light x2",
    "compact-grey": "Compact (realesr-general-x4v3 size), 1 channel, x4",
}


def model_for(name: str) -> SRModel:
    if name == "bundled":
        return load_model(DEFAULT_MODEL)
    torch.manual_seed(0)
    network = _build(name)
    state = {k: v.detach() for k, v in network.state_dict().items()}
    return community_model(state, name=name, source="benchmark (random weights)")


def natural(channels: int, side: int) -> np.ndarray:
    """A natural photo crop, downscaled so it looks like a low-resolution input."""
    image = samples.astronaut()[64:448, 96:480] / 255.0
    image = resize(image, (side, side), anti_aliasing=True).astype(np.float32)
    return image if channels == 3 else image.mean(axis=-1)


def timed(function) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def row(name: str, size: int, tile: int) -> str:
    model = model_for(name)
    channels = model.in_channels
    parameters = sum(p.numel() for p in model.network.parameters())
    theoretical = model.card.theoretical_halo
    measured = measure_halo(model)
    model.card.measured_halo = measured
    image = natural(channels, size)
    untiled_s, whole = timed(lambda: upscale(image, model, tile=size, device="cpu"))
    auto_s, auto = timed(lambda: upscale(image, model, device="cpu"))
    tiled_s, tiled = timed(lambda: upscale(image, model, tile=tile, device="cpu"))
    error = max(np.abs(auto - whole).max(), np.abs(tiled - whole).max())
    exact = "yes" if error <= TOLERANCE else f"no (seam error {error:.2g})"
    megapixels = (size * model.scale) ** 2 / 1e6
    return (
        f"| {LABELS[name]} | {parameters / 1e6:.2f}M | "
        f"{'unbounded (>64)' if theoretical is None else theoretical} | "
        f"{measured} | "
        f"{untiled_s:.1f} | {auto_s:.1f} | {tiled_s:.1f} | {megapixels / auto_s:.2f} | {exact} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="input side (pixels)")
    parser.add_argument("--tile", type=int, default=128, help="kept tile size for the tiled run")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["bundled", "span", "compact-grey", "swinir-light-x2", "swinir-light", "esrgan"],
        help="rows to run, lightest first (esrgan: about 9.4 TFLOP per 512² pass)",
        choices=list(LABELS),
    )
    args = parser.parse_args()
    print(f"{args.size}x{args.size} input, {torch.get_num_threads()} CPU threads, fp32")
    print(
        "| model | parameters | theoretical halo (px) | measured halo (px) | untiled (s) | "
        f"auto tile (s) | tile {args.tile} (s) | output MP/s (auto) | tiled == untiled "
        f"(<= {TOLERANCE:g}) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        print(row(name, args.size, args.tile), flush=True)


if __name__ == "__main__":
    main()
