"""Community models through spandrel: detection, safe loading, tiling, CLI, dask, zarr, adding.

Every network is a spandrel architecture class built here with random weights and tiny widths,
saved as a plain state dict (``torch.save``) and as ``.safetensors``: nothing is downloaded.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_srgan.cli import main
from napari_srgan.engine.lazy import upscale_lazy
from napari_srgan.engine.upscale import upscale
from napari_srgan.io.images import read_image, write_image
from napari_srgan.io.zarr_files import open_lazy
from napari_srgan.models.files import ModelFileError
from napari_srgan.models.registry import add_model, available_models, load_model

spandrel_arches = pytest.importorskip("spandrel.architectures")


def _esrgan():
    from spandrel.architectures.ESRGAN import ESRGAN

    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)


def _swinir():
    """SwinIR-light's layout (pixelshuffledirect, 1conv) at a fraction of its width and depth."""
    from spandrel.architectures.SwinIR import SwinIR

    return SwinIR(
        upscale=2,
        in_chans=3,
        img_size=16,
        window_size=4,
        embed_dim=12,
        depths=[2],
        num_heads=[2],
        mlp_ratio=2,
        upsampler="pixelshuffledirect",
        resi_connection="1conv",
    )


def _span():
    from spandrel.architectures.SPAN import SPAN

    return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=4)


def _compact_grey():
    from spandrel.architectures.Compact import Compact

    return Compact(num_in_ch=1, num_out_ch=1, num_feat=8, num_conv=2, upscale=4)


#: name: (builder, spandrel architecture id, scale, channels)
ARCHITECTURES = {
    "esrgan-x4": (_esrgan, "ESRGAN", 4, 3),
    "swinir-x2": (_swinir, "SwinIR", 2, 3),
    "span-x4": (_span, "SPAN", 4, 3),
    "compact-grey-x4": (_compact_grey, "Compact", 4, 1),
}


def community_file(folder: Path, kind: str, suffix: str = ".pth") -> Path:
    """A random-weight model of ``kind`` saved as a plain state dict."""
    torch.manual_seed(0)
    network = ARCHITECTURES[kind][0]()
    state = {name: t.detach().contiguous() for name, t in network.state_dict().items()}
    path = folder / f"{kind}{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _image(channels: int, shape=(37, 45), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    full = (*shape, 3) if channels == 3 else shape
    return rng.integers(0, 256, full).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_detected_architecture_scale_and_channels(tmp_path, kind, suffix):
    _build, architecture, scale, channels = ARCHITECTURES[kind]
    model = load_model(community_file(tmp_path, kind, suffix))
    card = model.card
    assert (card.architecture, card.scale, card.in_channels, card.out_channels) == (
        architecture,
        scale,
        channels,
        channels,
    )
    assert card.source == f"spandrel: {kind}{suffix}"
    assert card.license and card.theoretical_halo is not None and card.theoretical_halo > 0
    assert card.size_multiple == (4 if architecture == "SwinIR" else 1)
    result = upscale(_image(channels), model, device="cpu")
    assert result.shape[:2] == (37 * scale, 45 * scale) and result.dtype == np.uint8


@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_tiled_equals_untiled_with_the_halo(tmp_path, kind):
    model = load_model(community_file(tmp_path, kind))
    channels = ARCHITECTURES[kind][3]
    image = np.random.default_rng(1).random((50, 57, 3) if channels == 3 else (50, 57))
    image = image.astype(np.float32)
    whole = upscale(image, model, tile=512, device="cpu")
    tiled = upscale(image, model, tile=2 * model.card.halo + 11, device="cpu")
    assert np.abs(tiled - whole).max() <= 1e-4


@pytest.mark.parametrize("kind", ["esrgan-x4", "compact-grey-x4", "swinir-x2"])
def test_cli_upscale_file_and_zarr_and_dask(tmp_path, kind, capsys):
    _build, _architecture, _scale, channels = ARCHITECTURES[kind]
    path = community_file(tmp_path, kind)
    image = _image(channels)
    write_image(tmp_path / "in.png", image, rgb=channels == 3)
    assert (
        main(["upscale", str(tmp_path / "in.png"), str(tmp_path / "out.tif"), "--model", str(path)])
        == 0
    )
    direct = upscale(image, load_model(path), device="cpu")
    assert np.array_equal(read_image(tmp_path / "out.tif").data, direct)
    arguments = ["--model", str(path), "--scheduler", "synchronous"]
    out = tmp_path / "out.zarr"
    assert main(["upscale", str(tmp_path / "in.png"), str(out), *arguments]) == 0, (
        capsys.readouterr().err
    )
    streamed = np.asarray(open_lazy(out).data)
    streamed = np.moveaxis(streamed, 0, -1) if channels == 3 else streamed
    lazy = upscale_lazy(image, path, device="cpu").compute()
    assert np.abs(streamed.astype(int) - direct.astype(int)).max() <= 1
    assert np.abs(lazy.astype(int) - direct.astype(int)).max() <= 1


def test_models_add_converts_and_reloads_without_the_original(tmp_path, user_models, capsys):
    path = community_file(tmp_path, "span-x4")
    original = load_model(path)
    image = _image(3)
    expected = upscale(image, original, device="cpu")
    assert main(["models", "add", str(path), "--name", "my-span"]) == 0
    assert "SPAN x4" in capsys.readouterr().out
    os.remove(path)
    added = load_model("my-span")
    assert added.path == user_models / "my-span.safetensors"
    assert added.card.architecture == "SPAN" and added.card.name == "my-span"
    assert added.card.theoretical_halo == original.card.theoretical_halo
    tiling = added.card.metrics["tiling"]
    assert tiling["exact"] and tiling["seam_error"] <= 1e-4
    assert added.card.measured_halo == tiling["halo"] and added.card.halo == tiling["halo"]
    photo = np.random.default_rng(2).random((50, 57, 3)).astype(np.float32)
    whole = upscale(photo, added, tile=512, device="cpu")
    tiled = upscale(photo, added, tile=2 * added.card.halo + 5, device="cpu")
    assert np.abs(tiled - whole).max() <= 1e-4
    assert np.array_equal(upscale(image, added, device="cpu"), expected)
    assert "my-span" in available_models()
    with pytest.raises(ModelFileError, match="exists already"):
        add_model(community_file(tmp_path, "span-x4"), "my-span")


class _Payload:
    """Unpickling this would run ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_with_code_is_refused_and_never_run(tmp_path, writer, capsys):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    payload = {"conv_first.weight": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ModelFileError, match="refused"):
        load_model(path)
    assert main(["upscale", str(path), str(tmp_path / "o.tif"), "--model", str(path)]) == 2
    assert main(["models", "add", str(path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 2 and all("refused" in line for line in error)
    if writer == "torch.save":
        assert "posix.system" in error[0]
    assert not marker.exists()


def test_unknown_architecture_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "mystery.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 3, 3, 3)}, str(path))
    with pytest.raises(ModelFileError, match="unknown architecture"):
        load_model(path)
    image = tmp_path / "in.png"
    write_image(image, _image(3), rgb=True)
    assert main(["upscale", str(image), str(tmp_path / "o.tif"), "--model", str(path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "unknown architecture" in error[0]
    assert not (tmp_path / "o.tif").exists()


def test_torchscript_file_is_not_run_as_a_community_model(tmp_path):
    scripted = torch.jit.script(torch.nn.Conv2d(3, 3, 3))
    path = tmp_path / "model.pt"
    scripted.save(str(path))
    with pytest.raises(ModelFileError, match="TorchScript"):
        load_model(path)


def test_upscale_widget_runs_an_added_community_model(make_napari_viewer, tmp_path, monkeypatch):
    pytest.importorskip("napari")
    from napari_srgan.plugin.background import SYNCHRONOUS_ENV

    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    path = add_model(community_file(tmp_path, "swinir-x2"), "my-swinir")
    viewer = make_napari_viewer()
    image = _image(3)
    layer = viewer.add_image(image, rgb=True, name="photo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")
    widget.reset_choices()
    widget.image.value = layer
    widget.model.value = "my-swinir"
    assert widget.run_button.text == "Upscale 2x"
    widget.run_button.clicked.emit()
    result = viewer.layers["photo x2 my-swinir"]
    assert np.array_equal(result.data, upscale(image, load_model(path), device="cpu"))
