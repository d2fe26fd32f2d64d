"""BioImage Model Zoo: export a bundled model, validate it with bioimageio.core's own model
test (offline), re-import it, and refuse malformed packages in one line each."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_srgan.cli import main
from napari_srgan.engine.upscale import upscale
from napari_srgan.io.images import write_image
from napari_srgan.models.files import ModelFileError
from napari_srgan.models.normalization import intensity_range
from napari_srgan.models.registry import DEFAULT_GREY_MODEL, load_model

pytest.importorskip("bioimageio.core")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The bundled grey model exported through the CLI."""
    path = tmp_path_factory.mktemp("bmz") / "em.zip"
    assert main(["export-bmz", DEFAULT_GREY_MODEL, str(path)]) == 0
    return path


def _unpacked(package: Path, folder: Path) -> Path:
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    return folder


def _edit(folder: Path, change) -> Path:
    rdf = folder / "rdf.yaml"
    content = yaml.safe_load(rdf.read_text())
    change(content)
    rdf.write_text(yaml.safe_dump(content, sort_keys=False))
    return folder


def test_export_contents_and_bioimageio_core_model_test(package, tmp_path):
    from bioimageio.core import test_model

    folder = _unpacked(package, tmp_path)
    names = {p.name for p in folder.iterdir()}
    assert {"weights.pt", "weights_torchscript.pt", "srresnet_architecture.py"} <= names
    assert {"test_input.npy", "test_output.npy", "cover.png", "README.md"} <= names
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5")
    assert "Ledig" in rdf["cite"][0]["text"] and rdf["license"] and rdf["authors"]
    y_axis = rdf["outputs"][0]["axes"][2]
    assert y_axis["size"] == {"tensor_id": "input", "axis_id": "y"} and y_axis["scale"] == 0.25
    assert y_axis["halo"] == 4 * load_model(DEFAULT_GREY_MODEL).card.halo
    assert any(step["id"] == "scale_range" for step in rdf["inputs"][0]["preprocessing"])
    summary = test_model(package)
    failures = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failures


def test_reimported_package_matches_the_native_model(package):
    native = load_model(DEFAULT_GREY_MODEL)
    imported = load_model(package)  # TorchScript: runs without confirmation
    card = imported.card
    assert (card.scale, card.in_channels, card.theoretical_halo) == (4, 1, native.card.halo)
    assert card.normalization == native.card.normalization
    assert card.source == "bioimage.io: em.zip" and card.license == "BSD-3-Clause"
    image = np.random.default_rng(0).normal(500, 80, (90, 97)).astype(np.float32)
    intensity = intensity_range(image, card.normalization)
    expected = upscale(image, native, intensity=intensity, device="cpu")
    result = upscale(image, imported, intensity=intensity, device="cpu")
    expected = np.clip(expected, intensity.low, intensity.high)  # the package clips to [0, 1]
    assert np.abs(result - expected).max() / intensity.span <= 1e-4


def test_state_dict_package_runs_code_only_after_confirmation(package, tmp_path, capsys):
    folder = _edit(_unpacked(package, tmp_path / "pkg"), lambda c: c["weights"].pop("torchscript"))
    with pytest.raises(ModelFileError, match="--trust-code"):
        load_model(folder)
    image = tmp_path / "in.tif"
    write_image(
        image, np.random.default_rng(1).integers(0, 4000, (96, 96)).astype(np.uint16), rgb=False
    )
    out = tmp_path / "out.tif"
    assert main(["upscale", str(image), str(out), "--model", str(folder)]) == 2
    assert "--trust-code" in capsys.readouterr().err and not out.exists()
    assert main(["upscale", str(image), str(out), "--model", str(folder), "--trust-code"]) == 0
    assert out.exists()


def _drop_weights(folder: Path) -> None:
    (folder / "weights_torchscript.pt").unlink()
    (folder / "weights.pt").unlink()


def _wrong_axes(content: dict) -> None:
    axes = content["inputs"][0]["axes"]
    axes[2], axes[3] = axes[3], axes[2]  # x before y


def _fixed_output(content: dict) -> None:
    for axis in content["outputs"][0]["axes"][2:]:
        axis.pop("halo")
        axis["size"] = 352


def _unknown_preprocessing(content: dict) -> None:
    content["inputs"][0]["preprocessing"].insert(
        0, {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}
    )


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        ("missing weights", "weights"),
        ("wrong axes", "axes"),
        ("fixed output", "not a scaled reference"),
        ("unknown preprocessing", "zero_mean_unit_variance"),
        ("no rdf", "without rdf.yaml"),
    ],
)
def test_malformed_packages_get_one_clear_line(package, tmp_path, capsys, break_it, message):
    folder = _unpacked(package, tmp_path / "pkg")
    if break_it == "missing weights":
        _drop_weights(folder)
    elif break_it == "no rdf":
        (folder / "rdf.yaml").unlink()
    else:
        change = {
            "wrong axes": _wrong_axes,
            "fixed output": _fixed_output,
            "unknown preprocessing": _unknown_preprocessing,
        }[break_it]
        _edit(folder, change)
    image = tmp_path / "in.tif"
    write_image(image, np.zeros((96, 96), np.uint16), rgb=False)
    out = tmp_path / "out.tif"
    assert main(["upscale", str(image), str(out), "--model", str(folder)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert not out.exists()


def test_community_models_are_not_exported(tmp_path, capsys):
    shutil.copy(load_model(DEFAULT_GREY_MODEL).path, tmp_path / "copy.safetensors")
    assert main(["export-bmz", str(tmp_path / "copy.safetensors"), str(tmp_path / "x.tar")]) == 2
    assert ".zip" in capsys.readouterr().err
