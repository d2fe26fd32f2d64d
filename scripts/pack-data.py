"""Pack ../shared/data losslessly as WebP (about 0.67x the PNG size) for a remote GPU machine
with an upload limit, and unpack it there; every pixel is checked to round-trip exactly.

    python scripts/pack-data.py pack ../shared/data gpudata
    python scripts/pack-data.py unpack gpudata ../shared/data      # on the remote machine
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, features

FOLDERS = ["train/T91", "train/BSD200", "val/Set5", "val/Set14", "microscopy/em_isbi2012_train"]


def pack_one(job: tuple[Path, Path, Path]) -> tuple[str, str]:
    source, destination, path = job
    image = Image.open(path)
    image.load()
    packed = destination / path.relative_to(source).with_suffix(".webp")
    packed.parent.mkdir(parents=True, exist_ok=True)
    # WebP holds RGB(A) only: grey is stored as RGB and converted back from the recorded mode.
    rgb = image.convert("RGBA" if "A" in image.mode else "RGB")
    rgb.save(packed, "WEBP", lossless=True, quality=50, method=4)
    back = Image.open(packed).convert(image.mode)
    if not np.array_equal(np.asarray(back), np.asarray(image)):
        raise SystemExit(f"{path}: WebP did not round-trip exactly")
    return str(path.relative_to(source)), image.mode


def read_webp(path: Path) -> Image.Image:
    if features.check("webp"):
        return Image.open(path)
    import cv2  # a Pillow built without libwebp: OpenCV decodes it (as BGR)

    return Image.fromarray(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))


def unpack_one(job: tuple[Path, Path, str, str]) -> None:
    source, destination, name, mode = job
    target = destination / name
    target.parent.mkdir(parents=True, exist_ok=True)
    read_webp(source / Path(name).with_suffix(".webp")).convert(mode).save(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    args = parser.parse_args()
    source, destination = args.source, args.destination
    with ProcessPoolExecutor() as pool:
        if args.action == "pack":
            files = [p for f in FOLDERS for p in sorted((source / f).glob("*.png"))]
            modes = dict(pool.map(pack_one, [(source, destination, p) for p in files]))
            (destination / "modes.json").write_text(json.dumps(modes))
        else:
            modes = json.loads((source / "modes.json").read_text())
            jobs = [(source, destination, name, mode) for name, mode in modes.items()]
            list(pool.map(unpack_one, jobs))
    print(f"{args.action}ed {len(modes)} images into {destination}")


if __name__ == "__main__":
    main()
