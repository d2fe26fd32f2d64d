"""Models that are not exact when tiled (global pooling) get their tiles cross-faded, not stitched.

The model here is RCAN's channel attention in miniature (features scaled by a function of their
global mean) plus a global-mean offset strong enough that crop-and-stitch shows steps at tile
borders; random weights, nothing downloaded.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import dask.array as da
import numpy as np
import pytest
import torch
from torch import nn

from napari_srgan.cli import main
from napari_srgan.engine.lazy import upscale_lazy
from napari_srgan.engine.tiling import axis_blends, axis_spans
from napari_srgan.engine.upscale import blending_notice, tiling_halo, upscale
from napari_srgan.io.images import read_image, write_image
from napari_srgan.io.zarr_files import open_lazy
from napari_srgan.models.halo import TOLERANCE, synthetic_texture, tiling_check
from napari_srgan.models.interface import ModelCard, SRModel
from napari_srgan.models.registry import load_model

SCALE, HALO, TILE = 2, 8, 32


class GlobalMeanSR(nn.Module):
    """2x: convolutional features times a channel attention of their global mean (RCAN, HAT,
    SAN), plus an offset from the image's global mean: every output pixel sees the whole image."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.attention = nn.Linear(8, 8)
        self.tail = nn.Conv2d(8, 3 * SCALE**2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.head(x))
        weights = torch.sigmoid(4 * self.attention(features.mean(dim=(2, 3))))
        detail = self.shuffle(self.tail(features * weights[..., None, None]))
        base = nn.functional.interpolate(x, scale_factor=SCALE, mode="nearest")
        return base + 0.1 * detail + 0.5 * (x.mean(dim=(1, 2, 3))[:, None, None, None] - 0.5)


def global_model(*, measured: bool = True) -> SRModel:
    """The model with the card ``models add`` writes for it: halo and seam error measured."""
    network = GlobalMeanSR().eval()
    card = ModelCard("global-mean-x2", trained=False, scale=SCALE, measured_halo=HALO)
    model = SRModel(network, card)
    if measured:
        card.metrics["tiling"] = tiling_check(model, HALO, held_back=[synthetic_texture(3, 7)])
    return model


def photo(height: int = 96, width: int = 112) -> np.ndarray:
    """Texture on a gradient, so tiles have clearly different means."""
    texture = synthetic_texture(3, 3, max(height, width))[:height, :width]
    ramp = np.linspace(0, 1, height)[:, None, None] * np.linspace(0.2, 1, width)[None, :, None]
    return (0.5 * texture + 0.5 * ramp).astype(np.float32)


def step_errors(result: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """Per output row ``r``: how much the jump from row ``r - 1`` to ``r`` differs from the
    untiled one (a seam is a row where this stands out)."""
    return np.abs(np.diff(result, axis=0) - np.diff(whole, axis=0)).mean(axis=(1, 2))


def borders(length: int, halo: int) -> list[int]:
    """Output rows where a tile's kept part starts (after the first)."""
    return [span.keep_start * SCALE for span in axis_spans(length, TILE, halo)[1:]]


def test_the_measurement_finds_a_global_model_not_exact():
    card = global_model().card
    assert card.metrics["tiling"]["exact"] is False
    assert card.metrics["tiling"]["seam_error"] > 10 * TOLERANCE
    assert tiling_halo(SRModel(nn.Identity(), card)) == 32  # at least the blending floor
    assert "not exact when tiled" in blending_notice(card)


@pytest.mark.parametrize(
    ("length", "tile", "halo", "multiple", "scale"),
    [
        (96, 32, 32, 1, 2),
        (37, 8, 32, 1, 4),
        (50, 16, 5, 4, 3),
        (200, 64, 40, 8, 1),
        (7, 64, 32, 1, 2),
    ],
)
def test_weights_sum_to_one_everywhere_and_stay_inside_each_tile(
    length, tile, halo, multiple, scale
):
    spans = axis_spans(length, tile, halo, multiple)
    total = math.ceil(length / multiple) * multiple * scale
    coverage = np.zeros(total)
    for span, blend in zip(spans, axis_blends(spans, scale, halo), strict=True):
        assert span.start * scale <= blend.start and blend.stop <= span.stop * scale
        assert (blend.weights >= 0).all() and (blend.weights <= 1).all()
        coverage[blend.start : blend.stop] += blend.weights
    assert np.abs(coverage - 1).max() < 1e-6


def test_blending_removes_the_steps_that_stitching_leaves():
    blended_model = global_model()
    stitched_model = SRModel(
        blended_model.network, dataclasses.replace(blended_model.card, metrics={})
    )
    image = photo()
    whole = upscale(image, blended_model, tile=512, device="cpu")
    stitched = upscale(image, stitched_model, tile=TILE, device="cpu")
    blended = upscale(image, blended_model, tile=TILE, device="cpu")
    for axis in (0, 1):  # rows, then columns
        length = image.shape[axis]
        turn = (lambda a: a) if axis == 0 else (lambda a: np.swapaxes(a, 0, 1))
        seams = [b - 1 for b in borders(length, HALO)]  # diff index of the jump into row b
        stitched_steps = step_errors(turn(stitched), turn(whole))
        blended_steps = step_errors(turn(blended), turn(whole))
        interior = np.delete(blended_steps, [b - 1 for b in borders(length, 32)])
        assert stitched_steps[seams].min() > 20 * np.median(stitched_steps)  # the seams are real
        assert blended_steps[seams].max() < stitched_steps[seams].min() / 10
        assert blended_steps[[b - 1 for b in borders(length, 32)]].max() <= 3 * interior.max()
    assert np.abs(blended - whole).mean() < np.abs(stitched - whole).mean()


def test_one_tile_is_the_whole_image_pass_and_every_layout_blends():
    model = global_model()
    image = photo(40, 48)
    assert np.array_equal(
        upscale(image, model, tile=64, device="cpu"),
        upscale(image, model, tile=512, device="cpu"),
    )
    rgba = np.concatenate([(image * 255).astype(np.uint8), np.full((40, 48, 1), 200, np.uint8)], -1)
    whole = upscale(rgba, model, device="cpu", tile=512)
    for batch_size in (1, 3):
        tiled = upscale(rgba, model, device="cpu", tile=16, batch_size=batch_size)
        assert tiled.dtype == np.uint8 and tiled.shape == (80, 96, 4)
        assert (tiled[..., 3] == whole[..., 3]).all()
        assert np.abs(tiled[..., :3].astype(int) - whole[..., :3]).mean() < 3
    grey = (image[..., 0] * 4000).astype(np.uint16)[None].repeat(2, axis=0)  # a 2-plane stack
    tiled = upscale(grey, model, device="cpu", tile=16)
    assert tiled.shape == (2, 80, 96) and tiled.dtype == np.uint16
    assert np.array_equal(tiled[0], tiled[1])


def _rcan_state() -> dict[str, torch.Tensor]:
    rcan = pytest.importorskip("spandrel.architectures.RCAN")
    torch.manual_seed(0)
    network = rcan.RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=4)
    return network.state_dict()


def test_a_community_file_of_unbounded_reach_is_checked_on_first_load(tmp_path, monkeypatch):
    from napari_srgan.models import halo

    path = tmp_path / "rcan.pth"
    torch.save(_rcan_state(), path)
    model = load_model(path)
    tiling = model.card.metrics["tiling"]
    assert model.card.theoretical_halo is None and tiling["exact"] is False
    assert model.card.measured_halo == tiling["halo"] and "tiles are blended" in blending_notice(
        model.card
    )
    monkeypatch.setattr(halo, "measure_halo", lambda _model: pytest.fail("measured twice"))
    assert load_model(path).card.metrics["tiling"] == tiling  # cached by the file's hash


def _converted_rcan(user_models):
    """A tiny spandrel RCAN (channel attention with global pooling) converted into the user
    folder with the tiling check ``models add`` records for such a model."""
    from napari_srgan.models.community import community_model, save_converted

    model = community_model(_rcan_state(), name="tiny-rcan", source="test")
    tiling = tiling_check(model, 16, held_back=[synthetic_texture(3, 7, 96)])
    model.card.measured_halo, model.card.metrics["tiling"] = 16, tiling
    assert not tiling["exact"]
    return save_converted(model, user_models / "tiny-rcan.safetensors")


def test_cli_says_in_one_line_that_tiles_are_blended(tmp_path, user_models, capsys, caplog):
    path = _converted_rcan(user_models)
    image = (photo(48, 40) * 255).astype(np.uint8)
    write_image(tmp_path / "in.png", image, rgb=True)
    out = tmp_path / "out.tif"
    arguments = ["upscale", str(tmp_path / "in.png"), str(out), "--model", "tiny-rcan"]
    assert main([*arguments, "--tile", "16"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]  # the rest is progress
    assert len(warnings) == 1 and "Traceback" not in err
    assert "not exact when tiled" in warnings[0] and "tiles are blended" in warnings[0]
    model = load_model(path)
    expected = upscale(image, model, tile=16, device="cpu")
    assert np.array_equal(read_image(out).data, expected)
    streamed = tmp_path / "out.zarr"  # tile by tile into OME-Zarr: the same rows
    assert main([*arguments[:2], str(streamed), *arguments[3:], "--tile", "16"]) == 0
    assert np.array_equal(np.moveaxis(np.asarray(open_lazy(streamed).data), 0, -1), expected)
    large = np.tile(image, (3, 4, 1))  # 144 x 160: 2 x 2 blocks of 72 x 80
    with caplog.at_level(logging.WARNING):  # a plane that fits is one dask block: seamless
        lazy = upscale_lazy(da.from_array(large, chunks=(72, 80, 3)), path, tile=16)
    assert "tiles are blended" in caplog.text and lazy.numblocks == (1, 1, 1)
    assert np.array_equal(lazy.compute(), upscale(large, model, tile=16, device="cpu"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # one that does not is split, and that is said
        chunked = da.from_array(large, chunks=(72, 80, 3))
        lazy = upscale_lazy(chunked, path, tile=16, memory_limit=100_000)
    assert "block borders are stitched" in caplog.text and lazy.numblocks == (2, 2, 1)


def test_widget_says_tiles_are_blended(make_napari_viewer, user_models, monkeypatch):
    pytest.importorskip("napari")
    from napari_srgan.plugin import upscale_widget as module
    from napari_srgan.plugin.background import SYNCHRONOUS_ENV

    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    shown: list[str] = []
    monkeypatch.setattr(module, "show_warning", shown.append)
    path = _converted_rcan(user_models)
    viewer = make_napari_viewer()
    image = (photo(96, 80) * 255).astype(np.uint8)
    layer = viewer.add_image(image, rgb=True, name="photo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")
    widget.reset_choices()
    widget.image.value = layer
    widget.model.value = "tiny-rcan"
    assert "not exact when tiled: tiles are blended" in widget.info.value
    widget.tile.value = widget.tile.min + widget.tile.step  # the smallest tile: several of them
    widget.run_button.clicked.emit()
    assert [line for line in shown if "tiles are blended" in line] == shown and len(shown) == 1
    result = viewer.layers["photo x2 tiny-rcan"].data
    expected = upscale(image, load_model(path), tile=widget.tile.chosen, device="cpu")
    assert widget.tile.chosen < 80 and np.array_equal(result, expected)
