import math

import numpy as np
import pytest
import torch

from conftest import tiny_model
from napari_srgan.engine.tiling import Cancelled, axis_spans
from napari_srgan.engine.upscale import upscale


@pytest.mark.parametrize("length", [1, 17, 40, 101, 600])
@pytest.mark.parametrize("tile", [7, 32, 64, 512])
@pytest.mark.parametrize("multiple", [1, 8])
@pytest.mark.parametrize("uniform", [True, False])
def test_balanced_spans_partition_the_axis(length, tile, multiple, uniform):
    halo = 12
    spans = axis_spans(length, tile, halo, multiple, uniform=uniform)
    total = math.ceil(length / multiple) * multiple
    assert len(spans) == math.ceil(total / tile)
    kept = [i for span in spans for i in range(span.keep_start, span.keep_stop)]
    assert kept == list(range(total))
    sizes = [span.keep_stop - span.keep_start for span in spans]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= tile  # balanced: no slivers
    if uniform:
        assert len({span.stop - span.start for span in spans}) == 1  # one shape: batchable
    else:  # cut at the border: no more than the halo beyond the kept part
        assert all(span.stop - span.start <= max(sizes) + 2 * halo + 2 * multiple for span in spans)
    for span in spans:
        assert span.start >= 0 and span.stop <= total
        assert span.start % multiple == 0 and (span.stop - span.start) % multiple == 0
        # every kept pixel has `halo` real pixels on each side inside the tile, or the edge
        assert span.keep_start - span.start >= halo or span.start == 0
        assert span.stop - span.keep_stop >= halo or span.stop == total


def test_auto_tile_work_is_small_at_every_size():
    """The tile from a 2 GB budget covers the read overhead the issue measured (2.91 at 600²,
    2.25 at 1024² before): each tile now keeps `tile` pixels and reads only the halo more."""
    from napari_srgan.engine.devices import auto_tile_size
    from napari_srgan.engine.tiling import tile_work
    from napari_srgan.models.files import native_model
    from napari_srgan.models.interface import ModelCard
    from napari_srgan.models.srresnet import Generator

    model = native_model(Generator(), ModelCard("default architecture", measured_halo=12))
    tile = auto_tile_size(model, torch.device("cpu"), memory_limit=2 << 30)
    assert tile_work(600, 600, tile, 12) == 1.0  # an image that fits is one tile
    for size in (1024, 2048, 4096):
        assert tile_work(size, size, tile, 12) < 1.25
    assert auto_tile_size(model, torch.device("cpu"), memory_limit=256 << 20) < tile


def test_tile_must_keep_a_pixel(rgb_model):
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 1 pixel"):
        upscale(image, rgb_model, tile=0)


def whole_image_forward(model, unit_image: np.ndarray) -> np.ndarray:
    tensor = torch.from_numpy(unit_image).permute(2, 0, 1)[None]
    with torch.no_grad():
        return model.network(tensor)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("shape", [(37, 53), (64, 29), (50, 51)])
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
    for tile, batch in [(11, 1), (17, 3), (40, 2), (max(shape), 1)]:
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
    assert halo == model.network.config.tile_margin
    result = upscale(image, model, tile=11, batch_size=2, device="cpu")
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


class NeedsMultiple(torch.nn.Module):
    """A generator that, like window attention, only takes sides that are multiples of 8."""

    def __init__(self, generator):
        super().__init__()
        self.inner, self.config, self.sizes = generator, generator.config, set()

    def forward(self, x):
        assert x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0, x.shape
        self.sizes.add(tuple(x.shape[-2:]))
        return self.inner(x)


def test_size_multiple_pads_consistently_so_tiles_equal_the_whole_image(rng):
    model = tiny_model(1, batch_norm=False)
    model.network = NeedsMultiple(model.network)
    model.card.size_multiple = 8
    image = rng.random((45, 30), dtype=np.float32)
    low, high = image.min(), image.max()
    padded = np.pad((image - low) / (high - low), ((0, 3), (0, 2)), mode="edge")
    expected = whole_image_forward(model, padded[..., None])[: 45 * 4, : 30 * 4, 0]
    expected = expected * (high - low) + low
    for tile in (13, 24, 64):
        result = upscale(image, model, tile=tile, batch_size=2, device="cpu")
        assert result.shape == (180, 120)
        assert np.abs(result - expected).max() <= 1e-4, tile
    assert len(model.network.sizes) > 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_integer_scaling_on_the_device_matches_the_host_functions(dtype, rng):
    """8/16-bit images are scaled to [0, 1] and back on the device with exactly the arithmetic of
    IntensityRange (same results as the host path, RGBA alpha included)."""
    from napari_srgan.engine.upscale import PlaneCodec, check_image, colour_range

    model = tiny_model(3, mode="percentile")
    info = np.iinfo(dtype)
    image = rng.integers(info.min, info.max, (23, 19, 4), endpoint=True).astype(dtype)
    layout = check_image(image)
    intensity = colour_range(image, layout, model.card.normalization)
    codec = PlaneCodec(layout, intensity)
    assert codec.on_device
    unit = codec.encode(torch.from_numpy(image)[None].permute(0, 3, 1, 2))
    np.testing.assert_array_equal(unit[0].permute(1, 2, 0).numpy(), codec.to_host_unit(image))
    values = torch.rand(1, 4, 23, 19) * 1.4 - 0.2  # outside [0, 1] too: clipping
    on_device = codec.decode(values)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(
        on_device, codec.from_host_unit(values[0].permute(1, 2, 0).numpy())
    )


@pytest.mark.parametrize("name", ["srresnet-rgb-x4", "srresnet-em-grey-x4"])
def test_bundled_measured_halo_keeps_tiles_within_tolerance(name):
    """With the halo stored in each bundled model's card, tiled output stays within 1e-4 (on
    [0, 1]) of untiled output on held-back real images (photos / EM; synthetic textures where
    ../shared/data is absent), for odd shapes and several tile sizes."""
    from napari_srgan.models.files import load_model
    from napari_srgan.models.halo import TOLERANCE, probe_images
    from napari_srgan.models.registry import resolve_model

    model = load_model(resolve_model(name), measure=False)
    card = model.card
    assert card.measured_halo is not None and card.measured_halo < card.theoretical_halo
    image = probe_images(model.in_channels, 1, held_back=True)[0]
    crop = image[3:50, 5:44] if model.in_channels == 3 else image[3:50, 5:44, 0]  # 47 x 39
    whole = upscale(crop, model, tile=64, device="cpu")
    span = float(crop.max() - crop.min())
    for tile in (13, 24):
        tiled = upscale(crop, model, tile=tile, batch_size=4, device="cpu")
        assert np.abs(tiled - whole).max() / span <= TOLERANCE, tile


def test_measured_halo_finds_the_real_reach_not_the_theoretical_one():
    """A generator whose tail is zero is plain bicubic upscaling (reach 2 input pixels): the
    probes find that, far below the architecture's bound; tiles then keep the tolerance."""
    from napari_srgan.models.halo import SAFETY_MARGIN, measure_halo, synthetic_texture

    model = tiny_model(1, batch_norm=False, input_skip=True)
    images = [synthetic_texture(1, seed, size=48) for seed in range(2)]
    halo = measure_halo(model, images=images, held_back=images)
    assert halo == 2 + SAFETY_MARGIN < model.card.theoretical_halo
    model.card.measured_halo = 0  # too small: bicubic reads 2 pixels beyond
    image = synthetic_texture(1, 5, size=40)[..., 0]
    whole = upscale(image, model, tile=40, device="cpu")
    assert np.abs(upscale(image, model, tile=20, device="cpu") - whole).max() > 1e-3
    exact = upscale(image, model, tile=20, device="cpu", exact=True)  # theoretical: exact
    assert np.abs(exact - whole).max() <= 1e-5
    model.card.measured_halo = halo
    assert np.abs(upscale(image, model, tile=20, device="cpu") - whole).max() <= 1e-4


def test_a_slow_measurement_says_why_the_wait_and_a_quick_one_is_silent(
    tmp_path, monkeypatch, caplog
):
    import time

    from napari_srgan.models import halo

    path = tmp_path / "m.safetensors"
    path.write_bytes(b"weights")
    monkeypatch.setattr(halo, "NOTICE_AFTER_S", 0.05)
    with caplog.at_level("WARNING", logger=halo.__name__):
        assert halo.cached_halo(path, lambda: time.sleep(0.5) or 7) == 7
    assert [r.getMessage() for r in caplog.records] == [
        "measuring how m.safetensors tiles (once per model file, then cached)..."
    ]
    caplog.clear()
    path.write_bytes(b"other weights")
    with caplog.at_level("WARNING", logger=halo.__name__):
        assert halo.cached_halo(path, lambda: 5) == 5
    time.sleep(0.2)  # a notice that was not cancelled would have fired by now
    assert not caplog.records


def test_halo_is_measured_once_per_file_and_cached_by_hash(tmp_path, monkeypatch):
    from napari_srgan.models import files, halo
    from napari_srgan.models.files import load_model, save_model

    model = tiny_model(1, batch_norm=False, input_skip=True)
    path = save_model(tmp_path / "m.safetensors", model.network, model.card)
    calls = []
    measure = halo.measure_halo
    monkeypatch.setattr(files, "measure_halo", lambda m: calls.append(1) or measure(m))
    first = load_model(path).card.measured_halo
    again = load_model(path).card.measured_halo
    assert first == again == 2 + halo.SAFETY_MARGIN and len(calls) == 1
    assert str(halo.cache_path()).startswith(str(tmp_path.parent))  # the tests' own cache
    assert load_model(path, measure=False).card.measured_halo is None
