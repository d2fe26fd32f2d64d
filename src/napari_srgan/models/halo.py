"""Measure how much overlap tiles need with a model's own weights (its *measured halo*).

The theoretical receptive field (40 input pixels for the default SRResNet) bounds how far an
output pixel can see, but trained weights' influence fades much sooner. The measured halo is the
smallest overlap ``h`` for which a tile that is cut ``h`` pixels beyond its kept part (zero
padding there, as the network pads) gives the same kept output as a whole-image pass within
:data:`TOLERANCE` on the [0, 1] scale.

It is found by *cut probes* on real images (photos for RGB models, micrographs and textures for
grey ones, all bundled with scikit-image, so every install measures alike): for
several crops, the network's output of the crop's centre is computed once with all the context
the architecture can use and once with only ``h`` pixels of it, and ``h`` is bisected. A safety
margin is added, and the result is verified with probes on held-back images (grown until they
pass too); it is never more than the theoretical halo. The tests and ``scripts/measure_halo.py``
check it with the real tiled engine against untiled output.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import platformdirs
import torch

from napari_srgan.io.atomic_files import atomic_write
from napari_srgan.io.hashing import file_sha256
from napari_srgan.models.interface import SRModel

log = logging.getLogger(__name__)

#: Largest difference between tiled and untiled output, on the [0, 1] scale.
TOLERANCE = 1e-4
#: Pixels added to the bisected halo: held-back images may need a little more than probed ones.
SAFETY_MARGIN = 2
#: Kept block of a probe (input pixels per side).
PROBE_BLOCK = 8
#: Probes per image (positions spread over it).
PROBES_PER_IMAGE = 2
#: Images probed, and held back for verification.
PROBED_IMAGES, HELD_BACK_IMAGES = 3, 2
#: Context probed for models whose reach is unknown (e.g. attention).
UNKNOWN_REACH = 64
#: Set this to keep the halo cache somewhere other than the platform's user cache folder.
CACHE_DIR_ENV = "NAPARI_SRGAN_CACHE_DIR"
#: A measurement still running after this many seconds logs why the wait (once per file).
NOTICE_AFTER_S = 10.0
#: Probe images bundled with scikit-image (offline, and the same on every install): photos for
#: RGB models, micrographs and textures for grey ones; the held-back ones verify the halo.
PROBES = {
    (3, False): ("astronaut", "coffee", "rocket"),
    (3, True): ("chelsea", "immunohistochemistry"),
    (1, False): ("cell", "camera", "coins"),
    (1, True): ("moon", "gravel"),
}

Forward = Callable[[torch.Tensor], torch.Tensor]


def probe_images(channels: int, count: int, *, held_back: bool = False) -> list[np.ndarray]:
    """``count`` unit-scaled ``(h, w, channels)`` float32 images from :data:`PROBES` (the
    measurement and the held-back ones disjoint), then synthetic textures if more are needed
    or the model has neither 1 nor 3 channels."""
    import skimage.data

    names = PROBES.get((channels, held_back), ())[:count]
    images = [_to_unit(getattr(skimage.data, name)(), channels) for name in names]
    seed = 1000 if held_back else 0
    images += [synthetic_texture(channels, seed + i) for i in range(len(images), count)]
    return images


def _to_unit(image: np.ndarray, channels: int) -> np.ndarray:
    """An 8-bit grey or RGB image as ``(h, w, channels)`` float32 in [0, 1]."""
    image = image[..., None] if image.ndim == 2 else image[..., :3]
    if channels == 1 and image.shape[-1] == 3:
        image = image.mean(axis=-1, keepdims=True)
    elif channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return (image.astype(np.float32) / 255.0).astype(np.float32)


def synthetic_texture(channels: int, seed: int, size: int = 160) -> np.ndarray:
    """Smooth noise at several scales with sharp edges: detail like a photo or a micrograph."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, channels), np.float32)
    for cells in (4, 16, 64):
        coarse = rng.random((cells, cells, channels)).astype(np.float32)
        step = -(-size // cells)
        blocks = np.kron(coarse, np.ones((step, step, 1), np.float32))
        image += blocks[:size, :size] / 3
    return np.clip(image, 0.0, 1.0)


def probe_crops(images: Sequence[np.ndarray], reach: int) -> torch.Tensor:
    """``(n, c, side, side)`` crops with ``reach`` pixels of context around a central block."""
    side = 2 * reach + PROBE_BLOCK
    crops = []
    for image in images:
        height, width = image.shape[:2]
        if height < side or width < side:
            image = np.pad(
                image,
                ((0, max(side - height, 0)), (0, max(side - width, 0)), (0, 0)),
                mode="reflect",
            )
            height, width = image.shape[:2]
        for k in range(PROBES_PER_IMAGE):
            y = (height - side) * (k + 1) // (PROBES_PER_IMAGE + 1)
            x = (width - side) * (PROBES_PER_IMAGE - k) // (PROBES_PER_IMAGE + 1)
            crops.append(image[y : y + side, x : x + side])
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    return batch.contiguous(memory_format=torch.channels_last)


def cut_error(forward: Forward, crops: torch.Tensor, reach: int, halo: int, scale: int) -> float:
    """Largest difference on the kept block between the full crop and the crop cut ``halo``
    pixels beyond the block."""
    block = PROBE_BLOCK
    with torch.inference_mode():
        full = forward(crops)[..., reach * scale : (reach + block) * scale, :]
        full = full[..., reach * scale : (reach + block) * scale]
        window = crops[
            ..., reach - halo : reach + block + halo, reach - halo : reach + block + halo
        ]
        cut = forward(window)[..., halo * scale : (halo + block) * scale, :]
        cut = cut[..., halo * scale : (halo + block) * scale]
    return float((full.float() - cut.float()).abs().max())


def bisect_halo(forward: Forward, crops: torch.Tensor, reach: int, scale: int) -> int:
    """The smallest halo in ``[0, reach]`` whose cut error is within :data:`TOLERANCE`
    (errors fall with the halo; ``reach`` itself is exact)."""
    low, high = 0, reach
    if cut_error(forward, crops, reach, 0, scale) <= TOLERANCE:
        return 0
    while high - low > 1:
        middle = (low + high) // 2
        if cut_error(forward, crops, reach, middle, scale) <= TOLERANCE:
            high = middle
        else:
            low = middle
    return high


def measure_halo(
    model: SRModel,
    *,
    images: Sequence[np.ndarray] | None = None,
    held_back: Sequence[np.ndarray] | None = None,
) -> int:
    """The measured halo of ``model`` (see the module doc)."""
    channels = model.in_channels
    reach = model.card.theoretical_halo or UNKNOWN_REACH
    network = model.network.eval().to(memory_format=torch.channels_last)
    images = probe_images(channels, PROBED_IMAGES) if images is None else images
    if held_back is None:
        held_back = probe_images(channels, HELD_BACK_IMAGES, held_back=True)
    crops = probe_crops(images, reach)
    halo = min(reach, bisect_halo(network, crops, reach, model.scale) + SAFETY_MARGIN)
    check = probe_crops(held_back, reach)
    while halo < reach and cut_error(network, check, reach, halo, model.scale) > TOLERANCE:
        halo += 1
    log.info("measured halo of %s: %d px (theoretical %s)", model.card.name, halo, reach)
    return halo


def seam_error(
    model: SRModel, halo: int, *, held_back: Sequence[np.ndarray] | None = None
) -> float:
    """How far tiles reading ``halo`` pixels of overlap are from untiled output: the largest cut
    error on held-back probes (at most :data:`TOLERANCE` for a halo from :func:`measure_halo`,
    unless even the full reach is not exact, e.g. global pooling or attention). Models of
    unbounded reach are compared with crops of :data:`UNKNOWN_REACH` more context than the halo:
    a halo as large as the probe would compare a crop with itself."""
    theoretical = model.card.theoretical_halo
    reach = halo + UNKNOWN_REACH if theoretical is None else max(theoretical, halo)
    if held_back is None:
        held_back = probe_images(model.in_channels, HELD_BACK_IMAGES, held_back=True)
    network = model.network.eval().to(memory_format=torch.channels_last)
    return cut_error(network, probe_crops(held_back, reach), reach, halo, model.scale)


def tiling_check(
    model: SRModel, halo: int | None = None, *, held_back: Sequence[np.ndarray] | None = None
) -> dict:
    """What a card records about tiling (``metrics["tiling"]``): the halo (measured unless
    given), the seam error at it, and whether that is within :data:`TOLERANCE` (if not, the
    engine blends the model's tiles instead of stitching them)."""
    halo = measure_halo(model) if halo is None else halo
    error = seam_error(model, halo, held_back=held_back)
    return {"halo": halo, "seam_error": error, "exact": error <= TOLERANCE}


def measure_tiling(model: SRModel, cache_for: str | os.PathLike | None = None) -> None:
    """Put :func:`tiling_check` with the model's own weights on its card (``measured_halo`` and
    ``metrics["tiling"]``), cached by the hash of the file ``cache_for`` when given: a community
    file is measured on its first load only, a converted file carries the result."""
    tiling = (
        tiling_check(model)
        if cache_for is None
        else cached_tiling(cache_for, lambda: tiling_check(model))
    )
    model.card.measured_halo = tiling["halo"]
    model.card.metrics["tiling"] = tiling


def cache_path() -> Path:
    folder = os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir(
        "napari-srgan", appauthor=False
    )
    return Path(folder) / "measured-halos.json"


def cached_halo(path: str | os.PathLike, measure: Callable[[], int]) -> int:
    """The measured halo of the model file at ``path``, from the cache (keyed by the file's
    SHA-256) or measured now and cached. A cache that cannot be read or written is skipped."""
    return _cached(path, file_sha256(path), measure, lambda value: isinstance(value, int))


def cached_tiling(path: str | os.PathLike, measure: Callable[[], dict]) -> dict:
    """:func:`tiling_check` of the model file at ``path``, cached like :func:`cached_halo`."""

    def valid(value) -> bool:
        return isinstance(value, dict) and set(value) == {"halo", "seam_error", "exact"}

    return _cached(path, f"tiling:{file_sha256(path)}", measure, valid)


def _cached(path: str | os.PathLike, key: str, measure: Callable, valid: Callable[[object], bool]):
    """The cached value under ``key`` (of the file at ``path``) if ``valid``, else
    ``measure()``, stored."""
    cache = cache_path()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and valid(known.get(key)):
        return known[key]
    # Large attention models take minutes on a CPU: say why the wait, once it is noticeable.
    notice = threading.Timer(
        NOTICE_AFTER_S,
        log.warning,
        ("measuring how %s tiles (once per model file, then cached)...", Path(path).name),
    )
    notice.daemon = True
    notice.start()
    try:
        value = measure()
    finally:
        notice.cancel()
    known = known if isinstance(known, dict) else {}
    known[key] = value
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(known, sort_keys=True)
        # Not a temporary name of its own: what a killed writer leaves is removed next time.
        atomic_write(cache, lambda temp: Path(temp).write_text(text), overwrite=True)
    except OSError as error:
        log.warning("could not cache a tiling measurement in %s: %s", cache, error)
    return value
