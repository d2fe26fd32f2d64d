"""A result the disk cannot hold is refused before any work, in one line naming the output and
the sizes; the estimate of what an output needs is exact for TIFF and close for compressed ones.

The free space is faked by patching ``disk_usage`` where the check calls it.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections import namedtuple
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import fill_the_disk
from napari_srgan.cli import main
from napari_srgan.engine import file_upscale
from napari_srgan.engine.upscale import check_image
from napari_srgan.io import disk_space
from napari_srgan.io.disk_space import (
    CHUNK_MARGIN,
    SKIP_SPACE_CHECK_ENV,
    STORE_MARGIN,
    TIFF_MARGIN,
    TIFF_PAGE_MARGIN,
    human_bytes,
    mount_point,
    output_bytes,
)
from napari_srgan.io.images import write_tiff
from napari_srgan.io.zarr_files import OmeZarrWriter, store_levels

Usage = namedtuple("Usage", "total used free")
#: What the CLI's refusal ends with: the way round a disk that misreports its free space.
HINT = " (pass --skip-space-check if the disk reports its free space wrongly)"


def fake_free_space(monkeypatch, free: int, total: int = 1 << 40) -> None:
    monkeypatch.setattr(disk_space, "disk_usage", lambda path: Usage(total, total - free, free))


@pytest.fixture
def engine_calls(monkeypatch) -> list:
    """The engine's upscale calls (a spy: the model runs as usual)."""
    calls = []
    real = file_upscale.upscale

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(file_upscale, "upscale", spy)
    return calls


def disk_bytes(path: Path) -> int:
    """What ``path`` takes on the disk (``du``: whole blocks, every file of a store)."""
    return int(subprocess.check_output(["du", "-s", "-B1", str(path)]).split()[0])


@pytest.mark.parametrize(
    ("shape", "dtype", "rgb"),
    [
        ((300, 200), np.uint16, False),
        ((5, 64, 48), np.float32, False),
        ((70, 90, 3), np.uint8, True),
    ],
)
def test_the_tiff_estimate_is_the_pixels_plus_a_small_header(tmp_path, shape, dtype, rgb):
    path = tmp_path / "out.tif"
    data = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    write_tiff(path, data, rgb=rgb, provenance={"model": {"name": "x" * 2000}})
    pixels = data.nbytes
    size = path.stat().st_size
    assert pixels < size <= output_bytes(path, shape, dtype, rgb=rgb)
    pages = 1 if rgb or len(shape) == 2 else shape[0]
    assert (
        output_bytes(path, shape, dtype, rgb=rgb) == pixels + TIFF_MARGIN + pages * TIFF_PAGE_MARGIN
    )


@pytest.mark.parametrize("content", ["noise", "smooth", "blank"])
@pytest.mark.parametrize("rgb", [False, True])
def test_the_zarr_estimate_is_close_to_the_store_written(tmp_path, content, rgb):
    """A sample compresses like the image it comes from, so the estimate from a few patches
    is near what the store (pyramid, padded edge chunks and all) takes on the disk; without a
    sample it counts the pixels uncompressed."""
    shape = (2, 700, 900, 3) if rgb else (2, 700, 900)
    rng = np.random.default_rng(0)
    if content == "noise":
        data = rng.integers(0, 2**16, shape, dtype=np.uint16)
    elif content == "smooth":
        y, x = np.mgrid[:700, :900]
        plane = 1000 + 800 * np.sin(y / 40) * np.cos(x / 55) + rng.normal(0, 20, (700, 900))
        data = np.broadcast_to(plane[..., None] if rgb else plane, shape).astype(np.uint16)
    else:
        data = np.zeros(shape, np.uint16)
    path = tmp_path / "out.zarr"
    writer = OmeZarrWriter(path, shape, data.dtype, rgb=rgb, scale=(1, 1, 1), translate=(0, 0, 0))
    writer.level0[:, :, :] = data
    writer.finish()
    sample = [data[1, y : y + 512, x : x + 512] for y in (0, 188) for x in (0, 194, 388)]
    estimate = output_bytes(path, shape, data.dtype, rgb=rgb, sample=sample)
    actual = disk_bytes(path)
    # On top: fixed margins (metadata, per chunk a header and a partly used block; zarr does
    # not even write blank chunks).
    chunks = sum(
        math.prod(-(-size // chunk) for size, chunk in zip(*level, strict=True))
        for level in store_levels(shape, rgb=rgb)
    )
    margins = STORE_MARGIN + chunks * CHUNK_MARGIN
    assert 0.8 * actual <= estimate <= 1.25 * actual + margins, (estimate, actual)
    assert output_bytes(path, shape, data.dtype, rgb=rgb) > data.nbytes


def message_pattern(output: Path, estimated: bool, free: str) -> str:
    about = "an estimated" if estimated else "about"
    return (
        rf"{re.escape(str(output))} needs {about} \d+\.\d (KiB|MiB) "
        rf"but only {re.escape(free)} is free on {re.escape(str(mount_point(output.parent)))}"
    )


@pytest.mark.parametrize("suffix", [".tif", ".png", ".zarr"])
@pytest.mark.parametrize("existing", [False, True])
def test_an_output_that_cannot_fit_is_refused_before_any_work(
    tmp_path, tiny_model_file, monkeypatch, capsys, engine_calls, suffix, existing
):
    source = tmp_path / "in.png"
    iio.imwrite(source, np.random.default_rng(0).integers(0, 255, (24, 24, 3), np.uint8))
    output = tmp_path / f"out{suffix}"
    arguments = ["upscale", str(source), str(output), "--model", str(tiny_model_file)]
    if existing:  # a store of this package's, or any file
        assert main([*arguments, "--overwrite"]) == 0
        before = {
            p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
        }
        engine_calls.clear()
        capsys.readouterr()
    fake_free_space(monkeypatch, 1000)
    code = main([*arguments, *(["--overwrite"] if existing else [])])
    assert code == 2
    captured = capsys.readouterr()
    pattern = message_pattern(output, estimated=suffix != ".tif", free="1000 bytes")
    assert re.fullmatch(rf"napari-srgan: error: {pattern}{re.escape(HINT)}\n", captured.err), (
        captured.err
    )
    assert captured.out == ""
    assert engine_calls == []
    if existing:
        after = {
            p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
        }
        assert after == before
    else:
        assert [p.name for p in tmp_path.iterdir()] == ["in.png"]


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_an_output_that_fits_is_written(
    tmp_path, tiny_model_file, monkeypatch, engine_calls, suffix
):
    source = tmp_path / "in.png"
    image = np.random.default_rng(0).integers(0, 255, (24, 24, 3), np.uint8)
    iio.imwrite(source, image)
    output = tmp_path / f"out{suffix}"
    layout = check_image(image, True)
    needed = output_bytes(
        output, layout.output_shape(4), image.dtype, rgb=True,
        sample=file_upscale.result_sample(image, layout, 4),
    )  # fmt: skip
    fake_free_space(monkeypatch, needed)
    assert main(["upscale", str(source), str(output), "--model", str(tiny_model_file)]) == 0
    assert output.exists() and len(engine_calls) == 1


def test_a_file_system_that_reports_no_sizes_is_not_checked(tmp_path, tiny_model_file, monkeypatch):
    source = tmp_path / "in.png"
    iio.imwrite(source, np.zeros((24, 24, 3), np.uint8))
    fake_free_space(monkeypatch, 0, total=0)
    output = tmp_path / "out.tif"
    assert main(["upscale", str(source), str(output), "--model", str(tiny_model_file)]) == 0
    assert output.exists()


def test_a_batch_checks_each_file_against_what_is_free_when_it_starts(
    tmp_path, tiny_model_file, monkeypatch, capsys, engine_calls
):
    """Results written earlier in the batch have taken their space when the next one starts; a
    file that does not fit fails in its line and the others go on."""
    inputs, results = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    iio.imwrite(inputs / "big.png", rng.integers(0, 255, (64, 64, 3), np.uint8))
    iio.imwrite(inputs / "small.png", rng.integers(0, 255, (16, 16, 3), np.uint8))
    small_needs = output_bytes(results / "small_x4.ome.tif", (64, 64, 3), np.uint8, rgb=True)
    fake_free_space(monkeypatch, small_needs)
    code = main(["upscale", str(inputs), str(results), "--model", str(tiny_model_file)])
    assert code == 2
    assert sorted(p.name for p in results.iterdir()) == ["small_x4.ome.tif"]
    assert len(engine_calls) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    big = results / "big_x4.ome.tif"
    pattern = message_pattern(big, estimated=False, free=human_bytes(small_needs))
    assert len(errors) == 1
    assert re.fullmatch(
        rf"napari-srgan: error: {re.escape(str(inputs / 'big.png'))}: {pattern}{re.escape(HINT)}",
        errors[0],
    )


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def test_the_help_names_the_override(capsys):
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    assert "--skip-space-check" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["option", "environment"])
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_the_check_can_be_skipped_for_a_disk_that_misreports_its_free_space(
    tmp_path, tiny_model_file, monkeypatch, engine_calls, how, suffix
):
    """A network share or quota-managed storage may report 1000 bytes free with room to
    spare: the option (or, for napari, the environment variable) writes anyway."""
    source = tmp_path / "in.png"
    iio.imwrite(source, np.random.default_rng(0).integers(0, 255, (24, 24, 3), np.uint8))
    output = tmp_path / f"out{suffix}"
    fake_free_space(monkeypatch, 1000)
    arguments = ["upscale", str(source), str(output), "--model", str(tiny_model_file)]
    assert main(arguments) == 2 and engine_calls == []
    if how == "option":
        arguments.append("--skip-space-check")
    else:
        monkeypatch.setenv(SKIP_SPACE_CHECK_ENV, "1")
    assert main(arguments) == 0
    assert output.exists() and len(engine_calls) == 1


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_a_disk_that_is_really_full_still_fails_in_one_line_without_the_check(
    tmp_path, tiny_model_file, monkeypatch, capsys, suffix
):
    """The check skipped, the disk fills up while the result is written (the writers patched
    to raise ENOSPC, as in tests/test_faults.py): one line, and the earlier output as it was."""
    source = tmp_path / "in.png"
    iio.imwrite(source, np.random.default_rng(0).integers(0, 255, (24, 24, 3), np.uint8))
    output = tmp_path / f"out{suffix}"
    arguments = ["upscale", str(source), str(output), "--model", str(tiny_model_file)]
    assert main(arguments) == 0
    before = snapshot(tmp_path)
    fill_the_disk(monkeypatch, suffix)
    fake_free_space(monkeypatch, 1000)
    capsys.readouterr()
    assert main([*arguments, "--overwrite", "--skip-space-check"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert errors == [f"napari-srgan: error: no space left on device while writing {output}"]
    assert err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_sizes_read_as_df_prints_them():
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536 << 20, 5 << 40, 3 << 50)] == [
        "0 bytes", "1023 bytes", "1.0 KiB", "1.5 GiB", "5.0 TiB", "3072.0 TiB"
    ]  # fmt: skip
