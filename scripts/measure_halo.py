"""Measure a model file's halo and store it in the file's card (weights stay bit-identical).

    python scripts/measure_halo.py src/napari_srgan/weights/*.safetensors

For each file: the halo from cut probes (napari_srgan.models.halo), then a check with the real
engine on held-back images: tiled output (several tile sizes) against untiled output, the
largest difference printed. The card's ``measured_halo`` is rewritten only when that check
holds the tolerance.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from napari_srgan.engine.upscale import upscale
from napari_srgan.io.atomic_files import atomic_write
from napari_srgan.models.files import load_model, native_model, read_metadata
from napari_srgan.models.halo import TOLERANCE, measure_halo, probe_images

#: Held-back crops checked with the engine (input pixels), and the kept tile sizes tiled with.
CHECK_SIZE, CHECK_TILES = (61, 77), (17, 24, 40)


def engine_check(model, halo: int) -> float:
    """Largest |tiled - untiled| (on [0, 1]) over held-back crops and tile sizes."""
    model.card.measured_halo = halo
    worst = 0.0
    for image in probe_images(model.in_channels, 2, held_back=True):
        crop = image[: CHECK_SIZE[0], : CHECK_SIZE[1]]
        crop = crop if model.in_channels == 3 else crop[..., 0]
        whole = upscale(crop, model, tile=max(CHECK_SIZE), device="cpu")
        for tile in CHECK_TILES:
            tiled = upscale(crop, model, tile=tile, device="cpu")
            span = float(crop.max() - crop.min())  # float input: outputs are in the crop's range
            worst = max(worst, float(abs(tiled - whole).max()) / span)
    return worst


def rewrite_card(path: Path, halo: int) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    card = json.loads(metadata["model_card"])
    card["measured_halo"] = halo
    metadata["model_card"] = json.dumps(card, sort_keys=True)
    atomic_write(path, lambda temp: save_file(tensors, temp, metadata=metadata), overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--dry-run", action="store_true", help="measure, do not rewrite")
    args = parser.parse_args()
    for path in args.files:
        _config, card = read_metadata(path)
        card.measured_halo = None
        model = native_model(load_model(path, measure=False).network, card, path)
        started = time.perf_counter()
        halo = measure_halo(model)
        seconds = time.perf_counter() - started
        worst = engine_check(model, halo)
        ok = worst <= TOLERANCE
        print(
            f"{path.name}: measured halo {halo} px (theoretical {card.theoretical_halo}), "
            f"{seconds:.0f} s; engine check tiled vs untiled max {worst:.2e} "
            f"({'within' if ok else 'OVER'} {TOLERANCE:g})",
            flush=True,
        )
        if ok and not args.dry_run:
            rewrite_card(path, halo)


if __name__ == "__main__":
    main()
