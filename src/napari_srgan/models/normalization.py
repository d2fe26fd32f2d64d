"""Map raw intensities to the [0, 1] range a model works in, and back to the input's dtype.

The range is computed once for a whole image or stack, never per tile: per-tile ranges make
every tile a different brightness, which shows as seams. Training uses the same functions, so a
model sees the same intensities in the Upscale widget as it saw while learning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

#: Arrays with more elements than this get their percentiles from a regular subsample, so the
#: cost (and memory) of normalising a huge zarr or dask array stays bounded.
PERCENTILE_SAMPLE_SIZE = 1 << 22
#: Most pieces :func:`regular_subsample` reads a sample in when it reports its progress.
READ_BATCHES = 100
#: Magnitudes (of the range ends and span) that float32 arithmetic handles without overflow,
#: underflow or losing the span; ranges outside are scaled in float64.
FLOAT32_SAFE = (1e-30, 1e30)


@dataclass(frozen=True)
class NormalizationSpec:
    """How a model expects its inputs scaled.

    ``mode="dtype"``: 8- and 16-bit integers are divided by their dtype's range (uint8 / 255),
    the photo convention; floats and wider integers fall back to percentiles (a 32/64-bit range
    would put real values below float32 precision and blow the model's smallest error up).
    ``mode="percentile"``: the ``low`` / ``high`` percentiles of the whole data map to 0 / 1,
    the microscopy convention (CSBDeep, PSSR).
    """

    mode: str = "dtype"
    low: float = 0.0
    high: float = 100.0

    def __post_init__(self) -> None:
        if self.mode not in ("dtype", "percentile"):
            raise ValueError(
                f"normalization mode must be 'dtype' or 'percentile', not {self.mode!r}"
            )
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100, got low={self.low}, high={self.high}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IntensityRange:
    """The raw values that map to 0 and 1, and the dtype results are returned in."""

    low: float
    high: float
    dtype: np.dtype

    @property
    def wide(self) -> bool:
        """Whether float32 arithmetic would overflow or lose the range (values near float32's
        or float64's limits, or a tiny span): then scaling runs in float64 on halved values,
        which cannot overflow even at +-1.8e308."""
        sizes = [abs(v) for v in (self.low, self.high) if v] + [self.span]
        return not all(FLOAT32_SAFE[0] <= v <= FLOAT32_SAFE[1] for v in sizes)

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        if self.wide:
            half = np.asarray(values, dtype=np.float64) / 2
            return ((half - self.low / 2) / self.half_span).astype(np.float32)
        return ((np.asarray(values, dtype=np.float32) - self.low) / self.span).astype(
            np.float32, copy=False
        )

    def from_unit(self, values: np.ndarray) -> np.ndarray:
        if self.wide:
            with np.errstate(over="ignore"):  # beyond the dtype's range: clipped below
                raw = (np.asarray(values, dtype=np.float64) * self.half_span + self.low / 2) * 2
        else:
            raw = np.asarray(values, dtype=np.float32) * self.span + self.low
        if np.issubdtype(self.dtype, np.integer):
            return round_into(raw, self.dtype)
        limit = np.finfo(self.dtype).max
        if self.wide or limit < np.finfo(np.float32).max:
            raw = np.clip(raw, -limit, limit)
        return raw.astype(self.dtype, copy=False)

    @property
    def span(self) -> float:
        """``high - low`` (inf when the range spans more than float64 holds: see ``wide``)."""
        with np.errstate(over="ignore"):
            return float(np.float64(self.high) - np.float64(self.low))

    @property
    def half_span(self) -> float:
        """``(high - low) / 2``, finite for any finite range."""
        return self.high / 2 - self.low / 2


def round_into(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``raw`` rounded and clipped to the integer ``dtype``. The clipping runs in float64 against
    bounds that float64 holds exactly: 32/64-bit limits are no float32 (and int64's maximum is
    no float64), which rounded the bound up, so values at or above it wrapped around to the
    dtype's minimum or to 0 (a bright pixel came back black)."""
    info = np.iinfo(dtype)
    rounded = np.rint(np.asarray(raw, dtype=np.float64))
    top = float(info.max)  # int64/uint64: 2**63 / 2**64, one above the maximum
    exact_top = top if int(top) <= info.max else np.nextafter(top, 0.0)
    result = np.clip(rounded, float(info.min), exact_top).astype(dtype)
    result[rounded >= top] = info.max
    return result


def regular_subsample(
    data,
    max_elements: int = PERCENTILE_SAMPLE_SIZE,
    *,
    on_read: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Every k-th element along each axis so that at most about ``max_elements`` are read.

    Works on numpy, memmap, zarr and dask arrays (only basic strided slicing is used); the result
    depends only on the shape, so in-memory and out-of-core runs get the same percentiles.
    ``on_read(done, total)``: the sample is read in up to :data:`READ_BATCHES` pieces along the
    first axis (a stack on disk takes minutes), and called before each piece and at the end; it
    may raise to stop the reading. The pieces make the same sample.
    """
    shape = tuple(int(s) for s in data.shape)
    total = math.prod(shape)
    step = 1 if total <= max_elements else math.ceil((total / max_elements) ** (1 / len(shape)))
    if on_read is None:
        return _read_sample(
            data[...] if step == 1 else data[(slice(None, None, step),) * len(shape)]
        )
    rest = (slice(None, None, step),) * (len(shape) - 1)
    pieces = _first_axis_pieces(shape[0], step, _first_axis_chunk(data))
    parts = []
    for done, piece in enumerate(pieces):
        on_read(done, len(pieces))
        parts.append(_read_sample(data[(piece, *rest)]))
    on_read(len(pieces), len(pieces))
    return np.concatenate(parts)


def _read_sample(sample) -> np.ndarray:
    if hasattr(sample, "compute"):
        sample = sample.compute()
    return np.asarray(sample)


def _first_axis_chunk(data) -> int:
    """The first axis's chunk length of a zarr or dask array (1 for others): a piece that
    starts inside a chunk reads that chunk again."""
    chunks = getattr(data, "chunks", None)
    first = chunks[0] if isinstance(chunks, tuple) and chunks else 1
    if isinstance(first, tuple):  # dask: the length of every chunk
        first = first[0] if first else 1
    return first if isinstance(first, int) and first > 0 else 1


def _first_axis_pieces(length: int, step: int, chunk: int) -> list[slice]:
    """Slices of every ``step``-th index of ``range(length)``, in at most
    :data:`READ_BATCHES` pieces that start on a ``chunk`` boundary."""
    span = max(chunk, math.ceil(length / READ_BATCHES))
    span = math.ceil(span / chunk) * chunk
    pieces = []
    for start in range(0, length, span):
        first = math.ceil(start / step) * step  # the first sampled index in this piece
        stop = min(start + span, length)
        if first < stop:
            pieces.append(slice(first, stop, step))
    return pieces


def intensity_range(
    data,
    spec: NormalizationSpec,
    *,
    sample: np.ndarray | None = None,
    on_read: Callable[[int, int], None] | None = None,
) -> IntensityRange:
    """The range for ``data`` (all channels and planes together, so colours keep their balance);
    ``on_read``: see :func:`regular_subsample` (not called when nothing needs reading)."""
    dtype = np.dtype(data.dtype)
    if spec.mode == "dtype" and np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2:
        info = np.iinfo(dtype)
        low, high = (0.0, float(info.max)) if info.min == 0 else (float(info.min), float(info.max))
    else:
        values = regular_subsample(data, on_read=on_read) if sample is None else sample
        # Halved float64 values: interpolating between +-1e308 cannot overflow.
        halves = np.asarray(values, dtype=np.float64) / 2
        low, high = (2 * float(v) for v in np.percentile(halves, [spec.low, spec.high]))
    if not high > low:
        # A constant image: any positive span maps it consistently (a relative one where +1
        # would be lost in rounding).
        step = max(1.0, abs(low) * 2.0**-20)
        low, high = (low, low + step) if math.isfinite(low + step) else (low - step, low)
    return IntensityRange(low, high, dtype)
