"""The napari side, in a real (Xvfb) viewer: manifest, widgets, reader/writer, sample data."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_srgan.io.images import PROVENANCE_KEY  # noqa: E402
from napari_srgan.plugin.background import SYNCHRONOUS_ENV  # noqa: E402


@pytest.fixture
def synchronous(monkeypatch):
    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")


def pixel_edges(layer) -> np.ndarray:
    """World coordinates of the outer pixel edges on the two image axes (pixel i spans
    [i - 0.5, i + 0.5] in data coordinates)."""
    shape = np.array(layer.data.shape[: layer.ndim][-2:])
    scale, translate = np.array(layer.scale[-2:]), np.array(layer.translate[-2:])
    return np.stack([translate - 0.5 * scale, translate + (shape - 0.5) * scale])


def test_manifest_validates_with_imports():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-srgan", "--imports"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def open_upscale_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")
    return widget


@pytest.mark.parametrize("rgb", [False, True])
def test_upscaled_layer_overlays_the_input_exactly(
    make_napari_viewer, tiny_model_file, synchronous, rgb
):
    viewer = make_napari_viewer()
    shape = (3, 21, 17, 3) if rgb else (3, 21, 17)
    data = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    if rgb:
        data = data.astype(np.uint8)
    source = viewer.add_image(
        data,
        name="stack",
        rgb=rgb,
        scale=(2.0, 0.5, 0.7),
        translate=(1.0, 10.0, -3.0),
        colormap="magma",
    )
    widget = open_upscale_widget(viewer)
    widget.reset_choices()
    widget.image.value = source
    widget.model.value = "tiny-rgb"
    widget.run_button.clicked.emit()
    result = viewer.layers["stack x4"]
    assert result.data.shape[:3] == (3, 84, 68) and result.data.dtype == data.dtype
    np.testing.assert_allclose(pixel_edges(result), pixel_edges(source))
    # the Z axis is untouched, the image axes shrink 4x
    assert tuple(result.scale) == pytest.approx((2.0, 0.125, 0.175))
    assert result.translate[0] == 1.0
    # output pixel (0, 0) sits inside input pixel (0, 0), a quarter pixel from its corner
    corner = np.array(source.translate[1:]) - 0.5 * np.array(source.scale[1:])
    np.testing.assert_allclose(result.translate[1:], corner + 0.125 * np.array(source.scale[1:]))
    assert result.metadata[PROVENANCE_KEY]["model"] == "tiny-3ch"
    if not rgb:
        assert result.colormap.name == "magma"
        assert tuple(result.contrast_limits) == tuple(source.contrast_limits)


def test_cancel_leaves_no_layer_and_the_ui_stays_responsive(
    make_napari_viewer, tiny_model_file, qtbot
):
    viewer = make_napari_viewer()
    source = viewer.add_image(np.zeros((1000, 1000, 3), np.uint8), name="big")
    widget = open_upscale_widget(viewer)
    widget.reset_choices()
    widget.image.value = source
    widget.model.value = "tiny-rgb"
    widget.tile.value = 24  # tens of thousands of tiles: still running when we cancel
    widget.start()
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    # progress arrives while the event loop keeps running (the UI thread is not blocked)
    qtbot.waitUntil(lambda: "tiles" in widget.status.value, timeout=30000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.status.value == "cancelled", timeout=30000)
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=5000)
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert not widget.cancel_button.enabled


@pytest.mark.parametrize("make_layer", ["labels", "points", "empty"])
def test_bad_layers_get_a_message_and_change_nothing(
    make_napari_viewer, tiny_model_file, synchronous, make_layer
):
    from napari_srgan.plugin import upscale_widget as module

    viewer = make_napari_viewer()
    if make_layer == "labels":
        layer = viewer.add_labels(np.zeros((8, 8), np.uint8))
    elif make_layer == "points":
        layer = viewer.add_points(np.zeros((2, 2)))
    else:
        layer = viewer.add_image(np.zeros((1, 1), np.uint8))
    widget = open_upscale_widget(viewer)
    messages = []
    original = module.show_error
    module.show_error = messages.append
    try:
        widget.reset_choices()
        if make_layer == "empty":
            widget.image.value = layer
        else:  # only image layers are offered
            assert widget.image.choices == ()
        widget.start()
    finally:
        module.show_error = original
    assert len(messages) == 1
    assert ("choose an image layer" in messages[0]) or ("at least 4x4" in messages[0])
    assert len(viewer.layers) == 1


def test_writer_and_reader_round_trip(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.arange(2 * 12 * 16, dtype=np.uint16).reshape(2, 12, 16)
    layer = viewer.add_image(
        data,
        name="result x4",
        scale=(3.0, 0.125, 0.25),
        translate=(0.0, -0.1875, 4.0),
        metadata={PROVENANCE_KEY: {"model": "m", "scale": 4}},
        units=("micrometer", "micrometer", "micrometer"),
    )
    path = tmp_path / "result.ome.tif"  # the name the reader claims
    viewer.layers.selection = {layer}
    written = viewer.layers.save(str(path), selected=True, plugin="napari-srgan")
    assert written == [str(path)]
    viewer.layers.clear()
    [loaded] = viewer.open(str(path), plugin="napari-srgan")
    np.testing.assert_array_equal(loaded.data, data)
    assert tuple(loaded.scale) == pytest.approx((3.0, 0.125, 0.25))
    assert tuple(loaded.translate) == pytest.approx((0.0, -0.1875, 4.0))
    assert loaded.metadata[PROVENANCE_KEY]["model"] == "m"
    assert loaded.name == "result x4"
    import tifffile

    with tifffile.TiffFile(path) as tif:  # the pixel size is in the OME-XML for other software
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert pixels["PhysicalSizeX"] == pytest.approx(0.25)
        assert pixels["PhysicalSizeXUnit"] == "µm"


def test_sample_data_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    for key, shape in [("astronaut", (128, 128, 3)), ("cell", (165, 137)), ("ihc", (128, 128, 3))]:
        layers = viewer.open_sample("napari-srgan", key)
        assert layers[0].data.shape == shape and layers[0].data.dtype == np.uint8


def test_screenshot_shows_the_upscaled_layer(make_napari_viewer, tiny_model_file, synchronous):
    viewer = make_napari_viewer(show=True)
    [source] = viewer.open_sample("napari-srgan", "astronaut")
    widget = open_upscale_widget(viewer)
    widget.reset_choices()
    widget.image.value = source
    widget.model.value = "tiny-rgb"
    widget.run_button.clicked.emit()
    source.visible = False
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    upscaled = viewer.layers["astronaut (LR) x4"].data
    centre = shot[
        shot.shape[0] // 4 : 3 * shot.shape[0] // 4, shot.shape[1] // 4 : 3 * shot.shape[1] // 4
    ]
    assert centre[..., :3].std() > 20  # an image, not a blank canvas
    # the canvas shows the upscaled astronaut: mean colours agree within a few grey levels
    np.testing.assert_allclose(
        centre[..., :3].mean(axis=(0, 1)),
        upscaled[32 : 96 * 4 - 32, 32 : 96 * 4 - 32].mean(axis=(0, 1)),
        atol=25,
    )


GUARD_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import napari
    from napari.qt import get_qapp

    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.rand(64, 64))
    get_qapp().processEvents()
    from napari_srgan.engine.torch_safety import llvm_loaded
    assert "triton" not in sys.modules
    print("llvm", llvm_loaded())
    from napari_srgan.plugin.train_widget import TrainWidget  # the plugin, as napari loads it
    import torch
    from napari_srgan.models.srresnet import Generator, GeneratorConfig
    from napari_srgan.models.normalization import NormalizationSpec
    from napari_srgan.training.patches import PatchSampler, TrainingImage
    from napari_srgan.training.trainer import Trainer, TrainingConfig

    sampler = PatchSampler([TrainingImage(np.random.rand(64, 64).astype(np.float32))],
                           patch_size=32, channels=1, normalization=NormalizationSpec())
    generator = Generator(GeneratorConfig(in_channels=1, out_channels=1, channels=4, residual_blocks=1))
    Trainer(generator, sampler, TrainingConfig(patch_size=32, batch_size=2, pretrain_steps=2, device="cpu")).run()
    viewer.close()
    print("trained after the canvas existed")
    """
)


def test_training_after_a_canvas_exists_does_not_crash():
    """The triton / Mesa trap: with a napari canvas open, torch.optim.Adam imports torch._dynamo
    and triton, whose LLVM clashes with Mesa's. Runs in a fresh process so nothing imported by
    other tests hides the problem (a crash shows as a negative return code)."""
    result = subprocess.run(
        [sys.executable, "-c", GUARD_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (
        f"rc={result.returncode}\n{result.stdout}\n{result.stderr[-2000:]}"
    )
    assert "trained after the canvas existed" in result.stdout
    if "llvm True" not in result.stdout:
        pytest.skip("this OpenGL driver does not load LLVM: the trap cannot occur here")


def test_dask_layers_get_a_lazy_result(make_napari_viewer, tiny_model_file, synchronous):
    import dask.array as da

    from napari_srgan.engine.upscale import upscale
    from napari_srgan.models.files import load_model

    viewer = make_napari_viewer()
    stack = np.random.default_rng(1).integers(0, 255, (3, 40, 50, 3)).astype(np.uint8)
    source = viewer.add_image(da.from_array(stack, chunks=(1, 40, 50, 3)), name="lazy", rgb=True)
    widget = open_upscale_widget(viewer)
    widget.reset_choices()
    widget.image.value = source
    widget.model.value = "tiny-rgb"
    widget.start()  # "auto": a dask layer gets a dask result, nothing computed yet
    result = viewer.layers["lazy x4"]
    assert isinstance(result.data, da.Array) and result.data.shape == (3, 160, 200, 3)
    assert result.data.chunks[0] == (1, 1, 1)  # napari computes one plane per slider position
    expected = upscale(stack, load_model(tiny_model_file))
    assert np.abs(result.data[1].compute().astype(int) - expected[1]).max() <= 1
    np.testing.assert_allclose(pixel_edges(result), pixel_edges(source))


def test_big_results_stream_into_a_zarr_file(
    make_napari_viewer, tiny_model_file, synchronous, tmp_path
):
    from napari_srgan.engine.upscale import upscale
    from napari_srgan.models.files import load_model
    from napari_srgan.plugin import upscale_widget as module

    viewer = make_napari_viewer()
    image = np.random.default_rng(2).integers(0, 4000, (150, 140)).astype(np.uint16)
    source = viewer.add_image(image, name="big", scale=(0.2, 0.2))
    widget = open_upscale_widget(viewer)
    widget.reset_choices()
    widget.image.value = source
    widget.model.value = "tiny-rgb"
    widget.memory_limit = 1000  # pretend the result does not fit in memory
    errors = []
    original, module.show_error = module.show_error, errors.append
    try:
        widget.start()
    finally:
        module.show_error = original
    assert "choose a zarr file" in errors[0] and len(viewer.layers) == 1
    widget.zarr_path.value = tmp_path / "big-x4.zarr"
    widget.start()
    result = viewer.layers["big x4"]
    assert result.multiscale and result.data[0].shape == (600, 560)  # written with a pyramid
    np.testing.assert_array_equal(
        np.asarray(result.data[0]), upscale(image, load_model(tiny_model_file))
    )
    np.testing.assert_allclose(pixel_edges(result), pixel_edges(source))
    viewer.layers.clear()
    [reopened] = viewer.open(str(tmp_path / "big-x4.zarr"), plugin="napari-srgan")
    assert reopened.name == "big x4" and tuple(reopened.scale) == pytest.approx((0.05, 0.05))
