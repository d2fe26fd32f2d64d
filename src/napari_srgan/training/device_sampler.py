"""Training pairs sampled on the training device: no step waits for a CPU thread.

The HR images (and any paired LR) are normalised once and kept in one flat tensor on the device,
or in pinned host memory when they do not fit there. A batch is then a handful of batched torch
ops: pick images and positions, reject background candidates, gather the windows through index
grids that already include the random flip / quarter turn and the mirrored border context, and
synthesise LR with the (batched) degradation. Everything draws from seeded torch generators, so a
run is reproducible and resumable from :meth:`DeviceSampler.state_dict`.

For data that does not fit in memory, :class:`ParallelSampler` runs the slicing
:class:`~napari_srgan.training.patches.PatchSampler` in worker processes instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dask
import numpy as np
import psutil
import torch

from napari_srgan.engine.upscale import InvalidImageError
from napari_srgan.messages import shown
from napari_srgan.models.normalization import NormalizationSpec
from napari_srgan.models.srresnet import SCALE
from napari_srgan.training.degradations import Bicubic, Degradation, bicubic_downscale
from napari_srgan.training.patches import CONTEXT, PatchSampler, TrainingImage, to_model_channels

#: Background check: the std of a candidate patch is estimated on every ``STD_STRIDE``-th pixel.
STD_STRIDE = 2
#: Most index elements one chunk of the background check gathers at once.
CHECK_ELEMENTS = 1 << 22
#: Share of free device (or available host) memory the training data may take.
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class _Planes:
    """Where each 2-D plane lies in a flat buffer: offsets and sizes (device tensors)."""

    offset: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor


def data_bytes(images: Sequence[TrainingImage], channels: int, scale: int = SCALE) -> int:
    """float32 bytes the sampler keeps for ``images`` (prepared), paired LR included."""
    total = 0
    for image in images:
        pixels = image.layout.plane_count * image.rows * image.layout.width
        if image.lr is not None:
            pixels += pixels if image.lr_on_hr_grid else pixels // (scale * scale)
        total += pixels * channels * 4
    return total


def memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_SHARE)
    return int(psutil.virtual_memory().available * MEMORY_SHARE)


class DeviceSampler:
    """Draws ``(lr, hr)`` batches on ``device``, like :class:`PatchSampler` but batched in torch.

    ``scale`` is the network's factor (1 for a restoration model). Paired LR may be 1/scale of
    the HR's size, or on the HR grid (then it is bicubic-downsampled with the same border
    context as synthetic LR). A candidate patch whose std is below ``min_std`` is background:
    up to ``max_tries`` candidates are drawn per sample and the first with content is kept.
    """

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
        device: str | torch.device = "cpu",
        scale: int = SCALE,
        pinned: bool | None = None,
    ) -> None:
        if not images:
            raise InvalidImageError("no training images were given")
        if patch_size % scale or patch_size < 16 or patch_size // scale < 4:
            raise ValueError(f"patch size must be a multiple of {scale}, >= 16 and >= {4 * scale}")
        self.patch_size, self.channels, self.scale = patch_size, channels, scale
        self.degradation = degradation or Bicubic()
        self.min_std, self.max_tries = min_std, max_tries
        self.device = torch.device(device)
        #: Border context read around each patch: CONTEXT rounded up to a multiple of the scale.
        self.context = -(-CONTEXT // scale) * scale
        self.skipped: list[str] = []
        self.images: list[TrainingImage] = []
        for image in images:
            image.prepare(normalization, scale)
            if min(image.rows, image.layout.width) >= max(patch_size, self.context):
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
        if pinned is None:  # keep the data on the device if it fits, else in pinned host memory
            needed = data_bytes(self.images, channels, scale)
            pinned = self.device.type == "cuda" and needed > memory_budget(self.device)
        self.storage = torch.device("cpu") if pinned else self.device
        self._load(pinned)
        self.generator = torch.Generator(self.storage).manual_seed(seed)
        self.noise_generator = torch.Generator(self.device).manual_seed(seed + 1)
        self._grids = _augmented_grids(patch_size + 2 * self.context, self.storage)

    def _load(self, pinned: bool) -> None:
        """Every plane, normalised to the model's channels, into flat HR / LR buffers."""
        hr_parts, lr_parts, weights = [], [], []
        hr_planes, lr_planes, kinds = [], [], []
        hr_offset = lr_offset = 0
        for image in self.images:
            rows, width = image.rows, image.layout.width
            for plane in np.ndindex(*image.layout.leading_shape):
                hr = np.asarray(image.hr[(*plane, slice(0, rows))])
                hr = to_model_channels(image.hr_range.to_unit(hr), image.layout.rgb, self.channels)
                hr_parts.append(torch.from_numpy(np.ascontiguousarray(hr, np.float32)).flatten())
                hr_planes.append((hr_offset, rows, width))
                hr_offset += hr.size
                weights.append(rows * width)
                if image.lr is None:
                    kinds.append(0)
                    lr_planes.append((0, 1, 1))
                    continue
                on_grid = image.lr_on_hr_grid
                lr_rows = rows if on_grid else rows // self.scale
                lr = np.asarray(image.lr[(*plane, slice(0, lr_rows))])
                lr = to_model_channels(image.lr_range.to_unit(lr), image.layout.rgb, self.channels)
                lr_parts.append(torch.from_numpy(np.ascontiguousarray(lr, np.float32)).flatten())
                lr_planes.append((lr_offset, lr.shape[1], lr.shape[2]))
                lr_offset += lr.size
                kinds.append(2 if on_grid or self.scale == 1 else 1)

        def flat(parts: list[torch.Tensor]) -> torch.Tensor:
            data = torch.cat(parts) if parts else torch.zeros(1)
            return data.pin_memory() if pinned else data.to(self.storage)

        def planes(rows: list[tuple[int, int, int]]) -> _Planes:
            table = torch.tensor(rows, dtype=torch.int64, device=self.storage)
            return _Planes(table[:, 0], table[:, 1], table[:, 2])

        self.hr, self.lr = flat(hr_parts), flat(lr_parts)
        self.hr_planes, self.lr_planes = planes(hr_planes), planes(lr_planes)
        #: 0: LR synthesised, 1: paired LR at 1/scale, 2: paired LR on the HR grid.
        self.kinds = torch.tensor(kinds, device=self.storage)
        #: No paired LR: every batch is synthesised, with no per-batch check of the kinds.
        self.synthetic_only = not any(kinds)
        weights = torch.tensor(weights, dtype=torch.float64)
        self.probabilities = (weights / weights.sum()).to(self.storage)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "noise": self.noise_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())
        self.noise_generator.set_state(state["noise"].cpu())

    def _uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.storage, dtype=torch.float64)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lr, hr)`` float32 on the device: ``(size, C, p/scale, p/scale)``, ``(size, C, p, p)``."""
        patch, scale, context_lr = self.patch_size, self.scale, self.context // self.scale
        chosen = torch.multinomial(
            self.probabilities, size, replacement=True, generator=self.generator
        )
        kinds = self.kinds[chosen]
        # Paired 1/scale LR needs HR positions on the LR grid.
        step = torch.where(kinds == 1, scale, 1)
        y, x = self._positions(chosen, step)
        augment = (self._uniform(size) * 8).long()
        hr_windows = self._gather(
            self.hr, self.hr_planes, chosen, y - self.context, x - self.context, augment
        )
        hr = hr_windows[..., self.context : -self.context, self.context : -self.context]
        hr_windows = hr_windows.to(self.device, non_blocking=True)
        small = patch // scale
        window = (..., slice(context_lr, context_lr + small), slice(context_lr, context_lr + small))
        hr = hr.to(self.device, non_blocking=True).contiguous()
        if self.synthetic_only:  # no host sync: a GPU never waits for this method
            return self.degradation(hr_windows, self.noise_generator, scale)[window].float(), hr
        lr = torch.empty((size, self.channels, small, small), device=self.device)
        synthetic = (kinds == 0).to(self.device)
        if bool(synthetic.any()):
            degraded = self.degradation(hr_windows[synthetic], self.noise_generator, scale)
            lr[synthetic] = degraded[window].float()
        on_grid = kinds == 2
        if bool(on_grid.any()):
            grid = self._gather(
                self.lr,
                self.lr_planes,
                chosen[on_grid],
                y[on_grid] - self.context,
                x[on_grid] - self.context,
                augment[on_grid],
            ).to(self.device, non_blocking=True)
            lr[on_grid.to(self.device)] = bicubic_downscale(grid, scale)[window]
        paired = kinds == 1
        if bool(paired.any()):
            lr[paired.to(self.device)] = self._gather(
                self.lr,
                self.lr_planes,
                chosen[paired],
                y[paired] // scale,
                x[paired] // scale,
                augment[paired],
                size=small,
            ).to(self.device, non_blocking=True)
        return lr, hr

    def _positions(self, chosen: torch.Tensor, step: torch.Tensor):
        """Top-left corners of patches with content (the first of ``max_tries`` candidates whose
        std reaches ``min_std``; the last candidate if none does)."""
        size, tries, patch = chosen.shape[0], self.max_tries, self.patch_size
        rows, cols = self.hr_planes.height[chosen], self.hr_planes.width[chosen]
        y = (self._uniform(tries, size) * ((rows - patch) // step + 1)).long() * step
        x = (self._uniform(tries, size) * ((cols - patch) // step + 1)).long() * step
        if self.min_std <= 0 or tries == 1:
            return y[0], x[0]
        # Every candidate is checked, in chunks that bound the index memory, with no early exit:
        # a data-dependent loop would make a GPU wait for the host once per round.
        offsets = torch.arange(0, patch, STD_STRIDE, device=self.storage)
        channel = torch.arange(self.channels, device=self.storage)[:, None, None]
        width, base = cols[:, None, None, None], self.hr_planes.offset[chosen][:, None, None, None]
        area = rows[:, None, None, None] * width
        chunk = max(1, CHECK_ELEMENTS // (size * self.channels * offsets.numel() ** 2))
        content = torch.cat(
            [
                self.hr[
                    (base + x[start : start + chunk, :, None, None, None])
                    + channel * area
                    + (y[start : start + chunk, :, None, None, None] + offsets[:, None]) * width
                    + offsets
                ]
                .flatten(2)
                .std(dim=2)
                >= self.min_std
                for start in range(0, tries, chunk)
            ]
        )
        content[-1] = True  # no candidate with content: the last one
        first = content.to(torch.int32).argmax(dim=0)  # the first candidate with content
        pick = torch.arange(size, device=self.storage)
        return y[first, pick], x[first, pick]

    def _gather(self, data, planes: _Planes, chosen, y, x, augment, size: int | None = None):
        """``(n, C, s, s)`` windows at ``(y, x)`` (may reach past the border: mirrored), already
        flipped / turned by ``augment``. ``size`` defaults to the HR window with context."""
        if size is None:
            grid_y, grid_x = self._grids
        else:
            grid_y, grid_x = _augmented_grids(size, self.storage)
        rows, cols = planes.height[chosen][:, None, None], planes.width[chosen][:, None, None]
        ys = _mirror(y[:, None, None] + grid_y[augment], rows)
        xs = _mirror(x[:, None, None] + grid_x[augment], cols)
        spatial = planes.offset[chosen][:, None, None] + ys * cols + xs  # (n, s, s)
        channel = torch.arange(self.channels, device=self.storage)[None, :, None, None]
        return data[spatial[:, None] + channel * (rows * cols)[:, None]]


def _mirror(index: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Symmetric border (the edge pixel repeated, as MATLAB's resize pads)."""
    index = torch.where(index < 0, -index - 1, index)
    return torch.where(index >= length, 2 * length - 1 - index, index)


def _augmented_grids(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column source offsets ``(8, size, size)`` of the 8 flips / quarter turns of a
    ``size`` x ``size`` window: gathering through them yields the transformed window directly."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    grids_y, grids_x = [], []
    for turns in range(4):
        for flip in (False, True):
            gy, gx = (ys, xs.flip(-1)) if flip else (ys, xs)
            grids_y.append(torch.rot90(gy, turns, dims=(0, 1)))
            grids_x.append(torch.rot90(gx, turns, dims=(0, 1)))
    return torch.stack(grids_y).to(device), torch.stack(grids_x).to(device)


class ParallelSampler:
    """The slicing :class:`PatchSampler` in ``workers`` processes, for data that does not fit in
    memory (zarr, dask, memmap). Batch ``i`` is drawn from seeds ``(seed, i)``, whichever worker
    makes it, so runs are reproducible for any worker count and resume at the same batch."""

    def __init__(self, sampler: PatchSampler, *, batch_size: int, seed: int = 0, workers: int = 2):
        self.sampler, self.batch_size, self.seed, self.workers = sampler, batch_size, seed, workers
        self.images = sampler.images
        self.skipped = sampler.skipped
        self.drawn = 0
        self._iterator = None

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = int(state["drawn"])
        self._iterator = None

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if size != self.batch_size:
            raise ValueError(f"this sampler makes batches of {self.batch_size}, not {size}")
        if self._iterator is None:
            loader = torch.utils.data.DataLoader(
                _SeededBatches(self.sampler, size, self.seed, self.drawn),
                batch_size=None,
                num_workers=self.workers,
                pin_memory=torch.cuda.is_available(),
                prefetch_factor=2 if self.workers else None,
                worker_init_fn=_compute_dask_in_this_thread,
            )
            self._iterator = iter(loader)
        self.drawn += 1
        return next(self._iterator)


def _compute_dask_in_this_thread(_worker: int) -> None:
    """A worker process is forked with a copy of dask's thread pool but none of its threads:
    a dask array read there waited forever for them (training on a dask layer hung at its
    first step, since reading the ranges had started the pool in the parent)."""
    dask.config.set(scheduler="synchronous")


class _SeededBatches(torch.utils.data.IterableDataset):
    def __init__(self, sampler: PatchSampler, size: int, seed: int, start: int) -> None:
        self.sampler, self.size, self.seed, self.start = sampler, size, seed, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = self.start + worker
        while True:
            self.sampler.rng = np.random.default_rng([self.seed, index])
            self.sampler.torch_rng.manual_seed(
                int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
            )
            yield self.sampler.batch(self.size)
            index += workers
