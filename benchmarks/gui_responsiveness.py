"""How responsive napari stays while the Upscale widget computes in its worker thread.

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/gui_responsiveness.py [--size 384]

Opens a real napari window, docks the Upscale widget and runs it on a ``size``x``size`` RGB
image with the bundled model and 128 px tiles (so progress reports arrive throughout). A 10 ms
timer nudges the camera on every tick, so each tick makes the canvas redraw, as panning would;
the number of ticks per second is the event-loop rate the user feels, and the longest gap
between two ticks is the worst stall. Measured idle and during the upscale, with the worker's
torch given every core (``GUI_CORES = 0``) and one core fewer than the machine has
(``GUI_CORES = 1``, the plugin's setting), alternating ``--rounds`` times on one machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import napari
import numpy as np
import torch
from napari.qt import get_qapp
from qtpy.QtCore import QEventLoop, QTimer
from skimage import data, transform

from napari_srgan.plugin import background

TICK_MS = 10


class TickRecorder:
    """Records when a 10 ms timer fires; each tick nudges the camera so the canvas redraws."""

    def __init__(self, viewer: napari.Viewer) -> None:
        self.viewer, self.ticks, self.sign = viewer, [], 1.0
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self.tick)
        self.timer.start()

    def tick(self) -> None:
        self.ticks.append(time.perf_counter())
        self.sign = -self.sign
        self.viewer.scene.camera.zoom *= 1.0 + 1e-4 * self.sign

    def summary(self) -> tuple[float, float, float]:
        """(ticks per second, 95th percentile gap in s, longest gap in s)."""
        gaps = np.diff(self.ticks)
        return len(gaps) / float(gaps.sum()), float(np.percentile(gaps, 95)), float(gaps.max())


def run_loop(until_ms: int | None = None, signal=None) -> None:
    loop = QEventLoop()
    if until_ms is not None:
        QTimer.singleShot(until_ms, loop.quit)
    if signal is not None:
        signal.connect(loop.quit)
    loop.exec()


def measure(viewer, widget, layer, gui_cores: int) -> dict:
    background.GUI_CORES = gui_cores
    recorder = TickRecorder(viewer)
    run_loop(until_ms=3000)
    idle = recorder.summary()
    recorder.ticks.clear()
    widget.image.value = layer
    started = time.perf_counter()
    widget.start()
    run_loop(signal=widget.job.worker.finished)
    seconds = time.perf_counter() - started
    busy = recorder.summary()
    recorder.timer.stop()
    viewer.layers.remove(viewer.layers[-1])
    return {"idle": idle, "busy": busy, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384, help="input side in pixels")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.pop(background.SYNCHRONOUS_ENV, None)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 900)
    image = transform.resize(data.astronaut(), (args.size, args.size), anti_aliasing=True)
    layer = viewer.add_image((image * 255).astype(np.uint8), name="astronaut", rgb=True)
    widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")[1]
    widget.model.value = "srresnet-rgb-x4"
    widget.tile.value = 128
    get_qapp().processEvents()
    results: dict[int, list[dict]] = {0: [], 1: []}
    for _ in range(args.rounds):
        for gui_cores in (0, 1):
            results[gui_cores].append(measure(viewer, widget, layer, gui_cores))
    viewer.close()

    print(
        f"{args.size}x{args.size} RGB -> 4x, bundled model, 128 px tiles; {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); median of "
        f"{args.rounds} alternating rounds; a {TICK_MS} ms timer redrawing the canvas"
    )
    print(
        "| worker torch threads | idle rate (Hz) | rate during upscale (Hz) | "
        "95th pct gap (ms) | longest stall (ms) | upscale time (s) |"
    )
    print("|---|---|---|---|---|---|")
    for gui_cores, runs in results.items():
        threads = max(1, torch.get_num_threads() - gui_cores)
        idle = statistics.median(r["idle"][0] for r in runs)
        rate = statistics.median(r["busy"][0] for r in runs)
        p95 = statistics.median(r["busy"][1] for r in runs) * 1000
        stall = statistics.median(r["busy"][2] for r in runs) * 1000
        seconds = statistics.median(r["seconds"] for r in runs)
        label = (
            f"{threads} (all cores)" if gui_cores == 0 else f"{threads} (one core left to the GUI)"
        )
        print(f"| {label} | {idle:.1f} | {rate:.1f} | {p95:.0f} | {stall:.0f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
