"""The "Upscale 4x" dock widget: picks a layer and a model, runs the core engine in a thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton, SpinBox, create_widget
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning

from ..devices import DEVICE_CHOICES
from ..geometry import upscaled_placement
from ..image_io import PROVENANCE_KEY
from ..model_files import ModelFileError, load_model, read_metadata
from ..model_registry import available_models, resolve_model
from ..provenance import provenance
from ..tiling import Cancelled
from ..upscale import check_image, upscale
from .background import BackgroundJob, run_job
from .model_list import follow_model_list

if TYPE_CHECKING:
    from napari.layers import Image


def model_choices(_widget=None) -> list[str]:
    return list(available_models())


def output_layer_options(layer: Image, metadata: dict) -> dict:
    """Name, placement and display settings for the upscaled copy of ``layer``."""
    spatial = [layer.ndim - 2, layer.ndim - 1]
    scale, translate = upscaled_placement(layer.scale, layer.translate, spatial)
    options = {
        "name": f"{layer.name} x4",
        "scale": scale,
        "translate": translate,
        "rgb": layer.rgb,
        "metadata": {**layer.metadata, PROVENANCE_KEY: metadata},
        "blending": layer.blending,
        "opacity": layer.opacity,
        "units": layer.units,
        "axis_labels": layer.axis_labels,
    }
    if not layer.rgb:
        options.update(
            colormap=layer.colormap,
            contrast_limits=layer.contrast_limits,
            gamma=layer.gamma,
        )
    return options


class UpscaleWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self.image = create_widget(annotation="napari.layers.Image", label="Image")
        self.model = ComboBox(label="Model", choices=model_choices)
        self.tile = SpinBox(label="Tile", value=0, min=0, max=4096, step=8)
        self.tile.tooltip = "Tile size in input pixels; 0 picks the largest that fits in memory"
        self.device = ComboBox(label="Device", choices=DEVICE_CHOICES, value="auto")
        self.info = Label(value="")
        self.run_button = PushButton(text="Upscale 4x")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.extend(
            [
                self.image,
                self.model,
                self.info,
                self.tile,
                self.device,
                self.run_button,
                self.cancel_button,
                self.status,
            ]
        )
        self.model.changed.connect(self._show_model_info)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        follow_model_list(self)
        self.job: BackgroundJob | None = None
        self._progress: progress | None = None
        self._show_model_info()

    def _show_model_info(self, *_args) -> None:
        if not self.model.value:
            self.info.value = "no model installed"
            return
        try:
            config, card = read_metadata(resolve_model(self.model.value))
        except ModelFileError as error:
            self.info.value = f"unreadable: {error}"
            return
        kind = "RGB" if config.in_channels == 3 else "grey"
        warning = " — UNTRAINED" if not card.trained else ""
        self.info.value = f"{kind}, {card.degradation} degradation{warning}"

    def start(self, *_args) -> None:
        layer = self.image.value
        if layer is None or not isinstance(layer, napari.layers.Image):
            show_error("napari-srgan: choose an image layer to upscale")
            return
        if layer.multiscale:
            show_error(
                "napari-srgan: multiscale layers are not supported; open the full-resolution level"
            )
            return
        try:
            layout = check_image(layer.data, layer.rgb)
        except ValueError as error:
            show_error(f"napari-srgan: {error}")
            return
        model_name, tile, device = self.model.value, self.tile.value or None, self.device.value
        self._set_running(True)
        self._progress = progress(total=0, desc=f"Upscaling {layer.name}")

        def work(job: BackgroundJob):
            model = load_model(resolve_model(model_name))
            if not model.card.trained:
                job.relay.report.emit(("warning", f"model {model.card.name} is untrained"))
            result = upscale(
                np.asarray(layer.data),
                model,
                rgb=layout.rgb,
                tile=tile,
                device=device,
                progress=lambda done, total: job.relay.report.emit(("progress", done, total)),
                should_stop=job.stop_flag.is_set,
            )
            return layer, result, provenance(model, source=layer.name)

        self.job = run_job(
            work,
            on_report=self._on_report,
            on_returned=self._on_returned,
            on_errored=self._on_errored,
            on_finished=lambda: self._set_running(False),
            owner=self.native,
        )

    def cancel(self, *_args) -> None:
        if self.job is not None:
            self.job.stop()

    def _on_report(self, report: tuple) -> None:
        if report[0] == "progress" and self._progress is not None:
            _, done, total = report
            self.status.value = f"{done}/{total} tiles"
            # last: napari's progress bar may process events, delivering the job's end here
            self._progress.total = total
            self._progress.update(done - self._progress.n)
        elif report[0] == "warning":
            show_warning(f"napari-srgan: {report[1]}")

    def _on_returned(self, value) -> None:
        layer, result, metadata = value
        self._viewer.add_image(result, **output_layer_options(layer, metadata))
        self.status.value = f"done: {layer.name} x4"

    def _on_errored(self, error: Exception) -> None:
        if isinstance(error, Cancelled):
            self.status.value = "cancelled"
            show_info("napari-srgan: upscaling cancelled, no layer added")
        else:
            self.status.value = f"failed: {error}"
            show_error(f"napari-srgan: {error}")

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if not running and self._progress is not None:
            self._progress.close()
            self._progress = None
