import math

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


@pytest.mark.parametrize("scale", [1, 2, 3, 8])
def test_any_integer_scale_tiles_exactly(scale, rng):
    """1x (restoration), 2x, 3x and 8x generators: right shape, and tiled == one forward pass
    with the theoretical overlap of that architecture."""
    model = tiny_model(3, scale=scale, batch_norm=False, input_skip=True)
    assert model.scale == scale and model.card.theoretical_halo == model.network.config.tile_margin
    image = rng.random((29, 34, 3), dtype=np.float32)
    low, high = image.min(), image.max()
    expected = whole_image_forward(model, (image - low) / (high - low)) * (high - low) + low
    assert expected.shape == (29 * scale, 34 * scale, 3)
    halo = model.card.halo
    result = upscale(image, model, tile=2 * halo + 5, batch_size=2, device="cpu")
    assert np.abs(result - expected).max() <= 1e-4


@pytest.mark.parametrize("scale", [1, 2, 3, 4, 8])
def test_receptive_radius_bounds_the_reach_of_an_input_pixel(scale):
    """Changing one input pixel changes no output pixel whose centre is further away than the
    stated receptive radius (in input pixels), and does change some near it."""
    model = tiny_model(1, scale=scale, residual_blocks=1)
    config = model.network.config
    size = 2 * math.ceil(config.receptive_radius) + 9
    base = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    poked = base.clone()
    poked[..., size // 2, size // 2] += 1.0
    with torch.no_grad():
        changed = (model.network(poked) - model.network(base)).abs()[0, 0] > 0
    rows = np.nonzero(changed.any(dim=1).numpy())[0]
    centres = (rows + 0.5) / scale - 0.5  # output pixel centres in input pixel coordinates
    reach = np.abs(centres - size // 2).max()
    assert 0 < reach <= config.receptive_radius
