"""The "Upscale 4x" dock widget: picks a layer and a model, runs the core engine in a thread."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import napari
import numpy as np
import psutil
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    Label,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning

from napari_srgan.engine.devices import DEVICE_CHOICES
from napari_srgan.engine.file_upscale import UpscaleSettings, upscale_to_zarr
from napari_srgan.engine.geometry import upscaled_placement
from napari_srgan.engine.lazy import upscale_lazy
from napari_srgan.engine.provenance import provenance
from napari_srgan.engine.tiling import Cancelled
from napari_srgan.engine.upscale import ImageLayout, check_image, upscale
from napari_srgan.io.images import PROVENANCE_KEY
from napari_srgan.io.zarr_files import is_zarr
from napari_srgan.models.files import ModelFileError, load_model, read_metadata
from napari_srgan.models.registry import available_models, resolve_model
from napari_srgan.plugin.background import BackgroundJob, run_job
from napari_srgan.plugin.model_list import follow_model_list
from napari_srgan.plugin.reader import read_zarr_layer
from napari_srgan.plugin.writer import length_unit

if TYPE_CHECKING:
    from napari.layers import Image


def model_choices(_widget=None) -> list[str]:
    return list(available_models())


def output_layer_options(layer: Image, metadata: dict) -> dict:
    """Name, placement and display settings for the upscaled copy of ``layer``; the factor is
    the model's, from its provenance record ``metadata``."""
    spatial = [layer.ndim - 2, layer.ndim - 1]
    factor = int(metadata["scale"])
    scale, translate = upscaled_placement(layer.scale, layer.translate, spatial, factor=factor)
    options = {
        "name": f"{layer.name} x{factor}",
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


#: Result modes: computed into memory, lazily as the user browses, or streamed into OME-Zarr.
RESULT_MODES = ("auto", "in memory", "lazy (dask)", "zarr file")


def is_lazy(data) -> bool:
    """Data napari reads lazily (dask, zarr...): anything that is not an in-memory numpy array."""
    return not isinstance(data, np.ndarray)


class UpscaleWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self.image = create_widget(annotation="napari.layers.Image", label="Image")
        self.model = ComboBox(label="Model", choices=model_choices)
        self.tile = SpinBox(label="Tile", value=0, min=0, max=4096, step=8)
        self.tile.tooltip = "Tile size in input pixels; 0 picks the largest that fits in memory"
        self.device = ComboBox(label="Device", choices=DEVICE_CHOICES, value="auto")
        self.result_mode = ComboBox(label="Result", choices=RESULT_MODES, value="auto")
        self.result_mode.tooltip = (
            "auto: in memory when it fits; lazily (planes computed as you browse) for dask/zarr "
            "layers and big stacks; big single images need a zarr file"
        )
        self.zarr_path = FileEdit(label="Zarr file", mode="w", filter="*.zarr", value="")
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
                self.result_mode,
                self.zarr_path,
                self.run_button,
                self.cancel_button,
                self.status,
            ]
        )
        #: Results bigger than this (bytes) are not computed into memory in "auto" mode.
        self.memory_limit = psutil.virtual_memory().available // 4
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

    def _mode(self, layer: Image, layout: ImageLayout, scale: int) -> str:
        """The result mode to use; raises ValueError when none fits."""
        mode = self.result_mode.value
        if mode == "auto":
            output_bytes = math.prod(layout.output_shape(scale)) * np.dtype(layer.dtype).itemsize
            big = output_bytes > self.memory_limit
            if big and layout.plane_count == 1:
                mode = "zarr file" if self._zarr_target() else ""
                if not mode:
                    raise ValueError(
                        f"the result ({output_bytes / 2**30:.1f} GiB) is too big for memory: "
                        "choose a zarr file to write it to"
                    )
            elif big or is_lazy(layer.data):
                mode = "lazy (dask)"
            else:
                mode = "in memory"
        if mode == "zarr file" and not self._zarr_target():
            raise ValueError("choose where to write the zarr file (a path ending in .zarr)")
        return mode

    def _zarr_target(self) -> Path | None:
        path = Path(self.zarr_path.value) if str(self.zarr_path.value) not in ("", ".") else None
        return path if path is not None and is_zarr(path) else None

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
            model_path = resolve_model(self.model.value)
            _config, card = read_metadata(model_path)
            mode = self._mode(layer, layout, card.scale)
        except (ValueError, ModelFileError) as error:
            show_error(f"napari-srgan: {error}")
            return
        if mode == "lazy (dask)":
            self._add_lazy(layer, model_path)
            return
        tile, device, target = self.tile.value or None, self.device.value, self._zarr_target()
        self._set_running(True)
        self._progress = progress(total=0, desc=f"Upscaling {layer.name}")

        def work(job: BackgroundJob):
            model = load_model(model_path)
            if not model.card.trained:
                job.relay.report.emit(("warning", f"model {model.card.name} is untrained"))
            record = provenance(model, source=layer.name)

            def report(done: int, total: int) -> None:
                job.relay.report.emit(("progress", done, total))

            if mode == "zarr file":
                options = output_layer_options(layer, record)
                upscale_to_zarr(
                    layer.data,
                    model,
                    target,
                    layout=layout,
                    scale=options["scale"],
                    translate=options["translate"],
                    unit=length_unit(layer.units),
                    record={**record, "layer": {"name": options["name"]}},
                    settings=UpscaleSettings(tile=tile, device=device),
                    progress=report,
                    should_stop=job.stop_flag.is_set,
                )
                return layer, target, record
            result = upscale(
                np.asarray(layer.data),
                model,
                rgb=layout.rgb,
                tile=tile,
                device=device,
                progress=report,
                should_stop=job.stop_flag.is_set,
            )
            return layer, result, record

        self.job = run_job(
            work,
            on_report=self._on_report,
            on_returned=self._on_returned,
            on_errored=self._on_errored,
            on_finished=lambda: self._set_running(False),
            owner=self.native,
        )

    def _add_lazy(self, layer: Image, model_path: Path) -> None:
        """A dask-backed result: nothing is computed until napari shows a plane."""
        model = load_model(model_path)
        result = upscale_lazy(
            layer.data,
            model_path,
            rgb=layer.rgb,
            tile=self.tile.value or None,
            device=self.device.value,
        )
        self._viewer.add_image(
            result, **output_layer_options(layer, provenance(model, source=layer.name))
        )
        self.status.value = f"lazy: {layer.name} x{model.scale} (computed as you browse)"

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
        if isinstance(result, Path):  # written to OME-Zarr: open it lazily, as a pyramid
            [(data, options, _)] = read_zarr_layer(str(result))
            options.pop("multiscale", None)
            display = output_layer_options(layer, metadata)
            self._viewer.add_image(data, **{**display, **options, "name": display["name"]})
        else:
            self._viewer.add_image(result, **output_layer_options(layer, metadata))
        self.status.value = f"done: {layer.name} x{metadata['scale']}"

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
