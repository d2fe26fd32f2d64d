"""The command line, end to end in subprocesses (as a batch user runs it)."""

import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_srgan.io.images import read_image, write_tiff


def cli(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "napari_srgan", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_upscale_png_to_ome_tiff_with_pixel_size_and_provenance(tmp_path, tiny_model_file):
    cli("sample", "cell", tmp_path / "cell.png")
    result = cli(
        "upscale",
        tmp_path / "cell.png",
        tmp_path / "cell-x4.tif",
        "--model",
        "tiny-rgb",
        "--tile",
        "64",
    )
    assert "165x137 -> " in result.stdout and "660x548" in result.stdout
    assert "9/9" in result.stderr  # a progress bar on the terminal (3x3 tiles keeping 64 px)
    image = read_image(tmp_path / "cell-x4.tif")
    assert image.data.shape == (660, 548) and image.data.dtype == np.uint8
    assert image.scale == pytest.approx((0.25, 0.25))
    assert image.translate == pytest.approx((-0.375, -0.375))
    assert image.provenance["model"] == "tiny-3ch"
    assert image.provenance["source"].endswith("cell.png")


def test_upscale_keeps_the_physical_pixel_size(tmp_path, tiny_model_file):
    data = np.random.default_rng(0).integers(0, 4000, (2, 24, 20)).astype(np.uint16)
    write_tiff(tmp_path / "stack.tif", data, rgb=False, scale=(2.0, 0.4, 0.4), unit="µm")
    cli("upscale", tmp_path / "stack.tif", tmp_path / "out.tif", "--model", "tiny-rgb")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
    assert pixels["PhysicalSizeX"] == pytest.approx(0.1) and pixels["PhysicalSizeXUnit"] == "µm"
    assert read_image(tmp_path / "out.tif").data.shape == (2, 96, 80)


def test_png_output(tmp_path, tiny_model_file):
    cli("sample", "astronaut", tmp_path / "a.png")
    cli("upscale", tmp_path / "a.png", tmp_path / "a4.png", "--model", "tiny-rgb")
    assert iio.imread(tmp_path / "a4.png").shape == (512, 512, 3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["upscale", "{tmp}/absent.png", "{tmp}/o.tif", "--model", "tiny-rgb"],
            "no such image file",
        ),
        (
            ["upscale", "{tmp}/not-an-image.png", "{tmp}/o.tif", "--model", "tiny-rgb"],
            "cannot read",
        ),
        (["upscale", "{tmp}/ok.png", "{tmp}/no-such-folder/o.tif"], "output folder does not exist"),
        (["upscale", "{tmp}/ok.png", "{tmp}/o.xyz"], "unknown output format"),
        (
            [
                "upscale",
                "{tmp}/ok.png",
                "{tmp}/o.tif",
                "--scheduler",
                "threads",
                "--model",
                "tiny-rgb",
            ],
            "writes to a .zarr output",
        ),
        (["upscale", "{tmp}/ok.png", "{tmp}/o.tif", "--model", "nope"], "no model named 'nope'"),
        (
            ["upscale", "{tmp}/ok.png", "{tmp}/o.tif", "--model", "{tmp}/bad.safetensors"],
            "not a readable",
        ),
        (
            ["upscale", "{tmp}/ok.png", "{tmp}/o.tif", "--tile", "0", "--model", "tiny-rgb"],
            "at least 1 pixel",
        ),
        (
            ["upscale", "{tmp}/ok.png", "{tmp}/o.tif", "--memory-limit", "lots"],
            "not a size like 2GB",
        ),
        (["upscale", "{tmp}/tiny.png", "{tmp}/o.tif", "--model", "tiny-rgb"], "at least 4x4"),
        (
            ["upscale", "{tmp}/ok.png", "{tmp}/o.tif", "--device", "cuda:0", "--model", "tiny-rgb"],
            "no CUDA GPU",
        ),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(
    tmp_path, tiny_model_file, arguments, message
):
    iio.imwrite(tmp_path / "ok.png", np.zeros((16, 16), np.uint8))
    iio.imwrite(tmp_path / "tiny.png", np.zeros((1, 1), np.uint8))
    (tmp_path / "not-an-image.png").write_text("hello")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    result = cli(*[a.format(tmp=tmp_path) for a in arguments], check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-srgan: error:"), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("folder", ["/proc", "/sys", "{tmp}/locked"])
def test_unwritable_output_folder(tmp_path, tiny_model_file, folder):
    """Unwritable even for root (CI runs as root): /proc and /sys refuse new files."""
    iio.imwrite(tmp_path / "ok.png", np.zeros((16, 16), np.uint8))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    folder = folder.format(tmp=tmp_path)
    try:
        result = cli(
            "upscale", tmp_path / "ok.png", f"{folder}/o.tif", "--model", "tiny-rgb", check=False
        )
    finally:
        locked.chmod(0o700)
    if folder.endswith("locked") and result.returncode == 0:
        pytest.skip("root may write into a read-only folder")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"napari-srgan: error: output folder is not writable: {folder} (")


def test_models_and_evaluate_commands(tmp_path, tiny_model_file):
    assert "tiny-rgb" in cli("models").stdout
    cli("sample", "astronaut", tmp_path / "a.png")
    result = cli("evaluate", "--model", "tiny-rgb", "--hr", tmp_path)
    assert "| bicubic" in result.stdout and "| tiny-3ch" in result.stdout
    assert "evaluating tiny-3ch: 1/1 images" in result.stderr
