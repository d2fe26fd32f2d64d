"""Image files whose stored values are not the grey or RGB intensities they show: palette
(indexed-colour) images, white-is-zero and 1-bit images, CMYK, L*a*b* and YCbCr TIFFs. Each is
either read as what a viewer shows (Pillow's reading is the reference) or refused in one line,
by ``napari-srgan upscale`` (read whole, or streamed into a .zarr) and by the napari reader."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_srgan.io.images import read_image
from napari_srgan.io.zarr_files import open_lazy
from test_file_attacks import hashes, run

OUTPUTS = ["o.tif", "o.zarr"]
#: A 4-colour palette as 8-bit colours.
COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 200, 0], [30, 60, 255]], np.uint8)


def indices(rng, shape=(16, 16)) -> np.ndarray:
    return rng.integers(0, len(COLOURS), shape, dtype=np.uint8)


def tiff_colormap(table: np.ndarray) -> np.ndarray:
    """A (3, 256) TIFF colormap holding ``table``'s (colours, 3) entries."""
    colormap = np.zeros((3, 256), table.dtype)
    colormap[:, : len(table)] = table.T
    return colormap


def result(path) -> np.ndarray:
    """A written result's pixels (an OME-Zarr store holds colour before the image axes)."""
    image = open_lazy(path) if path.suffix == ".zarr" else read_image(path)
    data = np.asarray(image.data)
    return np.moveaxis(data, -3, -1) if path.suffix == ".zarr" and data.ndim >= 3 else data


def notices(caplog, name: str) -> list[str]:
    return [m for m in caplog.messages if name in m]


@pytest.mark.parametrize(
    ("scaled", "dtype"),
    [(257, np.uint8), (256, np.uint8), (1, np.uint8), (None, np.uint16)],
    ids=["x257", "x256", "8-bit-values", "16-bit"],
)
def test_a_palette_tiff_reads_as_its_colours(tmp_path, rng, caplog, scaled, dtype):
    """Palette indices were read as grey values (a label-like image, upscaled by interpolating
    indices). The colormap's 16 bits give 8-bit colours when they are 8-bit colours scaled (or,
    as libtiff reads them, values up to 255), else 16-bit ones."""
    path, stored = tmp_path / "palette.tif", indices(rng)
    table = (
        COLOURS.astype(np.uint16) * scaled
        if scaled
        else rng.integers(0, 65536, (len(COLOURS), 3)).astype(np.uint16)
    )
    tifffile.imwrite(path, stored, photometric="palette", colormap=tiff_colormap(table))
    with caplog.at_level(logging.WARNING):
        image = read_image(path)
    expected = COLOURS[stored] if scaled else table[stored]
    assert image.rgb and image.data.dtype == dtype and np.array_equal(image.data, expected)
    assert notices(caplog, "palette.tif") == [
        f"{path}: a palette (indexed-colour) image: read as the RGB colours it shows, not its "
        "indices"
    ]
    if scaled == 257:  # as Pillow shows it
        assert np.array_equal(image.data, np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("output", OUTPUTS)
def test_a_palette_tiff_upscales_as_the_rgb_image_it_shows(
    tmp_path, tiny_model_file, rng, capsys, caplog, output
):
    """Read whole or streamed tile by tile into a store, a palette TIFF gives exactly the result
    of the RGB image of its colours (a palette PNG already read so, through imageio)."""
    stored = indices(rng, (2, 16, 16))  # two pages with one palette: a stack
    palette = tmp_path / "palette.tif"
    colormap = tiff_colormap(COLOURS.astype(np.uint16) * 257)
    tifffile.imwrite(palette, stored, photometric="palette", colormap=colormap)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, COLOURS[stored], photometric="rgb")
    out_palette, out_plain = tmp_path / f"palette-{output}", tmp_path / f"plain-{output}"
    code, lines = run(["upscale", palette, out_palette, "--model", "tiny-rgb"], capsys)
    assert code == 0, lines
    assert len(notices(caplog, "palette.tif")) == 1
    code, lines = run(["upscale", plain, out_plain, "--model", "tiny-rgb"], capsys)
    assert code == 0, lines
    upscaled = result(out_palette)
    assert upscaled.shape == (2, 64, 64, 3) and np.array_equal(upscaled, result(out_plain))


@pytest.mark.parametrize("stored", ["palette", "planes"])
def test_a_lazily_read_tiff_slices_as_the_whole_image(tmp_path, rng, stored):
    """The streamed read converts each slice: any index gives what reading it whole does, and a
    pixel's colours are in one chunk."""
    path, palette_indices = tmp_path / f"{stored}.tif", indices(rng, (3, 16, 16))
    colours = COLOURS[palette_indices]
    if stored == "palette":
        values = palette_indices
        colormap = tiff_colormap(COLOURS.astype(np.uint16) * 257)
        options = {"photometric": "palette", "colormap": colormap}
    else:
        values = np.moveaxis(colours, -1, 1)  # red, green and blue planes of each page
        options = {"photometric": "rgb", "planarconfig": "separate"}
    tifffile.imwrite(path, values, tile=(16, 16), **options)
    lazy, whole = open_lazy(path), read_image(path).data
    assert np.array_equal(whole, colours)
    assert lazy.rgb and lazy.data.shape == whole.shape and lazy.data.dtype == np.uint8
    assert lazy.data.chunks == (1, 16, 16, 3)
    keys = [..., (1,), (slice(0, 2), 3), (..., 1), (0, ..., slice(0, 3, 2)), (2, 5, 7, 0)]
    for key in keys:
        assert np.array_equal(lazy.data[key], whole[key]), key


def test_palette_pages_with_different_colours_are_refused_in_one_line(
    tmp_path, tiny_model_file, rng, capsys
):
    """tifffile reads pages of one shape (without its own metadata) as one stack whatever their
    colormaps: the first page's palette for all showed the second page in the wrong colours."""
    path = tmp_path / "palettes.tif"
    with tifffile.TiffWriter(path) as tif:
        for table in (COLOURS, COLOURS[::-1]):
            colormap = tiff_colormap(table.astype(np.uint16) * 257)
            tif.write(indices(rng), photometric="palette", colormap=colormap, metadata=None)
    assert tifffile.TiffFile(path).series[0].shape == (2, 16, 16)
    before = hashes(tmp_path)
    code, lines = run(["upscale", path, tmp_path / "o.tif", "--model", "tiny-rgb"], capsys)
    assert code == 2 and lines == [
        f"napari-srgan: error: cannot read {path} as an image: its pages have different palettes"
    ]
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("output", OUTPUTS)
def test_a_palette_index_beyond_the_colormap_is_one_line(tmp_path, tiny_model_file, capsys, output):
    """A colormap shorter than the indices need (4 colours for 8-bit indices): numpy's
    IndexError from the lookup, deep inside the read, or a tile's, is one line."""
    path = tmp_path / "short.tif"
    stored = np.arange(256, dtype=np.uint8).reshape(16, 16)
    colormap = (320, "H", 12, [65535] * 12, True)  # tifffile checks a colormap it is given
    tifffile.imwrite(path, stored, photometric="palette", extratags=[colormap])
    before = hashes(tmp_path)
    code, lines = run(["upscale", path, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 2 and lines == [
        f"napari-srgan: error: cannot read {path}: a pixel has palette index 255, its colormap "
        "has 4 colours"
    ]
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("output", OUTPUTS)
def test_colour_stored_plane_by_plane_upscales_as_rgb(
    tmp_path, tiny_model_file, rng, capsys, output
):
    """A TIFF storing red, green and blue as planes (planar configuration "separate") was
    upscaled as three grey planes and written as a Z-stack of 3."""
    colours = rng.integers(0, 256, (16, 16, 3), np.uint8)
    planes, plain = tmp_path / "planes.tif", tmp_path / "plain.tif"
    tifffile.imwrite(
        planes, np.moveaxis(colours, -1, 0), photometric="rgb", planarconfig="separate"
    )
    tifffile.imwrite(plain, colours, photometric="rgb")
    for source in (planes, plain):
        code, lines = run(
            ["upscale", source, tmp_path / f"{source.stem}-{output}", "--model", "tiny-rgb"], capsys
        )
        assert code == 0, lines
    upscaled = result(tmp_path / f"planes-{output}")
    assert upscaled.shape == (64, 64, 3)
    assert np.array_equal(upscaled, result(tmp_path / f"plain-{output}"))


def write_foreign(path, kind: str, rng) -> None:
    """A 16x16 TIFF of ``kind``'s colour model."""
    if kind == "YCbCr":  # Pillow stores YCbCr uncompressed: luma and chroma values
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).convert("YCbCr").save(path)
        return
    samples = {"CMYK (separated colour)": 4, "CIE L*a*b*": 3}[kind]
    photometric = {"CMYK (separated colour)": "separated", "CIE L*a*b*": "cielab"}[kind]
    values = rng.integers(0, 256, (16, 16, samples), np.uint8)
    tifffile.imwrite(path, values, photometric=photometric)


FOREIGN = {
    "CMYK (separated colour)": "CMYK (separated colour) TIFFs are not supported: their colours "
    "depend on a colour profile; convert it to RGB first",
    "CIE L*a*b*": "CIE L*a*b* TIFFs are not supported: their colours depend on a colour "
    "profile; convert it to RGB first",
    "YCbCr": "YCbCr TIFFs are supported JPEG-compressed only (this one holds luma and chroma "
    "values); convert it to RGB first",
}


@pytest.mark.parametrize("kind", list(FOREIGN))
@pytest.mark.parametrize("output", OUTPUTS)
def test_tiffs_in_other_colour_models_are_refused_in_one_line(
    tmp_path, tiny_model_file, rng, capsys, kind, output
):
    """A CMYK TIFF was upscaled as 16 planes of 16x4 pixels (its inks as a fourth axis), an
    uncompressed YCbCr or L*a*b* one as 16 planes of 16x3. Converting them right needs the
    file's colour profile (the inks' for CMYK), so they are refused before any work."""
    path = tmp_path / "print.tif"
    write_foreign(path, kind, rng)
    before = hashes(tmp_path)
    code, lines = run(["upscale", path, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 2 and lines == [f"napari-srgan: error: {path}: {FOREIGN[kind]}"]
    assert hashes(tmp_path) == before


def test_a_cmyk_jpeg_is_refused_in_one_line(tmp_path, tiny_model_file, rng, capsys):
    """imageio read a CMYK JPEG's four inks as RGBA: the result had cyan as red, the key as
    alpha."""
    path = tmp_path / "print.jpg"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).convert("CMYK").save(path)
    before = hashes(tmp_path)
    code, lines = run(["upscale", path, tmp_path / "o.png", "--model", "tiny-rgb"], capsys)
    assert code == 2 and lines == [
        f"napari-srgan: error: {path}: CMYK images are not supported: their colours depend on a "
        "colour profile; convert it to RGB first"
    ]
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("output", OUTPUTS)
def test_a_jpeg_compressed_ycbcr_tiff_upscales_as_rgb(
    tmp_path, tiny_model_file, rng, capsys, output
):
    """tifffile stores JPEG-compressed colour as YCbCr (and decodes it to RGB): such a TIFF was
    read as 16 grey planes of 16x3 pixels and refused as too small."""
    path = tmp_path / "photo.tif"
    colours = rng.integers(0, 256, (16, 16, 3), np.uint8)
    tifffile.imwrite(path, colours, photometric="rgb", compression="jpeg")
    assert tifffile.TiffFile(path).pages[0].photometric == tifffile.PHOTOMETRIC.YCBCR
    plain = tmp_path / "plain.png"
    Image.fromarray(tifffile.imread(path)).save(plain)
    code, lines = run(["upscale", path, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 0, lines
    code, lines = run(
        ["upscale", plain, tmp_path / f"plain-{output}", "--model", "tiny-rgb"], capsys
    )
    assert code == 0, lines
    upscaled = result(tmp_path / output)
    assert upscaled.shape == (64, 64, 3)
    assert np.array_equal(upscaled, result(tmp_path / f"plain-{output}"))


def write_bilevel(path, kind: str, mask: np.ndarray) -> None:
    if kind == "png":
        Image.fromarray(mask).save(path)
    elif kind == "tiff-g4":  # a fax-compressed scan
        Image.fromarray(mask).save(path, compression="group4")
    elif kind == "tiff-white-is-zero":  # how tifffile writes a bool array
        tifffile.imwrite(path, mask)
    else:
        tifffile.imwrite(path, mask, photometric="minisblack")


BILEVEL = {
    "png": "mask.png",
    "tiff-g4": "mask.tif",
    "tiff-white-is-zero": "mask.tif",
    "tiff-black-is-zero": "mask.tif",
}


@pytest.mark.parametrize("kind", list(BILEVEL))
@pytest.mark.parametrize("output", [*OUTPUTS, "o.png"])
def test_a_1_bit_image_upscales_as_8_bit_grey(
    tmp_path, tiny_model_file, rng, capsys, caplog, kind, output
):
    """A 1-bit image (a scanned page, a mask) was refused as "unsupported data type bool". It
    reads as 0 and 255, as it shows (a white-is-zero TIFF turned round), and its result is 8-bit
    grey like any other."""
    path = tmp_path / BILEVEL[kind]
    mask = rng.random((16, 16)) > 0.5
    write_bilevel(path, kind, mask)
    shown = np.asarray(Image.open(path).convert("L"))
    assert set(np.unique(shown)) == {0, 255}
    image = read_image(path)
    assert not image.rgb and image.data.dtype == np.uint8 and np.array_equal(image.data, shown)

    caplog.clear()
    code, lines = run(["upscale", path, tmp_path / output, "--model", "tiny-rgb"], capsys)
    assert code == 0, lines
    assert len(notices(caplog, "white is zero")) == (kind == "tiff-white-is-zero")
    upscaled = result(tmp_path / output)
    assert upscaled.shape == (64, 64) and upscaled.dtype == np.uint8
    Image.fromarray(shown).save(tmp_path / "grey.png")
    grey = ["upscale", tmp_path / "grey.png", tmp_path / f"grey-{output}", "--model", "tiny-rgb"]
    code, lines = run(grey, capsys)
    assert code == 0, lines
    assert np.array_equal(upscaled, result(tmp_path / f"grey-{output}"))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_white_is_zero_grey_tiff_reads_inverted(tmp_path, rng, caplog, dtype):
    """A white-is-zero image's values were upscaled as they are and written black-is-zero: the
    result showed the negative of the input."""
    path = tmp_path / "scan.tif"
    values = rng.integers(0, np.iinfo(dtype).max, (16, 16), dtype=dtype, endpoint=True)
    tifffile.imwrite(path, values, photometric="miniswhite")
    with caplog.at_level(logging.WARNING):
        image = read_image(path)
    assert notices(caplog, "scan.tif") == [
        f"{path}: white is zero in this file (TIFF WhiteIsZero): read inverted, as viewers show it"
    ]
    assert np.array_equal(image.data, np.iinfo(dtype).max - values)
    assert np.array_equal(np.asarray(open_lazy(path).data), image.data)  # streamed alike
    if dtype == np.uint8:
        assert np.array_equal(image.data, np.asarray(Image.open(path).convert("L")))


def test_the_napari_reader_shows_a_palette_in_colour_and_refuses_cmyk_in_one_line(
    tmp_path, rng, monkeypatch
):
    """An OME-TIFF with a pixel size is this plugin's to open: a palette one opened as a grey
    layer of indices, a CMYK one as an RGBA layer of inks."""
    from napari_srgan.plugin import reader

    errors: list[str] = []
    monkeypatch.setattr(reader, "show_error", errors.append)
    metadata = {"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    palette, stored = tmp_path / "palette.ome.tif", indices(rng)
    colormap = tiff_colormap(COLOURS.astype(np.uint16) * 257)
    tifffile.imwrite(
        palette, stored, photometric="palette", colormap=colormap, ome=True, metadata=metadata
    )
    [(data, options, layer_type)] = reader.get_reader(str(palette))(str(palette))
    assert layer_type == "image" and options["rgb"] and options["scale"] == (0.5, 0.5)
    assert np.array_equal(data, COLOURS[stored]) and not errors

    cmyk = tmp_path / "print.ome.tif"
    values = rng.integers(0, 256, (16, 16, 4), np.uint8)
    tifffile.imwrite(cmyk, values, photometric="separated", ome=True, metadata=metadata)
    assert reader.get_reader(str(cmyk))(str(cmyk)) == [(None,)]
    assert errors == [f"napari-srgan: {cmyk}: {FOREIGN['CMYK (separated colour)']}"]
