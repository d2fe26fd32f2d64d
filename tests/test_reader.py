"""The reader claims only what it adds something to, so a plain TIFF opens in napari with one
layer, no reader dialog and no error (napari picks readers by file name and asks when two
plugins match)."""

import numpy as np
import pytest
import tifffile
import zarr
from napari._qt import qt_viewer as qt_viewer_module

from napari_srgan.io.images import write_tiff
from napari_srgan.plugin.reader import get_reader, read_tiff_layer, read_zarr_layer


@pytest.fixture
def no_dialog(monkeypatch) -> list:
    """Record instead of showing napari's "choose a reader" dialog."""
    shown: list = []
    monkeypatch.setattr(
        qt_viewer_module, "handle_gui_reading", lambda *args, **kwargs: shown.append(args)
    )
    return shown


def test_a_plain_tiff_opens_in_a_qt_viewer_with_one_layer_and_no_dialog(
    make_napari_viewer, tmp_path, no_dialog
):
    viewer = make_napari_viewer()
    data = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)
    tifffile.imwrite(tmp_path / "plain.tif", data)
    viewer.window._qt_viewer._qt_open([str(tmp_path / "plain.tif")], stack=False)
    assert no_dialog == []
    assert len(viewer.layers) == 1
    np.testing.assert_array_equal(viewer.layers[0].data, data)
    [layer] = viewer.open(str(tmp_path / "plain.tif"))  # ViewerModel.open: no MultipleReaderError
    assert len(viewer.layers) == 2 and layer.data.shape == (12, 16)


def test_results_named_ome_tif_open_with_their_pixel_size(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    path = tmp_path / "cells_x4.ome.tif"
    data = np.zeros((8, 8), np.uint8)
    write_tiff(path, data, rgb=False, scale=(0.1, 0.1), unit="µm", provenance={"model": "m"})
    [layer] = viewer.open(str(path), plugin="napari-srgan")
    assert tuple(layer.scale) == pytest.approx((0.1, 0.1)) and str(layer.units[0]) == "micrometer"


def test_get_reader_declines_files_it_adds_nothing_to(tmp_path):
    tifffile.imwrite(tmp_path / "plain.ome.tif", np.zeros((8, 8), np.uint8))
    write_tiff(tmp_path / "photo.ome.tif", np.zeros((8, 8), np.uint8), rgb=False, scale=(2, 2))
    write_tiff(tmp_path / "cells.ome.tif", np.zeros((8, 8), np.uint8), rgb=False, unit="nm")
    (tmp_path / "broken.ome.tif").write_bytes(b"not a tiff")
    (tmp_path / "folder").mkdir()
    zarr.create_array(tmp_path / "store.zarr", shape=(4, 4), dtype="u1")
    assert get_reader(str(tmp_path / "plain.ome.tif")) is None
    assert get_reader(str(tmp_path / "broken.ome.tif")) is None
    assert get_reader(str(tmp_path / "photo.ome.tif")).__wrapped__ is read_tiff_layer
    assert get_reader(str(tmp_path / "cells.ome.tif")).__wrapped__ is read_tiff_layer  # unit
    assert get_reader(str(tmp_path / "folder")) is None
    assert get_reader(str(tmp_path / "store.zarr")).__wrapped__ is read_zarr_layer


def damaged(tmp_path, kind: str) -> tuple[str, str]:
    """A damaged file this reader claims, and what the message must say about it."""
    if kind == "zarr.json":
        path = tmp_path / "garbage.zarr"
        path.mkdir()
        (path / "zarr.json").write_text("{not json")
        return str(path), f"napari-srgan: cannot open {path} as zarr: Expecting property name"
    if kind == "multiscales":
        path = tmp_path / "hollow.zarr"
        zarr.open_group(path, mode="w").attrs["multiscales"] = [{"datasets": [{"path": "0"}]}]
        return str(path), f"napari-srgan: {path}: OME-Zarr dataset '0' (datasets[0]) is not an"
    path = tmp_path / "cut.ome.tif"
    data = np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
    write_tiff(path, data, rgb=False, provenance={"model": "m"})
    path.write_bytes(path.read_bytes()[:2000])
    return str(path), f"napari-srgan: cannot read {path}: its pixel data is corrupt or truncated"


@pytest.mark.parametrize("kind", ["zarr.json", "multiscales", "truncated ome.tif"])
def test_a_damaged_file_is_one_notification_line_and_no_layer(
    make_napari_viewer, tmp_path, monkeypatch, capsys, no_dialog, kind
):
    """napari wrapped the reader's one-line error in "Tried opening with napari-srgan, but
    failed. ... Scroll up to see the full stack trace" (shown in its reader dialog when the
    reader is the remembered one for the name), or raised it with a traceback."""
    from napari.settings import get_settings
    from napari.utils.notifications import notification_manager

    monkeypatch.setattr(notification_manager, "records", [])
    path, message = damaged(tmp_path, kind)
    viewer = make_napari_viewer()
    assert viewer.open(path, plugin="napari-srgan") == []
    shown = [str(notification.message) for notification in notification_manager.records]
    assert len(shown) == 1 and shown[0].startswith(message) and "\n" not in shown[0], shown
    settings = get_settings().plugins  # File > Open with the reader remembered for the name
    remembered = {"*.zarr/": "napari-srgan", "*.ome.tif": "napari-srgan"}
    monkeypatch.setattr(settings, "extension2reader", remembered)
    viewer.window._qt_viewer._qt_open([path], stack=False)
    again = [str(notification.message) for notification in notification_manager.records]
    assert again == shown * 2 and no_dialog == [] and len(viewer.layers) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_corrupt_zarr_chunk_shown_in_napari_names_the_store(tmp_path, make_napari_viewer):
    """napari reads pixels while adding a layer and while browsing: a chunk that does not
    decode raised the codec's own message ("Zstd decompression error: invalid input data")."""
    path = tmp_path / "chunks.zarr"
    zarr.create_array(path, shape=(2, 16, 16), chunks=(1, 16, 16), dtype="uint8")[:] = 5
    (path / "c" / "1" / "0" / "0").write_bytes(b"not a compressed chunk")
    viewer = make_napari_viewer()
    assert len(viewer.open(str(path), plugin="napari-srgan")) == 1  # plane 0 is fine
    with pytest.raises(ValueError, match=r"chunks\.zarr: its pixel data is corrupt or trunc"):
        viewer.dims.set_current_step(0, 1)
