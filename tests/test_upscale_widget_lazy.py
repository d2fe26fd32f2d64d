"""Lazy results of big stacks never freeze napari: the input's intensity range is measured and
a lazy result is saved in a worker, with progress and Cancel; napari's File > Save, which runs
a writer on the GUI thread, refuses to compute planes there."""

import threading

import dask.array as da
import numpy as np
import pytest

from napari_srgan.engine.tiling import Cancelled
from napari_srgan.engine.upscale import check_image, colour_range
from napari_srgan.models.normalization import (
    READ_BATCHES,
    NormalizationSpec,
    regular_subsample,
)

PERCENTILES = NormalizationSpec("percentile", 1.0, 99.0)


class RecordedReads:
    """An array that records the first-axis slice of every read (as a zarr store would serve
    them) and has chunks of ``chunk`` planes."""

    def __init__(self, data: np.ndarray, chunk: int) -> None:
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.chunks = (chunk, *data.shape[1:])
        self.reads: list[slice] = []

    def __getitem__(self, key):
        self.reads.append(key[0])
        return self.data[key]


@pytest.mark.parametrize(("planes", "chunk"), [(250, 1), (250, 16), (7, 4)])
def test_a_sample_read_in_pieces_is_the_same_sample(planes, chunk):
    """Read piece by piece (for progress and Cancel), the sample equals the one read at once,
    in at most READ_BATCHES pieces, and no chunk is read by two pieces."""
    data = np.random.default_rng(0).random((planes, 30, 20), np.float32)
    recorded, calls = RecordedReads(data, chunk), []
    sample = regular_subsample(recorded, 5000, on_read=lambda *call: calls.append(call))
    np.testing.assert_array_equal(sample, regular_subsample(data, 5000))
    pieces = len(recorded.reads)
    assert 1 < pieces <= READ_BATCHES
    assert calls == [(done, pieces) for done in range(pieces + 1)]
    chunks_read = [set(range(planes)[piece]) for piece in recorded.reads]
    chunks_read = [{plane // chunk for plane in read} for read in chunks_read]
    assert sum(map(len, chunks_read)) == len(set().union(*chunks_read))


def test_the_range_of_a_stack_stops_between_pieces():
    stack = da.from_array(np.random.default_rng(0).random((40, 32, 32), np.float32), (1, 32, 32))
    layout, reported = check_image(stack, False), []

    def stop_after_two() -> bool:
        return len(reported) >= 2

    with pytest.raises(Cancelled):
        colour_range(
            stack,
            layout,
            PERCENTILES,
            progress=lambda *call: reported.append(call),
            should_stop=stop_after_two,
        )
    assert reported == [(0, 40), (1, 40)]
    watched = colour_range(stack, layout, PERCENTILES, progress=lambda *call: None)
    assert watched == colour_range(stack, layout, PERCENTILES)


napari = pytest.importorskip("napari")

from napari_srgan.plugin import upscale_widget as module  # noqa: E402
from napari_srgan.plugin.background import SYNCHRONOUS_ENV  # noqa: E402


def lazy_widget(viewer, stack: np.ndarray | da.Array, rgb: bool = True):
    layer = viewer.add_image(stack, rgb=rgb, name="stack")
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")
    widget.reset_choices()
    widget.image.value = layer
    widget.model.value = "tiny-rgb"
    widget.result_mode.value = "lazy (as you browse)"
    return widget


def test_the_range_is_measured_in_a_worker_with_progress_and_cancel(
    make_napari_viewer, tiny_model_file, qtbot, monkeypatch
):
    """A float stack's percentiles (and the model) were read on the GUI thread before the lazy
    layer appeared: napari froze for as long as reading the stack took, with no Cancel."""
    monkeypatch.setenv(SYNCHRONOUS_ENV, "0")
    monkeypatch.setattr(module, "show_info", lambda message: None)
    threads, inside, release = [], threading.Event(), threading.Event()
    measure, load = module.colour_range, module.load_model

    def held_back(*args, **options):
        threads.append(threading.current_thread())
        inside.set()
        release.wait(10)
        return measure(*args, **options)

    def loading(path):
        threads.append(threading.current_thread())
        return load(path)

    monkeypatch.setattr(module, "colour_range", held_back)
    monkeypatch.setattr(module, "load_model", loading)
    viewer = make_napari_viewer()
    stack = da.from_array(np.random.default_rng(0).random((3, 12, 12), np.float32), (1, 12, 12))
    widget = lazy_widget(viewer, stack, rgb=False)
    reports = []
    shown_reports = widget._on_report
    widget._on_report = lambda report: (reports.append(report), shown_reports(report))
    widget.start()
    qtbot.waitUntil(inside.is_set, timeout=10000)
    # the GUI thread is free (this test's event loop runs) while the worker measures
    assert widget.cancel_button.enabled and not widget.run_button.enabled
    assert widget.progress.text == "measuring the intensity range…"
    widget.cancel()
    release.set()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=10000)
    assert [layer.name for layer in viewer.layers] == ["stack"]
    assert widget.status.value == "cancelled: no layer added" and widget.lazy_results == []
    assert threads and threading.main_thread() not in threads

    widget.start()  # not cancelled: the layer appears once the range is known
    qtbot.waitUntil(lambda: bool(widget.lazy_results), timeout=10000)
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=10000)
    assert "stack x4 tiny-rgb" in viewer.layers and threading.main_thread() not in threads
    assert ("range", 3, 3) in reports  # one piece per plane (dask chunks of one plane)


@pytest.fixture
def saving(make_napari_viewer, tiny_model_file, monkeypatch, tmp_path):
    """A viewer with the Upscale widget set to add a lazy result of a 5-plane stack, the file
    its Save button writes to, and the widget's error and info notifications."""
    folder = tmp_path / "saved"
    folder.mkdir()
    monkeypatch.setattr(module, "choose_save_path", lambda parent, name: str(folder / "s.ome.tif"))
    notes = []
    monkeypatch.setattr(module, "show_error", notes.append)
    monkeypatch.setattr(module, "show_info", notes.append)
    viewer = make_napari_viewer()
    stack = np.random.default_rng(0).integers(0, 255, (5, 12, 12, 3), np.uint8)
    widget = lazy_widget(viewer, stack)
    return viewer, widget, stack, folder / "s.ome.tif", notes


def test_save_result_computes_the_planes_not_viewed_and_writes_the_stack(
    saving, monkeypatch, tiny_model_file
):
    from napari_srgan.engine.upscale import upscale
    from napari_srgan.io.images import read_image
    from napari_srgan.models.files import load_model

    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    viewer, widget, stack, path, notes = saving
    assert not widget.save_button.enabled  # nothing lazy to save yet
    widget.start()
    [lazy] = widget.lazy_results
    assert widget.save_button.enabled and 0 < len(lazy.array.planes) < 5
    widget.save_result()
    expected = upscale(stack, load_model(tiny_model_file))
    status = widget.status.value.replace("\u200b", "")  # break opportunities in the path
    assert notes == [] and status == f"saved: {path}"
    np.testing.assert_array_equal(read_image(path).data, expected)
    assert len(lazy.array.planes) == 5 and sorted(p.name for p in path.parent.iterdir()) == [
        "s.ome.tif"
    ]
    viewer.layers.remove("stack x4 tiny-rgb")
    assert not widget.save_button.enabled


def test_napari_save_refuses_to_compute_a_lazy_result_on_the_gui_thread(saving, monkeypatch):
    """File > Save called the writer on the GUI thread, which computed every plane there:
    napari hung, for hours on a big stack, without progress or Cancel."""
    import npe2

    from napari_srgan.plugin import writer

    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    refused = []
    monkeypatch.setattr(writer, "show_error", refused.append)
    viewer, widget, _stack, path, _notes = saving
    folder = path.parent
    widget.start()
    [lazy] = widget.lazy_results
    viewed = set(lazy.array.planes)
    assert 1 <= len(viewed) < 5
    viewer.layers.selection = {lazy.layer}
    target = folder / "napari.ome.tif"
    with pytest.warns(UserWarning):  # napari's own "did not return any written paths"
        assert viewer.layers.save(str(target), selected=True, plugin="napari-srgan") == []
    [line] = refused
    assert f"{5 - len(viewed)} of the 5 planes of this lazy result are not computed" in line
    assert "Save result…" in line and set(lazy.array.planes) == viewed
    assert list(folder.iterdir()) == []
    # napari's own writer (often the first one for .tif) converts the layer: refused alike, in
    # one line naming the button, before it opens (and empties) the file the user chose.
    # Chosen as the save dialog does (plugin="napari" may pick napari-srgan: a name prefix)
    [lossless, *_] = npe2.PluginManager.instance().get_manifest("napari").contributions.writers
    kept = folder / "napari.tif"
    kept.write_bytes(b"the user's earlier file")
    with pytest.raises(module.PlanesNotComputed, match="Save result…"):
        viewer.layers.save(str(kept), selected=True, _writer=lossless)
    assert set(lazy.array.planes) == viewed
    assert kept.read_bytes() == b"the user's earlier file"
    kept.unlink()
    for plane in range(5):  # browsed through: every plane is computed, File > Save works
        viewer.dims.set_current_step(0, plane)
    assert viewer.layers.save(str(target), selected=True, plugin="napari-srgan") == [str(target)]


def test_a_cancelled_save_keeps_the_file_and_the_planes_computed(saving, qtbot, monkeypatch):
    """Cancel while the planes of a save are computed: the file the user had stays as it was
    (no half file, no leftovers), the planes computed so far stay in the layer."""
    monkeypatch.setenv(SYNCHRONOUS_ENV, "0")
    _viewer, widget, _stack, path, notes = saving
    path.write_bytes(b"the user's file")
    engine, calls, inside, release = module.upscale, [], threading.Event(), threading.Event()
    hold_at = [0]  # the call to hold: set once the planes on view are computed

    def held_at_the_second_plane(*args, **options):
        calls.append(threading.current_thread())
        if len(calls) == hold_at[0]:
            inside.set()
            release.wait(10)
        return engine(*args, **options)

    monkeypatch.setattr(module, "upscale", held_at_the_second_plane)
    widget.start()
    qtbot.waitUntil(lambda: bool(widget.lazy_results), timeout=10000)
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=10000)
    [lazy] = widget.lazy_results
    viewed = set(lazy.array.planes)
    hold_at[0] = len(viewed) + 2  # the save's second plane
    widget.save_result()
    qtbot.waitUntil(inside.is_set, timeout=10000)
    widget.cancel()
    release.set()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=10000)
    assert widget.status.value.startswith("cancelled: stack x4 tiny-rgb not saved")
    assert len(notes) == 1 and "not saved" in notes[0]
    assert path.read_bytes() == b"the user's file" and list(path.parent.iterdir()) == [path]
    assert len(lazy.array.planes) == len(viewed) + 1 and threading.main_thread() not in calls
