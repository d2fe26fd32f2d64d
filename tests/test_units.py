"""Pixel sizes and units survive a write and a read, in OME's spelling and with Z as Z."""

import numpy as np
import pytest
import tifffile

from napari_srgan.io.images import ome_unit, read_image, write_tiff
from napari_srgan.plugin.reader import layer_options


def ome_pixels(path) -> dict:
    with tifffile.TiffFile(path) as tif:
        return tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]


def test_pixel_units_write_no_physical_size(tmp_path, rng):
    """A photo has no physical size: its 4x result must not claim 0.25 micrometres."""
    data = rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)
    write_tiff(tmp_path / "photo.tif", data, rgb=True, scale=(0.25, 0.25), translate=(-0.375, 0))
    pixels = ome_pixels(tmp_path / "photo.tif")
    assert not any(key.startswith("PhysicalSize") for key in pixels)
    image = read_image(tmp_path / "photo.tif")
    assert image.unit is None and image.scale == (0.25, 0.25)  # the layer scale still returns
    assert "units" not in layer_options(image)  # napari keeps its pixel units: no warning


@pytest.mark.parametrize("unit", ["um", "µm", "\u03bcm", "micron", "micrometer"])
def test_micrometres_are_written_in_ome_spelling(tmp_path, unit):
    write_tiff(
        tmp_path / "a.tif", np.zeros((4, 4), np.uint8), rgb=False, scale=(0.2, 0.3), unit=unit
    )
    pixels = ome_pixels(tmp_path / "a.tif")
    assert pixels["PhysicalSizeXUnit"] == pixels["PhysicalSizeYUnit"] == "µm"
    assert (pixels["PhysicalSizeY"], pixels["PhysicalSizeX"]) == pytest.approx((0.2, 0.3))
    image = read_image(tmp_path / "a.tif")
    assert image.unit == "µm" and image.scale == pytest.approx((0.2, 0.3))
    assert layer_options(image)["units"] == "micrometer"


def test_imagej_um_becomes_ome_micrometres(tmp_path):
    tifffile.imwrite(
        tmp_path / "ij.tif",
        np.zeros((8, 8), np.uint8),
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"unit": "um"},
    )
    image = read_image(tmp_path / "ij.tif")
    write_tiff(tmp_path / "out.tif", image.data, rgb=False, scale=image.scale, unit=image.unit)
    assert ome_pixels(tmp_path / "out.tif")["PhysicalSizeXUnit"] == "µm"


def test_unknown_and_pixel_units_claim_no_physical_size():
    assert ome_unit("pixel") is None and ome_unit("furlong") is None and ome_unit(None) is None
    assert ome_unit("nanometer") == "nm" and ome_unit("Å") == "Å"


def test_z_stacks_are_written_as_z_with_their_spacing(tmp_path, rng):
    data = rng.integers(0, 4000, (5, 8, 6), dtype=np.uint16)
    write_tiff(tmp_path / "z.tif", data, rgb=False, scale=(2.0, 0.4, 0.4), unit="µm")
    pixels = ome_pixels(tmp_path / "z.tif")
    assert (pixels["SizeZ"], pixels["SizeC"], pixels["SizeT"]) == (5, 1, 1)
    assert pixels["PhysicalSizeZ"] == pytest.approx(2.0) and pixels["PhysicalSizeZUnit"] == "µm"
    image = read_image(tmp_path / "z.tif")
    np.testing.assert_array_equal(image.data, data)
    assert image.scale == pytest.approx((2.0, 0.4, 0.4))


def test_z_spacing_of_other_software_is_read(tmp_path):
    """Without this package's provenance tag, Z spacing comes from OME or ImageJ metadata."""
    data = np.zeros((3, 8, 8), np.uint16)
    tifffile.imwrite(
        tmp_path / "ome.tif",
        data,
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "PhysicalSizeZ": 0.5},
    )
    tifffile.imwrite(
        tmp_path / "ij.tif",
        data,
        imagej=True,
        resolution=(10, 10),
        metadata={"axes": "ZYX", "unit": "um", "spacing": 0.7},
    )
    assert read_image(tmp_path / "ome.tif").scale == pytest.approx((0.5, 0.1, 0.1))
    assert read_image(tmp_path / "ij.tif").scale == pytest.approx((0.7, 0.1, 0.1))


def test_rgb_z_stack_round_trip(tmp_path, rng):
    data = rng.integers(0, 255, (2, 6, 5, 3), dtype=np.uint8)
    write_tiff(tmp_path / "zrgb.tif", data, rgb=True, scale=(3.0, 0.5, 0.5), unit="nm")
    pixels = ome_pixels(tmp_path / "zrgb.tif")
    assert (pixels["SizeZ"], pixels["SizeC"]) == (2, 3) and pixels["PhysicalSizeXUnit"] == "nm"
    image = read_image(tmp_path / "zrgb.tif")
    assert image.rgb and image.scale == pytest.approx((3.0, 0.5, 0.5))
    np.testing.assert_array_equal(image.data, data)
