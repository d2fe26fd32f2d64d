"""Upscale an image or stack of any dtype and shape by the model's factor, tile by tile.

This is the one entry point shared by the napari widget, the CLI and the dask path.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from napari_srgan.engine.devices import (
    auto_precision,
    auto_tile_size,
    choose_device,
    memory_budget,
)
from napari_srgan.engine.ensemble import self_ensemble
from napari_srgan.engine.folding import inference_network
from napari_srgan.engine.tiling import (
    BlendedPlane,
    Cancelled,
    axis_spans,
    check_tile_size,
    crop_kept,
    plane_tiles,
    run_tiles,
)
from napari_srgan.engine.torch_safety import guard_triton
from napari_srgan.io.images import guess_rgb
from napari_srgan.models.interface import ModelCard, SRModel
from napari_srgan.models.normalization import (
    IntensityRange,
    NormalizationSpec,
    intensity_range,
    round_into,
)

log = logging.getLogger(__name__)

#: Data dimensions the engine accepts, channel axis included (e.g. T, Z, Y, X, RGB).
MAX_DIMENSIONS = 5
#: Smallest image side: fewer pixels carry too little context to super-resolve.
MIN_SIDE = 4


class InvalidImageError(ValueError):
    """The data cannot be upscaled; the message says why."""


@dataclass(frozen=True)
class ImageLayout:
    """Where the planes and channels of an array are: ``(*leading, y, x[, channels])``."""

    shape: tuple[int, ...]
    rgb: bool

    @property
    def leading_shape(self) -> tuple[int, ...]:
        return self.shape[: -3 if self.rgb else -2]

    @property
    def height(self) -> int:
        return self.shape[-3 if self.rgb else -2]

    @property
    def width(self) -> int:
        return self.shape[-2 if self.rgb else -1]

    @property
    def channels(self) -> int:
        """Colour channels the network sees (alpha excluded; grey + alpha has one)."""
        return 3 if self.rgb and self.shape[-1] >= 3 else 1

    @property
    def has_alpha(self) -> bool:
        """RGBA, or grey + alpha (a colour axis of 2)."""
        return self.rgb and self.shape[-1] in (2, 4)

    @property
    def plane_count(self) -> int:
        return math.prod(self.leading_shape)

    def output_shape(self, scale: int) -> tuple[int, ...]:
        tail = (self.shape[-1],) if self.rgb else ()
        return (*self.leading_shape, self.height * scale, self.width * scale, *tail)


def check_image(data, rgb: bool | None = None) -> ImageLayout:
    """Validate ``data`` and say how it is laid out; raise :class:`InvalidImageError` if unusable."""
    if isinstance(data, torch.Tensor):
        raise InvalidImageError(
            "got a torch tensor; pass a numpy, dask or zarr array (e.g. tensor.cpu().numpy())"
        )
    shape = tuple(int(s) for s in getattr(data, "shape", ()))
    dtype = np.dtype(getattr(data, "dtype", object))
    if dtype.kind not in "uif":
        raise InvalidImageError(
            f"unsupported data type {dtype}: only integer and floating point images can be upscaled"
        )
    if len(shape) < 2:
        raise InvalidImageError(f"an image needs at least 2 dimensions, got shape {shape}")
    if len(shape) > MAX_DIMENSIONS:
        raise InvalidImageError(
            f"{len(shape)} dimensions is more than the {MAX_DIMENSIONS} supported (e.g. T, Z, Y, X, RGB)"
        )
    if math.prod(shape) == 0:
        raise InvalidImageError(f"the image is empty (shape {shape})")
    rgb = guess_rgb(shape) if rgb is None else rgb
    if rgb and (len(shape) < 3 or shape[-1] not in (2, 3, 4)):
        raise InvalidImageError(
            f"a colour axis must have 2 (grey + alpha), 3 or 4 channels, got shape {shape}"
        )
    layout = ImageLayout(shape, rgb)
    if min(layout.height, layout.width) < MIN_SIDE:
        raise InvalidImageError(
            f"the image is {layout.height}x{layout.width} pixels; at least "
            f"{MIN_SIDE}x{MIN_SIDE} are needed to upscale"
        )
    if dtype.kind == "f" and isinstance(data, np.ndarray) and not np.isfinite(data).all():
        raise InvalidImageError("the image contains NaN or infinite values; replace them first")
    return layout


def colour_range(
    data,
    layout: ImageLayout,
    spec: NormalizationSpec,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> IntensityRange:
    """The intensity range over all colour channels and planes (alpha excluded); a lazily read
    image with NaN or infinite values is refused here, before any plane is computed.
    Percentiles read a sample of the whole stack (minutes from a slow disk):
    ``progress(done, total)`` counts its pieces, ``should_stop()`` returning True raises
    :class:`~napari_srgan.engine.tiling.Cancelled` between them."""

    def on_read(done: int, total: int) -> None:
        if should_stop is not None and should_stop():
            raise Cancelled
        if progress is not None:
            progress(done, total)

    colour = data[..., : layout.channels] if layout.has_alpha else data
    watched = progress is not None or should_stop is not None
    found = intensity_range(colour, spec, on_read=on_read if watched else None)
    if not (math.isfinite(found.low) and math.isfinite(found.high)):
        raise InvalidImageError("the image contains NaN or infinite values; replace them first")
    return found


def _alpha_to_unit(alpha: np.ndarray) -> np.ndarray:
    if np.issubdtype(alpha.dtype, np.integer):
        return alpha.astype(np.float32) / np.iinfo(alpha.dtype).max
    return alpha.astype(np.float32)


def _alpha_from_unit(alpha: np.ndarray, dtype: np.dtype) -> np.ndarray:
    alpha = np.clip(alpha, 0.0, 1.0)
    if np.issubdtype(dtype, np.integer):
        # float32 arithmetic, as the device path (PlaneCodec) does: the same pixels round alike
        return round_into(alpha * np.iinfo(dtype).max, dtype)
    return alpha.astype(dtype)


def channel_adapter(
    model: SRModel, data_channels: int, has_alpha: bool, network: torch.nn.Module | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward function for ``data_channels`` (+ alpha) inputs through ``network`` (default:
    ``model.network``).

    Grey data through an RGB model: the grey plane is fed as R=G=B and the mean of the three
    outputs is kept. RGB data through a grey model: each colour is upscaled as its own plane.
    Alpha never goes through the network: it is upscaled bicubically and clipped to [0, 1].
    """
    generator = model.network if network is None else network
    model_channels, scale = model.in_channels, model.scale

    def forward_colour(x: torch.Tensor) -> torch.Tensor:
        if data_channels == model_channels:
            return generator(x)
        if data_channels == 1 and model_channels == 3:
            return generator(x.expand(-1, 3, -1, -1)).mean(dim=1, keepdim=True)
        if model_channels == 1:
            b, c, h, w = x.shape
            return generator(x.reshape(b * c, 1, h, w)).reshape(b, c, h * scale, w * scale)
        raise InvalidImageError(
            f"a {model_channels}-channel model cannot upscale {data_channels}-channel images"
        )

    if not has_alpha:
        return forward_colour

    def forward_with_alpha(x: torch.Tensor) -> torch.Tensor:
        colour = forward_colour(x[:, :data_channels])
        alpha = F.interpolate(
            x[:, data_channels:], scale_factor=scale, mode="bicubic", align_corners=False
        )
        return torch.cat([colour, alpha.clamp(0.0, 1.0)], dim=1)

    return forward_with_alpha


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; MPS and CPU allocators raise RuntimeErrors (the
    CPU's says "can't allocate memory")."""
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError)
        and ("out of memory" in text or "can't allocate memory" in text)
    )


#: Devices where channels-last tensors make convolutions faster (oneDNN, cuDNN tensor cores).
CHANNELS_LAST_DEVICES = ("cpu", "cuda")


#: Serialises :func:`prepared_network`: threads (dask blocks, napari's slider) share one model.
_PREPARING = threading.Lock()


def prepared_network(model: SRModel, target: torch.device) -> torch.nn.Module:
    """``model``'s network on ``target`` in eval mode (channels-last where faster), in its
    fastest exact form. Its weights are moved or converted only while no other thread reads
    them: a conversion in one dask thread while another folded the tail from the same weights
    gave that block wrong values (about 1e-2) now and then."""
    channels_last = target.type in CHANNELS_LAST_DEVICES
    with _PREPARING:
        if not _ready(model.network, target, channels_last):
            model.network.to(target).eval()
            if channels_last:
                model.network.to(memory_format=torch.channels_last)
        network = inference_network(model.network)
        if network is not model.network and channels_last:
            network.to(memory_format=torch.channels_last)  # its new folded tail
    return network


def _ready(network: torch.nn.Module, target: torch.device, channels_last: bool) -> bool:
    """Whether ``network`` is already as :func:`prepared_network` leaves it."""
    tensors = [*network.parameters(), *network.buffers()]
    return not network.training and all(
        tensor.device == target
        and not (
            channels_last
            and tensor.dim() == 4
            and not tensor.is_contiguous(memory_format=torch.channels_last)
        )
        for tensor in tensors
    )


def device_forward(
    forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device, precision: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Channels-last tensors where that is faster, and autocast to fp16 / bf16 (``"auto"``: see
    :func:`~napari_srgan.engine.devices.auto_precision`)."""
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, not {precision!r}")
    if precision == "auto":
        precision = auto_precision(device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    channels_last = device.type in CHANNELS_LAST_DEVICES

    def run(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return forward(x).float()

    return run


def upscale(
    data,
    model: SRModel,
    *,
    rgb: bool | None = None,
    tile: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
    intensity: IntensityRange | None = None,
    exact: bool = False,
    memory_limit: int | None = None,
    out=None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    ensemble: bool = False,
):
    """Upscale ``data`` by ``model.scale`` and return an array of the same dtype (``out`` if
    given).

    ``data`` may be numpy, memmap, zarr or dask: tiles are read by slicing, so only a few batches
    of tiles are in memory at a time. Leading axes (Z, T, C...) are processed plane by plane.
    ``tile`` is the kept size of a tile in input pixels (default: the largest that fits in
    ``memory_limit`` bytes, by default :func:`~napari_srgan.engine.devices.memory_budget`; an
    image that fits is one tile). Tiles overlap by the model's measured halo, or by its
    theoretical receptive field with ``exact=True``. A model known not to be exact when tiled
    (:func:`blends_tiles`) gets overlapping tiles cross-faded instead of cut and stitched: no
    seams, at the price of a float32 band of one row of tiles at output width
    (:class:`~napari_srgan.engine.tiling.BlendedPlane`; the automatic tile keeps it within half
    the host memory budget).
    ``intensity`` overrides the range from the model card (e.g. one range for a whole dataset).
    ``progress(done, total)`` counts tiles; ``should_stop()`` returning True raises
    :class:`~napari_srgan.engine.tiling.Cancelled`. When the device runs out of memory, the tile size is
    halved and the plane is computed again from scratch (no partial result is reused).
    ``ensemble`` averages the 8 flips and rotations of every tile (8x the time; see
    :mod:`~napari_srgan.engine.ensemble`).
    """
    guard_triton()
    layout = check_image(data, rgb)
    halo, blend = tiling_halo(model, exact), blends_tiles(model.card, exact)
    multiple = model.card.size_multiple
    intensity = intensity or colour_range(data, layout, model.card.normalization)
    target = choose_device(device)
    network = prepared_network(model, target)
    codec = PlaneCodec(layout, intensity)
    unit_forward = device_forward(
        channel_adapter(model, layout.channels, layout.has_alpha, network), target, precision
    )
    if ensemble:
        unit_forward = self_ensemble(unit_forward)

    def forward(x: torch.Tensor) -> torch.Tensor:
        unit = unit_forward(codec.encode(x))
        return unit if blend else codec.decode(unit)  # blending mixes unit values, then decodes

    if tile is None:
        budget = memory_budget(target) if memory_limit is None else memory_limit
        tile = auto_tile_size(model, target, batch_size, memory_limit=budget, halo=halo)
        if blend:  # the blending band (host memory) gets at most half the host budget
            host = memory_budget(torch.device("cpu")) if memory_limit is None else memory_limit
            row = layout.width * model.scale**2 * codec.output_channels * 4
            tile = max(MIN_TILE, min(tile, host // 2 // row - halo))
    check_tile_size(tile)
    output_shape = layout.output_shape(model.scale)
    if out is None:
        out = np.empty(output_shape, dtype=intensity.dtype)
    elif tuple(out.shape) != output_shape:
        raise ValueError(f"output array has shape {tuple(out.shape)}, expected {output_shape}")
    planes = list(np.ndindex(*layout.leading_shape))
    done = 0
    for index, plane in enumerate(planes):
        reader = PlaneReader(data, plane, layout, codec, multiple)
        while True:
            uniform = batch_size > 1
            tiles = plane_tiles(layout.height, layout.width, tile, halo, multiple, uniform=uniform)
            if blend:
                place = BlendedPlane(
                    axis_spans(layout.height, tile, halo, multiple, uniform=uniform),
                    axis_spans(layout.width, tile, halo, multiple, uniform=uniform),
                    scale=model.scale,
                    ramp=halo,
                    channels=codec.output_channels,
                    flush=reader.row_writer(out, model.scale),
                )
            else:
                place = crop_kept(reader.writer(out, model.scale), model.scale)
            total = done + len(tiles) * (len(planes) - index)
            finished_in_plane = 0

            def count(finished: int, total: int = total, before: int = done) -> None:
                nonlocal finished_in_plane
                finished_in_plane += finished
                if progress is not None:
                    progress(before + finished_in_plane, total)

            try:
                run_tiles(
                    tiles,
                    reader.read,
                    forward,
                    place,
                    batch_size=batch_size,
                    device=target,
                    on_batch=count,
                    should_stop=should_stop,
                )
                if blend:
                    place.finish()
                break
            except RuntimeError as error:
                smaller = tile // 2
                if not is_out_of_memory(error) or smaller < MIN_TILE:
                    raise
                if target.type == "cuda":
                    torch.cuda.empty_cache()
                log.warning(
                    "out of memory with %d px tiles; retrying the plane with %d", tile, smaller
                )
                tile = smaller
        done += finished_in_plane
    return out


#: The smallest kept tile the out-of-memory retry goes down to.
MIN_TILE = 8


#: The least overlap (input pixels) tiles of a model that is not exact are blended over: the
#: ramp spreads the difference between neighbours' global statistics over this many pixels.
BLEND_OVERLAP_FLOOR = 32


def blends_tiles(card: ModelCard, exact: bool = False) -> bool:
    """Whether tiles are cross-faded: the card's tiling check (``models add``, or the first
    load of a community file of unbounded reach) found the model not exact at its halo (global
    pooling or attention), unless ``exact`` tiles by a finite receptive field."""
    if exact and card.theoretical_halo is not None:
        return False
    return card.metrics.get("tiling", {}).get("exact") is False


def blending_notice(card: ModelCard, exact: bool = False, *, lazy: bool = False) -> str | None:
    """The one line that tells a user their model's tiles are blended (None when they are not).
    ``lazy``: a plane is split into dask blocks, blended inside but stitched at their borders."""
    if not blends_tiles(card, exact):
        return None
    error = card.metrics["tiling"].get("seam_error")
    measured = f" (seam error {error:.2g})" if isinstance(error, float) else ""
    if lazy:
        return (
            f"{card.name} is not exact when tiled{measured}: its planes exceed the memory budget "
            "for one dask block, so tiles are blended inside blocks but block borders are "
            "stitched and may show seams; raise --memory-limit or compute without a scheduler "
            "for seamless output"
        )
    return (
        f"{card.name} is not exact when tiled{measured}: overlapping tiles are blended, so "
        "there are no seams but results differ slightly from a whole-image pass"
    )


def tiling_halo(model: SRModel, exact: bool = False) -> int:
    """The overlap tiles read: the model's measured halo, or with ``exact`` its theoretical
    receptive field (the upper bound; models of unbounded reach keep their default); at least
    :data:`BLEND_OVERLAP_FLOOR` for tiles that are blended (the ramp is as wide as the overlap,
    the outer half of which is dropped)."""
    card = model.card
    if exact and card.theoretical_halo is not None:
        return card.theoretical_halo
    return max(card.halo, BLEND_OVERLAP_FLOOR) if blends_tiles(card) else card.halo


#: Integer dtypes whose scaling to [0, 1] runs on the device: float32 arithmetic on them is
#: exactly :class:`IntensityRange`'s, and they cross the bus at a quarter of float32's size.
DEVICE_DTYPES = {np.dtype(t): getattr(torch, str(np.dtype(t))) for t in ("u1", "i1", "u2", "i2")}


class PlaneCodec:
    """Scales raw values to the unit range a model works in and back.

    For 8/16-bit integer images with an ordinary range this happens on the device, with the same
    float32 arithmetic as :meth:`IntensityRange.to_unit` / :meth:`~IntensityRange.from_unit`
    (so results are identical); other images are scaled on the host by those functions.
    """

    def __init__(self, layout: ImageLayout, intensity: IntensityRange):
        self.layout, self.intensity = layout, intensity
        self.on_device = intensity.dtype in DEVICE_DTYPES and not getattr(intensity, "wide", False)

    def to_host_unit(self, block: np.ndarray) -> np.ndarray:
        """A raw ``(h, w, c)`` block as float32 in [0, 1] (the host path)."""
        if not self.layout.rgb:
            return self.intensity.to_unit(block)
        colours = self.layout.channels
        unit = self.intensity.to_unit(block[..., :colours])
        if self.layout.has_alpha:
            unit = np.concatenate([unit, _alpha_to_unit(block[..., colours:])], axis=-1)
        return unit

    @property
    def output_channels(self) -> int:
        """Channels of the network's output, alpha included."""
        return self.layout.shape[-1] if self.layout.rgb else 1

    def from_host_unit(self, block: np.ndarray) -> np.ndarray:
        if not self.layout.rgb:
            return self.intensity.from_unit(block)
        colours = self.layout.channels
        result = self.intensity.from_unit(block[..., :colours])
        if self.layout.has_alpha:
            alpha = _alpha_from_unit(block[..., colours:], self.intensity.dtype)
            result = np.concatenate([result, alpha], axis=-1)
        return result

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """A ``(b, c, h, w)`` batch as read, on the device, to float32 unit values."""
        if not self.on_device:
            return x
        low, span = self.intensity.low, self.intensity.span
        unit = (x.float() - low) / span
        if self.layout.has_alpha:
            colours = self.layout.channels
            alpha = x[:, colours:].float() / float(np.iinfo(self.intensity.dtype).max)
            unit = torch.cat([unit[:, :colours], alpha], dim=1)
        return unit

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        """Network outputs (float32, unit values) to the image's dtype, on the device."""
        if not self.on_device:
            return y
        info = np.iinfo(self.intensity.dtype)
        dtype = DEVICE_DTYPES[self.intensity.dtype]
        colours = self.layout.channels
        colour = y[:, :colours] if self.layout.has_alpha else y
        raw = colour * self.intensity.span + self.intensity.low
        result = raw.round_().clamp_(info.min, info.max).to(dtype)
        if self.layout.has_alpha:
            alpha = (y[:, colours:].clamp(0.0, 1.0) * float(info.max)).round_().to(dtype)
            result = torch.cat([result, alpha], dim=1)
        return result


class PlaneReader:
    """Reads tiles of one plane (padded at the bottom/right border by repeating the last row and
    column when the model needs a size multiple) and writes results back, cropped."""

    def __init__(
        self, data, plane: tuple[int, ...], layout: ImageLayout, codec: PlaneCodec, multiple: int
    ):
        self.data, self.plane, self.layout, self.codec = data, plane, layout, codec
        self.multiple = multiple

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        height, width = self.layout.height, self.layout.width
        block = np.asarray(
            self.data[
                (
                    *self.plane,
                    slice(ys.start, min(ys.stop, height)),
                    slice(xs.start, min(xs.stop, width)),
                )
            ]
        )
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            raise InvalidImageError("the image contains NaN or infinite values; replace them first")
        if not self.layout.rgb:
            block = block[..., None]
        pad_y, pad_x = max(ys.stop - height, 0), max(xs.stop - width, 0)
        if pad_y or pad_x:
            block = np.pad(block, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
        if self.codec.on_device:
            return np.ascontiguousarray(block)
        return self.codec.to_host_unit(block)

    def writer(self, out, scale: int) -> Callable[[slice, slice, np.ndarray], None]:
        height, width = self.layout.height * scale, self.layout.width * scale

        def write(ys: slice, xs: slice, block: np.ndarray) -> None:
            ys = slice(ys.start, min(ys.stop, height))
            xs = slice(xs.start, min(xs.stop, width))
            block = block[: ys.stop - ys.start, : xs.stop - xs.start]
            if not self.codec.on_device:
                block = self.codec.from_host_unit(block)
            out[(*self.plane, ys, xs)] = block if self.layout.rgb else block[..., 0]

        return write

    def row_writer(self, out, scale: int) -> Callable[[int, int, np.ndarray], None]:
        """Writes finished full-width rows of unit values (the blended path), decoded on the
        host, padding cropped."""
        height, width = self.layout.height * scale, self.layout.width * scale

        def write(start: int, stop: int, rows: np.ndarray) -> None:
            stop = min(stop, height)
            if start < stop:
                block = self.codec.from_host_unit(rows[: stop - start, :width])
                rows_at = (*self.plane, slice(start, stop), slice(0, width))
                out[rows_at] = block if self.layout.rgb else block[..., 0]

        return write
