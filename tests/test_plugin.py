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


def shown(control) -> bool:
    """Part of the form now (magicgui's ``visible`` is False in a hidden viewer)."""
    return not control.native.isHidden()


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
    result = viewer.layers["stack x4 tiny-rgb"]
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
    qtbot.waitUntil(lambda: "tiles" in widget.progress.text, timeout=30000)
    assert widget.progress.shown
    widget.cancel()
    qtbot.waitUntil(lambda: widget.status.value.startswith("cancelled"), timeout=30000)
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=5000)
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert not widget.cancel_button.enabled and not widget.progress.shown


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
    assert messages[0].removeprefix("napari-srgan: ") in widget.status.value  # in the dock too
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
    upscaled = viewer.layers["astronaut (LR) x4 tiny-rgb"].data
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


def test_stacks_get_a_lazy_result_computed_as_you_browse(
    make_napari_viewer, tiny_model_file, synchronous
):
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
    widget.start()  # "auto": a dask stack gets a lazy result: only the plane on view is computed
    result = viewer.layers["lazy x4 tiny-rgb"]
    planes = widget.lazy_results[0].array.planes
    assert result.data.shape == (3, 160, 200, 3)
    assert (viewer.dims.current_step[0],) in planes and len(planes) < 3
    [missing] = [plane for plane in [(0,), (1,), (2,)] if plane not in planes][:1]
    viewer.dims.set_current_step(0, missing[0])
    assert missing in planes
    expected = upscale(stack, load_model(tiny_model_file))
    np.testing.assert_array_equal(np.asarray(result.data[missing]), expected[missing])
    np.testing.assert_array_equal(result.data.computed(...), expected)
    np.testing.assert_allclose(pixel_edges(result), pixel_edges(source))


def test_big_results_stream_into_a_zarr_file_never_replaced_silently(
    make_napari_viewer, tiny_model_file, synchronous, tmp_path, monkeypatch
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
    widget.in_memory_limit = 1000  # pretend the result does not fit in memory
    assert not shown(widget.zarr_path)  # the zarr field shows only in zarr mode
    errors = []
    monkeypatch.setattr(module, "show_error", errors.append)
    widget.start()
    assert "choose a zarr file" in errors[0] and len(viewer.layers) == 1
    assert widget.result_mode.value == "zarr file" and shown(widget.zarr_path)
    target = tmp_path / "big-x4.zarr"
    widget.zarr_path.value = target
    widget.start()
    result = viewer.layers["big x4 tiny-rgb"]
    assert result.multiscale and result.data[0].shape == (600, 560)  # written with a pyramid
    np.testing.assert_array_equal(
        np.asarray(result.data[0]), upscale(image, load_model(tiny_model_file))
    )
    np.testing.assert_allclose(pixel_edges(result), pixel_edges(source))
    viewer.layers.clear()
    [reopened] = viewer.open(str(target), plugin="napari-srgan")
    assert reopened.name == "big x4 tiny-rgb" and tuple(reopened.scale) == pytest.approx(
        (0.05, 0.05)
    )

    # the file exists now (and no layer reads it): the user is asked, "no" leaves it as it is
    viewer.layers.remove(reopened)
    questions = []
    monkeypatch.setattr(module, "ask", lambda _parent, question: questions.append(question))
    before = sorted(p.name for p in target.rglob("*"))
    widget.image.value = viewer.add_image(image[:40, :40], name="other")
    widget.model.value = "tiny-rgb"
    widget.start()
    assert len(questions) == 1 and "exists" in questions[0]
    assert sorted(p.name for p in target.rglob("*")) == before
    assert "other x4 tiny-rgb" not in [layer.name for layer in viewer.layers]
    monkeypatch.setattr(module, "ask", lambda _parent, question: True)
    widget.start()
    assert viewer.layers["other x4 tiny-rgb"].data.shape == (160, 160)


@pytest.mark.parametrize("own_output", [False, True])
def test_multiscale_layers_upscale_their_full_resolution_level(
    make_napari_viewer, tiny_model_file, synchronous, tmp_path, own_output
):
    """Any multiscale layer, including this plugin's own OME-Zarr output opened again."""
    import dask.array as da

    from napari_srgan.engine.upscale import upscale
    from napari_srgan.models.files import load_model

    viewer = make_napari_viewer()
    # 132 px: the written result (528 px) is just big enough for a 2-level pyramid
    image = np.random.default_rng(3).integers(0, 255, (2, 132, 100) if own_output else (2, 40, 36))
    image = image.astype(np.uint8)
    widget = open_upscale_widget(viewer)
    widget.reset_choices()
    if own_output:  # a pyramid written by the zarr mode, opened by the reader
        widget.image.value = viewer.add_image(image[0], name="first")
        widget.model.value = "tiny-rgb"
        widget.result_mode.value = "zarr file"
        widget.zarr_path.value = tmp_path / "first.zarr"
        widget.start()
        viewer.layers.clear()
        [source] = viewer.open(str(tmp_path / "first.zarr"), plugin="napari-srgan")
        full = np.asarray(source.data[0])
    else:
        levels = [da.from_array(image), da.from_array(image[:, ::2, ::2])]
        source = viewer.add_image(levels, multiscale=True, name="pyramid")
        full = image
    assert source.multiscale
    widget.image.value = source
    widget.model.value = "tiny-rgb"
    widget.result_mode.value = "in memory"
    widget.start()
    result = viewer.layers[f"{source.name} x4 tiny-rgb"]
    assert result.data.shape == tuple(
        s * (4 if a >= full.ndim - 2 else 1) for a, s in enumerate(full.shape)
    )
    np.testing.assert_array_equal(result.data, upscale(full, load_model(tiny_model_file)))


def test_the_model_follows_the_layer(make_napari_viewer, tiny_model_file, synchronous):
    from napari_srgan.models.registry import DEFAULT_GREY_MODEL, DEFAULT_MODEL

    viewer = make_napari_viewer()
    grey = viewer.add_image(np.zeros((32, 32), np.uint8), name="grey")
    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="rgb")
    widget = open_upscale_widget(viewer)
    widget.reset_choices()
    widget.image.value = grey
    assert widget.model.value == DEFAULT_GREY_MODEL and widget.info.value.startswith("grey")
    widget.image.value = rgb
    assert widget.model.value == DEFAULT_MODEL and "⚠" not in widget.info.value
    widget.image.value = grey  # the RGB default does not fit: back to the grey one
    assert widget.model.value == DEFAULT_GREY_MODEL
    widget.model.value = "tiny-rgb"  # the user's choice is kept, with a warning
    assert "⚠ made for RGB images, this layer is grey" in widget.info.value
    assert "UNTRAINED" in widget.info.value


def test_model_info_follows_a_replaced_model_file(
    make_napari_viewer, tiny_model_file, synchronous, qtbot
):
    from conftest import tiny_model
    from napari_srgan.models.files import save_model
    from napari_srgan.models.interface import ModelCard
    from napari_srgan.plugin.model_list import model_list

    viewer = make_napari_viewer()
    widget = open_upscale_widget(viewer)
    widget.reset_choices()
    widget.model.value = "tiny-rgb"
    assert widget.info.value.startswith("RGB")
    grey = tiny_model(1)
    card = ModelCard("tiny-rgb", in_channels=1, out_channels=1, degradation="crappifier")
    save_model(tiny_model_file, grey.network, card, overwrite=True)
    qtbot.waitUntil(lambda: widget.info.value.startswith("grey"), timeout=5000)  # file watcher
    save_model(tiny_model_file.with_name("added.safetensors"), grey.network, card)
    model_list.changed.emit()  # what the Train widget sends after saving
    assert "added" in widget.model.choices and "noise" in widget.info.value


def test_a_long_error_does_not_widen_the_dock(make_napari_viewer, tiny_model_file, monkeypatch):
    from napari.qt import get_qapp

    from napari_srgan.plugin import upscale_widget as module

    viewer = make_napari_viewer(show=True)
    widget = open_upscale_widget(viewer)
    dock = widget.native.parent()
    get_qapp().processEvents()
    width, hint = dock.width(), widget.native.sizeHint().width()
    shown = []
    monkeypatch.setattr(module, "show_error", shown.append)
    long_path = "/very/long/folder/" * 40 + "model.safetensors"

    def missing(_name):
        raise module.ModelFileError(f"model file not found: {long_path} " + "word " * 300)

    monkeypatch.setattr(module, "resolve_model", missing)
    widget.image.value = viewer.add_image(np.zeros((16, 16), np.uint8))
    widget.start()
    get_qapp().processEvents()
    assert long_path in shown[0]  # the full message is in the notification
    assert widget.status.value.startswith("⚠ model file not found")
    assert widget.native.sizeHint().width() <= hint
    assert dock.width() == width


def test_controls_show_what_works(make_napari_viewer, tiny_model_file):
    import torch

    viewer = make_napari_viewer()
    widget = open_upscale_widget(viewer)
    widget.reset_choices()
    widget.model.value = "tiny-rgb"
    tile = widget.tile
    assert tile.native.text() == "auto" and tile.chosen is None
    tile.native.stepBy(1)  # one step up from "auto": the smallest tile offered, the overlap
    halo = widget._card().halo
    assert tile.chosen == max(16, -(-halo // 8) * 8)
    tile.native.stepBy(-1)
    assert tile.native.text() == "auto"
    widget.model.value = "srresnet-rgb-x4"  # a bigger overlap raises the minimum
    tile.native.stepBy(1)
    assert tile.chosen >= widget._card().halo > halo
    expected = ["auto", "cpu"] + ["cuda"] * torch.cuda.is_available()
    assert list(widget.device.choices)[: len(expected)] == expected
    assert ("mps" in widget.device.choices) == torch.backends.mps.is_available()
    widget.result_mode.value = "zarr file"
    assert shown(widget.zarr_path)
    widget.result_mode.value = "in memory"
    assert not shown(widget.zarr_path)
    for control in (widget.image, widget.model, widget.tile, widget.device, widget.result_mode):
        assert len(control.tooltip) > 40


def test_progress_bar_pulses_then_counts_tiles(make_napari_viewer, tiny_model_file, qtbot):
    viewer = make_napari_viewer()
    widget = open_upscale_widget(viewer)
    widget.reset_choices()
    widget.image.value = viewer.add_image(np.zeros((100, 100, 3), np.uint8), name="x")
    widget.model.value = "tiny-rgb"
    widget.tile.value = 48
    seen = []
    report = widget._on_report

    def record(message):
        report(message)
        seen.append(widget.progress.text)

    widget._on_report = record
    widget.start()
    assert widget.progress.text == "loading model…"
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60000)
    assert "upscaling the first tile…" in seen[:2]
    assert (
        seen[-1].endswith("tiles") and seen[-1].split("/")[0] == seen[-1].split("/")[1].split()[0]
    )
    assert not widget.progress.shown and widget.status.value.startswith("done")


def test_add_model_file_converts_lists_and_selects_it(
    make_napari_viewer, synchronous, tmp_path, monkeypatch
):
    """A community (spandrel) model file chosen with "Add model file…" is converted into the
    user model folder, selected, described, and upscales with its own scale in the name."""
    import torch
    from safetensors.torch import save_file

    spandrel = pytest.importorskip("spandrel.architectures.ESRGAN")
    from napari_srgan.plugin import upscale_widget as module

    torch.manual_seed(0)
    network = spandrel.ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    path = tmp_path / "tiny-esrgan-x2.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    monkeypatch.setattr(module, "choose_model_file", lambda _parent: str(path))
    viewer = make_napari_viewer()
    widget = open_upscale_widget(viewer)
    widget.image.value = viewer.add_image(np.zeros((20, 24, 3), np.uint8), name="photo", rgb=True)
    widget.add_button.clicked.emit()
    assert widget.model.value == "tiny-esrgan-x2", widget.status.value
    assert "community model" in widget.info.value and "2x" in widget.info.value
    widget.run_button.clicked.emit()
    result = viewer.layers["photo x2 tiny-esrgan-x2"]
    assert result.data.shape == (40, 48, 3)
    np.testing.assert_allclose(pixel_edges(result), pixel_edges(widget.image.value))
