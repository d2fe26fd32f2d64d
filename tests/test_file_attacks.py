"""Hostile image files, zarr stores and outputs handed to ``napari-srgan upscale`` and to the
napari reader: each ends in one line naming the file, exit status 2, nothing the user had
changed. Crafted by an attack round; the cases the other hostile-input tests already cover are
not repeated here."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
from pathlib import Path

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_srgan.cli import main
from napari_srgan.io.atomic_files import remove_store
from napari_srgan.io.images import PROVENANCE_TAG, read_image
from napari_srgan.io.zarr_files import OmeZarrWriter, open_lazy
from napari_srgan.plugin.reader import get_reader, read_zarr_layer
from test_bad_inputs import png_claiming

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

    assert get_reader(str(source)) is None  # napari's own reader says what is wrong


def ome_zarr(path: Path, multiscale: dict) -> Path:
    """A 16x16 OME-Zarr store (format 2) with one level "0" and ``multiscale``'s fields."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=(16, 16), dtype="uint8")[...] = 7
    group.attrs["multiscales"] = [{"datasets": [{"path": "0"}], **multiscale}]
    return path


@pytest.mark.parametrize("dataset", ["../x", "."])
def test_a_dataset_path_leaving_the_store_names_the_store(
    tmp_path, tiny_model_file, capsys, dataset
):
    """zarr refuses the path in its own words ("The path '../x' is invalid because...") and the
    message did not say which file."""
    source = ome_zarr(tmp_path / "cells.zarr", {"datasets": [{"path": dataset}]})
    before = hashes(tmp_path)
    code, lines = run(["upscale", source, tmp_path / "o.tif", "--model", "tiny-rgb"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"cells.zarr: OME-Zarr dataset {dataset!r} (datasets[0]) cannot be opened: " in lines[0]
    assert hashes(tmp_path) == before


def translation(values: list) -> dict:
    transforms = [
        {"type": "scale", "scale": [0.5, 0.5]},
        {"type": "translation", "translation": values},
    ]
    return {"datasets": [{"path": "0", "coordinateTransformations": transforms}]}


def space_axes(unit) -> dict:
    return {
        "axes": [
            {"name": "y", "type": "space", "unit": unit},
            {"name": "x", "type": "space", "unit": unit},
        ]
    }


@pytest.mark.parametrize(
    ("multiscale", "warning"),
    [
        (translation(["NaN", 0]), "ignoring OME-Zarr translation ['NaN', 0] (not finite)"),
        (
            translation([0, "-Infinity"]),
            "ignoring OME-Zarr translation [0, '-Infinity'] (not finite)",
        ),
        (
            space_axes(["micrometer"]),
            "ignoring OME-Zarr axis unit ['micrometer'] (not a length unit)",
        ),
        (space_axes(5), "ignoring OME-Zarr axis unit 5 (not a length unit)"),
        (space_axes("\x1b[2J"), "ignoring OME-Zarr axis unit '\\x1b[2J' (not a length unit)"),
    ],
    ids=["translation-nan", "translation-infinity", "unit-list", "unit-number", "unit-escape"],
)
@pytest.mark.parametrize("output", ["o.ome.tif", "o.zarr"])
def test_ome_zarr_placement_that_is_not_a_place_is_ignored_with_a_warning(
    tmp_path, tiny_model_file, capsys, caplog, multiscale, warning, output
):
    """A translation of NaN went on into the result (whose provenance this package's reader
    then refused), a unit that is a list or number failed in a traceback (``unit.strip``), an
    escape sequence went on into the result's axes. Such a field is ignored, as a pixel size
    <= 0 is, and the result opens with the rest of the metadata."""
    source = ome_zarr(tmp_path / "cells.zarr", multiscale)
    code, lines = run(["upscale", source, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 0, lines
    assert [m for m in caplog.messages if "ignoring" in m] == [f"{source}: {warning}"]
    written = tmp_path / output
    result = open_lazy(written) if output.endswith(".zarr") else read_image(written)
    assert np.isfinite(result.translate).all() and result.unit is None


def plain_zarr(path: Path, zarr_format: int = 2) -> zarr.Array:
    """A 16x16 zarr array of fives, in one chunk."""
    array = zarr.open_array(
        str(path), mode="w", shape=(16, 16), dtype="uint8", zarr_format=zarr_format
    )
    array[...] = 5
    return array


def test_zarr_attributes_that_are_not_an_object_are_one_line(tmp_path, tiny_model_file, capsys):
    """zarr reads any JSON as the attributes; a list made ``attrs.get`` raise a TypeError."""
    plain_zarr(tmp_path / "cells.zarr")
    (tmp_path / "cells.zarr" / ".zattrs").write_text("[1, 2]")
    before = hashes(tmp_path)
    argv = ["upscale", tmp_path / "cells.zarr", tmp_path / "o.tif", "--model", "tiny-rgb"]
    code, lines = run(argv, capsys)
    assert code == 2 and lines == [
        f"napari-srgan: error: {tmp_path / 'cells.zarr'}: its zarr attributes are not a JSON object"
    ]
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("output", ["o.tif", "o.zarr"])
def test_a_zarr_chunk_shape_of_0_is_refused_before_any_work(
    tmp_path, tiny_model_file, capsys, zarr_format, output
):
    """zarr opens a chunk side of 0 and divides by zero at the first read: that was reported
    as corrupt pixel data, after the work had begun."""
    source = tmp_path / "cells.zarr"
    plain_zarr(source, zarr_format)
    name = ".zarray" if zarr_format == 2 else "zarr.json"
    metadata = json.loads((source / name).read_text())
    if zarr_format == 2:
        metadata["chunks"] = [0, 16]
    else:
        metadata["chunk_grid"]["configuration"]["chunk_shape"] = [0, 16]
    (source / name).write_text(json.dumps(metadata))
    before = hashes(tmp_path)
    code, lines = run(["upscale", source, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 2 and lines == [
        f"napari-srgan: error: cannot read {source}: its chunk shape (0, 16) has a 0"
    ]
    assert hashes(tmp_path) == before


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("a name", "provenance field 'layer' is not an object"),
        ({"rgb": True}, "its provenance says RGB, but it has no colour axis of 3 or 4"),
        ({"rgb": "yes"}, "provenance field 'layer.rgb' is not true or false"),
        ({"name": ["a"]}, "provenance field 'layer.name' is not text"),
        (
            {"translate": [float("nan"), 0]},
            "provenance field 'layer.translate' is not a list of numbers",
        ),
    ],
    ids=["layer-text", "rgb-without-colour", "rgb-text", "name-list", "translate-nan"],
)
def test_zarr_provenance_the_reader_uses_is_checked_as_a_tiffs_is(tmp_path, layer, message):
    """A TIFF's provenance was checked field by field, a store's only for being an object:
    napari's reader failed with an AttributeError ('str' has no 'get'), a numpy AxisError or
    a layer named by a list."""
    array = plain_zarr(tmp_path / "cells.zarr")
    array.attrs["napari_srgan"] = {"layer": layer}
    with pytest.raises(ValueError, match="^" + re.escape(f"{tmp_path / 'cells.zarr'}: {message}")):
        read_zarr_layer(str(tmp_path / "cells.zarr"))


def own_store(path: Path) -> Path:
    """A store this package wrote (an earlier result)."""
    OmeZarrWriter(path, (8, 8), "uint8", rgb=False, scale=(1, 1), translate=(0, 0)).finish()
    return path


def test_overwriting_a_link_to_a_store_never_empties_the_store_it_links_to(
    tmp_path, tiny_model_file, capsys
):
    """``o.zarr -> results/real.zarr``: the atomic swap exchanged the link with the new store,
    then deleted "the old store" through the link, emptying real.zarr, and failed with
    "[Errno 20] Not a directory" leaving a temporary link behind."""
    iio.imwrite(tmp_path / "in.png", np.zeros((16, 16, 3), np.uint8))
    real = own_store(tmp_path / "real.zarr")
    (tmp_path / "o.zarr").symlink_to(real)
    before = hashes(tmp_path)
    argv = ["upscale", tmp_path / "in.png", tmp_path / "o.zarr", "--model", "tiny-rgb"]
    code, lines = run([*argv, "--overwrite"], capsys)
    assert code == 2 and lines == [
        f"napari-srgan: error: {tmp_path / 'o.zarr'} is a link to a folder; not replacing it"
    ]
    assert hashes(tmp_path) == before and sorted(os.listdir(tmp_path)) == [
        "in.png",
        "o.zarr",
        "real.zarr",
    ]
    assert (tmp_path / "o.zarr").is_symlink()


def test_a_store_swapped_for_a_link_meanwhile_loses_only_the_link(tmp_path):
    """The last line of defence: removing "the old store" that is a link removes the link."""
    real = own_store(tmp_path / "real.zarr")
    before = hashes(real)
    (tmp_path / "link.zarr").symlink_to(real)
    remove_store(tmp_path / "link.zarr")
    assert not os.path.lexists(tmp_path / "link.zarr") and hashes(real) == before


@pytest.mark.parametrize("output", ["cells.zarr/0/x.tif", "cells.zarr/sub.zarr", "cells.zarr/0"])
def test_an_output_inside_the_input_store_is_refused(tmp_path, tiny_model_file, capsys, output):
    """A result written into the store being read (a file in a level's folder, a store nested
    in it) changed the user's input."""
    source = own_store(tmp_path / "cells.zarr")
    before = hashes(tmp_path)
    code, lines = run(["upscale", source, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"the output {tmp_path / output} is inside the input {source}" in lines[0]
    assert hashes(tmp_path) == before


def test_a_batch_folder_inside_an_input_store_is_refused_before_it_is_made(
    tmp_path, tiny_model_file, capsys
):
    """Several inputs into ``cells.zarr`` (or a folder inside it) wrote the other results into
    the input store."""
    source = own_store(tmp_path / "cells.zarr")
    iio.imwrite(tmp_path / "b.png", np.zeros((16, 16, 3), np.uint8))
    before = hashes(tmp_path)
    for folder in (source, source / "results"):
        argv = ["upscale", source, tmp_path / "b.png", folder, "--model", "tiny-rgb"]
        code, lines = run(argv, capsys)
        assert code == 2 and len(lines) == 1, lines
        assert f"the output {folder} is inside the input {source}" in lines[0]
        assert hashes(tmp_path) == before and not (source / "results").exists()


def test_an_input_inside_the_output_store_is_refused(tmp_path, tiny_model_file, capsys):
    """Replacing ``out.zarr`` deleted ``out.zarr/in.zarr`` while it was being read."""
    output = own_store(tmp_path / "out.zarr")
    source = own_store(output / "in.zarr")
    before = hashes(tmp_path)
    code, lines = run(["upscale", source, output, "--model", "tiny-rgb", "--overwrite"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"the input {source} is inside the output {output}" in lines[0]
    assert hashes(tmp_path) == before


def test_a_zarr_output_that_is_a_file_is_refused_before_any_work(tmp_path, tiny_model_file, capsys):
    """``--overwrite`` to an ``o.zarr`` that is a file was refused only when the store was
    created, after the progress had started."""
    iio.imwrite(tmp_path / "in.png", np.zeros((16, 16, 3), np.uint8))
    (tmp_path / "o.zarr").write_text("not a store")
    before = hashes(tmp_path)
    argv = ["upscale", tmp_path / "in.png", tmp_path / "o.zarr", "--model", "tiny-rgb"]
    code, lines = run([*argv, "--overwrite"], capsys)
    assert code == 2 and lines == [
        f"napari-srgan: error: {tmp_path / 'o.zarr'} is not a store napari-srgan wrote; "
        "not replacing it"
    ]
    assert hashes(tmp_path) == before


def tiff_with_tiles_of(path: Path, side: int) -> None:
    """A 16x16 tiled TIFF whose header says its one tile is ``side`` x ``side`` pixels."""
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), tile=(16, 16), metadata=None)
    content = bytearray(path.read_bytes())
    ifd = struct.unpack("<I", content[4:8])[0]
    for index in range(struct.unpack("<H", content[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * index
        if struct.unpack("<H", content[entry : entry + 2])[0] in (322, 323):  # TileWidth, -Length
            content[entry + 2 : entry + 12] = struct.pack("<HII", 4, 1, side)
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("kind", ["zarr", "tiff"])
@pytest.mark.parametrize("output", ["o.tif", "o.zarr"])
def test_a_chunk_claim_larger_than_memory_is_refused_before_reading(
    tmp_path, tiny_model_file, capsys, kind, output
):
    """A chunk (zarr chunk, TIFF tile) is decoded whole to read any pixel of it, and only the
    image's size was checked: a few MB of zeros claiming one 46000x46000 chunk of a 16x16
    image took 4.7 GB to read; here the claim is 1 TB."""
    if kind == "zarr":
        source = tmp_path / "cells.zarr"
        zarr.open_array(str(source), mode="w", shape=(16, 16), chunks=(10**6, 10**6), dtype="u1")
    else:
        source = tmp_path / "cells.tif"
        tiff_with_tiles_of(source, 10**6)
    before = hashes(tmp_path)
    code, lines = run(["upscale", source, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"{source}: its chunks of 1000000x1000000 values take 1000.0 GB each" in lines[0]
    assert hashes(tmp_path) == before


def tiff_with_provenance(path: Path, text: str) -> Path:
    data = np.zeros((16, 16), np.uint8)
    tifffile.imwrite(path, data, extratags=[(PROVENANCE_TAG, "s", 0, text, True)], metadata=None)
    return path


def test_provenance_nested_too_deeply_for_the_json_parser_is_one_line(
    tmp_path, tiny_model_file, capsys
):
    """Python's JSON parser raises RecursionError (not a ValueError) on 100000 nested brackets:
    a traceback."""
    source = tiff_with_provenance(tmp_path / "cells.tif", "[" * 100_000 + "]" * 100_000)
    before = hashes(tmp_path)
    code, lines = run(["upscale", source, tmp_path / "o.tif", "--model", "tiny-rgb"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"{source}: provenance tag {PROVENANCE_TAG} is not JSON (maximum recursion" in lines[0]
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("output", ["o.tif", "o.zarr"])
@pytest.mark.parametrize(
    "layer",
    [
        {"scale": [1.7e308, 1.7e308], "translate": [-1.7e308, -1.7e308]},
        {"scale": [5e-324, 5e-324]},
    ],
    ids=["position-overflows", "pixel-size-underflows"],
)
def test_a_placement_the_result_cannot_have_is_refused_before_any_work(
    tmp_path, tiny_model_file, capsys, output, layer
):
    """The result's first pixel sits 3/8 of an input pixel before the input's: a position near
    float's limit overflowed to -inf (with numpy's RuntimeWarning lines), a pixel size of
    5e-324 / 4 became 0. Either was written, and this package's reader refused the result."""
    source = tiff_with_provenance(tmp_path / "cells.tif", json.dumps({"layer": layer}))
    before = hashes(tmp_path)
    code, lines = run(["upscale", source, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"{source}: the result's pixel size or position is out of range" in lines[0]
    assert hashes(tmp_path) == before


def test_the_widget_says_in_one_line_when_a_layers_placement_cannot_be_upscaled(
    make_napari_viewer, tiny_model_file, monkeypatch
):
    """The same from a layer: a pixel size of 5e-324 gave a result layer of pixel size 0."""
    from napari_srgan.plugin import upscale_widget as module
    from napari_srgan.plugin.background import SYNCHRONOUS_ENV

    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    errors: list[str] = []
    monkeypatch.setattr(module, "show_error", errors.append)
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((16, 16, 3), np.uint8), rgb=True, scale=(5e-324, 5e-324))
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")
    widget.reset_choices()
    widget.image.value, widget.model.value = layer, "tiny-rgb"
    widget.start()
    assert len(viewer.layers) == 1 and len(errors) == 1
    assert "the result's pixel size or position is out of range" in errors[0]


#: A 16x16 level's .zarray.
LEVEL = {"zarr_format": 2, "shape": [16, 16], "chunks": [16, 16], "dtype": "|u1"}
LEVEL |= {"compressor": None, "fill_value": 0, "order": "C", "filters": None}


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        (".zarray", "[" * 100_000 + "]" * 100_000, "maximum recursion depth exceeded"),
        (".zattrs", "[" * 100_000 + "]" * 100_000, "maximum recursion depth exceeded"),
        (".zarray", "[1]", "unsupported operand"),
        (".zarray", json.dumps({**LEVEL, "shape": [16.5, 16]}), "Expected an iterable of integers"),
    ],
    ids=["zarray-nested", "zattrs-nested", "zarray-list", "zarray-float-shape"],
)
def test_a_level_whose_metadata_zarr_cannot_parse_is_one_line(
    tmp_path, tiny_model_file, capsys, name, content, reason
):
    """The store's own metadata was guarded, its levels' were not: zarr's parser raised
    RecursionError or TypeError from ``group.get``, a traceback."""
    source = ome_zarr(tmp_path / "cells.zarr", {})
    (source / "0" / name).write_text(content)
    before = hashes(tmp_path)
    code, lines = run(["upscale", source, tmp_path / "o.tif", "--model", "tiny-rgb"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"{source}: OME-Zarr dataset '0' (datasets[0]) cannot be opened: {reason}" in lines[0]
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("output", ["o.tif", "o.zarr"])
def test_tifffile_lines_are_passed_on_once_and_never_before_an_error(
    tmp_path, tiny_model_file, capsys, caplog, output
):
    """A TIFF is opened twice (its header's size, then its pixels or metadata): the first
    open's tifffile lines were passed on even when the second failed (a warning line before
    the error), and twice for a file that was read."""
    broken = tmp_path / "broken.ome.tif"
    escape = OME_WITHOUT_SIZE_Z.replace('SizeC="1"', 'SizeC="1" SizeZ="1" PhysicalSizeX="&#27;"')
    tifffile.imwrite(broken, np.zeros((16, 16), np.uint8), description=escape, metadata=None)
    code, lines = run(["upscale", broken, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 2 and len(lines) == 1 and "the OME-XML does not parse" in lines[0], lines
    assert not [m for m in caplog.messages if "broken.ome.tif" in m]

    odd = tmp_path / "odd.tif"
    imagej = "ImageJ=1.11a\nimages=-5\n"
    tifffile.imwrite(odd, np.zeros((16, 16), np.uint8), description=imagej, metadata=None)
    caplog.clear()
    code, lines = run(["upscale", odd, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 0, lines
    assert [m for m in caplog.messages if "odd.tif" in m] == [
        f"{odd}: <tifffile.TiffFile 'odd.tif'> ImageJ series metadata invalid or corrupted file"
    ]


@pytest.fixture
def writer_errors(monkeypatch) -> list[str]:
    from napari_srgan.plugin import writer

    shown: list[str] = []
    monkeypatch.setattr(writer, "show_error", shown.append)
    return shown


@pytest.mark.parametrize(
    "meta",
    [{"scale": (float("nan"), 1.0)}, {"scale": (0.0, 1.0)}, {"translate": (float("inf"), 0.0)}],
    ids=["scale-nan", "scale-0", "translate-infinity"],
)
def test_the_writer_never_writes_a_placement_the_reader_refuses(tmp_path, writer_errors, meta):
    """Such a layer was saved, and its file then failed to open with this package's reader
    ("provenance field 'layer.scale' ...")."""
    from napari_srgan.plugin.writer import write_image_layer

    path = tmp_path / "saved.ome.tif"
    assert write_image_layer(str(path), np.zeros((16, 16), np.uint8), meta) == []
    assert len(writer_errors) == 1 and "is not a finite number" in writer_errors[0]
    assert not path.exists()


def test_the_writer_saves_a_multiscale_layers_full_resolution(tmp_path, writer_errors):
    """napari hands a writer every level of a multiscale layer (an OME-Zarr opened with this
    package's reader): numpy failed on the list ("inhomogeneous shape")."""
    from napari_srgan.plugin.writer import write_image_layer

    levels = [np.full((32, 32), 3, np.uint8), np.full((16, 16), 3, np.uint8)]
    path = tmp_path / "saved.ome.tif"
    assert write_image_layer(str(path), levels, {"multiscale": True}) == [str(path)]
    assert not writer_errors and read_image(path).data.shape == (32, 32)


def test_the_writer_refuses_a_lazy_layer_larger_than_memory(tmp_path, writer_errors):
    """A lazy layer (a big store, a lazy result) was computed into memory whole."""
    from napari_srgan.plugin.writer import write_image_layer

    path = tmp_path / "saved.ome.tif"
    assert write_image_layer(str(path), da.zeros((10**6, 10**6), np.uint8), {}) == []
    assert len(writer_errors) == 1 and "declares 1000000x1000000 pixels" in writer_errors[0]
    assert not path.exists()


@pytest.mark.parametrize("metadata", ["not a dict", {"napari_srgan": "not a dict"}])
def test_the_writer_ignores_layer_metadata_it_did_not_write(tmp_path, writer_errors, metadata):
    """Metadata another plugin or a script set raised AttributeError or ValueError from the
    writer (a traceback in napari)."""
    from napari_srgan.plugin.writer import write_image_layer

    path = tmp_path / "saved.ome.tif"
    data = np.zeros((16, 16), np.uint8)
    assert write_image_layer(str(path), data, {"metadata": metadata}) == [str(path)]
    assert not writer_errors and set(read_image(path).provenance) == {"layer"}  # nothing copied


def test_the_writer_saves_without_provenance_that_is_not_json(tmp_path, monkeypatch):
    """A script that put a Python object in the layer's provenance made the writer raise
    TypeError from json.dumps (a traceback in napari, and nothing saved)."""
    from napari_srgan.plugin import writer

    warnings: list[str] = []
    monkeypatch.setattr(writer, "show_warning", warnings.append)
    path = tmp_path / "saved.ome.tif"
    metadata = {"napari_srgan": {"model": "x", "when": object()}}
    meta = {"name": "cells", "metadata": metadata}
    assert writer.write_image_layer(str(path), np.zeros((16, 16), np.uint8), meta) == [str(path)]
    assert warnings == ["napari-srgan: cells's provenance is not JSON; saved without it"]
    assert set(read_image(path).provenance) == {"layer"}


@pytest.mark.parametrize(
    ("name", "warned"), [("a.tif", True), ("a.TIFF", True), ("a.ome.tif", False)]
)
def test_saving_as_plain_tif_says_how_to_keep_the_pixel_size(tmp_path, monkeypatch, name, warned):
    """The writer offers .tif, but this package's reader claims only *.ome.tif (napari would
    ask which reader for every .tif), so a plain .tif reopened without its pixel size."""
    from napari_srgan.plugin import writer

    warnings: list[str] = []
    monkeypatch.setattr(writer, "show_warning", warnings.append)
    path = tmp_path / name
    meta = {"scale": (0.5, 0.5), "units": ("µm", "µm")}
    assert writer.write_image_layer(str(path), np.zeros((16, 16), np.uint8), meta) == [str(path)]
    assert len(warnings) == warned
    assert all(w.startswith(f"napari-srgan: saved {name} as OME-TIFF") for w in warnings)


@pytest.mark.parametrize("suffix", [".tif", ".png", ".zarr"])
def test_an_output_name_of_up_to_255_bytes_is_written(tmp_path, tiny_model_file, capsys, suffix):
    """Temporary names add about 40 bytes to the output's name: an output named with 240
    bytes failed with 'File name too long' after all the work."""
    iio.imwrite(tmp_path / "in.png", np.zeros((16, 16, 3), np.uint8))
    output = tmp_path / ("é" * 120 + suffix)  # 240 bytes + the suffix
    code, lines = run(["upscale", tmp_path / "in.png", output, "--model", "tiny-rgb"], capsys)
    assert code == 0, lines
    assert sorted(os.listdir(tmp_path)) == sorted(["in.png", output.name])


def test_a_batch_result_name_too_long_is_refused_before_its_work(tmp_path, tiny_model_file, capsys):
    """``<stem>_x4.ome.tif`` of a 250-byte input name is longer than a file name may be: the
    file was upscaled, then its write failed."""
    long_input = tmp_path / ("c" * 246 + ".png")
    for source in (long_input, tmp_path / "b.png"):
        iio.imwrite(source, np.zeros((16, 16, 3), np.uint8))
    argv = ["upscale", long_input, tmp_path / "b.png", tmp_path / "out", "--model", "tiny-rgb"]
    code, lines = run(argv, capsys)
    errors = [line for line in lines if "error" in line]
    assert code == 2 and len(errors) == 1, lines
    assert "_x4.ome.tif is longer than the 255 bytes the file system allows" in errors[0]
    assert not any(long_input.name in line for line in lines if "started" in line)
    assert os.listdir(tmp_path / "out") == ["b_x4.ome.tif"]


@pytest.mark.parametrize("output", ["o.tif", "o.zarr"])
def test_pillows_decompression_bomb_warning_adds_no_lines(
    tmp_path, tiny_model_file, capsys, output
):
    """Pillow warns (two lines on stderr) about any image over 89 M pixels; the size is checked
    against free memory here, and a big photo (or a file claiming to be one) printed them
    before the result or the one error line."""
    source = tmp_path / "big.png"
    png_claiming(source, 10_000, 10_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, lines = run(["upscale", source, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 2 and len(lines) == 1 and "big.png" in lines[0], lines
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def ome_zarr_levels(path: Path, levels: list[tuple[tuple[int, ...], str]]) -> Path:
    """An OME-Zarr store with one level per (shape, dtype)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    for index, (shape, dtype) in enumerate(levels):
        group.create_array(str(index), shape=shape, dtype=dtype)
    group.attrs["multiscales"] = [{"datasets": [{"path": str(i)} for i in range(len(levels))]}]
    return path


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ([((32, 32), "u1"), ((16, 16, 3), "u1")], "OME-Zarr level 1 has 3 axes, level 0 has 2"),
        (
            [((32, 32), "u1"), ((16, 16), "M8[s]")],
            "OME-Zarr level 1 holds datetime64[s] values, not numbers",
        ),
        ([((32, 32), "<U2")], "OME-Zarr level 0 holds <U2 values, not numbers"),
    ],
    ids=["level-axes", "level-datetime", "text"],
)
def test_levels_napari_cannot_show_are_one_notification(
    tmp_path, make_napari_viewer, monkeypatch, levels, message
):
    """napari failed deep inside the layer's setup ("setting an array element with a
    sequence", "data type not supported"): a traceback, after this reader had returned."""
    from napari_srgan.plugin import reader

    errors: list[str] = []
    monkeypatch.setattr(reader, "show_error", errors.append)
    source = ome_zarr_levels(tmp_path / "cells.zarr", levels)
    viewer = make_napari_viewer()
    viewer.open(str(source), plugin="napari-srgan")
    assert len(viewer.layers) == 0 and errors == [f"napari-srgan: {source}: {message}"]


def test_a_store_listing_thousands_of_levels_is_refused_before_opening_them(
    tmp_path, tiny_model_file, capsys
):
    """Every listed level is opened (to check it is an array): 100000 entries in a 2.6 MB
    .zattrs took 144 s before the work began, and napari's multiscale layer longer."""
    source = ome_zarr(tmp_path / "cells.zarr", {"datasets": [{"path": "0"}] * 1000})
    before = hashes(tmp_path)
    code, lines = run(["upscale", source, tmp_path / "o.tif", "--model", "tiny-rgb"], capsys)
    assert code == 2 and lines == [
        f"napari-srgan: error: {source}: OME-Zarr field 'multiscales[0].datasets' lists 1000 "
        "levels; more than 64 is refused"
    ]
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("output", ["result.tif", "result.png", "result.zarr"])
def test_a_folder_of_inputs_to_a_file_name_is_refused(tmp_path, tiny_model_file, capsys, output):
    """``upscale photos/ result.tif`` made a folder named result.tif holding the results."""
    (tmp_path / "photos").mkdir()
    iio.imwrite(tmp_path / "photos" / "a.png", np.zeros((16, 16, 3), np.uint8))
    before = hashes(tmp_path)
    argv = ["upscale", tmp_path / "photos", tmp_path / output, "--model", "tiny-rgb"]
    code, lines = run(argv, capsys)
    assert code == 2 and len(lines) == 1 and f"{tmp_path / output} names a file" in lines[0]
    assert hashes(tmp_path) == before and not (tmp_path / output).exists()
