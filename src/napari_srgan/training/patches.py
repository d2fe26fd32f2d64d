"""Training pairs: random HR patches from images of any size, with LR made or given.

Patches are read by slicing, so a source can be a numpy, memmap, zarr or dask array far larger
than memory. Each source is normalised with the range the Upscale path would use for it, so a
model learns the intensities it will later see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_srgan.engine.upscale import ImageLayout, InvalidImageError, check_image
from napari_srgan.messages import shown
from napari_srgan.models.normalization import (
    IntensityRange,
    NormalizationSpec,
    intensity_range,
    regular_subsample,
)
from napari_srgan.models.srresnet import SCALE
from napari_srgan.training.degradations import Bicubic, Degradation

#: HR pixels of real context read around each patch before synthesising LR, so the LR matches
#: what degrading the whole image would give (bicubic x4 reaches 8 HR pixels, blur a few more).
CONTEXT = 16
#: Luma weights (BT.601) for turning RGB training data into grey for a 1-channel model.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class TrainingImage:
    """One HR image or stack, optionally with its aligned LR: exactly 1/scale of its size, or on
    the HR pixel grid (the same shape; e.g. widefield -> SRRF, low -> high SNR).

    ``rows`` limits sampling to HR rows ``[0, rows)``; the rest can be held out for validation.
    """

    hr: object
    lr: object | None = None
    rgb: bool | None = None
    name: str = "image"
    rows: int | None = None
    layout: ImageLayout = field(init=False)
    hr_range: IntensityRange = field(init=False)
    lr_range: IntensityRange | None = field(init=False, default=None)
    _prepared: tuple | None = field(init=False, default=None, repr=False)

    def prepare(self, spec: NormalizationSpec, scale: int = SCALE) -> None:
        """Validate and compute intensity ranges (once; never per patch)."""
        if self._prepared == (spec, scale):
            return
        try:
            self.layout = check_image(self.hr, self.rgb)
        except InvalidImageError as error:
            raise InvalidImageError(f"{shown(self.name)}: {error}") from None
        _check_finite(self.hr, shown(self.name))
        self.hr_range = _range(self.hr, self.layout, spec)
        if self.rows is None:
            self.rows = self.layout.height
        if self.lr is not None:
            shape = tuple(self.lr.shape)
            expected = _lr_shape(self.layout, scale)
            if shape not in (expected, self.layout.shape):
                smaller = f"exactly 1/{scale} its size {expected} or " if scale > 1 else ""
                raise InvalidImageError(
                    f"{shown(self.name)}: the LR image has shape {shape}, but for a {scale}x model an HR "
                    f"image of shape {self.layout.shape} needs LR of {smaller}the same shape (on "
                    "the HR pixel grid)"
                )
            _check_finite(self.lr, f"{shown(self.name)} (LR)")
            self.lr_range = _range(self.lr, ImageLayout(shape, self.layout.rgb), spec)
        self._prepared = (spec, scale)

    @property
    def lr_on_hr_grid(self) -> bool:
        """The paired LR has the HR's shape (it is downsampled for a >1x network)."""
        return self.lr is not None and tuple(self.lr.shape) == self.layout.shape

    @property
    def weight(self) -> int:
        """Sampling weight: the number of trainable HR pixels."""
        return self.layout.plane_count * (self.rows or 0) * self.layout.width


def _lr_shape(layout: ImageLayout, scale: int = SCALE) -> tuple[int, ...]:
    tail = (layout.shape[-1],) if layout.rgb else ()
    return (*layout.leading_shape, layout.height // scale, layout.width // scale, *tail)


def _range(data, layout: ImageLayout, spec: NormalizationSpec) -> IntensityRange:
    return intensity_range(data[..., : layout.channels] if layout.has_alpha else data, spec)


def _check_finite(data, name: str) -> None:
    if np.dtype(data.dtype).kind == "f":
        sample = data if isinstance(data, np.ndarray) else regular_subsample(data)
        if not np.isfinite(sample).all():
            raise InvalidImageError(f"{name}: the image contains NaN or infinite values")


def to_model_channels(unit: np.ndarray, rgb: bool, channels: int) -> np.ndarray:
    """``(h, w[, c])`` unit-scaled data to ``(channels, h, w)`` float32 for the model."""
    if rgb and unit.shape[-1] >= 3:
        colour = unit[..., :3]
        if channels == 1:
            return (colour @ _LUMA)[None]
        return np.moveaxis(colour, -1, 0)
    if rgb:  # grey + alpha: the grey plane
        unit = unit[..., 0]
    return np.repeat(unit[None], channels, axis=0)


class PatchSampler:
    """Draws batches of (LR, HR) training pairs; reproducible from its seed and state."""

    def __init__(
        self,
        images: Sequence[TrainingImage],
        *,
        patch_size: int,
        channels: int,
        normalization: NormalizationSpec,
        degradation: Degradation | None = None,
        seed: int = 0,
        min_std: float = 0.01,
        max_tries: int = 20,
        skip_small: bool = False,
    ) -> None:
        if not images:
            raise InvalidImageError("no training images were given")
        if patch_size % SCALE or patch_size < 4 * SCALE:
            raise ValueError(f"patch size must be a multiple of {SCALE} and >= {4 * SCALE}")
        self.patch_size = patch_size
        self.channels = channels
        self.degradation = degradation or Bicubic()
        self.min_std = min_std
        self.max_tries = max_tries
        #: Images left out because they are smaller than a patch (only with ``skip_small``).
        self.skipped: list[str] = []
        self.images = []
        for image in images:
            image.prepare(normalization)
            if image.lr_on_hr_grid:
                raise InvalidImageError(
                    f"{shown(image.name)}: paired LR on the HR grid needs the device sampler"
                )
            if min(image.rows, image.layout.width) >= patch_size:
                self.images.append(image)
            elif skip_small:
                self.skipped.append(image.name)
            else:
                raise InvalidImageError(
                    f"{shown(image.name)}: {image.rows}x{image.layout.width} pixels available for "
                    f"training, smaller than one {patch_size}x{patch_size} patch"
                )
        if not self.images:
            raise InvalidImageError(f"no training image is at least {patch_size}x{patch_size}")
        weights = np.array([image.weight for image in self.images], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.rng = np.random.default_rng(seed)
        self.torch_rng = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"numpy": self.rng.bit_generator.state, "torch": self.torch_rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["numpy"]
        self.torch_rng.set_state(state["torch"])

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lr, hr)`` float32 tensors of shapes ``(size, C, p/4, p/4)`` and ``(size, C, p, p)``."""
        chosen = self.rng.choice(len(self.images), size=size, p=self.probabilities)
        paired = [
            self._paired_patch(self.images[i]) for i in chosen if self.images[i].lr is not None
        ]
        synthetic = [
            self._context_patch(self.images[i]) for i in chosen if self.images[i].lr is None
        ]
        lrs, hrs = [], []
        if paired:
            lrs += [torch.from_numpy(lr) for lr, _ in paired]
            hrs += [torch.from_numpy(hr) for _, hr in paired]
        if synthetic:
            windows = torch.from_numpy(np.stack(synthetic))
            lr = self.degradation(windows, self.torch_rng)
            crop = CONTEXT // SCALE
            lrs += list(lr[..., crop:-crop, crop:-crop])
            hrs += list(windows[..., CONTEXT:-CONTEXT, CONTEXT:-CONTEXT])
        return torch.stack(lrs).float().contiguous(), torch.stack(hrs).float().contiguous()

    def _position(self, image: TrainingImage, size: int, rows: int, step: int = 1):
        plane = tuple(int(self.rng.integers(n)) for n in image.layout.leading_shape)
        y = int(self.rng.integers((rows - size) // step + 1)) * step
        x = int(self.rng.integers((image.layout.width - size) // step + 1)) * step
        return plane, y, x

    def _augment(self, patches: list[np.ndarray]) -> list[np.ndarray]:
        """The same random flip / 90-degree rotation for every array (``(c, h, w)``)."""
        turns, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
        out = []
        for patch in patches:
            patch = np.rot90(patch, turns, axes=(1, 2))
            out.append(np.ascontiguousarray(patch[:, :, ::-1] if flip else patch))
        return out

    def _context_patch(self, image: TrainingImage) -> np.ndarray:
        """An HR window of ``patch + 2*CONTEXT`` pixels (mirrored past the image border, as
        MATLAB's resize does), whose centre patch has content."""
        size = self.patch_size
        for _ in range(self.max_tries):
            plane, y, x = self._position(image, size, image.rows)
            window = _read_mirrored(
                image, plane, y - CONTEXT, x - CONTEXT, size + 2 * CONTEXT, self.channels
            )
            centre = window[:, CONTEXT:-CONTEXT, CONTEXT:-CONTEXT]
            if centre.std() >= self.min_std:
                break
        return self._augment([window])[0]

    def _paired_patch(self, image: TrainingImage) -> tuple[np.ndarray, np.ndarray]:
        size = self.patch_size
        for _ in range(self.max_tries):
            plane, y, x = self._position(image, size, image.rows, step=SCALE)
            hr = _read(image.hr, image.layout, image.hr_range, plane, y, x, size, self.channels)
            if hr.std() >= self.min_std:
                break
        small = size // SCALE
        lr = _read(
            image.lr,
            image.layout,
            image.lr_range,
            plane,
            y // SCALE,
            x // SCALE,
            small,
            self.channels,
        )
        return tuple(self._augment([lr, hr]))


def _read(data, layout, value_range, plane, y, x, size, channels) -> np.ndarray:
    block = np.asarray(data[(*plane, slice(y, y + size), slice(x, x + size))])
    return to_model_channels(value_range.to_unit(block), layout.rgb, channels)


def _read_mirrored(
    image: TrainingImage, plane, y: int, x: int, size: int, channels: int
) -> np.ndarray:
    layout = image.layout
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + size, layout.height), min(x + size, layout.width)
    block = np.asarray(image.hr[(*plane, slice(y0, y1), slice(x0, x1))])
    pad = [(y0 - y, y + size - y1), (x0 - x, x + size - x1)] + [(0, 0)] * (block.ndim - 2)
    if any(before or after for before, after in pad):
        block = np.pad(block, pad, mode="symmetric")
    unit = image.hr_range.to_unit(block)
    return to_model_channels(unit, layout.rgb, channels)


def held_out_rows(height: int, fraction: float) -> int:
    """How many bottom rows to keep for validation (a multiple of the scale)."""
    return math.floor(height * fraction / SCALE) * SCALE
