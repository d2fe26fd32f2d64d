"""Hostile image files, zarr stores and outputs handed to ``napari-srgan upscale`` and to the
napari reader: each ends in one line naming the file, exit status 2, nothing the user had
changed. Crafted by an attack round; the cases the other hostile-input tests already cover are
not repeated here."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_srgan.cli import main

OME_WITHOUT_SIZE_Z = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
    '<Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" SizeX="16" SizeY="16" '
    'SizeC="1" SizeT="1"><TiffData/></Pixels></Image></OME>'
)


def run(argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its content's hash: what a refused run must not change."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("description", "kind", "reason"),
    [
        ("ImageJ=1.11a\nimages=abc\n", "ImageJ", "TypeError"),
        (OME_WITHOUT_SIZE_Z, "OME-XML", "KeyError: 'SizeZ'"),
    ],
    ids=["imagej-images-text", "ome-without-size-z"],
)
@pytest.mark.parametrize("output", ["o.tif", "o.zarr"])
def test_tiff_metadata_tifffile_cannot_parse_is_one_line(
    tmp_path, tiny_model_file, capsys, description, kind, reason, output
):
    """tifffile parses ImageJ and OME metadata into series on first use and raised a TypeError
    or KeyError from deep inside (a traceback from the CLI, and from the napari reader)."""
    source = tmp_path / "cells.ome.tif"
    tifffile.imwrite(source, np.zeros((16, 16), np.uint8), description=description, metadata=None)
    before = hashes(tmp_path)
    code, lines = run(["upscale", source, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "cells.ome.tif" in lines[0] and f"its {kind} metadata is malformed" in lines[0]
    assert reason in lines[0]
    assert hashes(tmp_path) == before

    from napari_srgan.plugin.reader import get_reader

    assert get_reader(str(source)) is None  # napari's own reader says what is wrong
