"""`napari-srgan upscale` over many files: one model load, a bad file does not stop the rest,
a summary, exit status 2 if any failed, and the bundled model that fits the data by default."""

import subprocess
import sys

import imageio.v3 as iio
import numpy as np

from napari_srgan.io.images import read_image, write_tiff


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "napari_srgan", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_folder_batch_goes_on_after_a_bad_file_and_picks_the_model_by_data(tmp_path, rng):
    inputs = tmp_path / "in"
    inputs.mkdir()
    iio.imwrite(inputs / "colour.png", rng.integers(0, 255, (12, 10, 3), dtype=np.uint8))
    iio.imwrite(inputs / "grey.png", rng.integers(0, 255, (12, 10), dtype=np.uint8))
    (inputs / "broken.png").write_text("not an image")
    (inputs / "notes.txt").write_text("not an input")
    result = cli("upscale", inputs, tmp_path / "out")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "broken.png: cannot read" in errors[0]
    assert "\r" not in result.stderr  # not a terminal: plain lines, no redrawn bar
    assert "[2/3] colour.png: 1/1 tiles" in result.stderr
    assert "upscaled 2 of 3 files into" in result.stdout and "1 failed: broken.png" in result.stdout
    colour = read_image(tmp_path / "out" / "colour_x4.ome.tif")
    grey = read_image(tmp_path / "out" / "grey_x4.ome.tif")
    assert colour.data.shape == (48, 40, 3) and colour.provenance["model"] == "srresnet-rgb-x4"
    assert grey.data.shape == (48, 40) and grey.provenance["model"] == "srresnet-em-grey-x4"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "colour_x4.ome.tif",
        "grey_x4.ome.tif",
    ]


def test_several_files_to_a_folder_in_another_format(tmp_path, tiny_model_file, rng):
    for name in ("a", "b"):
        iio.imwrite(tmp_path / f"{name}.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    result = cli(
        "upscale", tmp_path / "a.png", tmp_path / "b.png", tmp_path / "out",
        "--format", "png", "--model", "tiny-rgb",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "upscaled 2 of 2 files" in result.stdout
    assert result.stderr.count("is untrained") == 1  # one model, loaded and announced once
    assert iio.imread(tmp_path / "out" / "b_x4.png").shape == (32, 32, 3)


def test_inputs_that_would_share_an_output_name_are_refused(tmp_path, tiny_model_file):
    iio.imwrite(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    write_tiff(tmp_path / "a.ome.tif", np.zeros((8, 8), np.uint8), rgb=False)
    result = cli("upscale", tmp_path / "a.png", tmp_path / "a.ome.tif", tmp_path / "out")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "would both be written as a_x<scale>" in line
    assert not (tmp_path / "out").exists()


def test_evaluate_picks_the_grey_model_for_grey_images(tmp_path, rng):
    iio.imwrite(tmp_path / "grey.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    result = cli("evaluate", "--hr", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| srresnet-em-grey-x4" in result.stdout
    assert "evaluating srresnet-em-grey-x4: 1/1 images" in result.stderr


def test_a_dask_scheduler_batch_needs_zarr_results(tmp_path):
    iio.imwrite(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    iio.imwrite(tmp_path / "b.png", np.zeros((8, 8), np.uint8))
    result = cli("upscale", tmp_path / "a.png", tmp_path / "b.png", tmp_path / "out",
                 "--scheduler", "threads")  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "needs --format zarr" in line and not (tmp_path / "out").exists()


def test_a_rerun_replaces_results_only_with_overwrite(tmp_path, tiny_model_file):
    iio.imwrite(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    iio.imwrite(tmp_path / "b.png", np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_x4.ome.tif").write_bytes(b"an earlier result")
    args = ["upscale", tmp_path / "a.png", tmp_path / "b.png", out, "--model", "tiny-rgb"]
    result = cli(*args)
    assert result.returncode == 2 and "1 failed: a.png" in result.stdout
    assert "a_x4.ome.tif exists; pass --overwrite" in result.stderr
    assert (out / "a_x4.ome.tif").read_bytes() == b"an earlier result"
    assert read_image(out / "b_x4.ome.tif").data.shape == (32, 32, 3)  # the others went on
    assert cli(*args, "--overwrite").returncode == 0
    assert read_image(out / "a_x4.ome.tif").data.shape == (32, 32, 3)
