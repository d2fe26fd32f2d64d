import numpy as np
import pytest
import zarr

from conftest import tiny_model
from napari_srgan.engine.upscale import InvalidImageError, upscale
from napari_srgan.models.normalization import NormalizationSpec, intensity_range


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64, np.float16]
)
def test_output_keeps_the_input_dtype_and_range(dtype, grey_model, rng):
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        image = rng.integers(max(info.min, -1000), min(info.max, 4000), (20, 24)).astype(dtype)
    else:
        image = (rng.random((20, 24)) * 50 - 10).astype(dtype)
    result = upscale(image, grey_model)
    assert result.dtype == dtype
    assert result.shape == (80, 96)
    if np.issubdtype(dtype, np.integer):
        # the model's output is mapped back into the input's value range (then clipped to the dtype)
        assert result.min() >= np.iinfo(dtype).min and result.max() <= np.iinfo(dtype).max
    assert np.isfinite(result.astype(np.float64)).all()


def test_constant_image_stays_finite(grey_model):
    result = upscale(np.full((16, 16), 7, np.uint16), grey_model)
    assert result.dtype == np.uint16


def test_stack_is_processed_plane_by_plane_with_one_intensity_range(grey_model, rng):
    """Each plane of a Z/T/C stack equals that plane upscaled alone with the stack's range:
    one range for the whole stack, so planes (and tiles) never get their own brightness."""
    stack = rng.integers(0, 4000, (2, 3, 20, 22)).astype(np.uint16)
    stack[1] *= 2  # planes of different brightness
    result = upscale(stack, grey_model, tile=40)
    assert result.shape == (2, 3, 80, 88)
    whole = intensity_range(stack, grey_model.card.normalization)
    for index in np.ndindex(2, 3):
        alone = upscale(stack[index], grey_model, intensity=whole, tile=40)
        np.testing.assert_array_equal(result[index], alone)
    per_plane = upscale(stack[1, 2], grey_model, tile=40)
    assert not np.array_equal(result[1, 2], per_plane)


def test_rgba_alpha_is_interpolated_not_hallucinated(rgb_model, rng):
    image = rng.integers(0, 255, (16, 16, 4)).astype(np.uint8)
    image[..., 3] = 255
    image[:8, :, 3] = 0
    result = upscale(image, rgb_model)
    assert result.shape == (64, 64, 4)
    assert (result[:24, :, 3] == 0).all() and (result[40:, :, 3] == 255).all()


def test_grey_through_rgb_model_and_rgb_through_grey_model(rgb_model, grey_model, rng):
    grey = rng.integers(0, 255, (16, 18)).astype(np.uint8)
    assert upscale(grey, rgb_model).shape == (64, 72)
    colour = rng.integers(0, 255, (16, 18, 3)).astype(np.uint8)
    result = upscale(colour, grey_model)
    assert result.shape == (64, 72, 3)
    # a grey model upscales each colour as its own plane (with the image's one range)
    spec = grey_model.card.normalization
    whole = intensity_range(colour, spec)
    red = upscale(np.ascontiguousarray(colour[..., 0]), grey_model, intensity=whole)
    np.testing.assert_array_equal(result[..., 0], red)


def test_writes_into_any_array_like_output(rgb_model, rng, tmp_path):
    image = rng.integers(0, 255, (30, 26, 3)).astype(np.uint8)
    expected = upscale(image, rgb_model, tile=28)
    store = zarr.open_array(
        tmp_path / "out.zarr", mode="w", shape=expected.shape, dtype=np.uint8, chunks=(32, 32, 3)
    )
    returned = upscale(image, rgb_model, tile=28, out=store)
    assert returned is store
    np.testing.assert_array_equal(store[:], expected)
    memmap = np.lib.format.open_memmap(
        tmp_path / "out.npy", mode="w+", dtype=np.uint8, shape=expected.shape
    )
    upscale(image, rgb_model, tile=28, out=memmap)
    np.testing.assert_array_equal(np.asarray(memmap), expected)


def test_a_wrong_output_shape_is_refused(rgb_model):
    with pytest.raises(ValueError, match="expected"):
        upscale(np.zeros((8, 8, 3), np.uint8), rgb_model, out=np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((0, 10), np.uint8), "empty"),
        (np.zeros((1, 1), np.uint8), "at least 4x4"),
        (np.zeros((2, 30), np.uint8), "at least 4x4"),
        (np.zeros(10, np.uint8), "at least 2 dimensions"),
        (np.zeros((2, 2, 2, 2, 8, 8), np.uint8), "more than the 5"),
        (np.zeros((8, 8), np.complex64), "unsupported data type complex64"),
        (np.zeros((8, 8), bool), "unsupported data type bool"),
        (np.array([[np.nan] * 8] * 8, np.float32), "NaN"),
        (np.array([[np.inf] * 8] * 8, np.float64), "NaN or infinite"),
    ],
)
def test_bad_images_get_a_clear_error(data, message, rgb_model):
    with pytest.raises(InvalidImageError, match=message):
        upscale(data, rgb_model)


def test_percentile_normalisation_ignores_outliers(rng):
    image = rng.normal(100, 10, (64, 64)).astype(np.float32)
    image[0, 0] = 1e6
    value_range = intensity_range(image, NormalizationSpec("percentile", 1, 99))
    assert value_range.high < 200
    dtype_range = intensity_range(image.astype(np.uint8), NormalizationSpec("dtype"))
    assert (dtype_range.low, dtype_range.high) == (0, 255)


def test_channel_mismatch_is_explained(rng):
    two_channel = tiny_model(2)
    with pytest.raises(InvalidImageError, match="2-channel model cannot upscale 3-channel"):
        upscale(rng.integers(0, 255, (8, 8, 3)).astype(np.uint8), two_channel)


def test_threads_sharing_a_model_never_convert_it_while_another_prepares(monkeypatch, rng):
    """dask blocks share one model: a block that converted the weights to channels-last while
    another folded the tail from them gave that block wrong values now and then. Preparation
    is serialised (never two at once), and every thread's result equals the lone one."""
    import threading
    import time

    from napari_srgan.engine import upscale as engine

    model = tiny_model(1, mode="percentile", residual_blocks=2)
    data = rng.random((40, 44)).astype(np.float32)
    preparing, most = [0], [0]
    fold = engine.inference_network

    def slow_fold(network):
        preparing[0] += 1
        most[0] = max(most[0], preparing[0])
        time.sleep(0.05)
        try:
            return fold(network)
        finally:
            preparing[0] -= 1

    monkeypatch.setattr(engine, "inference_network", slow_fold)
    results = [None] * 4

    def run(index):
        results[index] = upscale(data, model, tile=20, device="cpu")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1
    alone = upscale(data, model, tile=20, device="cpu")
    for result in results:
        np.testing.assert_array_equal(result, alone)
