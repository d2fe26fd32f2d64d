"""Hostile input, table-driven: every case ends in one clear line and changes nothing on disk.

CLI cases run ``napari_srgan.cli.main`` in this process (fast) and a representative subset
runs as real subprocesses (no traceback, exit status 2). Each CLI case asserts exit status 2,
exactly one line on stderr, and an unchanged case folder (every file hashed before and after).
Crafted files are tiny files that *claim* huge sizes. API cases check the Python functions.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import pickle
import re
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
import zarr
from safetensors.torch import save_file

from conftest import tiny_model
from napari_srgan.cli import main
from napari_srgan.engine import schedulers
from napari_srgan.engine.devices import choose_device
from napari_srgan.engine.file_upscale import upscale_file
from napari_srgan.engine.upscale import InvalidImageError, check_image, upscale
from napari_srgan.io.atomic_files import OutputExistsError, atomic_write
from napari_srgan.io.images import PROVENANCE_TAG, ImageTooLargeError, read_image, write_image
from napari_srgan.io.zarr_files import OmeZarrWriter
from napari_srgan.models.files import ModelFileError, load_model, save_model
from napari_srgan.models.normalization import NormalizationSpec, intensity_range
from napari_srgan.models.srresnet import GeneratorConfig
from napari_srgan.training import losses

SRC = Path(__file__).resolve().parents[1] / "src"


# --- crafted files --------------------------------------------------------------------------


def tiff_claiming(path: Path, height: int, width: int, bits: int = 8) -> None:
    """A 122-byte TIFF whose one strip claims ``height x width`` pixels."""
    entries = [
        (256, 4, width),  # ImageWidth
        (257, 4, height),  # ImageLength
        (258, 3, bits),  # BitsPerSample
        (259, 3, 1),  # no compression
        (262, 3, 1),  # min-is-black
        (273, 4, 8),  # the strip "starts" at the IFD
        (277, 3, 1),  # one sample
        (278, 4, height),  # RowsPerStrip
        (279, 4, 0xFFFFFFFF),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack("<HHII", tag, kind, 1, value)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00")


def png_claiming(path: Path, height: int, width: int, colour_type: int = 2) -> None:
    """A PNG with a valid header claiming ``height x width`` pixels and almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def tiff_with_provenance(path: Path, text: str) -> None:
    tifffile.imwrite(
        path, np.zeros((16, 16), np.uint8), extratags=[(PROVENANCE_TAG, "s", 0, text, True)]
    )


def ome_tiff_with(path: Path, pixels: str) -> None:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        f'<Image ID="Image:0">{pixels}</Image></OME>'
    )
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), description=xml, metadata=None)


def pixels_element(size_x: str, size_y: str = "1") -> str:
    return (
        f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="16" SizeY="16" '
        f'SizeC="1" SizeZ="1" SizeT="1" PhysicalSizeX="{size_x}" PhysicalSizeY="{size_y}">'
        "<TiffData/></Pixels>"
    )


def ome_zarr_with(path: Path, multiscales) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=(16, 16), dtype="uint8")
    group.attrs["multiscales"] = multiscales


def model_with(path: Path, *, config: str | None = None, card: str | None = None, nan=False):
    """A tiny model file whose metadata or weights are replaced."""
    model = tiny_model(3)
    tensors = {k: v.contiguous() for k, v in model.network.state_dict().items()}
    if nan:
        tensors = {
            k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
            for k, v in tensors.items()
        }
    save_file(
        tensors,
        str(path),
        metadata={
            "napari_srgan_format": "1",
            "generator_config": config or json.dumps(model.network.config.to_dict()),
            "model_card": card or model.card.to_json(),
        },
    )


def card_with(**fields) -> str:
    card = json.loads(tiny_model(3).card.to_json())
    return json.dumps({**card, **fields})


def config_with(**fields) -> str:
    return json.dumps({**tiny_model(3).network.config.to_dict(), **fields})


class Payload:
    """Unpickling this would create a marker file (it never may)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"features.0.weight": Payload(marker)}, protocol=2))


def checkpoint_of_tiny_run(folder: Path) -> Path:
    """A real checkpoint of the TRAIN arguments below (1 step)."""
    path = folder / "run.ckpt"
    assert main([*TRAIN_ARGS(folder), "--steps", "1", "--out", str(folder / "m1.safetensors")]) == 0
    (folder / "m1.safetensors").unlink()
    return path


def TRAIN_ARGS(folder: Path) -> list[str]:
    return [
        "train",
        "--hr",
        str(folder / "hr.png"),
        "--from-scratch",
        "--channels",
        "4",
        "--blocks",
        "1",
        "--patch",
        "16",
        "--batch",
        "1",
        "--val-crop",
        "32",
        "--val-fraction",
        "0.4",
        "--device",
        "cpu",
        "--checkpoint",
        str(folder / "run.ckpt"),
    ]


# --- setups: each makes what its cases need in the case folder -------------------------------


def setup_checkpoint(kind: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        if kind == "garbage":
            (folder / "run.ckpt").write_bytes(b"PK\x03\x04 not a zip at all")
        elif kind == "truncated":
            data = checkpoint_of_tiny_run(folder).read_bytes()
            (folder / "run.ckpt").write_bytes(data[: len(data) // 2])
        elif kind == "pickle":
            plant_pickle(folder / "run.ckpt", folder.parent / "marker")
        elif kind == "empty":
            (folder / "run.ckpt").write_bytes(b"")

    return make


def setup_existing(name: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        if name.endswith(".zarr"):
            writer = OmeZarrWriter(
                folder / name, (8, 8), "uint8", rgb=False, scale=(1, 1), translate=(0, 0)
            )
            writer.finish()
        elif name == "foreign.zarr":
            pass
        else:
            (folder / name).write_bytes(b"a result the user wants to keep")

    return make


def setup_foreign_folder(folder: Path) -> None:
    (folder / "OUT.zarr").mkdir()
    (folder / "OUT.zarr" / "keep.txt").write_text("not a store")


def setup_hardlink(folder: Path) -> None:
    (folder / "link.png").hardlink_to(folder / "ok.png")


def setup_dtype(dtype: str, suffix: str = ".tif") -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        data = np.arange(16 * 16).reshape(16, 16).astype(dtype)
        if suffix == ".tif":
            tifffile.imwrite(folder / f"in-{dtype}.tif", data)
        else:
            iio.imwrite(folder / f"in-{dtype}{suffix}", data)

    return make


def setup_file(name: str, make_file: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda folder: make_file(folder / name)


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    message: str
    setup: Callable[[Path], None] | None = None


UP = ["upscale", "{d}/ok.png", "{d}/o.tif", "--model", "tiny-rgb"]
TRAIN = ["train", "--hr", "{d}/hr.png", "--out", "{d}/m.safetensors", "--device", "cpu"]


def up(*extra: str, source: str = "{d}/ok.png", output: str = "{d}/o.tif") -> list[str]:
    return ["upscale", source, output, "--model", "tiny-rgb", *extra]


CASES = [
    # argument checks (argparse: before anything runs)
    Case("batch 0", up("--batch", "0"), "--batch: must be a whole number >= 1"),
    Case("batch -1", up("--batch", "-1"), "--batch: must be a whole number >= 1"),
    Case("batch abc", up("--batch", "abc"), "invalid number value: 'abc'"),
    Case("tile 0", up("--tile", "0"), "at least 1 pixel"),
    Case("device cpu:abc", up("--device", "cpu:abc"), "'cpu:abc' is not a device"),
    Case("device gpu", up("--device", "gpu"), "'gpu' is not a device"),
    Case("precision fp8", up("--precision", "fp8"), "invalid choice: 'fp8'"),
    Case("scheduler foo://x", up("--scheduler", "foo://x"), "tcp://host:port or tls://"),
    Case("scheduler no port", up("--scheduler", "tcp://host"), "tcp://host:port"),
    Case("scheduler port 99999", up("--scheduler", "tcp://h:99999"), "is not a TCP port"),
    Case("scheduler word", up("--scheduler", "fast"), "must be one of threads"),
    Case("train batch 0", [*TRAIN, "--batch", "0"], "--batch: must be a whole number >= 1"),
    Case("checkpoint-every 0", [*TRAIN, "--checkpoint-every", "0"], "--checkpoint-every: must"),
    Case("validate-every 0", [*TRAIN, "--validate-every", "0"], "--validate-every: must"),
    Case("val-fraction 1.5", [*TRAIN, "--val-fraction", "1.5"], "between 0 and 1"),
    Case("val-fraction 0", [*TRAIN, "--val-fraction", "0"], "between 0 and 1"),
    Case("steps -3", [*TRAIN, "--steps", "-3"], "--steps: must be a whole number >= 0"),
    Case("learning rate nan", [*TRAIN, "--learning-rate", "nan"], "must be a positive number"),
    Case("learning rate 0", [*TRAIN, "--learning-rate", "0"], "must be a positive number"),
    Case("channels 0", [*TRAIN, "--channels", "0"], "--channels: must be a whole number >= 1"),
    Case("patch 0", [*TRAIN, "--patch", "0"], "--patch: must be a whole number >= 1"),
    Case("train device", [*TRAIN, "--device", "cpu:abc"], "'cpu:abc' is not a device"),
    Case("time limit 0", [*TRAIN, "--time-limit", "0"], "must be a positive number"),
    Case("time limit inf", [*TRAIN, "--time-limit", "inf"], "must be a positive number"),
    Case("time limit abc", [*TRAIN, "--time-limit", "abc"], "invalid number value: 'abc'"),
    Case("no command", [], "the following arguments are required"),
    # existing data is never replaced unless asked; the input never
    Case("tif exists", up(), "o.tif exists; pass --overwrite", setup_existing("o.tif")),
    Case(
        "png exists",
        up(output="{d}/o.png"),
        "o.png exists; pass --overwrite",
        setup_existing("o.png"),
    ),
    Case(
        "zarr exists",
        up(output="{d}/o.zarr"),
        "o.zarr exists; pass --overwrite",
        setup_existing("o.zarr"),
    ),
    Case(
        "foreign folder",
        up("--overwrite", output="{d}/OUT.zarr"),
        "OUT.zarr is a folder napari-srgan did not write",
        setup_foreign_folder,
    ),
    Case("output is input", up("--overwrite", output="{d}/ok.png"), "is the input file"),
    Case(
        "output is input, other spelling",
        up("--overwrite", output="{d}/../{n}/ok.png"),
        "is the input file",
    ),
    Case(
        "output is a hard link to the input",
        up("--overwrite", output="{d}/link.png"),
        "is the input file",
        setup_hardlink,
    ),
    Case(
        "zarr output is zarr input",
        up("--overwrite", source="{d}/o.zarr", output="{d}/o.zarr"),
        "is the input file",
        setup_existing("o.zarr"),
    ),
    Case(
        "train model exists",
        [*TRAIN],
        "m.safetensors exists; pass --overwrite",
        setup_existing("m.safetensors"),
    ),
    Case(
        "train checkpoint exists without --resume",
        [*TRAIN, "--checkpoint", "{d}/run.ckpt"],
        "run.ckpt exists; pass --overwrite",
        setup_existing("run.ckpt"),
    ),
    Case("sample exists", ["sample", "cell", "{d}/ok.png"], "ok.png exists; pass --overwrite"),
    # files that claim huge sizes: refused from the header, before reading
    Case(
        "tiff claims 300000^2",
        up(source="{d}/huge.tif"),
        "huge.tif declares 300000x300000 pixels",
        setup_file("huge.tif", lambda p: tiff_claiming(p, 300000, 300000)),
    ),
    Case(
        "16-bit tiff claims 200000^2",
        up(source="{d}/huge16.tif"),
        "declares 200000x200000 pixels",
        setup_file("huge16.tif", lambda p: tiff_claiming(p, 200000, 200000, 16)),
    ),
    Case(
        "tiff claims 2^31 rows",
        up(source="{d}/tall.tif"),
        "declares 2147483647x64 pixels",
        setup_file("tall.tif", lambda p: tiff_claiming(p, 2**31 - 1, 64)),
    ),
    Case(
        "png claims 100000^2 RGB",
        up(source="{d}/huge.png"),
        "huge.png",
        setup_file("huge.png", lambda p: png_claiming(p, 100000, 100000)),
    ),
    Case(
        "png claims 60000^2 RGBA",
        up(source="{d}/huge-rgba.png"),
        "huge-rgba.png",
        setup_file("huge-rgba.png", lambda p: png_claiming(p, 60000, 60000, 6)),
    ),
    # the output format must hold the result: checked before any work
    Case(
        "int64 to OME-TIFF",
        up(source="{d}/in-int64.tif"),
        "OME-TIFF cannot hold int64",
        setup_dtype("int64"),
    ),
    Case(
        "uint64 to OME-TIFF",
        up(source="{d}/in-uint64.tif"),
        "OME-TIFF cannot hold uint64",
        setup_dtype("uint64"),
    ),
    Case(
        "float16 to OME-TIFF",
        up(source="{d}/in-float16.tif"),
        "OME-TIFF cannot hold float16",
        setup_dtype("float16"),
    ),
    Case(
        "uint16 to JPEG",
        up(source="{d}/in-uint16.tif", output="{d}/o.jpg"),
        "JPEG holds 8-bit data only",
        setup_dtype("uint16"),
    ),
    Case(
        "float32 to PNG",
        up(source="{d}/in-float32.tif", output="{d}/o.png"),
        "PNG holds 8- or 16-bit unsigned data only",
        setup_dtype("float32"),
    ),
    Case(
        "int16 to BMP",
        up(source="{d}/in-int16.tif", output="{d}/o.bmp"),
        "BMP holds 8-bit data only",
        setup_dtype("int16"),
    ),
    Case("unknown output format", up(output="{d}/o.xyz"), "unknown output format"),
    Case("missing output folder", up(output="{d}/nope/o.tif"), "output folder does not exist"),
    # malformed metadata: one line naming the file and the field
    Case(
        "provenance not JSON",
        up(source="{d}/p.tif"),
        "provenance tag 65420 is not JSON",
        setup_file("p.tif", lambda p: tiff_with_provenance(p, "{not json")),
    ),
    Case(
        "provenance a list",
        up(source="{d}/p.tif"),
        "is not a JSON object",
        setup_file("p.tif", lambda p: tiff_with_provenance(p, "[1, 2]")),
    ),
    Case(
        "provenance layer a string",
        up(source="{d}/p.tif"),
        "field 'layer' is not an object",
        setup_file("p.tif", lambda p: tiff_with_provenance(p, '{"layer": "x"}')),
    ),
    Case(
        "provenance scale text",
        up(source="{d}/p.tif"),
        "'layer.scale' is not a list",
        setup_file("p.tif", lambda p: tiff_with_provenance(p, '{"layer": {"scale": "ab"}}')),
    ),
    Case(
        "provenance scale 0",
        up(source="{d}/p.tif"),
        "'layer.scale' has a value <= 0",
        setup_file("p.tif", lambda p: tiff_with_provenance(p, '{"layer": {"scale": [0, 1]}}')),
    ),
    Case(
        "OME-XML without Pixels",
        up(source="{d}/ome.tif"),
        "no OME/Image/Pixels element",
        setup_file("ome.tif", lambda p: ome_tiff_with(p, "")),
    ),
    Case(
        "OME PhysicalSizeX text",
        up(source="{d}/ome.tif"),
        "PhysicalSizeY/X is not a number",
        setup_file("ome.tif", lambda p: ome_tiff_with(p, pixels_element("abc"))),
    ),
    Case(
        "multiscales [{}]",
        up(source="{d}/m.zarr", output="{d}/o.zarr"),
        "'multiscales[0].datasets' is missing",
        setup_file("m.zarr", lambda p: ome_zarr_with(p, [{}])),
    ),
    Case(
        "multiscales 'abc'",
        up(source="{d}/m.zarr", output="{d}/o.zarr"),
        "'multiscales' is not a list of objects",
        setup_file("m.zarr", lambda p: ome_zarr_with(p, "abc")),
    ),
    Case(
        "multiscales empty datasets",
        up(source="{d}/m.zarr", output="{d}/o.zarr"),
        "datasets' is missing or empty",
        setup_file("m.zarr", lambda p: ome_zarr_with(p, [{"datasets": []}])),
    ),
    Case(
        "multiscales dataset missing",
        up(source="{d}/m.zarr", output="{d}/o.zarr"),
        "dataset '7' (datasets[0]) is not an array",
        setup_file("m.zarr", lambda p: ome_zarr_with(p, [{"datasets": [{"path": "7"}]}])),
    ),
    Case(
        "multiscales scale wrong length",
        up(source="{d}/m.zarr", output="{d}/o.zarr"),
        "OME-Zarr scale is not a list of 2 numbers",
        setup_file(
            "m.zarr",
            lambda p: ome_zarr_with(
                p,
                [
                    {
                        "datasets": [
                            {
                                "path": "0",
                                "coordinateTransformations": [{"type": "scale", "scale": [1]}],
                            }
                        ]
                    }
                ],
            ),
        ),
    ),
    # models: contradicting cards, insane sizes, broken weights
    Case(
        "card says scale 8",
        up("--model", "{d}/bad.safetensors"),
        "card says scale 8",
        setup_file("bad.safetensors", lambda p: model_with(p, card=card_with(scale=8))),
    ),
    Case(
        "card says 1 channel",
        up("--model", "{d}/bad.safetensors"),
        "says in_channels 1",
        setup_file("bad.safetensors", lambda p: model_with(p, card=card_with(in_channels=1))),
    ),
    Case(
        "card is a JSON list",
        up("--model", "{d}/bad.safetensors"),
        "JSON list, not an object",
        setup_file("bad.safetensors", lambda p: model_with(p, card="[1, 2]")),
    ),
    Case(
        "20000 channels",
        up("--model", "{d}/bad.safetensors"),
        "channels must be 1..1024",
        setup_file("bad.safetensors", lambda p: model_with(p, config=config_with(channels=20000))),
    ),
    Case(
        "200000 blocks",
        up("--model", "{d}/bad.safetensors"),
        "residual_blocks must be 0..256",
        setup_file(
            "bad.safetensors", lambda p: model_with(p, config=config_with(residual_blocks=200000))
        ),
    ),
    Case(
        "config a list",
        up("--model", "{d}/bad.safetensors"),
        "broken model metadata",
        setup_file("bad.safetensors", lambda p: model_with(p, config="[]")),
    ),
    Case(
        "NaN weights",
        up("--model", "{d}/bad.safetensors"),
        "NaN or infinite values",
        setup_file("bad.safetensors", lambda p: model_with(p, nan=True)),
    ),
    Case(
        "truncated model",
        up("--model", "{d}/bad.safetensors"),
        "not a readable .safetensors",
        setup_file("bad.safetensors", lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00")),
    ),
    # inputs
    Case("missing input", up(source="{d}/absent.png"), "no such image file"),
    Case(
        "input not an image",
        up(source="{d}/junk.png"),
        "cannot read",
        setup_file("junk.png", lambda p: p.write_text("hello")),
    ),
    Case(
        "input a folder without images",
        up(source="{d}/empty"),
        "no images in",
        lambda folder: (folder / "empty").mkdir(),
    ),
    Case(
        "input 6-D",
        up(source="{d}/six.tif"),
        "more than the 5 supported",
        setup_file("six.tif", lambda p: tifffile.imwrite(p, np.zeros((2, 2, 2, 2, 8, 8), "u1"))),
    ),
    Case(
        "input NaN",
        up(source="{d}/nan.tif"),
        "NaN or infinite",
        setup_file("nan.tif", lambda p: tifffile.imwrite(p, np.full((8, 8), np.nan, "f4"))),
    ),
    Case(
        "input 5 colour channels",
        up("--rgb", source="{d}/five.tif"),
        "a colour axis must have",
        setup_file("five.tif", lambda p: tifffile.imwrite(p, np.zeros((8, 8, 5), "u1"))),
    ),
    Case("unknown model", up("--model", "nope"), "no model named 'nope'"),
    # resume from damaged checkpoints
    Case(
        "resume garbage checkpoint",
        [*TRAIN_ARGS(Path("{d}")), "--out", "{d}/m.safetensors", "--steps", "2", "--resume"],
        "run.ckpt is not a readable training checkpoint",
        setup_checkpoint("garbage"),
    ),
    Case(
        "resume empty checkpoint",
        [*TRAIN_ARGS(Path("{d}")), "--out", "{d}/m.safetensors", "--steps", "2", "--resume"],
        "run.ckpt is not a readable training checkpoint",
        setup_checkpoint("empty"),
    ),
    Case(
        "resume truncated checkpoint",
        [*TRAIN_ARGS(Path("{d}")), "--out", "{d}/m.safetensors", "--steps", "2", "--resume"],
        "run.ckpt is not a readable training checkpoint",
        setup_checkpoint("truncated"),
    ),
    Case(
        "resume pickle checkpoint",
        [*TRAIN_ARGS(Path("{d}")), "--out", "{d}/m.safetensors", "--steps", "2", "--resume"],
        "run.ckpt is not a readable training checkpoint",
        setup_checkpoint("pickle"),
    ),
]


def folder_state(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` with a hash of its content."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


def prepare(tmp_path: Path, case: Case) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    iio.imwrite(folder / "ok.png", np.random.default_rng(0).integers(0, 255, (16, 16), np.uint8))
    iio.imwrite(folder / "hr.png", np.random.default_rng(1).integers(0, 255, (96, 96, 3), np.uint8))
    if case.setup is not None:
        case.setup(folder)
    return folder


def arguments(case: Case, folder: Path) -> list[str]:
    return [a.format(d=folder, n=folder.name) for a in case.argv]


def run_in_process(argv: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


def test_there_are_at_least_60_cases():
    assert len(CASES) + len(API_CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_cli_case_is_one_line_exit_2_and_changes_nothing(tmp_path, tiny_model_file, case, capsys):
    folder = prepare(tmp_path, case)
    before = folder_state(folder)
    code, lines = run_in_process(arguments(case, folder), capsys)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert re.match(r"napari-srgan( \w+)?: error: ", lines[0]), lines
    assert case.message.format(d=folder) in lines[0]
    assert folder_state(folder) == before
    assert not (tmp_path / "marker").exists()


SUBPROCESS_CASES = ["batch 0", "tiff claims 300000^2", "NaN weights", "resume garbage checkpoint"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_real_process_prints_no_traceback(tmp_path, tiny_model_file, name):
    case = next(case for case in CASES if case.id == name)
    folder = prepare(tmp_path, case)
    before = folder_state(folder)
    result = subprocess.run(
        [sys.executable, "-m", "napari_srgan", *arguments(case, folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert folder_state(folder) == before


# --- dask scheduler addresses: a peer that is not a dask scheduler ----------------------------


class FakePeer:
    """A one-connection TCP server on 127.0.0.1 that stops by itself after a few seconds:
    ``http`` waits for a request (as any HTTP server does), ``garbage`` greets with bytes that
    read as a 3 EiB frame length, ``closed`` hangs up at once."""

    def __init__(self, mode: str) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(5)
        self.port = self.server.getsockname()[1]
        self.mode = mode
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        with self.server:
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                return
            with connection:
                connection.settimeout(3)
                if self.mode == "garbage":
                    connection.sendall(b"\xff" * 7 + b"\x2f" + b"junk" * 4)
                if self.mode in ("http", "garbage"):
                    try:
                        if connection.recv(1024):
                            connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    except (TimeoutError, OSError):
                        pass

    def __enter__(self) -> FakePeer:
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(10)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("http", "did not answer like a dask scheduler within 0.5 s"),
        ("garbage", "does not speak dask's protocol"),
        ("closed", "closed the connection at once"),
    ],
)
def test_scheduler_that_is_not_dask_fails_in_one_line(
    tmp_path, tiny_model_file, monkeypatch, capsys, mode, message
):
    monkeypatch.setattr(schedulers, "CONNECT_TIMEOUT", 0.5)
    folder = tmp_path / "case"
    folder.mkdir()
    zarr.create_array(str(folder / "in.zarr"), shape=(16, 16), dtype="uint8")[:] = 7
    before = folder_state(folder)
    with FakePeer(mode) as peer:
        code, lines = run_in_process(
            [
                "upscale",
                str(folder / "in.zarr"),
                str(folder / "o.zarr"),
                "--model",
                "tiny-rgb",
                "--scheduler",
                f"tcp://127.0.0.1:{peer.port}",
            ],
            capsys,
        )
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert folder_state(folder) == before


def test_a_real_dask_scheduler_passes_the_check():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, processes=False, dashboard_address=None, protocol="tcp://", host="127.0.0.1"
    ) as cluster:
        schedulers.probe_scheduler(cluster.scheduler_address, timeout=5)


def test_scheduler_port_nobody_listens_on(monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    with pytest.raises(ValueError, match="cannot connect to scheduler"):
        schedulers.probe_scheduler(f"tcp://127.0.0.1:{port}", timeout=2)


def test_scheduler_help_says_trusted_network(capsys):
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "trusted network" in help_text and "tls://" in help_text


# --- VGG19 weights: a planted pickle is refused and never runs -------------------------------


def test_planted_vgg19_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / "marker"
    plant_pickle(losses.cached_vgg19_file(), marker)
    with pytest.raises(losses.WeightsFileError, match="not the published VGG19 weights file"):
        losses.load_vgg19_features("imagenet", allow_download=False)
    assert not marker.exists()


def test_pickle_with_the_right_hash_still_never_runs(tmp_path):
    """Even a file that passed the hash check is read by torch's tensors-only unpickler."""
    marker, path = tmp_path / "marker", tmp_path / "w.pth"
    plant_pickle(path, marker)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(losses.WeightsFileError, match="holds more than tensors"):
        losses.load_checked_state_dict(path, digest[:8])
    assert not marker.exists()


def test_published_weights_load(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save({"w": torch.ones(2)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(losses.load_checked_state_dict(path, digest[:8])["w"], torch.ones(2))
    assert losses.published_hash_prefix(losses.cached_vgg19_file()) == "dcbb9e9d"


def test_training_with_a_planted_vgg19_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / "marker"
    plant_pickle(losses.cached_vgg19_file(), marker)
    folder = tmp_path / "case"
    folder.mkdir()
    iio.imwrite(folder / "hr.png", np.random.default_rng(1).integers(0, 255, (96, 96, 3), np.uint8))
    before = folder_state(folder)
    code, lines = run_in_process(
        [
            *TRAIN_ARGS(folder),
            "--out",
            str(folder / "m.safetensors"),
            "--steps",
            "0",
            "--adversarial-steps",
            "1",
            "--batch",  # the discriminator's batch norm needs two 16-px patches
            "2",
            "--no-download",
        ],
        capsys,
    )
    assert code == 2 and len(lines) == 1 and "not the published VGG19" in lines[0], lines
    assert folder_state(folder) == before and not marker.exists()


def test_no_unpickling_anywhere_in_the_package():
    """Nothing may unpickle (``import pickle`` for its exception type is fine)."""
    forbidden = [
        "weights_only=False",
        "pickle.load",
        "Unpickler",
        "load_state_dict_from_url",
        "torch.hub.load(",
        "weights=VGG19_Weights",
        "allow_pickle=True",
        "joblib.load",
        "dill.load",
    ]
    found = [
        f"{path.relative_to(SRC)}: {word}"
        for path in SRC.rglob("*.py")
        for word in forbidden
        if word in path.read_text()
    ]
    assert found == []
    for path in SRC.rglob("*.py"):
        for line in path.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


# --- API cases ---------------------------------------------------------------------------------


def api_existing_write(folder: Path):
    (folder / "x.png").write_bytes(b"keep")
    write_image(folder / "x.png", np.zeros((4, 4), np.uint8), rgb=False)


def api_existing_model(folder: Path):
    (folder / "m.safetensors").write_bytes(b"keep")
    model = tiny_model(3)
    save_model(folder / "m.safetensors", model.network, model.card)


def api_same_file(folder: Path):
    iio.imwrite(folder / "a.png", np.zeros((8, 8), np.uint8))
    upscale_file(folder / "a.png", folder / "a.png", tiny_model(3), overwrite=True)


def api_foreign_store(folder: Path):
    (folder / "s.zarr").mkdir()
    (folder / "s.zarr" / "keep.txt").write_text("mine")
    OmeZarrWriter(
        folder / "s.zarr",
        (8, 8),
        "uint8",
        rgb=False,
        scale=(1, 1),
        translate=(0, 0),
        overwrite=True,
    )


def api_huge_read(folder: Path):
    tiff_claiming(folder / "h.tif", 300000, 300000)
    read_image(folder / "h.tif")


def api_atomic_existing(folder: Path):
    (folder / "f").write_text("keep")
    atomic_write(folder / "f", lambda temp: Path(temp).write_text("new"))


API_CASES = [
    (
        "torch tensor",
        lambda f: upscale(torch.zeros(8, 8), tiny_model(1)),
        InvalidImageError,
        "got a torch tensor",
    ),
    (
        "torch tensor to check_image",
        lambda f: check_image(torch.zeros(3, 8, 8)),
        InvalidImageError,
        "got a torch tensor",
    ),
    ("write over existing", api_existing_write, OutputExistsError, "x.png exists"),
    ("save model over existing", api_existing_model, OutputExistsError, "exists"),
    ("atomic write over existing", api_atomic_existing, OutputExistsError, "exists"),
    ("upscale_file same file", api_same_file, OutputExistsError, "is the input file"),
    ("foreign store", api_foreign_store, OutputExistsError, "did not write"),
    ("huge read", api_huge_read, ImageTooLargeError, "declares 300000x300000"),
    ("device cpu:abc", lambda f: choose_device("cpu:abc"), ValueError, "unknown device"),
    ("device auto:1", lambda f: choose_device("auto:1"), ValueError, "unknown device"),
    ("generator 20000 channels", lambda f: GeneratorConfig(channels=20000), ValueError, "1..1024"),
    ("generator 2.5 blocks", lambda f: GeneratorConfig(residual_blocks=2.5), ValueError, "0..256"),
    (
        "generator residual scale 0",
        lambda f: GeneratorConfig(residual_scale=0),
        ValueError,
        "residual_scale",
    ),
    (
        "scheduler scheme",
        lambda f: schedulers.parse_scheduler("http://x:1"),
        ValueError,
        "tcp://host:port",
    ),
]


@pytest.mark.parametrize(
    ("name", "call", "error", "message"), API_CASES, ids=[c[0] for c in API_CASES]
)
def test_api_case(tmp_path, name, call, error, message):
    before = folder_state(tmp_path)
    with pytest.raises(error, match=message) as raised:
        call(tmp_path)
    assert "\n" not in str(raised.value)
    if name not in ("write over existing", "save model over existing", "same file"):
        assert all(k in folder_state(tmp_path) for k in before)
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith((".tmp", ".partial"))]


# --- handled, not refused: values near the float limits, grey + alpha, bad pixel sizes ---------


@pytest.mark.parametrize(
    "values",
    [
        np.array([-3e38, 0.0, 3e38], np.float32),
        np.array([3.4e38, 3.3e38, 3.2e38], np.float32),
        np.array([-1e308, 0.0, 1e308]),
        np.array([-1.7e308, 1.79e308, 0.0]),
        np.array([1e-300, 2e-300, 3e-300]),
        np.array([1e-40, 2e-40, 0.0], np.float32),
        np.full(3, 1.7e308),
    ],
    ids=[
        "f32 +-3e38",
        "f32 near max",
        "f64 +-1e308",
        "f64 near max",
        "f64 tiny",
        "f32 subnormal",
        "f64 constant 1.7e308",
    ],
)
def test_finite_input_near_the_float_limits_never_gives_nan(values):
    image = np.resize(values, (12, 12)).astype(values.dtype)
    result = upscale(image, tiny_model(1, mode="percentile"), device="cpu")
    assert result.dtype == image.dtype and np.isfinite(result).all()
    unit = intensity_range(image, NormalizationSpec("percentile", 0, 100))
    back = unit.from_unit(unit.to_unit(image))
    assert np.isfinite(back).all()
    np.testing.assert_allclose(back, image, rtol=1e-5, atol=np.abs(image).max() * 1e-6)


def test_grey_plus_alpha_goes_through_the_model_with_interpolated_alpha(tmp_path, capsys):
    grey = np.random.default_rng(0).integers(0, 255, (16, 16), np.uint8)
    alpha = np.full((16, 16), 255, np.uint8)
    alpha[:, :8] = 0
    iio.imwrite(tmp_path / "la.png", np.stack([grey, alpha], -1))
    image = read_image(tmp_path / "la.png")
    assert image.rgb and image.data.shape == (16, 16, 2)
    model = tiny_model(1)
    result = upscale(image.data, model, rgb=True, device="cpu")
    assert result.shape == (64, 64, 2)
    np.testing.assert_array_equal(result[..., 0], upscale(grey, model, device="cpu"))
    assert (result[:, :28, 1] == 0).all() and (result[:, 36:, 1] == 255).all()
    model_path = tmp_path / "grey.safetensors"
    save_model(model_path, model.network, model.card)
    code = main(
        ["upscale", str(tmp_path / "la.png"), str(tmp_path / "o.png"), "--model", str(model_path)]
    )
    assert code == 0 and iio.imread(tmp_path / "o.png").shape == (64, 64, 2)


@pytest.mark.parametrize("size", ["0", "-0.5", "inf"])
def test_pixel_size_not_positive_is_ignored_with_a_warning(tmp_path, caplog, size):
    ome_tiff_with(tmp_path / "o.tif", pixels_element(size, "0.5"))
    with caplog.at_level(logging.WARNING):
        image = read_image(tmp_path / "o.tif")
    assert image.scale == (1.0, 1.0)
    assert "ignoring OME PhysicalSizeY/X" in caplog.text


def test_disk_full_inside_a_writer_is_one_line(tmp_path):
    def full(temp):
        Path(temp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"^no space left on device while writing .*out\.bin$"):
        atomic_write(tmp_path / "out.bin", full)
    assert list(tmp_path.iterdir()) == []


def test_a_card_contradicting_the_network_is_refused(tmp_path):
    path = tmp_path / "m\n.safetensors"  # the name is shown escaped: the message stays one line
    model_with(path, card=card_with(scale=8))
    with pytest.raises(ModelFileError) as refused:
        load_model(path)
    assert str(refused.value) == (
        f"{tmp_path}/m\\n.safetensors: the model card says scale 8, but the network has 4"
    )
