"""The Train widget in a live viewer (show=True: an OpenGL canvas exists, so training here also
exercises the triton guard in-process)."""

import numpy as np
import pytest
from skimage import data

napari = pytest.importorskip("napari")

from napari_srgan.plugin import train_widget as module  # noqa: E402
from napari_srgan.plugin.background import SYNCHRONOUS_ENV  # noqa: E402


@pytest.fixture
def viewer_with_photo(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(data.astronaut()[:320, :160], name="photo", rgb=True)
    return viewer


def open_train_widget(viewer, **settings):
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Train")
    widget.reset_choices()
    widget.hr_layers.value = [viewer.layers["photo"]]
    widget.base_model.value = "tiny-rgb"
    widget.patch_size.value = 32
    widget.batch_size.value = 2
    widget.validate_every.value = 5
    widget.steps.value = 10
    for name, value in settings.items():
        getattr(widget, name).value = value
    return widget


@pytest.fixture
def errors(monkeypatch):
    shown = []
    monkeypatch.setattr(module, "show_error", shown.append)
    return shown


def test_train_plot_preview_and_the_saved_model_upscales(
    viewer_with_photo, tiny_model_file, monkeypatch
):
    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    viewer = viewer_with_photo
    widget = open_train_widget(viewer, model_name="trained-in-test")
    widget.train_button.clicked.emit()
    assert widget.outcome is not None and widget.outcome.finished, widget.status.value
    assert widget.plot.steps == list(range(1, 11))
    assert [v[0] for v in widget.plot.validation] == [5, 10]
    assert len(widget.plot.loss_axes.lines) == 1 and len(widget.plot.psnr_axes.lines) == 2
    preview = widget.preview_layer
    assert preview in viewer.layers and preview.name.startswith("srgan training preview (step 10")
    assert preview.data.ndim == 3  # an RGB crop of the held-out part of "photo"

    _, upscale = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")
    assert "trained-in-test" in upscale.model.choices  # listed without reopening anything
    upscale.image.value = viewer.layers["photo"]
    upscale.model.value = "trained-in-test"
    upscale.run_button.clicked.emit()
    assert viewer.layers["photo x4"].data.shape == (1280, 640, 3)


def test_stop_keeps_a_checkpoint_and_resume_continues(viewer_with_photo, tiny_model_file, qtbot):
    widget = open_train_widget(viewer_with_photo, steps=100_000, model_name="stopped")
    widget.train_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.plot.steps[-1:] >= [3], timeout=60000)
    assert widget.stop_button.enabled and not widget.train_button.enabled
    widget.stop_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.outcome is not None, timeout=60000)
    stopped_at = widget.outcome.steps
    assert not widget.outcome.finished and 3 <= stopped_at < 100_000
    assert widget.outcome.checkpoint.is_file() and widget.outcome.model_path.is_file()
    qtbot.waitUntil(lambda: widget.train_button.enabled, timeout=5000)

    widget.outcome = None
    widget.resume_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.plot.steps[-1:] >= [stopped_at + 2], timeout=60000)
    widget.stop_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.outcome is not None, timeout=60000)
    assert widget.outcome.steps > stopped_at
    assert widget.plot.steps[0] == 1  # the resumed curve continues the old one


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nothing selected", "select at least one HR image layer"),
        ("smaller than a patch", "smaller than one 32x32 patch"),
        ("not 1:4", "exactly 1/4"),
        ("NaN", "NaN"),
        ("full disk", "No space left on device"),
    ],
)
def test_bad_input_gets_a_clear_message(
    viewer_with_photo, tiny_model_file, monkeypatch, errors, case, message, tmp_path
):
    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    viewer = viewer_with_photo
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="labels")
    widget = open_train_widget(viewer, model_name="bad")
    assert "labels" not in [name for name, _ in widget._image_layers()]
    if case == "nothing selected":
        widget.hr_layers.value = []
    elif case == "smaller than a patch":
        widget.hr_layers.value = [viewer.add_image(np.zeros((20, 20), np.uint8), name="small")]
        widget.validation_layer.value = viewer.layers["photo"]
    elif case == "not 1:4":
        widget.reset_choices()
        widget.lr_layer.value = viewer.add_image(np.zeros((30, 30, 3), np.uint8), name="lr")
    elif case == "NaN":
        nan = np.full((64, 64), np.nan, np.float32)
        widget.hr_layers.value = [viewer.add_image(nan, name="nan")]
    elif case == "full disk":

        def full_disk(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("napari_srgan.training.job.save_model", full_disk)
    layers_before = [layer.name for layer in viewer.layers]
    widget.start()
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tiny_model_file.parent / "bad.safetensors").exists()
    if case != "full disk":  # bad input is refused before training: no preview layer appears
        assert [layer.name for layer in viewer.layers] == layers_before
