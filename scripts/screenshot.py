"""Make the README's screenshots: napari with the Upscale and Train widgets docked together.

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python scripts/screenshot.py [--community]

Runs the widgets exactly as a user would (clicking their buttons, training in its worker thread)
and writes:

- docs/screenshot-upscale.png: a low-resolution micrograph and its 4x result side by side;
- docs/screenshot-running.png: both widgets docked, a fine-tuning run in progress (loss and
  PSNR plot, progress bar, the labelled LR | bicubic | model | HR preview beside the data);
- docs/screenshot-finished.png: the run finished, its model chosen in the Upscale widget and
  used for a new result;
- with ``--community``, docs/screenshot-community-model.png: a community (spandrel) model file,
  built here with random weights, added through the Upscale widget's core function and selected.

User models go to a temporary folder, so nothing of the user's is touched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NAPARI_SRGAN_MODEL_DIR", tempfile.mkdtemp(prefix="srgan-shot-models-"))

import napari
from napari.qt import get_qapp
from skimage import data

DOCS = Path(__file__).resolve().parents[1] / "docs"
WINDOW = (1280, 1024)


def settle(seconds: float = 0.3) -> None:
    """Let Qt lay out and paint (and queued worker reports arrive)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        get_qapp().processEvents()
        time.sleep(0.02)


def wait_for(condition, timeout: float = 600.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the widget did not get there in time")
        settle(0.1)


def close_notifications(viewer: napari.Viewer) -> None:
    """Close napari's pop-up notifications, which would cover the canvas."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


def shoot(viewer: napari.Viewer, name: str) -> None:
    settle()
    path = DOCS / name
    viewer.window.screenshot(str(path), flash=False, canvas_only=False)
    print(f"wrote {path}")


def upscale(widget, layer, model: str | None = None) -> None:
    widget.image.value = layer
    if model is not None:
        widget.model.value = model
    widget.run_button.clicked.emit()
    wait_for(lambda: widget.run_button.enabled and widget.status.value.startswith("done"))


def beside(result, source, gap: float = 8.0) -> None:
    """Move a result to the right of its input (world units of the input)."""
    width = source.data.shape[1] * source.scale[-1]
    result.translate = (result.translate[0], result.translate[1] + width + gap)


def caption(viewer: napari.Viewer, text: str) -> None:
    overlay = viewer.canvas.overlays.text
    overlay.visible = True
    overlay.text = text
    overlay.font_size = 10
    overlay.color = "white"
    overlay.position = "top_left"


def main(community: bool) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(*WINDOW)
    upscale_widget = viewer.window.add_plugin_dock_widget("napari-srgan", "Upscale 4x")[1]

    # fine-tune on a full-resolution micrograph, with both widgets docked
    viewer.layers.clear()
    hr = viewer.add_image(data.immunohistochemistry(), name="ihc (HR)", rgb=True)
    train = viewer.window.add_plugin_dock_widget("napari-srgan", "Train")[1]
    train.reset_choices()
    train.hr_layers.value = [hr]
    train.model_name.value = "ihc-finetuned"
    train.steps.value = 60
    train.validate_every.value = 10
    train.patch_size.value = 48
    train.batch_size.value = 4
    viewer.reset_view()
    train.train_button.clicked.emit()
    wait_for(lambda: len(train.plot.validation) >= 3)
    viewer.reset_view()
    shoot(viewer, "screenshot-running.png")
    wait_for(lambda: train.outcome is not None)
    viewer.layers.remove(train.preview_layer)  # shown in the previous picture
    viewer.layers.remove(train.preview_labels)

    # the fine-tuned model on the 4x smaller sample: LR | result | HR at one size
    [lr] = viewer.open_sample("napari-srgan", "ihc")
    lr.scale = (4, 4)
    lr.translate = (0, -2 * (hr.data.shape[1] + 16))
    upscale_widget.reset_choices()
    upscale(upscale_widget, lr, "ihc-finetuned")
    beside(viewer.layers[-1], lr, gap=16)
    caption(viewer, "128x128 input  |  4x, fine-tuned model  |  original 512x512")
    viewer.reset_view()
    close_notifications(viewer)
    shoot(viewer, "screenshot-finished.png")

    if community:
        add_community_model(viewer, upscale_widget, lr)

    # the Upscale widget alone, its advanced settings open (taken last: once expanded, Qt
    # keeps the dock's larger minimum height, which would squeeze the Train widget)
    viewer.window.remove_dock_widget(train.native)
    viewer.layers.clear()
    [lr] = viewer.open_sample("napari-srgan", "ihc")
    upscale_widget.advanced.expand(animate=False)
    upscale(upscale_widget, lr, "srresnet-rgb-x4")
    beside(viewer.layers[-1], lr)
    caption(viewer, "left: 128x128 input    right: 4x result (512x512)")
    viewer.reset_view()
    shoot(viewer, "screenshot-upscale.png")
    viewer.close()


def add_community_model(viewer: napari.Viewer, widget, layer) -> None:
    """A tiny Real-ESRGAN-style (spandrel "ESRGAN") network with random weights, saved as a
    plain state dict and added through the registry's add function, as "Add model file…" does."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    from napari_srgan.models.registry import add_model

    torch.manual_seed(0)
    network = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=1, scale=4)
    path = Path(tempfile.mkdtemp(prefix="srgan-community-")) / "community-esrgan-x4.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    saved = add_model(path)
    widget.reset_choices()
    widget.image.value = layer
    widget.model.value = saved.stem
    widget.status.value = f"added model {saved.stem}"
    caption(viewer, "")
    settle()
    shoot(viewer, "screenshot-community-model.png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--community", action="store_true", help="also the community model shot")
    main(parser.parse_args().community)
    sys.exit(0)
