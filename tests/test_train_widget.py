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
    viewer_with_photo, tiny_model_file, monkeypatch, recwarn
):
    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    viewer = viewer_with_photo
    widget = open_train_widget(viewer, model_name="trained-in-test")
    widget.train_button.clicked.emit()
    assert not [w for w in recwarn if "layout" in str(w.message).lower()]  # matplotlib's
    assert widget.outcome is not None and widget.outcome.finished, widget.status.value
    assert widget.plot.steps == list(range(1, 11))
    assert [v[0] for v in widget.plot.validation] == [5, 10]
    assert len(widget.plot.loss_axes.lines) == 1 and len(widget.plot.psnr_axes.lines) == 2
    preview = widget.preview_layer
    assert preview in viewer.layers and preview.name.startswith("srgan training preview (step 10")
    # LR | bicubic above model | HR, RGB, from the held-out rows of "photo", labelled
    assert preview.data.ndim == 3 and preview.data.shape[0] < preview.data.shape[1]
    assert list(widget.preview_labels.features["panel"]) == ["LR", "bicubic", "model", "HR"]
    assert tuple(preview.contrast_limits) != (0, 1)  # contrasted from the HR panel
    photo = viewer.layers["photo"]
    assert preview.extent.world[0][-1] > photo.extent.world[1][-1]  # beside the data
    assert widget.plot.minimumHeight() >= 180  # never squeezed by other docked widgets
    assert [name for name, _ in widget._image_layers()] == ["photo"]  # not the preview

    _, upscale = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")
    assert "trained-in-test" in upscale.model.choices  # listed without reopening anything
    upscale.image.value = photo
    upscale.model.value = "trained-in-test"
    upscale.run_button.clicked.emit()
    assert viewer.layers["photo x4 trained-in-test"].data.shape == (1280, 640, 3)
    widget.reset_choices()
    assert [name for name, _ in widget._image_layers()] == ["photo"]  # nor upscaled results


def test_a_saved_model_is_never_replaced_silently(viewer_with_photo, tiny_model_file, monkeypatch):
    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    widget = open_train_widget(viewer_with_photo, model_name="mine", steps=2, validate_every=2)
    asked = []

    def answer(choice):
        def ask(_parent, name, proposal):
            asked.append((name, proposal))
            return {"replace": name, "rename": proposal, "cancel": None}[choice]

        monkeypatch.setattr(module, "ask_replace", ask)

    answer("rename")
    widget.train_button.clicked.emit()
    first = (tiny_model_file.parent / "mine.safetensors").read_bytes()
    assert asked == []  # nothing to replace the first time
    widget.steps.value = 3
    widget.train_button.clicked.emit()  # the same name again: a free name is proposed
    assert asked == [("mine", "mine-2")] and widget.model_name.value == "mine-2"
    assert widget.outcome.model_path.name == "mine-2.safetensors"
    assert (tiny_model_file.parent / "mine.safetensors").read_bytes() == first
    answer("cancel")
    widget.model_name.value = "mine"
    widget.outcome = None
    widget.train_button.clicked.emit()
    assert widget.outcome is None and "exists" in widget.status.value
    assert (tiny_model_file.parent / "mine.safetensors").read_bytes() == first
    answer("replace")
    widget.train_button.clicked.emit()
    assert widget.outcome.steps == 3
    assert (tiny_model_file.parent / "mine.safetensors").read_bytes() != first


def test_form_scrolls_and_every_control_explains_itself(viewer_with_photo, tiny_model_file):
    from qtpy.QtWidgets import QScrollArea

    widget = open_train_widget(viewer_with_photo)
    assert isinstance(widget.form.root_native_widget, QScrollArea)
    for control in widget.form:
        if control.label and not control.label.startswith("<b>"):
            assert len(control.tooltip or "") > 30, control.label


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
        ("multiscale, named with a newline", "pyramid\\n\\x1b[31m: multiscale layers"),
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
    elif case.startswith("multiscale"):  # the name was shown raw: the line split at "\n"
        pyramid = [np.zeros((64, 64), np.uint8), np.zeros((32, 32), np.uint8)]
        layer = viewer.add_image(pyramid, multiscale=True, name="pyramid\n\x1b[31m")
        widget.hr_layers.value = [layer]
    elif case == "full disk":

        def full_disk(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("napari_srgan.training.job.save_trained", full_disk)
    layers_before = [layer.name for layer in viewer.layers]
    widget.start()
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tiny_model_file.parent / "bad.safetensors").exists()
    if case != "full disk":  # bad input is refused before training: no preview layer appears
        assert [layer.name for layer in viewer.layers] == layers_before


def test_the_preview_shows_a_textured_crop_in_labelled_panels():
    from napari_srgan.training.degradations import Bicubic
    from napari_srgan.training.validation import (
        PREVIEW_PANELS,
        make_validation_image,
        preview_corners,
        preview_panels,
    )

    hr = np.zeros((1, 64, 200), np.float32)
    hr[:, 8:40, 150:190] = np.random.default_rng(0).random((32, 40))  # detail at the right
    centre = make_validation_image(hr, Bicubic(), crop=48)
    textured = make_validation_image(hr, Bicubic(), crop=48, crop_at="texture")
    assert textured.hr.std() > 0.2 and centre.hr.std() == 0
    sr = np.full_like(textured.hr, 0.5)
    bicubic = np.full_like(textured.hr, 0.25)
    preview = preview_panels(textured.lr, bicubic, sr, textured.hr)
    corners = dict(zip(PREVIEW_PANELS, preview_corners(preview.shape), strict=True))
    height, width = textured.hr.shape[1:]
    top, left = corners["model"]
    assert (preview[top : top + height, left : left + width] == 0.5).all()
    top, left = corners["HR"]
    np.testing.assert_array_equal(preview[top : top + height, left : left + width], textured.hr[0])
    top, left = corners["LR"]
    np.testing.assert_array_equal(preview[top : top + 4, left : left + 4], textured.lr[0, 0, 0])


def test_an_added_community_model_is_fine_tuned_as_its_own_architecture(
    viewer_with_photo, tiny_model_file, monkeypatch, tmp_path
):
    from napari_srgan.models.registry import add_model, load_model
    from test_community_models import community_file

    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    add_model(community_file(tmp_path, "esrgan-x4"), "my-esrgan")
    widget = open_train_widget(
        viewer_with_photo, model_name="esrgan-tuned", steps=4, base_model="my-esrgan"
    )
    widget.train_button.clicked.emit()
    assert widget.outcome is not None and widget.outcome.finished, widget.status.value
    tuned = load_model(widget.outcome.model_path)
    assert (tuned.card.architecture, tuned.scale) == ("ESRGAN", 4)
    assert tuned.card.description.startswith("fine-tuned from my-esrgan in napari on photo")


def test_resume_after_saved_files_were_deleted(
    viewer_with_photo, tiny_model_file, monkeypatch, errors
):
    """Resume reads the checkpoint and the model it started from, not the saved model: each
    missing file is one notification naming it (no traceback), a missing model is saved again."""
    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    widget = open_train_widget(viewer_with_photo, model_name="again", steps=2, validate_every=2)
    widget.train_button.clicked.emit()
    first = widget.outcome
    first.model_path.unlink()
    widget.steps.value = 4
    widget.resume_button.clicked.emit()
    assert errors == [] and widget.outcome.steps == 4 and first.model_path.is_file()
    tiny_model_file.unlink()  # the model it was fine-tuned from
    widget.resume_button.clicked.emit()
    gone = (
        "napari-srgan: base model tiny-rgb no longer exists, and the checkpoint "
        f"{first.checkpoint} was made from it: restore it (or choose a copy of it as the base "
        "model) to resume, or start afresh without resuming"
    )
    assert errors == [gone]
    widget.base_model.reset_choices()  # as the model folder's watcher does: another is chosen
    assert widget.base_model.value != "tiny-rgb"
    widget.resume_button.clicked.emit()
    assert errors == [gone, gone]
    first.checkpoint.unlink()
    widget.resume_button.clicked.emit()
    assert len(errors) == 3 and "nothing to resume: no checkpoint" in errors[2], errors
    assert "again.ckpt" in errors[2] and widget.train_button.enabled


def test_closing_the_viewer_while_training_stops_the_run(viewer_with_photo, tiny_model_file, qtbot):
    widget = open_train_widget(viewer_with_photo, steps=100_000, model_name="closed")
    widget.train_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.plot.steps[-1:] >= [1], timeout=60000)
    job = widget.job
    viewer_with_photo.close()
    assert job.stop_flag.is_set()
    qtbot.waitUntil(lambda: not job.worker.is_running, timeout=60000)
    # it stopped after its step and saved the model so far, as Stop does
    assert (tiny_model_file.parent / "closed.safetensors").is_file()
