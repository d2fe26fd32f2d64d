import numpy as np
import pytest
import torch

from conftest import tiny_model
from napari_srgan.engine.tiling import Cancelled, axis_spans
from napari_srgan.engine.upscale import upscale


@pytest.mark.parametrize("length", [1, 17, 40, 101])
@pytest.mark.parametrize("tile", [25, 32, 64])
def test_kept_spans_partition_the_axis(length, tile):
    margin = 12
    spans = axis_spans(length, tile, margin)
    kept = [i for span in spans for i in range(span.keep_start, span.keep_stop)]
    assert kept == list(range(length))
    for span in spans:
        assert span.stop - span.start == min(tile, length)  # one shape: tiles can be batched
        # every kept pixel has `margin` real pixels on each side inside the tile, or the image edge
        assert span.keep_start - span.start >= margin or span.start == 0
        assert span.stop - span.keep_stop >= margin or span.stop == length


def test_tile_smaller_than_the_overlap_is_refused(rgb_model):
    margin = rgb_model.network.config.tile_margin
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=f"at least {2 * margin + 1}"):
        upscale(image, rgb_model, tile=2 * margin)


def whole_image_forward(model, unit_image: np.ndarray) -> np.ndarray:
    tensor = torch.from_numpy(unit_image).permute(2, 0, 1)[None]
    with torch.no_grad():
        return model.network(tensor)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("shape", [(37, 53), (64, 29), (90, 91)])
@pytest.mark.parametrize(
    "options", [{"batch_norm": True}, {"batch_norm": False, "input_skip": True}]
)
def test_tiled_output_equals_whole_image_output(shape, options, rng):
    """For several tile sizes, batch sizes and odd image shapes: tiled == one forward pass."""
    model = tiny_model(3, residual_blocks=2, **options)
    image = rng.random((*shape, 3), dtype=np.float32)
    # Floats in [0, 1] under "dtype" normalisation use the image's min/max; undo it exactly.
    low, high = image.min(), image.max()
    expected = whole_image_forward(model, (image - low) / (high - low)) * (high - low) + low
    margin = model.network.config.tile_margin
    for tile, batch in [(2 * margin + 6, 1), (40, 3), (57, 2), (max(shape), 1)]:
        result = upscale(image, model, tile=tile, batch_size=batch, device="cpu")
        assert result.shape == (shape[0] * 4, shape[1] * 4, 3)
        assert np.abs(result - expected).max() <= 1e-4, f"tile {tile}"


def test_stop_flag_cancels_and_progress_counts(rgb_model):
    image = np.zeros((100, 100, 3), np.uint8)
    reports = []
    upscale(image, rgb_model, tile=40, progress=lambda d, t: reports.append((d, t)))
    assert reports[-1][0] == reports[-1][1] == len(reports)
    calls = []

    def stop_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        upscale(image, rgb_model, tile=40, should_stop=stop_after_two)
