"""CLI progress: a live bar that keeps moving while one tile runs, plain lines in a log."""

import io
import time

from napari_srgan.terminal import SPINNER, Progress


def wait_for(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_live_bar_spins_while_a_step_gives_no_news():
    stream = io.StringIO()
    with Progress("cells.tif", "tile", stream=stream, live=True) as progress:
        progress.update(0, 1)
        assert wait_for(lambda: sum(stream.getvalue().count(c) for c in SPINNER[1:]) >= 2)
        progress.update(1, 1)
    assert "1/1" in stream.getvalue()


def test_a_log_gets_plain_lines_and_a_heartbeat():
    stream = io.StringIO()
    with Progress("cells.tif", "tile", stream=stream, interval=0.2, live=False) as progress:
        assert stream.getvalue() == ""  # nothing before the work starts
        progress.update(0, 3)
        assert wait_for(lambda: stream.getvalue().count("cells.tif: 0/3 tiles") >= 2)
        progress.update(3, 3)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("cells.tif: 0/3 tiles") and lines[-1].startswith("cells.tif: 3/3")


def test_a_refused_run_prints_no_progress():
    stream = io.StringIO()
    with Progress("cells.tif", "tile", stream=stream, live=False):
        pass
    assert stream.getvalue() == ""


def test_training_logs_clean_lines_with_the_losses(tmp_path):
    import subprocess
    import sys

    import imageio.v3 as iio
    import numpy as np

    hr = np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8)
    iio.imwrite(tmp_path / "hr.png", hr)
    result = subprocess.run(
        [sys.executable, "-m", "napari_srgan", "train", "--hr", tmp_path / "hr.png",
         "--from-scratch", "--grey-model", "--channels", "8", "--blocks", "1", "--steps", "3",
         "--patch", "32", "--batch", "2", "--val-fraction", "0.34", "--device", "cpu",
         "--no-download", "--out", tmp_path / "m.safetensors"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.startswith("training:")][-1]
    assert last.startswith("training: 3/3 steps") and "=" in last  # the latest losses
