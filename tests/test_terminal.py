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
