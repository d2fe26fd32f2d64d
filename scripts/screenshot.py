"""Make docs/screenshot.png: napari with the Upscale 4x widget and an upscaled sample.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot.py

Runs the widget exactly as a user would (synchronously, so the picture is taken after the
result arrives) and shows the input and its 4x result side by side.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["NAPARI_SRGAN_SYNCHRONOUS"] = "1"

import napari
from napari.qt import get_qapp

OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "screenshot.png"


def main() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 900)
    [source] = viewer.open_sample("napari-srgan", "astronaut")
    _, widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")
    widget.image.value = source
    widget.run_button.clicked.emit()
    result = viewer.layers[f"{source.name} x4"]
    # input on the left, result on the right (one input pixel = 4 result pixels in world units)
    result.translate = (result.translate[0], result.translate[1] + source.data.shape[1] + 8)
    overlay = viewer.canvas.overlays.text
    overlay.visible = True
    overlay.text = "left: 128x128 input (nearest)    right: 4x result (512x512)"
    overlay.font_size = 12
    viewer.reset_view()
    get_qapp().processEvents()
    OUTPUT.parent.mkdir(exist_ok=True)
    viewer.window.screenshot(str(OUTPUT), flash=False, canvas_only=False)
    print(f"wrote {OUTPUT}")
    viewer.close()


if __name__ == "__main__":
    main()
