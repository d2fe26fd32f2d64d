"""Hostile files the other bad-input tests do not build: OME-XML that declares billions of
pages, and pixel data that does not decode (corrupt compressed TIFF strips, corrupt zarr
chunks). Each ends in one line naming the file, exit status 2 from the CLI, nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
import zarr
from safetensors.torch import save_file

from conftest import tiny_model
from napari_srgan.cli import main
from napari_srgan.io.images import MAX_OME_PAGES, ImageTooLargeError, read_image
from napari_srgan.io.zarr_files import open_lazy
from napari_srgan.models.bioimageio import MAX_DESCRIPTION_BYTES
from napari_srgan.models.community import read_state_dict
from napari_srgan.models.files import ModelFileError
from napari_srgan.models.registry import MODEL_DIR_ENV, load_model
from napari_srgan.training import losses
from napari_srgan.training.metrics import sr_quality

SRC = Path(__file__).resolve().parents[1] / "src"


def ome_tiff_declaring(path, size_z: int, side: int = 8) -> None:
    """An 8x8 one-page OME-TIFF whose OME-XML declares ``size_z`` planes of ``side`` pixels."""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
        f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="{side}" '
        f'SizeY="{side}" SizeC="1" SizeZ="{size_z}" SizeT="1"><TiffData/></Pixels></Image></OME>'
    )
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), description=xml, metadata=None)


def corrupt_tiff(path, compression: str) -> None:
    """A compressed 64x64 TIFF whose only strip has its bytes flipped."""
    data = np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
    tifffile.imwrite(path, data, compression=compression, metadata=None)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    content = bytearray(path.read_bytes())
    for i in range(offset + 2, offset + min(count, 60)):
        content[i] ^= 0x5A
    path.write_bytes(bytes(content))


def run(argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("size_z", "side"),
    [(MAX_OME_PAGES + 1, 8), (10**6, 10**6)],
    ids=["just over the limit", "1e18 pixels"],
)
def test_ome_xml_declaring_too_many_pages_is_refused_before_tifffile_lists_them(
    tmp_path, size_z, side
):
    """tifffile allocates a list entry per declared page: 2.4e9 of them got the process killed
    by the kernel; a larger claim raised MemoryError, a smaller one read zeros."""
    path = tmp_path / "lie.ome.tif"
    ome_tiff_declaring(path, size_z, side)
    with pytest.raises(ImageTooLargeError, match=r"its OME-XML declares .* image planes"):
        read_image(path)
    with pytest.raises(ImageTooLargeError, match="its OME-XML declares"):
        open_lazy(path)


def test_ome_xml_with_a_size_that_is_not_a_number(tmp_path):
    path = tmp_path / "lie.ome.tif"
    ome_tiff_declaring(path, "many")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"lie\.ome\.tif.*not a whole number"):
        read_image(path)


def test_an_honest_ome_stack_still_reads(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, np.ones((3, 8, 8), np.uint8), ome=True)
    assert read_image(path).data.shape == (3, 8, 8)


@pytest.mark.parametrize("compression", ["zlib", "lzw", "jpeg"])
@pytest.mark.parametrize("output", ["o.tif", "o.zarr"])
def test_corrupt_compressed_tiff_is_one_line(
    tmp_path, tiny_model_file, capsys, compression, output
):
    source = tmp_path / "in.tif"
    corrupt_tiff(source, compression)
    with pytest.raises(ValueError, match=r"in\.tif: its pixel data is corrupt or truncated"):
        read_image(source)
    with pytest.raises(ValueError, match=r"in\.tif: its pixel data is corrupt or truncated"):
        np.asarray(open_lazy(source).data)
    code, lines = run(["upscale", source, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 2 and "corrupt or truncated" in lines[-1], lines
    assert not any("Traceback" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_truncated_tiff_names_the_file(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.ones((64, 64), np.uint8))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"cut\.tif: its pixel data is corrupt or truncated"):
        read_image(path)


@pytest.mark.parametrize("output", ["o.tif", "o.zarr"])
def test_corrupt_zarr_chunk_is_one_line(tmp_path, tiny_model_file, capsys, output):
    source = tmp_path / "in.zarr"
    array = zarr.create_array(str(source), shape=(16, 16), chunks=(8, 8), dtype="uint8")
    array[:] = 5
    chunk = next(p for p in source.rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"not a compressed chunk")
    code, lines = run(["upscale", source, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 2 and "in.zarr: its pixel data is corrupt or truncated" in lines[-1], lines
    assert not any("Traceback" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


class Payload:
    """Unpickling this would create a marker file (it never may)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol", [4, 5])
def test_a_new_protocol_pickle_is_refused_without_torch_warning_lines(tmp_path, protocol):
    """torch warns (two more stderr lines) about any pickle protocol other than 2 before its
    tensors-only unpickler refuses it; the refusal alone is the one line."""
    marker, path = tmp_path / "marker", tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": Payload(marker)}, protocol=protocol))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelFileError, match=r"evil\.pth was refused"):
            read_state_dict(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        with pytest.raises(losses.WeightsFileError, match="holds more than tensors"):
            losses.load_checked_state_dict(path, digest[:8])
    assert [str(w.message) for w in caught] == []
    assert not marker.exists()


@pytest.mark.parametrize("packing", ["zip", "folder"])
def test_a_huge_bioimageio_description_is_refused_before_parsing(tmp_path, capsys, packing):
    """A 300 MB rdf.yaml zips to 300 kB; parsing it took over an hour (refused from its size)."""
    text = "type: model\nname: " + "x" * (MAX_DESCRIPTION_BYTES + 1)
    if packing == "zip":
        package = tmp_path / "big.zip"
        with zipfile.ZipFile(package, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("rdf.yaml", text)
    else:
        package = tmp_path / "big"
        package.mkdir()
        (package / "rdf.yaml").write_text(text)
    source = tmp_path / "in.png"
    iio.imwrite(source, np.zeros((16, 16), np.uint8))
    code, lines = run(["upscale", source, tmp_path / "o.tif", "--model", package], capsys)
    assert code == 2 and len(lines) == 1 and "its rdf.yaml is 1 MiB" in lines[0], lines
    assert not (tmp_path / "o.tif").exists()


def model_with_card(path, **fields) -> None:
    """A tiny native model file whose stored card has ``fields`` replaced."""
    model = tiny_model(3)
    card = {**json.loads(model.card.to_json()), **fields}
    save_file(
        {k: v.contiguous() for k, v in model.network.state_dict().items()},
        str(path),
        metadata={
            "napari_srgan_format": "1",
            "generator_config": json.dumps(model.network.config.to_dict()),
            "model_card": json.dumps(card),
        },
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"measured_halo": "abc"}, "'measured_halo' is 'abc', not int | None"),
        ({"measured_halo": -7}, "'measured_halo' is -7, not within 0..100000"),
        ({"size_multiple": 0}, "'size_multiple' is 0, not within 1..4096"),
        ({"size_multiple": 10**6}, "'size_multiple' is 1000000, not within"),
        ({"metrics": [1]}, "'metrics' is [1], not dict"),
        ({"trained": "no"}, "'trained' is 'no', not bool"),
        ({"scale": "4"}, "'scale' is '4', not int"),
        ({"in_channels": True}, "'in_channels' is True, not int"),
    ],
    ids=lambda value: str(value),
)
def test_a_card_field_of_the_wrong_type_or_size_is_one_line(tmp_path, capsys, fields, message):
    """Before: a string halo or size multiple 0 was a traceback, a list of metrics too, and
    ``"trained": "no"`` silently counted as trained."""
    model_with_card(tmp_path / "m.safetensors", **fields)
    source = tmp_path / "in.png"
    iio.imwrite(source, np.zeros((16, 16, 3), np.uint8))
    code, lines = run(
        ["upscale", source, tmp_path / "o.tif", "--model", tmp_path / "m.safetensors"], capsys
    )
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "o.tif").exists()


def upscaled_and_listed(tmp_path, capsys, monkeypatch, **fields) -> tuple[str, str]:
    """The CLI's result line for an upscale with a user model whose card has ``fields``
    replaced, and the ``models`` listing."""
    monkeypatch.setenv("NAPARI_SRGAN_MODEL_DIR", str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    model_with_card(tmp_path / "models" / "m.safetensors", **fields)
    source = tmp_path / "in.png"
    iio.imwrite(source, np.zeros((16, 16, 3), np.uint8))
    capsys.readouterr()
    argv = ["upscale", source, tmp_path / "o.tif", "--model", tmp_path / "models/m.safetensors"]
    assert main([str(a) for a in argv]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if "->" in line]
    assert main(["models"]) == 0
    return line, capsys.readouterr().out


def test_card_text_with_line_breaks_or_escapes_is_shown_escaped(tmp_path, capsys, monkeypatch):
    """A model's card is text from whoever made the file: a newline in its name split the
    CLI's lines, an escape sequence drove the terminal (and went into layer names)."""
    evil = "evil\nname\x1b[31m"
    line, listing = upscaled_and_listed(
        tmp_path, capsys, monkeypatch, name=evil, intended_use="a\rb"
    )
    assert line.endswith("with evil\\nname\\x1b[31m")
    assert "\x1b" not in listing and "\r" not in listing
    [row] = [line for line in listing.splitlines() if line.split()[0] == "m"]
    assert " a\\rb (untrained)" in row


def test_card_text_of_megabytes_is_shortened_where_it_is_shown(tmp_path, capsys, monkeypatch):
    """A card's name of a million characters went whole into the result line, the model list
    and the result layer's name."""
    fields = {"name": "n" * 10**6, "license": "l" * 10**6}
    line, listing = upscaled_and_listed(tmp_path, capsys, monkeypatch, **fields)
    assert line.endswith("n" * 199 + "…") and len(line) < 500
    assert max(map(len, listing.splitlines())) < 1000


def test_unexpected_tensor_names_are_escaped(tmp_path):
    """The names of a native file's tensors are the file's text: a newline in one split the
    error a notification shows."""
    model = tiny_model(3)
    weights = {k: v.contiguous() for k, v in model.network.state_dict().items()}
    weights["evil\nname\x1b[2J"] = torch.zeros(1)
    metadata = {
        "napari_srgan_format": "1",
        "generator_config": json.dumps(model.network.config.to_dict()),
        "model_card": model.card.to_json(),
    }
    save_file(weights, str(tmp_path / "m.safetensors"), metadata=metadata)
    with pytest.raises(ModelFileError) as error:
        load_model(tmp_path / "m.safetensors")
    assert "unexpected evil\\nname\\x1b[2J" in str(error.value)
    assert str(error.value).isprintable()


TRAIN = ["train", "--from-scratch", "--channels", "4", "--blocks", "1", "--patch", "16"]
TRAIN += ["--batch", "1", "--val-crop", "32", "--val-fraction", "0.4", "--device", "cpu"]
TRAIN += ["--steps", "1", "--overwrite"]


@pytest.mark.parametrize(
    "written",
    [
        ["--out", "{d}/hr.png"],
        ["--out", "{d}/m.safetensors", "--checkpoint", "{d}/hr.png"],
        ["--out", "{d}/val.png"],
        ["--out", "{d}/m.safetensors", "--checkpoint", "{d}/sub/../lr.png"],
    ],
    ids=["model over HR", "checkpoint over HR", "model over validation", "checkpoint over LR"],
)
def test_training_never_writes_over_its_own_images(tmp_path, capsys, written):
    """Before: with --overwrite the model or checkpoint replaced a training image."""
    rng = np.random.default_rng(0)
    iio.imwrite(tmp_path / "hr.png", rng.integers(0, 255, (96, 96, 3), np.uint8))
    iio.imwrite(tmp_path / "lr.png", rng.integers(0, 255, (24, 24, 3), np.uint8))
    iio.imwrite(tmp_path / "val.png", rng.integers(0, 255, (96, 96, 3), np.uint8))
    (tmp_path / "sub").mkdir()
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.png")}
    images = ["--hr", tmp_path / "hr.png", "--lr", tmp_path / "lr.png"]
    images += ["--val", tmp_path / "val.png"]
    argv = [*TRAIN, *images, *(a.format(d=tmp_path) for a in written)]
    code, lines = run(argv, capsys)
    assert code == 2 and len(lines) == 1 and "is the input file" in lines[0], lines
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.png")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr.png", "lr.png", "sub", "val.png"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_pipe_named_like_a_model_never_blocks(tmp_path, user_models, tiny_model_file, capsys):
    """Reading a named pipe blocks until someone writes to it: ``models`` hung for ever on a
    pipe in the user model folder, ``--model pipe.safetensors`` too."""
    os.mkfifo(user_models / "pipe.safetensors")
    (user_models / "folder.safetensors").mkdir()
    os.mkfifo(tmp_path / "given.safetensors")
    env = {**os.environ, "PYTHONPATH": str(SRC), MODEL_DIR_ENV: str(user_models)}
    listing = subprocess.run(
        [sys.executable, "-m", "napari_srgan", "models"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert listing.returncode == 0 and "tiny-rgb" in listing.stdout, listing.stderr
    assert "pipe" not in listing.stdout and "folder" not in listing.stdout
    source = tmp_path / "in.png"
    iio.imwrite(source, np.zeros((16, 16, 3), np.uint8))
    given = tmp_path / "given.safetensors"
    code, lines = run(["upscale", source, tmp_path / "o.tif", "--model", given], capsys)
    assert code == 2 and len(lines) == 1 and "is not a model file" in lines[0], lines


def test_tifffile_log_lines_do_not_precede_the_error(tmp_path):
    """tifffile logs what it cannot read; the CLI printed that line before its own error
    (pytest's log capture hides it in-process: a real process shows it)."""
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 20)
    result = subprocess.run(
        [sys.executable, "-m", "napari_srgan", "upscale", "bad.tif", "o.tif"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "bad.tif" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif"]


def test_a_rerun_into_the_input_folder_does_not_upscale_its_results(
    tmp_path, tiny_model_file, capsys
):
    """Before: the second run read cells_x4.ome.tif as an input and wrote cells_x4_x4.ome.tif
    (16x the pixels; a third run 64x...)."""
    iio.imwrite(tmp_path / "cells.png", np.zeros((16, 16, 3), np.uint8))
    iio.imwrite(tmp_path / "other_x2.png", np.zeros((16, 16, 3), np.uint8))  # no 'other' input
    argv = ["upscale", tmp_path, tmp_path, "--model", "tiny-rgb"]
    assert run(argv, capsys)[0] == 0
    assert run([*argv, "--overwrite"], capsys)[0] == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["cells.png", "cells_x4.ome.tif", "other_x2.png", "other_x2_x4.ome.tif"]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 3, 3), "3x3 pixels is too small to score"),
        ((3, 32, 32), "scores one grey or RGB image, not shape (3, 32, 32)"),
        ((32, 32, 2), "scores one grey or RGB image, not shape (32, 32, 2)"),
        ((32, 32), "one constant value where it is scored"),  # was "inf dB", an inf mean
    ],
    ids=["thumbnail", "grey stack", "grey plus alpha", "flat"],
)
def test_evaluate_refuses_what_it_cannot_score_before_any_work(
    tmp_path, tiny_model_file, capsys, shape, message
):
    """Before: a 3x3 image or a stack was a ZeroDivisionError traceback in the resampling."""
    tifffile.imwrite(tmp_path / "hr.tif", np.zeros(shape, np.uint8), photometric="minisblack")
    code, lines = run(["evaluate", "--hr", tmp_path / "hr.tif", "--model", "tiny-rgb"], capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines


def test_evaluating_a_perfect_result_warns_nothing():
    """PSNR of identical images is +inf; numpy's divide-by-zero warning printed two lines."""
    image = np.full((32, 32), 7, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sr_quality(image, image, data_range=255.0).psnr == np.inf


@pytest.fixture
def tiny_package(tmp_path, tiny_model_file) -> Path:
    """The tiny RGB model exported as a bioimage.io package, unpacked into a folder."""
    pytest.importorskip("bioimageio.core")
    assert main(["export-bmz", "tiny-rgb", str(tmp_path / "tiny.zip")]) == 0
    folder = tmp_path / "tiny"
    with zipfile.ZipFile(tmp_path / "tiny.zip") as archive:
        archive.extractall(folder)
    return folder


def test_a_package_whose_weights_are_a_url_is_refused_without_downloading(
    tiny_package, tmp_path, capsys, monkeypatch
):
    """Before: bioimageio.spec downloaded the weights at run time (a progress bar, then the
    connection's error)."""
    import bioimageio.spec.utils

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(bioimageio.spec.utils, "download", no_network)
    (tiny_package / "weights_torchscript.pt").unlink()
    line = _refused_with_weights_at(
        "https://example.org/weights.pt", tiny_package, tmp_path, capsys
    )
    assert "https://example.org/weights.pt; napari-srgan never downloads" in line


@pytest.mark.parametrize("outside", ["absolute", "parent"])
def test_a_package_whose_weights_lie_outside_it_is_refused(tiny_package, tmp_path, capsys, outside):
    """Before: a package naming /etc/passwd or ../other.pt as its weights had that file read."""
    elsewhere = tmp_path / "elsewhere.pt"
    (tiny_package / "weights_torchscript.pt").rename(elsewhere)
    named = elsewhere if outside == "absolute" else "../elsewhere.pt"
    line = _refused_with_weights_at(named, tiny_package, tmp_path, capsys)
    assert "is outside the package; a package may only use its own files" in line


def _refused_with_weights_at(named, package: Path, tmp_path: Path, capsys) -> str:
    """Point the package's TorchScript weights at ``named``, upscale with it: the one error
    line (nothing is written)."""
    rdf = package / "rdf.yaml"
    rdf.write_text(rdf.read_text().replace("source: weights_torchscript.pt", f"source: {named}"))
    source = tmp_path / "in.png"
    iio.imwrite(source, np.zeros((16, 16, 3), np.uint8))
    code, lines = run(["upscale", source, tmp_path / "o.tif", "--model", package], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert not (tmp_path / "o.tif").exists()
    return lines[0]


def test_a_torchscript_package_loads_without_torch_warning_lines(tiny_package):
    """torch.jit.load's FutureWarning added two stderr lines to every run of a package."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(tiny_package)
    assert model.card.scale == 4
    assert [str(w.message) for w in caught if w.category is FutureWarning] == []


def test_export_never_replaces_a_file_unasked_nor_writes_through_a_symlink(
    tmp_path, tiny_model_file, capsys
):
    """Before: export-bmz replaced an existing .zip without --overwrite, and wrote the package
    into whatever file a symlink named pkg.zip pointed at (here the user's image)."""
    pytest.importorskip("bioimageio.core")
    image = tmp_path / "image.png"
    iio.imwrite(image, np.zeros((16, 16, 3), np.uint8))
    kept = image.read_bytes()
    (tmp_path / "link.zip").symlink_to(image)
    (tmp_path / "old.zip").write_bytes(b"a package the user keeps")
    for name in ("link.zip", "old.zip"):
        code, lines = run(["export-bmz", "tiny-rgb", tmp_path / name], capsys)
        assert code == 2 and len(lines) == 1 and "exists; pass --overwrite" in lines[0], lines
    assert (tmp_path / "old.zip").read_bytes() == b"a package the user keeps"
    assert main(["export-bmz", "tiny-rgb", str(tmp_path / "link.zip"), "--overwrite"]) == 0
    assert image.read_bytes() == kept
    assert not (tmp_path / "link.zip").is_symlink() and zipfile.is_zipfile(tmp_path / "link.zip")


def test_a_store_too_large_for_memory_is_refused_before_work_for_a_file_output(
    tmp_path, tiny_model_file, capsys
):
    """A zarr read whole (a .tif output) is checked against free memory like a TIFF's header:
    before, the work started and then failed (or filled memory, for a claim just below it)."""
    zarr.create_array(str(tmp_path / "big.zarr"), shape=(10**6, 10**6), dtype="uint8")
    argv = ["upscale", tmp_path / "big.zarr", tmp_path / "o.tif", "--model", "tiny-rgb"]
    code, lines = run(argv, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "big.zarr declares 1000000x1000000 pixels" in lines[0]
    assert "write a .zarr output" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zarr"]


def test_a_zip_entry_larger_than_free_memory_is_refused_before_reading(
    tiny_package, tmp_path, capsys, monkeypatch
):
    """Package weights are read whole into memory: a zip bomb (GBs of zeros in a small zip)
    would fill it. Here free memory is made smaller than the package's test output."""
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=400_000))
    source = tmp_path / "in.png"
    iio.imwrite(source, np.zeros((16, 16, 3), np.uint8))
    argv = ["upscale", source, tmp_path / "o.tif", "--model", tmp_path / "tiny.zip"]
    code, lines = run(argv, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "tiny.zip: its test_output.npy unpacks to" in lines[0]
    assert "more than the 0.0 GB of free memory" in lines[0]


@pytest.mark.parametrize("character", ["\n", "\r", "\x1b"], ids=["newline", "return", "escape"])
@pytest.mark.parametrize("problem", ["missing input", "corrupt input", "existing output"])
def test_a_control_character_in_a_file_name_is_shown_escaped_in_one_line(
    tmp_path, capsys, character, problem
):
    """A newline in a name cut the one-line message ("no such image file: a"); an escape
    character reached the terminal. The name is shown with Python's escapes instead."""
    name = f"cells{character}[31m.png"
    source, output = tmp_path / "in.png", tmp_path / "out.png"
    iio.imwrite(source, np.zeros((8, 8, 3), np.uint8))
    if problem == "existing output":
        output = tmp_path / name
        output.write_bytes(b"an earlier result")
    else:
        source = tmp_path / name
        if problem == "corrupt input":
            source.write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["upscale", str(source), str(output), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), repr(err)
    assert "\r" not in err and "\x1b" not in err, repr(err)
    escaped = repr(character)[1:-1]
    assert f"cells{escaped}[31m.png" in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("character", ["\n", "\x1b"], ids=["newline", "escape"])
def test_a_control_character_in_a_file_name_never_reaches_progress_or_evaluate_lines(
    tmp_path, capsys, character
):
    """The progress line of one upscaled file and ``evaluate``'s refusal named the file as it
    was: a newline split the line, an escape sequence drove the terminal."""
    source = tmp_path / f"cells{character}[31m.png"
    iio.imwrite(source, np.zeros((8, 8), np.uint8))
    escaped = f"cells{repr(character)[1:-1]}[31m.png"
    code, lines = run(["upscale", source, tmp_path / "out.tif", "--device", "cpu"], capsys)
    assert code == 0 and lines and all(escaped in line for line in lines), lines
    code, lines = run(["evaluate", "--hr", source], capsys)
    assert code == 2 and len(lines) == 1 and escaped in lines[0], lines
    assert "too small to score" in lines[0]
