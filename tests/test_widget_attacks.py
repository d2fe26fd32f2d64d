"""Hostile input to the napari widgets: each ends in one clear message and nothing the user had
(layers, files) changes."""

import re

import dask.array as da
import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_srgan.plugin import upscale_widget as module  # noqa: E402
from napari_srgan.plugin.background import SYNCHRONOUS_ENV  # noqa: E402


def upscale_widget(viewer, layer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")
    widget.reset_choices()
    widget.image.value = layer
    widget.model.value = "tiny-rgb"
    return widget


def train_widget_on_a_photo(make_napari_viewer, monkeypatch):
    """A viewer with one photo layer, the Train widget set to fine-tune tiny-rgb on it, and the
    list its error messages go to."""
    from napari_srgan.plugin import train_widget

    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    shown = []
    monkeypatch.setattr(train_widget, "show_error", shown.append)
    viewer = make_napari_viewer()
    photo = viewer.add_image(
        np.random.default_rng(0).integers(0, 256, (160, 160, 3), np.uint8), rgb=True, name="photo"
    )
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Train")
    widget.reset_choices()
    widget.hr_layers.value = [photo]
    widget.base_model.value = "tiny-rgb"
    return viewer, widget, shown


@pytest.mark.parametrize("input_is_the_store", [True, False])
def test_a_zarr_result_never_replaces_a_store_an_open_layer_reads(
    make_napari_viewer, tiny_model_file, errors, monkeypatch, tmp_path, input_is_the_store
):
    monkeypatch.setattr(module, "ask", lambda parent, question: True)  # "yes, replace it"
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    photo = viewer.add_image(rng.integers(0, 255, (16, 16, 3), np.uint8), rgb=True, name="photo")
    widget = upscale_widget(viewer, photo)
    widget.result_mode.value = "zarr file"
    widget.zarr_path.value = str(tmp_path / "result.zarr")
    widget.start()
    opened = viewer.layers["photo x4 tiny-rgb"]  # reads result.zarr lazily
    before = np.asarray(opened.data[0] if opened.multiscale else opened.data)
    widget.image.value = opened if input_is_the_store else photo
    names = [layer.name for layer in viewer.layers]
    widget.start()
    assert len(errors) == 1 and "result.zarr" in errors[0] and "photo x4 tiny-rgb" in errors[0]
    assert [layer.name for layer in viewer.layers] == names
    after = np.asarray(opened.data[0] if opened.multiscale else opened.data)
    np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("dtype", [np.uint32, np.int64])
def test_wide_integer_images_keep_their_values(make_napari_viewer, tiny_model_file, errors, dtype):
    """A 32/64-bit image holds small values: divided by its dtype's range they vanish below
    float32 precision, and the model's smallest output error came back as millions."""
    viewer = make_napari_viewer()
    image = np.random.default_rng(0).integers(0, 1000, (12, 12, 3)).astype(dtype)
    widget = upscale_widget(viewer, viewer.add_image(image, rgb=True, name="wide"))
    widget.start()
    result = viewer.layers["wide x4 tiny-rgb"].data
    assert not errors and result.dtype == dtype
    # bicubic-like: overshoots on noise by a fraction of the range (before: up to +-6e16)
    assert result.min() >= -300 and result.max() <= 1300
    assert np.abs(result.astype(float).mean() - image.mean()) < 20


def test_a_trained_model_cannot_take_a_bundled_models_name(
    make_napari_viewer, tiny_model_file, monkeypatch
):
    """Saved as "srresnet-rgb-x4", it was listed as "user:srresnet-rgb-x4" while the Upscale
    widget's "srresnet-rgb-x4" stayed the bundled model: the user upscaled with the wrong one."""
    viewer, widget, shown = train_widget_on_a_photo(make_napari_viewer, monkeypatch)
    widget.steps.value = 1
    widget.model_name.value = "srresnet-rgb-x4"
    widget.start()
    assert len(shown) == 1 and "bundled model" in shown[0], shown
    assert sorted(p.name for p in tiny_model_file.parent.iterdir()) == ["tiny-rgb.safetensors"]
    assert [layer.name for layer in viewer.layers] == ["photo"]


def test_a_corrupt_checkpoint_is_named_without_advice_to_unpickle(
    make_napari_viewer, tiny_model_file, monkeypatch
):
    """torch's own message told the user to load the file with weights_only=False, which can
    run any code in it."""
    checkpoint = tiny_model_file.parent / "mine.ckpt"
    checkpoint.write_bytes(np.random.default_rng(0).bytes(300))
    viewer, widget, shown = train_widget_on_a_photo(make_napari_viewer, monkeypatch)
    widget.model_name.value = "mine"
    widget.start(resume=True)
    assert len(shown) == 1 and "mine.ckpt is not a readable training checkpoint" in shown[0]
    assert "weights_only" not in shown[0] and "trusted" not in shown[0], shown
    assert checkpoint.stat().st_size == 300 and [layer.name for layer in viewer.layers] == ["photo"]


def test_a_lazy_result_with_a_broken_model_or_nan_input_adds_nothing(
    make_napari_viewer, tiny_model_file, errors
):
    """Lazy results load the model and measure the intensity range (in a worker) before the
    layer is added: weights that do not fit their card raised into napari's error dialog, and a
    NaN stack left a layer of zeros behind."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tiny_model_file), "pt") as weights:
        metadata = weights.metadata()
    tensors = load_file(str(tiny_model_file))
    del tensors[sorted(tensors)[0]]
    save_file(tensors, str(tiny_model_file.parent / "broken.safetensors"), metadata=metadata)
    viewer = make_napari_viewer()
    stack = viewer.add_image(np.zeros((3, 12, 12, 3), np.uint8), rgb=True, name="stack")
    widget = upscale_widget(viewer, stack)
    widget.result_mode.value = "lazy (as you browse)"
    widget.model.value = "broken"
    widget.start()
    assert len(errors) == 1 and "broken.safetensors" in errors[0]
    nan = da.from_array(np.full((2, 12, 12), np.nan, np.float32))  # read lazily: not pre-checked
    widget.image.value = viewer.add_image(nan, name="nan")
    widget.model.value = "tiny-rgb"
    widget.start()
    assert len(errors) == 2 and "NaN" in errors[1]
    assert [layer.name for layer in viewer.layers] == ["stack", "nan"]


def test_starting_again_while_a_job_runs_starts_nothing(
    make_napari_viewer, tiny_model_file, qtbot, monkeypatch
):
    """A script (or a queued click) calling start() while a job runs started a second job that
    Cancel could no longer reach, and a second layer."""
    from napari_srgan.plugin import train_widget

    monkeypatch.setattr(module, "show_warning", lambda message: None)
    shown = []
    monkeypatch.setattr(module, "show_error", shown.append)
    monkeypatch.setattr(train_widget, "show_error", shown.append)
    viewer = make_napari_viewer()
    photo = viewer.add_image(np.zeros((120, 120, 3), np.uint8), rgb=True, name="photo")
    widget = upscale_widget(viewer, photo)
    widget.tile.value = 40
    widget.start()
    widget.start()
    assert len(shown) == 1 and "running" in shown[0]
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60000)
    assert [layer.name for layer in viewer.layers] == ["photo", "photo x4 tiny-rgb"]
    _, trainer = viewer.window.add_plugin_dock_widget("napari-srgan", "Train")
    trainer.reset_choices()
    trainer.hr_layers.value = [photo]
    trainer.base_model.value = "tiny-rgb"
    trainer.steps.value, trainer.patch_size.value, trainer.batch_size.value = 2, 16, 1
    trainer.start()
    trainer.start()
    assert len(shown) == 2 and "running" in shown[1]
    qtbot.waitUntil(lambda: trainer.train_button.enabled, timeout=60000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(np.zeros((8, 8), np.int64), "int64"), (np.zeros((1, 1, 1, 2, 8, 8), np.uint8), "6-dim")],
)
def test_saving_what_ome_tiff_cannot_hold_says_why(
    make_napari_viewer, tmp_path, monkeypatch, data, reason
):
    """napari turns a writer's ValueError into "napari-srgan is not a valid writer", which
    hid the reason."""
    from napari_srgan.plugin import writer

    shown = []
    monkeypatch.setattr(writer, "show_error", shown.append)
    viewer = make_napari_viewer()
    viewer.layers.selection = {viewer.add_image(data, name="wide")}
    with pytest.warns(UserWarning):  # napari's own "did not return any written paths"
        written = viewer.layers.save(
            str(tmp_path / "out.tif"), selected=True, plugin="napari-srgan"
        )
    assert written == [] and list(tmp_path.iterdir()) == []
    assert len(shown) == 1 and reason in shown[0], shown


@pytest.mark.parametrize("synchronous", [True, False])
def test_a_deleted_lazy_result_releases_its_model_and_input(
    make_napari_viewer, tiny_model_file, qtbot, qapp, monkeypatch, synchronous
):
    """The widget kept every lazy result (its model and a reference to its input) after the
    layer was deleted, for as long as the viewer lived. Deleting the first of two also crashed
    the process in synchronous mode: each job's report slot referred back to its job, the
    engine's tile-writer thread had queued reports for it that run only after the job, and
    the collector freed the slot of the replaced job while they were still queued."""
    import gc

    monkeypatch.setenv(SYNCHRONOUS_ENV, "1" if synchronous else "0")
    viewer = make_napari_viewer()
    stack = viewer.add_image(da.zeros((3, 12, 12, 3), np.uint8), rgb=True, name="stack")
    widget = upscale_widget(viewer, stack)
    widget.result_mode.value = "lazy (as you browse)"
    for _ in range(2):
        widget.start()
        qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=30000)
    assert len(widget.lazy_results) == 2
    viewer.layers.remove("stack x4 tiny-rgb")
    gc.collect()  # what any allocation may do at this point
    qapp.processEvents()  # the queued reports
    assert [lazy.layer.name for lazy in widget.lazy_results] == ["stack x4 tiny-rgb [1]"]


def lazy_result_held_back(make_napari_viewer, monkeypatch, qtbot):
    """A viewer whose Upscale widget added a lazy result of a 3-plane stack; the engine
    waits (up to 30 s) until the returned event is set, so a test can act while it computes."""
    import threading

    release = threading.Event()
    engine = module.upscale

    def held_back(*args, **options):
        release.wait(30)
        return engine(*args, **options)

    monkeypatch.setattr(module, "upscale", held_back)
    viewer = make_napari_viewer()
    stack = viewer.add_image(da.zeros((3, 12, 12, 3), np.uint8), rgb=True, name="stack")
    widget = upscale_widget(viewer, stack)
    widget.result_mode.value = "lazy (as you browse)"
    widget.start()
    qtbot.waitUntil(lambda: bool(widget.lazy_results), timeout=30000)  # range measured
    return viewer, widget, release


def test_deleting_a_lazy_result_while_it_computes_stops_it(
    make_napari_viewer, tiny_model_file, qtbot, monkeypatch
):
    """Its planes went on being computed for nobody, and the widget then said "done" for a
    layer that no longer existed."""
    shown = []
    monkeypatch.setattr(module, "show_error", shown.append)
    monkeypatch.setattr(module, "show_info", shown.append)
    viewer, widget, release = lazy_result_held_back(make_napari_viewer, monkeypatch, qtbot)
    [lazy] = widget.lazy_results
    viewer.layers.remove("stack x4 tiny-rgb")
    release.set()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=30000)
    assert lazy.array.planes == {} and widget.lazy_results == [] and shown == []
    assert widget.status.value == "stopped: stack x4 tiny-rgb was deleted"


def test_a_plane_viewed_before_a_started_job_runs_starts_no_second_job(
    make_napari_viewer, tiny_model_file, qtbot, monkeypatch
):
    """The lazy result asked "is a job running?" of the worker, which says no until a queued
    worker begins and again once it has returned but before its callbacks run: a plane viewed
    then started a second job beside the first (the same planes computed twice)."""
    from napari_srgan.plugin.background import BackgroundJob

    _viewer, widget, release = lazy_result_held_back(make_napari_viewer, monkeypatch, qtbot)
    computing = widget.job
    widget.job = queued = BackgroundJob()  # run_job's job before its worker begins to run
    widget._compute_planes()  # what viewing a plane calls
    assert widget.job is queued
    widget.job = computing
    release.set()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=30000)


def test_a_lazy_result_outlives_its_input_layer(make_napari_viewer, tiny_model_file, errors):
    """Planes first viewed after the input layer was deleted are still computed from it."""
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).integers(0, 255, (3, 12, 12, 3), np.uint8)
    stack = viewer.add_image(data, rgb=True, name="stack")
    widget = upscale_widget(viewer, stack)
    widget.result_mode.value = "lazy (as you browse)"
    widget.start()
    [lazy] = widget.lazy_results
    viewer.layers.remove("stack")
    assert (2,) not in lazy.array.planes
    viewer.dims.set_current_step(0, 2)
    assert errors == [] and lazy.array.planes[(2,)].std() > 10


def test_cancelling_a_lazy_result_does_not_say_no_layer_was_added(
    make_napari_viewer, tiny_model_file, qtbot, monkeypatch
):
    """Cancel while planes of a lazy result were computed said "no layer added" beside the
    layer it had added."""
    shown = []
    monkeypatch.setattr(module, "show_info", shown.append)
    viewer, widget, release = lazy_result_held_back(make_napari_viewer, monkeypatch, qtbot)
    widget.cancel()
    release.set()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=30000)
    assert "stack x4 tiny-rgb" in viewer.layers and widget.status.value.startswith("cancelled")
    assert len(shown) == 1 and "no layer" not in shown[0] and "stack x4 tiny-rgb" in shown[0]


def test_a_zarr_result_that_cannot_fit_is_refused_before_any_work(
    make_napari_viewer, tiny_model_file, errors, monkeypatch, tmp_path
):
    """The same check and line as the CLI's (tests/test_disk_space.py), as a notification;
    the widget has no option to skip it, the line names the environment variable that does."""
    from napari_srgan.engine import file_upscale
    from napari_srgan.io import disk_space

    real_usage = disk_space.disk_usage
    monkeypatch.setattr(disk_space, "disk_usage", lambda path: real_usage(path)._replace(free=1000))
    computed = []
    monkeypatch.setattr(file_upscale, "upscale", lambda *args, **kwargs: computed.append(args))
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    photo = viewer.add_image(rng.integers(0, 255, (16, 16, 3), np.uint8), rgb=True, name="photo")
    widget = upscale_widget(viewer, photo)
    widget.result_mode.value = "zarr file"
    target = tmp_path / "result.zarr"
    widget.zarr_path.value = str(tmp_path / "missing" / "result.zarr")
    widget.start()  # (the check came first and said "[Errno 2] No such file or directory")
    assert errors == [f"napari-srgan: failed: output folder does not exist: {tmp_path / 'missing'}"]
    errors.clear()
    widget.zarr_path.value = str(target)
    widget.start()
    mount = disk_space.mount_point(tmp_path)
    line = rf"{re.escape(str(target))} needs an estimated [\d.]+ KiB but only 1000 bytes is free on {re.escape(str(mount))}"
    hint = re.escape(
        " (set NAPARI_SRGAN_SKIP_SPACE_CHECK=1 if the disk reports its free space wrongly)"
    )
    assert len(errors) == 1 and re.fullmatch(f"napari-srgan: failed: {line}{hint}", errors[0]), (
        errors
    )
    assert computed == [] and list(tmp_path.iterdir()) == []
    assert [layer.name for layer in viewer.layers] == ["photo"]
    errors.clear()  # a disk that misreports its free space: the variable is the way round
    monkeypatch.setenv(disk_space.SKIP_SPACE_CHECK_ENV, "1")
    widget.start()
    assert errors == [] and len(computed) == 1 and target.is_dir()


OTHER_WRITER = """
import sys
import numpy as np
from napari_srgan.io.zarr_files import OmeZarrWriter

writer = OmeZarrWriter(sys.argv[1], (64, 64), "uint8", rgb=False, scale=(1.0, 1.0),
                       translate=(0.0, 0.0))
writer.level0[:, :] = np.full((64, 64), 7, np.uint8)
writer.finish()
"""


def test_a_zarr_store_another_process_writes_meanwhile_is_kept(
    make_napari_viewer, tiny_model_file, errors, monkeypatch, tmp_path
):
    """While the widget computes into result.zarr, another process writes result.zarr and
    finishes first: its store stays whole and the widget says why in one line (it said
    "exists; pass --overwrite to replace it", an option the widget does not have)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from napari_srgan.engine import file_upscale

    target = tmp_path / "result.zarr"
    written = {}
    real_upscale = file_upscale.upscale

    def upscale_while_another_process_writes(*args, **kwargs):
        src = str(Path(module.__file__).parents[2])
        environment = {**os.environ, "PYTHONPATH": src}
        subprocess.run(
            [sys.executable, "-c", OTHER_WRITER, str(target)], env=environment, check=True
        )
        written.update({p: p.read_bytes() for p in target.rglob("*") if p.is_file()})
        return real_upscale(*args, **kwargs)

    monkeypatch.setattr(file_upscale, "upscale", upscale_while_another_process_writes)
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    photo = viewer.add_image(rng.integers(0, 255, (16, 16, 3), np.uint8), rgb=True, name="photo")
    widget = upscale_widget(viewer, photo)
    widget.result_mode.value = "zarr file"
    widget.zarr_path.value = str(target)
    widget.start()
    assert errors == [
        f"napari-srgan: failed: {target} was written by another writer meanwhile; not replacing it"
    ]
    assert written and {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == written
    assert [p.name for p in tmp_path.iterdir()] == ["result.zarr"]
    assert [layer.name for layer in viewer.layers] == ["photo"]


def test_a_layer_that_cannot_be_saved_is_named_escaped(tmp_path, monkeypatch):
    """The writer's notification named the layer as it was: a newline cut the line."""
    from napari_srgan.plugin import writer

    shown = []
    monkeypatch.setattr(writer, "show_error", shown.append)
    data = np.zeros((8, 8), np.int64)
    assert writer.write_image_layer(str(tmp_path / "o.tif"), data, {"name": "a\nb\x1b"}) == []
    assert len(shown) == 1 and "cannot save a\\nb\\x1b: " in shown[0], shown
