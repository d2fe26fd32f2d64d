"""Layers a real napari session holds, fed to the widgets: rotated, sheared and affine layers,
wide integer data, ... Each result overlays its input exactly and keeps its values, or the user
gets one clear message and nothing changes."""

import signal

import dask.array as da
import numpy as np
import pytest

from napari_srgan.engine.upscale import upscale
from napari_srgan.models.normalization import IntensityRange, NormalizationSpec
from napari_srgan.training.device_sampler import ParallelSampler
from napari_srgan.training.patches import PatchSampler, TrainingImage

napari = pytest.importorskip("napari")

from napari_srgan.plugin.background import SYNCHRONOUS_ENV  # noqa: E402


def upscale_widget(viewer, layer, mode: str = "in memory"):
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")
    widget.reset_choices()
    widget.image.value = layer
    widget.model.value = "tiny-rgb"
    widget.result_mode.value = mode
    return widget


def world_offsets(source, result, factor: int = 4) -> float:
    """The largest distance in world coordinates between output pixels and the points of the
    input they were computed for (output pixel j sits at input pixel (j + 0.5) / s - 0.5)."""
    shape = np.array(result.data.shape[: result.ndim])
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(
        result.ndim, -1
    )
    worst = 0.0
    for output_pixel in corners.T.astype(float):
        input_point = output_pixel.copy()
        input_point[-2:] = (output_pixel[-2:] + 0.5) / factor - 0.5
        there = np.array(source.data_to_world(input_point))
        worst = max(
            worst, float(np.abs(np.array(result.data_to_world(output_pixel)) - there).max())
        )
    return worst


@pytest.mark.parametrize("mode", ["in memory", "lazy (as you browse)"])
def test_a_rotated_sheared_affine_layer_is_overlaid_exactly(
    make_napari_viewer, tiny_model_file, errors, mode
):
    """The result used to drop the layer's rotate, shear and affine: it lay up to tens of
    pixels away from a rotated input."""
    viewer = make_napari_viewer()
    image = np.random.default_rng(0).integers(0, 255, (2, 12, 10), np.uint8)
    source = viewer.add_image(
        image,
        name="tilted",
        scale=(3.0, 0.5, 2.0),
        translate=(1.0, 4.0, -6.0),
        rotate=(10, 20, 30),
        shear=[0.3, 0.0, 0.2],
        affine=np.array([[1, 0, 0, 2], [0, 1, 0.1, 3], [0, 0.2, 1, 5], [0, 0, 0, 1.0]]),
    )
    widget = upscale_widget(viewer, source, mode)
    widget.start()
    result = viewer.layers["tilted x4 tiny-rgb"]
    assert not errors
    assert result.data.shape == (2, 48, 40)
    assert world_offsets(source, result) < 1e-9


@pytest.mark.parametrize("dtype", ["uint32", "int32", "int64", "uint64"])
def test_values_beyond_a_wide_integer_dtype_are_clipped_not_wrapped(dtype):
    """32/64-bit limits are no float32: clipping rounded them up and the cast wrapped a bright
    pixel around to the dtype's minimum (or to 0)."""
    info = np.iinfo(dtype)
    intensity = IntensityRange(float(info.min) / 2, float(info.max) / 2 + 1, np.dtype(dtype))
    values = intensity.from_unit(np.array([-1.0, 0.0, 1.0, 1.99, 2.5, 3.0], np.float32))
    assert values[0] == info.min and values[-1] == info.max
    assert (np.diff(values.astype(object)) >= 0).all(), values


def test_a_uint32_rgba_layer_keeps_its_opaque_alpha(rgb_model):
    """Alpha at uint32's maximum came back 0: fully transparent."""
    image = np.full((8, 8, 4), 2**32 - 1, np.uint32)
    image[..., :3] = np.random.default_rng(0).integers(0, 1000, (8, 8, 3))
    result = upscale(image, rgb_model, rgb=True)
    assert (result[..., 3] == 2**32 - 1).all()


@pytest.mark.parametrize("role", ["lr_layer", "validation_layer"])
def test_a_multiscale_paired_or_validation_layer_is_named(
    make_napari_viewer, tiny_model_file, monkeypatch, user_models, role
):
    """Only HR layers were checked for pyramids: a multiscale validation layer failed with
    "list indices must be integers or slices, not tuple"."""
    from napari_srgan.plugin import train_widget

    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    shown = []
    monkeypatch.setattr(train_widget, "show_error", shown.append)
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    photo = viewer.add_image(rng.integers(0, 256, (160, 160, 3), np.uint8), rgb=True, name="hr")
    size = 40 if role == "lr_layer" else 160
    levels = [rng.integers(0, 256, (size >> k, size >> k, 3), np.uint8) for k in range(2)]
    pyramid = viewer.add_image(levels, rgb=True, multiscale=True, name="pyramid")
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Train")
    widget.reset_choices()
    widget.hr_layers.value = [photo]
    getattr(widget, role).value = pyramid
    widget.base_model.value = "tiny-rgb"
    widget.model_name.value = "from-a-pyramid"
    files_before = sorted(user_models.iterdir())
    widget.start()
    assert shown == ["napari-srgan: pyramid: multiscale layers are not supported"]
    assert sorted(user_models.iterdir()) == files_before


def test_training_on_a_dask_layer_draws_batches_in_worker_processes():
    """Data read lazily is sampled in worker processes forked from the training thread; forked
    from the main thread, they got a copy of dask's thread pool but none of its threads, so
    the first batch from a dask array never came (training hung at step 1 for ever)."""

    def too_slow(*_args):
        raise TimeoutError("no batch within 60 s")

    image = np.random.default_rng(0).integers(0, 256, (96, 96), np.uint8)
    hr = da.from_array(image, chunks=32)
    assert int(hr.sum().compute()) == int(image.sum())  # dask's pool runs in this process
    patches = PatchSampler(
        [TrainingImage(hr)], patch_size=32, channels=1, normalization=NormalizationSpec()
    )
    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(60)
    try:
        lr, hr_patches = ParallelSampler(patches, batch_size=2, workers=1).batch(2)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert lr.shape == (2, 1, 8, 8) and hr_patches.shape == (2, 1, 32, 32)


def test_a_layer_in_nm_and_um_is_saved_in_one_unit(
    make_napari_viewer, tiny_model_file, errors, tmp_path
):
    """A file has one length unit, taken from the x axis: y in nm was written as if in µm (its
    pixel size 1000 times too big), by the writer and into the zarr result."""
    from napari_srgan.plugin.reader import read_zarr_layer

    viewer = make_napari_viewer()
    image = np.random.default_rng(0).integers(0, 255, (12, 16), np.uint8)
    source = viewer.add_image(
        image, name="mixed", scale=(500.0, 0.5), translate=(1000.0, 2.0), units=("nm", "µm")
    )
    viewer.layers.selection = {source}
    saved = str(tmp_path / "mixed.ome.tif")
    assert viewer.layers.save(saved, selected=True, plugin="napari-srgan") == [saved]
    [reopened] = viewer.open(saved, plugin="napari-srgan")
    assert tuple(reopened.scale) == pytest.approx((0.5, 0.5))
    assert tuple(reopened.translate) == pytest.approx((1.0, 2.0))
    assert [f"{unit:~}" for unit in reopened.units] == ["µm", "µm"]

    widget = upscale_widget(viewer, source, "zarr file")
    widget.zarr_path.value = str(tmp_path / "result.zarr")
    widget.start()
    assert not errors
    [(_, options, _)] = read_zarr_layer(str(tmp_path / "result.zarr"))
    assert tuple(options["scale"]) == pytest.approx((0.125, 0.125))
    assert tuple(options["translate"]) == pytest.approx((1.0 - 0.1875, 2.0 - 0.1875))
    result = viewer.layers["mixed x4 tiny-rgb"]
    assert world_offsets(source, result) < 1e-9  # shown in the layer's own units


def test_a_lazy_result_upscaled_again_computes_the_planes_not_viewed(
    make_napari_viewer, tiny_model_file, errors, monkeypatch, qtbot
):
    """Read by a background job as napari reads it, a plane of a lazy result not viewed yet
    was zeros: it was upscaled into a black plane, silently."""
    viewer = make_napari_viewer()
    image = np.random.default_rng(0).integers(50, 200, (3, 12, 12), np.uint8)
    widget = upscale_widget(viewer, viewer.add_image(image, name="stack"), "lazy (as you browse)")
    widget.start()
    lazy = viewer.layers["stack x4 tiny-rgb"]
    assert len(lazy.data.planes) < 3  # only the planes napari showed are computed
    monkeypatch.delenv(SYNCHRONOUS_ENV)  # a real background job
    widget.image.value = lazy
    widget.model.value = "tiny-rgb"
    widget.result_mode.value = "in memory"
    widget.start()
    qtbot.waitUntil(lambda: widget.job.done, timeout=60000)
    again = viewer.layers["stack x4 tiny-rgb x4 tiny-rgb"].data
    assert not errors and again.shape == (3, 192, 192)
    assert min(float(plane.mean()) for plane in again) > 40  # no black plane


def test_saving_a_rotated_layer_says_the_rotation_is_not_kept(
    make_napari_viewer, tmp_path, monkeypatch
):
    """An OME-TIFF holds pixel size and position only: the rotation was dropped silently."""
    from napari_srgan.plugin import writer

    warnings = []
    monkeypatch.setattr(writer, "show_warning", warnings.append, raising=False)
    viewer = make_napari_viewer()
    image = np.zeros((8, 8), np.uint8)
    for name, placement in [("plain", {}), ("tilted", {"rotate": 30.0})]:
        viewer.layers.selection = {viewer.add_image(image, name=name, **placement)}
        path = str(tmp_path / f"{name}.ome.tif")
        assert viewer.layers.save(path, selected=True, plugin="napari-srgan") == [path]
    assert len(warnings) == 1 and "tilted" in warnings[0] and "rotation" in warnings[0]
