"""Hostile input to the napari widgets: each ends in one clear message and nothing the user had
(layers, files) changes."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_srgan.plugin import upscale_widget as module  # noqa: E402
from napari_srgan.plugin.background import SYNCHRONOUS_ENV  # noqa: E402


@pytest.fixture
def errors(monkeypatch):
    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    shown = []
    monkeypatch.setattr(module, "show_error", shown.append)
    return shown


def upscale_widget(viewer, layer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")
    widget.reset_choices()
    widget.image.value = layer
    widget.model.value = "tiny-rgb"
    return widget


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
