"""Low-resolution sample images for a first try: scikit-image's bundled photos and micrographs
(no download), shrunk 4x with the benchmark's bicubic so a 4x result can be compared with the
original."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from skimage import data

from napari_srgan.training.degradations import bicubic_downscale, modcrop

#: name -> (scikit-image loader, what it shows)
SAMPLES: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "astronaut": (data.astronaut, "astronaut Eileen Collins, RGB photo"),
    "cell": (data.cell, "cell, grey light micrograph"),
    "ihc": (data.immunohistochemistry, "immunohistochemistry, RGB micrograph"),
}


def shrink(image: np.ndarray) -> np.ndarray:
    """An 8-bit image shrunk 4x (MATLAB-style bicubic), rounded like a saved file."""
    image = modcrop(image)
    tensor = torch.from_numpy(image.astype(np.float64))
    tensor = tensor.permute(2, 0, 1) if image.ndim == 3 else tensor
    small = bicubic_downscale(tensor)
    small = small.permute(1, 2, 0) if image.ndim == 3 else small
    return np.clip(np.rint(small.numpy()), 0, 255).astype(np.uint8)


def low_resolution_sample(name: str) -> tuple[np.ndarray, str]:
    """(the shrunk image, a description)."""
    if name not in SAMPLES:
        raise ValueError(f"no sample named {name!r}; choose from {', '.join(SAMPLES)}")
    load, description = SAMPLES[name]
    return shrink(load()), f"skimage.data: {description}, shrunk 4x (bicubic)"
