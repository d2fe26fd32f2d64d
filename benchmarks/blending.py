"""Crop-and-stitch against overlap blending for a model that is not exact when tiled.

    python benchmarks/blending.py [--size 192] [--tiles 32 48 96] [--models rcan global-mean]

Two x2 models whose every output pixel sees the whole image, with random weights (nothing is
downloaded), on a natural photo: RCAN (channel attention over globally pooled features) at a
reduced size, and the tests' toy model (channel attention plus an offset from the global mean,
so that tiles visibly disagree). Their halo and seam error are measured as ``models add`` does
(the toy's halo is fixed at its convolutions' reach). For each tile size, both ways of
tiling are compared with the untiled output: the largest and the mean difference, and the
*seam step*: how much the jump between neighbouring output rows/columns differs from untiled,
on tile borders, as a multiple of the same figure elsewhere (1 = no visible seam).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from models import natural, timed
from napari_srgan.engine.tiling import axis_spans
from napari_srgan.engine.upscale import tiling_halo, upscale
from napari_srgan.models.community import community_model
from napari_srgan.models.halo import TOLERANCE, tiling_check
from napari_srgan.models.interface import ModelCard, SRModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_blending import HALO, GlobalMeanSR


def build(name: str) -> SRModel:
    """RCAN x2 (2 residual groups of 4 blocks, 32 features) or the toy, with the card
    ``models add`` writes."""
    if name == "rcan":
        from spandrel.architectures.RCAN import RCAN

        torch.manual_seed(0)
        network = RCAN(scale=2, n_resgroups=2, n_resblocks=4, n_feats=32, reduction=8)
        model = community_model(network.state_dict(), name=name, source="benchmark")
        tiling = tiling_check(model)
    else:
        model = SRModel(GlobalMeanSR().eval(), ModelCard(name, trained=False, scale=2))
        tiling = tiling_check(model, HALO)
    model.card.measured_halo, model.card.metrics["tiling"] = tiling["halo"], tiling
    return model


def seam_step(result: np.ndarray, whole: np.ndarray, borders: list[int]) -> float:
    """Mean step error on tile-border rows and columns over that on all other ones."""
    ratios = []
    for axis in (0, 1):
        steps = np.abs(np.diff(result, axis=axis) - np.diff(whole, axis=axis))
        steps = steps.mean(axis=tuple(a for a in range(steps.ndim) if a != axis))
        seams = [b - 1 for b in borders]
        ratios.append(steps[seams].mean() / np.delete(steps, seams).mean())
    return float(np.mean(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192, help="input side (pixels)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[32, 48, 96])
    parser.add_argument(
        "--models", nargs="+", default=["rcan", "global-mean"], choices=["rcan", "global-mean"]
    )
    args = parser.parse_args()
    for name in args.models:
        table(name, args.size, args.tiles)


def table(name: str, size: int, tiles: list[int]) -> None:
    blended = build(name)
    stitched = SRModel(blended.network, dataclasses.replace(blended.card, metrics={}))
    tiling = blended.card.metrics["tiling"]
    print(
        f"\n{name}: {size}x{size} input, {torch.get_num_threads()} CPU threads, fp32; "
        f"measured halo {tiling['halo']} px, seam error {tiling['seam_error']:.2g} "
        f"(tolerance {TOLERANCE:g}); stitched tiles overlap {tiling_halo(stitched)} px, "
        f"blended ones {tiling_halo(blended)} px"
    )
    image = natural(3, size)
    untiled_s, whole = timed(lambda: upscale(image, blended, tile=size, device="cpu"))
    print(f"untiled: {untiled_s:.1f} s")
    print(
        "| tile (px) | tiles | stitched max / mean diff | blended max / mean diff | "
        "stitched seam step | blended seam step | stitched / blended time (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for tile in tiles:
        cells = []
        for model in (stitched, blended):
            seconds, result = timed(lambda m=model, t=tile: upscale(image, m, tile=t, device="cpu"))
            borders = [s.keep_start * 2 for s in axis_spans(size, tile, 0)[1:]]
            difference = np.abs(result - whole)
            cells.append(
                (
                    f"{difference.max():.2g} / {difference.mean():.2g}",
                    f"{seam_step(result, whole, borders):.2f}",
                    seconds,
                )
            )
        count = len(axis_spans(size, tile, 0)) ** 2
        (s_diff, s_step, s_time), (b_diff, b_step, b_time) = cells
        print(
            f"| {tile} | {count} | {s_diff} | {b_diff} | {s_step} | {b_step} | "
            f"{s_time:.1f} / {b_time:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
