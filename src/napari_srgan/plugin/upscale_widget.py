"""The "Upscale" dock widget: picks a layer and a model, runs the core engine in a thread."""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import napari
import numpy as np
import psutil
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton, create_widget
from napari.utils.notifications import show_error, show_info, show_warning
from napari.utils.transforms import CompositeAffine
from qtpy.QtWidgets import QFileDialog, QMessageBox
from superqt import QCollapsible

from napari_srgan.engine.devices import MIN_AUTO_TILE, available_devices
from napari_srgan.engine.file_upscale import UpscaleSettings, upscale_to_zarr
from napari_srgan.engine.geometry import upscaled_placement
from napari_srgan.engine.provenance import provenance
from napari_srgan.engine.tiling import Cancelled
from napari_srgan.engine.torch_safety import guard_triton
from napari_srgan.engine.upscale import (
    ImageLayout,
    blending_notice,
    blends_tiles,
    check_image,
    colour_range,
    upscale,
)
from napari_srgan.io.disk_space import SKIP_SPACE_CHECK_ENV, NotEnoughSpaceError
from napari_srgan.io.images import PROVENANCE_KEY, check_fits_in_memory
from napari_srgan.io.zarr_files import is_zarr, stores_read_by
from napari_srgan.messages import shown
from napari_srgan.models.interface import ModelCard, SRModel
from napari_srgan.models.normalization import IntensityRange
from napari_srgan.models.registry import (
    ModelFileError,
    add_model,
    available_models,
    default_model,
    load_model,
    read_card,
    resolve_model,
)
from napari_srgan.plugin.background import BackgroundJob, busy, run_job
from napari_srgan.plugin.controls import (
    AutoSpinBox,
    DockProgress,
    compact_combo,
    help_link,
    section,
    show_status,
    text_line,
)
from napari_srgan.plugin.model_list import follow_model_list, model_list
from napari_srgan.plugin.reader import read_zarr_layer
from napari_srgan.plugin.writer import (
    PlanesNotComputed,
    in_one_length_unit,
    save_image_layer,
    show_save_warnings,
)

if TYPE_CHECKING:
    from napari.layers import Image

#: Result modes: computed into memory, plane by plane as the user browses, or into OME-Zarr.
RESULT_MODES = ("auto", "in memory", "lazy (as you browse)", "zarr file")
LAZY = RESULT_MODES[2]
#: What a model's degradation means for the images it suits, in a user's words.
TRAINED_ON = {
    "bicubic": "for clean photos and stains",
    "crappifier": "for noisy, dim microscopy (also denoises)",
    "paired": "learnt from real low/high-resolution pairs",
}
#: Layer metadata key marking layers this plugin made as previews (not training data).
PREVIEW_KEY = "napari_srgan_preview"


def model_choices(_widget=None) -> list[str]:
    return list(available_models())


def input_level(layer: Image):
    """The array to upscale: a multiscale layer's full-resolution level, else the data; a
    lazy result's planes are computed as they are read (napari's reads show them as zeros)."""
    data = layer.data[0] if layer.multiscale else layer.data
    return ComputedPlanes(data) if isinstance(data, PlanesOnDemand) else data


def output_layer_options(layer: Image, metadata: dict, card: ModelCard, model_name: str) -> dict:
    """Name, placement and display settings for the copy of ``layer`` upscaled by the model
    listed as ``model_name``."""
    spatial = [layer.ndim - 2, layer.ndim - 1]
    rotation_and_shear = CompositeAffine(rotate=layer.rotate, shear=layer.shear, ndim=layer.ndim)
    scale, translate = upscaled_placement(
        layer.scale,
        layer.translate,
        spatial,
        factor=card.scale,
        linear=rotation_and_shear.linear_matrix,
    )
    options = {
        "name": f"{layer.name} x{card.scale} {model_name}",
        "scale": scale,
        "translate": translate,
        "rotate": layer.rotate,
        "shear": layer.shear,
        "affine": layer.affine.affine_matrix,
        "rgb": layer.rgb,
        "metadata": {**layer.metadata, PROVENANCE_KEY: metadata},
        "blending": layer.blending,
        "opacity": layer.opacity,
        "units": layer.units,
        "axis_labels": layer.axis_labels,
        "contrast_limits": layer.contrast_limits,
    }
    if not layer.rgb:
        options.update(colormap=layer.colormap, gamma=layer.gamma)
    return options


def choose_model_file(parent) -> str | None:
    """Ask for a model file or package (tests replace this)."""
    path, _ = QFileDialog.getOpenFileName(
        parent,
        "Add a super-resolution model",
        "",
        "Model files (*.pth *.pt *.safetensors *.ckpt *.zip);;All files (*)",
    )
    return path or None


def choose_save_path(parent, name: str) -> str | None:
    """Ask where to save the result layer ``name`` (tests replace this)."""
    path, _ = QFileDialog.getSaveFileName(
        parent,
        f"Save {name}",
        re.sub(r'[\\/:*?"<>|]', "_", name) + ".ome.tif",
        "OME-TIFF (*.ome.tif *.ome.tiff *.tif *.tiff)",
    )
    return path or None


def ask(parent, question: str) -> bool:
    """Ask the user a yes/no question (tests replace this)."""
    answer = QMessageBox.question(parent, "napari-srgan", question)
    return answer == QMessageBox.StandardButton.Yes


class PlanesOnDemand:
    """A stack's upscaled result that napari can show before it exists: a plane is computed in
    the background (with progress and Cancel) the first time napari asks for it, and reads as
    zeros until then. Converting the whole array (saving it) computes every plane first, except
    on the GUI thread: that would freeze napari for as long as the stack takes."""

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype,
        rgb: bool,
        request: Callable[[list[tuple[int, ...]]], None],
        compute_now: Callable[[list[tuple[int, ...]]], None],
    ) -> None:
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self.leading = self.ndim - (3 if rgb else 2)
        self.planes: dict[tuple[int, ...], np.ndarray] = {}
        self._request, self._compute_now = request, compute_now
        #: True while napari reads from this array (a refresh then would re-enter its slicing).
        self.slicing = False

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _wanted(self, key: tuple) -> tuple[list[range | int], tuple]:
        if Ellipsis in key:
            at = key.index(Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        lead = [
            range(n)[k] if isinstance(k, slice) else int(k)
            for k, n in zip(key[: self.leading], self.shape, strict=False)
        ]
        return lead, key[self.leading :]

    def computed(self, key) -> np.ndarray:
        """``self[key]`` with the planes it reads computed first, in this thread."""
        lead, _ = self._wanted(key if isinstance(key, tuple) else (key,))
        missing = [plane for plane in _planes(lead)[1] if plane not in self.planes]
        if missing:
            self._compute_now(missing)
        return self[key]

    def __getitem__(self, key) -> np.ndarray:
        lead, rest = self._wanted(key if isinstance(key, tuple) else (key,))
        axes, wanted = _planes(lead)
        missing = [plane for plane in wanted if plane not in self.planes]
        if missing:
            self.slicing = True
            try:
                self._request(missing)
            finally:
                self.slicing = False
        plane_shape = self.shape[self.leading :]
        stack = np.zeros((len(wanted), *plane_shape), self.dtype)
        for index, plane in enumerate(wanted):
            if plane in self.planes:
                stack[index] = self.planes[plane]
        stack = stack.reshape(*[len(a) for a in axes], *plane_shape)[..., *rest]
        squeeze = tuple(i for i, k in enumerate(lead) if not isinstance(k, range))
        return stack.squeeze(axis=squeeze) if squeeze else stack

    def missing_planes(self) -> list[tuple[int, ...]]:
        """The planes not computed yet."""
        return [p for p in _planes(self._wanted(())[0])[1] if p not in self.planes]

    def _refuse_on_gui_thread(self) -> None:
        missing = len(self.missing_planes())
        if missing and threading.current_thread() is threading.main_thread():
            total = math.prod(self.shape[: self.leading])
            raise PlanesNotComputed(
                f"{missing} of the {total} planes of this lazy result are not computed yet, and "
                "computing them here would freeze napari: save it with the Upscale widget's "
                "Save result… button (in the background, with progress and Cancel)"
            )

    @property
    def nbytes(self) -> int:
        """The whole result's bytes. tifffile (napari's own .tif writer) reads this before it
        opens, and so empties, the file it writes: refused here, a file the user chose to
        replace keeps its contents."""
        self._refuse_on_gui_thread()
        return self.size * self.dtype.itemsize

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        self._refuse_on_gui_thread()
        return np.asarray(self.computed(...), dtype=dtype)


def _planes(lead) -> tuple[list, list[tuple[int, ...]]]:
    """The indices ``lead`` (leading-axis keys of :meth:`PlanesOnDemand._wanted`) selects on
    each leading axis, and the planes they make."""
    axes = [k if isinstance(k, range) else [k] for k in lead]
    return axes, [tuple(int(i) for i in plane) for plane in itertools.product(*axes)]


class ComputedPlanes:
    """A lazy result as the input of another job: every read computes the planes it needs
    first (in the reading thread). Read as napari reads it, a plane not viewed yet was upscaled
    as a black plane."""

    def __init__(self, planes: PlanesOnDemand) -> None:
        self.planes = planes
        self.shape, self.dtype, self.ndim = planes.shape, planes.dtype, planes.ndim

    def __getitem__(self, key) -> np.ndarray:
        return self.planes.computed(key)


class LazyResult:
    """One lazy result layer: its planes, the planes napari asked for that are not computed yet,
    and how to compute them (the model stays loaded while the layer exists)."""

    def __init__(
        self,
        data,
        layout: ImageLayout,
        model: SRModel,
        *,
        intensity: IntensityRange,
        settings: dict,
        on_request: Callable[[], None],
    ) -> None:
        self.data, self.layout, self.model = data, layout, model
        self.intensity, self.settings, self.on_request = intensity, settings, on_request
        self.queue: list[tuple[int, ...]] = []
        #: The last job that computed this result's planes (stopped when the layer is deleted).
        self.job: BackgroundJob | None = None
        #: Planes whose computation was cancelled: asked for again only after another plane.
        self.cancelled: set[tuple[int, ...]] = set()
        self.layer: Image | None = None
        self.array = PlanesOnDemand(
            layout.output_shape(model.scale),
            intensity.dtype,
            layout.rgb,
            self.request,
            lambda planes: self.compute(planes, None),
        )

    def request(self, planes: list[tuple[int, ...]]) -> None:
        if not set(planes) <= self.cancelled:
            self.cancelled.clear()
        new = [p for p in planes if p not in self.queue and p not in self.cancelled]
        if new:
            self.queue.extend(new)
            self.on_request()

    def compute(self, planes: list[tuple[int, ...]], job: BackgroundJob | None) -> None:
        """Upscale ``planes`` with one intensity range for the whole stack (no jumps between
        planes); reports tiles over all of them and each finished plane."""
        for index, plane in enumerate(planes):
            if plane in self.array.planes:
                continue

            def report(done: int, total: int, before: int = index) -> None:
                if job is not None:
                    job.report(("progress", before * total + done, len(planes) * total))

            self.array.planes[plane] = upscale(
                self.data[plane],
                self.model,
                rgb=self.layout.rgb,
                intensity=self.intensity,
                progress=report,
                should_stop=None if job is None else job.stop_flag.is_set,
                **self.settings,
            )
            if job is not None:
                job.report(("plane", plane))

    def refresh(self) -> None:
        """Show the planes computed so far (not from inside napari's own slicing)."""
        if self.layer is not None and not self.array.slicing:
            self.layer.refresh()


class UpscaleWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        guard_triton()  # the viewer's canvas exists now; model code may import triton
        self._viewer = viewer
        self.image = create_widget(annotation="napari.layers.Image", label="Image")
        self.image.tooltip = (
            "The image layer to enlarge. Grey or colour (RGB), 8/16-bit or floating point; "
            "stacks (Z, time) are done plane by plane. Big multiscale images use their "
            "full-resolution level."
        )
        self.model = compact_combo(ComboBox(label="Model", choices=model_choices))
        self.model.tooltip = (
            "The trained network that adds the fine detail. srresnet-rgb-x4: photos and colour "
            "images with little noise. srresnet-em-grey-x4: noisy grey microscopy (it also "
            "removes noise). Models you train with the Train widget appear here too."
        )
        self.info = text_line("What the selected model was trained for")
        self.add_button = PushButton(text="Add model file…")
        self.add_button.tooltip = (
            "Use a model from elsewhere: a Real-ESRGAN, SwinIR, HAT... weight file (.pth, "
            ".safetensors) or a BioImage Model Zoo package. It is checked (no code in the file "
            "is ever run), copied to your model folder and listed here."
        )
        self.tile = AutoSpinBox(label="Tile size", smallest=40, largest=4096, step=8)
        self.tile.tooltip = (
            "Big images are processed in square pieces (tiles) of this many input pixels, each "
            "read with an overlap so that no seams appear. auto: the largest piece that fits in "
            "the memory limit (fastest). Smaller tiles need less memory but take longer; the "
            "smallest offered is the model's overlap."
        )
        self.memory_limit = AutoSpinBox(
            label="Memory limit (MB)", smallest=256, largest=1 << 20, step=256
        )
        self.memory_limit.tooltip = (
            "Memory the computation may use, which sets the automatic tile size. auto: a "
            "quarter of the free memory, at most 2 GB, on the CPU; half the free memory of a "
            "graphics card."
        )
        self.ensemble = CheckBox(label="Self-ensemble (8x slower)", value=False)
        self.ensemble.tooltip = (
            "Upscale each tile 8 times, flipped and rotated, and average the results: slightly "
            "cleaner and sharper, 8 times the time."
        )
        self.exact = CheckBox(label="Exact tiling (slower)", value=False)
        self.exact.tooltip = (
            "Overlap tiles by everything a result pixel can depend on, so the tiled result "
            "equals a one-piece result to the last bit. Off: a measured, smaller overlap whose "
            "difference is below what an 8-bit image can show."
        )
        self.device = ComboBox(label="Device", choices=available_devices(), value="auto")
        self.device.tooltip = (
            "Where the computation runs: auto uses a graphics card (GPU) when there is one, "
            "otherwise the processor (CPU). Only devices this computer has are listed."
        )
        self.result_mode = ComboBox(label="Result", choices=RESULT_MODES, value="auto")
        self.result_mode.tooltip = (
            "in memory: computed now and kept in RAM. lazy: each plane of a stack is computed "
            "when you first look at it. zarr file: written to disk (OME-Zarr, for results larger "
            "than memory) and opened from there. auto: in memory when it fits, lazy for big "
            "stacks; a big single image asks for a zarr file."
        )
        self.zarr_path = FileEdit(label="Zarr file", mode="w", filter="*.zarr", value="")
        self.zarr_path.tooltip = "Where to write the result: a folder name ending in .zarr"
        self.run_button = PushButton(text="Upscale")
        self.run_button.tooltip = (
            "Compute the enlarged image. It appears as a new layer exactly on top of the input."
        )
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.cancel_button.tooltip = "Stop the running computation; no partial layer is added"
        self.save_button = PushButton(text="Save result…", enabled=False)
        self.save_button.tooltip = (
            "Save a lazy result (the selected layer, else the newest) as OME-TIFF: its planes "
            "not computed yet are computed first, in the background with progress and Cancel. "
            "napari's File > Save would freeze until they were done."
        )
        buttons = Container(
            layout="horizontal",
            widgets=[self.run_button, self.cancel_button, self.save_button],
            labels=False,
        )
        buttons.margins = (0, 0, 0, 0)
        self.progress = DockProgress("Progress of the running computation (tiles done / all)")
        self.status = text_line(
            "What happened last; full messages also go to napari's notifications"
        )
        self.extend(
            [
                section("Input and model"),
                self.image,
                self.model,
                self.info,
                self.add_button,
                buttons,
                self.progress.bar,
                self.status,
                help_link(),
            ]
        )
        advanced = Container(
            widgets=[
                self.tile,
                self.memory_limit,
                self.device,
                self.ensemble,
                self.exact,
                self.result_mode,
                self.zarr_path,
            ]
        )
        advanced.margins = (0, 0, 0, 0)
        self.advanced = QCollapsible("Advanced settings", expandedIcon="▾", collapsedIcon="▸")
        self.advanced.setToolTip("Tiles, memory, device, quality and where the result goes")
        self.advanced.addWidget(advanced.native)
        self.native.layout().insertWidget(5, self.advanced)
        self.native.layout().addStretch(1)  # spare height goes below the form, not between
        #: Results bigger than this (bytes) are not computed into memory in "auto" mode.
        self.in_memory_limit = psutil.virtual_memory().available // 4
        self.job: BackgroundJob | None = None
        self.lazy_results: list[LazyResult] = []
        viewer.layers.events.removed.connect(self._forget_deleted_result)
        self.model.changed.connect(self._show_model_info)
        self.image.changed.connect(self._choose_model_for_layer)
        self.result_mode.changed.connect(self._show_zarr_field)
        self.run_button.changed.connect(self.start)
        self.add_button.changed.connect(self.add_model_file)
        self.cancel_button.changed.connect(self.cancel)
        self.save_button.changed.connect(self.save_result)
        follow_model_list(self, self._show_model_info)
        self.progress.hide()
        self._show_zarr_field()
        self._choose_model_for_layer()
        self._show_model_info()

    # --- the form ---------------------------------------------------------------------------

    def _card(self) -> ModelCard | None:
        try:
            return read_card(self.model.value) if self.model.value else None
        except ModelFileError:
            return None

    def _choose_model_for_layer(self, *_args) -> None:
        """Grey layers get the grey model, RGB layers the RGB one, unless the chosen model fits."""
        layer = self.image.value
        card = self._card()
        if layer is None or (card is not None and card.in_channels == (3 if layer.rgb else 1)):
            return
        default = default_model(bool(layer.rgb))
        if default in self.model.choices:
            self.model.value = default
        self._show_model_info()

    def _show_model_info(self, *_args) -> None:
        if not self.model.value:
            self.info.value = "no model installed"
            return
        try:
            card = read_card(self.model.value)
        except ModelFileError as error:
            show_status(self.info, f"unreadable: {error}")
            return
        self.tile.set_smallest(minimum_tile_size_for(card))
        self.run_button.text = f"Upscale {card.scale}x"
        kind = "RGB" if card.in_channels == 3 else "grey"
        trained_on = TRAINED_ON.get(card.degradation, f"{card.degradation} degradation")
        if card.source == "native":
            lines = [f"{kind}, {card.scale}x, {card.intended_use or trained_on}"]
        else:  # converted or bioimage.io: say what it is and under which licence
            lines = [f"{kind}, {card.scale}x, {card.architecture} community model"]
            lines.append(f"licence: {card.license}")
        if not card.trained:
            lines.append("UNTRAINED (random weights)")
        if blends_tiles(card):
            lines.append("not exact when tiled: tiles are blended")
        layer = self.image.value
        if layer is not None and card.in_channels != (3 if layer.rgb else 1):
            lines.append(
                f"⚠ made for {kind} images, this layer is {'RGB' if layer.rgb else 'grey'}: "
                + (
                    "each colour is upscaled as a grey image"
                    if layer.rgb
                    else "the grey image is fed as R=G=B"
                )
            )
        show_status(self.info, "; ".join(lines))

    def _show_zarr_field(self, *_args) -> None:
        self.zarr_path.visible = self.result_mode.value == "zarr file"

    def _mode(self, data, layout: ImageLayout, scale: int) -> str:
        """The result mode to use; raises ValueError when none fits."""
        mode = self.result_mode.value
        if mode == "auto":
            output_bytes = math.prod(layout.output_shape(scale)) * np.dtype(data.dtype).itemsize
            big = output_bytes > self.in_memory_limit
            if big and layout.plane_count == 1:
                self.result_mode.value = "zarr file"
                self.advanced.expand(animate=False)
                if not self._zarr_target():
                    raise ValueError(
                        f"the result ({output_bytes / 2**30:.1f} GiB) is too big for memory: "
                        "choose a zarr file to write it to"
                    )
                mode = "zarr file"
            elif layout.plane_count > 1 and (big or not isinstance(data, np.ndarray)):
                mode = LAZY
            else:
                mode = "in memory"
        if mode == "zarr file" and not self._zarr_target():
            self.advanced.expand(animate=False)
            raise ValueError("choose where to write the zarr file (a path ending in .zarr)")
        if mode == "zarr file":
            self._refuse_open_store(self._zarr_target())
        return mode

    def _refuse_open_store(self, target: Path) -> None:
        """Replacing a store that a layer reads lazily would change or break that layer."""
        target = target.resolve()
        for layer in self._viewer.layers:
            source = layer.source.path
            stores = stores_read_by(layer.data) | ({Path(source).resolve()} if source else set())
            if target in stores:
                raise ValueError(
                    f"{shown(target)} is read by the layer {layer.name!r}: choose another zarr file"
                )

    def _settings(self) -> UpscaleSettings:
        memory = self.memory_limit.chosen
        return UpscaleSettings(
            tile=self.tile.chosen,
            device=self.device.value,
            memory_limit=None if memory is None else memory << 20,
            ensemble=self.ensemble.value,
            exact=self.exact.value,
        )

    def _zarr_target(self) -> Path | None:
        path = Path(self.zarr_path.value) if str(self.zarr_path.value) not in ("", ".") else None
        return path if path is not None and is_zarr(path) else None

    # --- running ------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        show_status(self.status, f"⚠ {message}")
        show_error(f"napari-srgan: {message}")

    def _busy(self) -> bool:
        """A job runs (the buttons are disabled then, but a script can still call in)."""
        if busy(self.job):
            self._fail("a computation is running: wait for it or press Cancel")
            return True
        return False

    def start(self, *_args) -> None:
        if self._busy():
            return
        show_status(self.status, "")
        self.progress.hide()
        layer = self.image.value
        if layer is None or not isinstance(layer, napari.layers.Image):
            self._fail("choose an image layer to upscale")
            return
        data = input_level(layer)
        try:
            layout = check_image(data, layer.rgb)
            model_path = resolve_model(self.model.value)
            card = read_card(model_path)
            mode = self._mode(data, layout, card.scale)
        except (ValueError, ModelFileError) as error:
            self._fail(str(error))
            return
        target = self._zarr_target() if mode == "zarr file" else None
        replace = target is not None and target.exists()
        if replace and not ask(
            self.native, f"{shown(target)} exists. Replace it with the new result?"
        ):
            show_status(self.status, "not started: the zarr file exists (choose another name)")
            return
        if mode == LAZY:
            self._start_lazy(layer, data, layout, model_path, card)
            return
        settings = self._settings()
        try:  # a placement near float's limits cannot be upscaled
            options = output_layer_options(layer, {}, card, self.model.value)
        except ValueError as error:
            self._fail(str(error))
            return
        file_scale, file_translate, unit = in_one_length_unit(
            options["scale"], options["translate"], layer.units
        )
        source = layer.name
        self._set_running(True)
        self.progress.busy("loading model…")

        def work(job: BackgroundJob):
            model = load_model(model_path)

            def before_work() -> None:  # the output is valid (and fits): warn, then compute
                if not model.card.trained:
                    job.report(("warning", f"model {model.card.name} is untrained"))
                notice = blending_notice(model.card, settings.exact)
                if notice is not None:
                    job.report(("warning", notice))
                job.report(("busy", "upscaling the first tile…"))

            record = provenance(model, source=source)
            options["metadata"][PROVENANCE_KEY] = record

            def report(done: int, total: int) -> None:
                job.report(("progress", done, total))

            if mode == "zarr file":
                try:
                    upscale_to_zarr(
                        data,
                        model,
                        target,
                        layout=layout,
                        scale=file_scale,
                        translate=file_translate,
                        unit=unit,
                        record={**record, "layer": {"name": options["name"]}},
                        settings=settings,
                        progress=report,
                        should_stop=job.stop_flag.is_set,
                        before_work=before_work,
                        overwrite=replace,
                    )
                except NotEnoughSpaceError as error:  # no option here: an environment variable
                    raise NotEnoughSpaceError(
                        f"{error} (set {SKIP_SPACE_CHECK_ENV}=1 if the disk reports its free "
                        "space wrongly)"
                    ) from None
                return target, options
            before_work()
            result = upscale(
                data,
                model,
                rgb=layout.rgb,
                progress=report,
                should_stop=job.stop_flag.is_set,
                **settings.engine_options(),
            )
            return result, options

        self.job = run_job(
            work,
            on_report=self._on_report,
            on_returned=self._on_returned,
            on_errored=self._on_errored,
            on_finished=lambda: self._set_running(False),
            owner=self.native,
        )

    def _start_lazy(
        self, layer: Image, data, layout: ImageLayout, model_path: Path, card: ModelCard
    ) -> None:
        """Load the model and measure the stack's intensity range in the background (the
        percentiles of a big stack read a sample of every plane: minutes from a slow disk), then
        add the result layer whose planes are computed as the user browses."""
        try:  # a placement near float's limits cannot be upscaled
            options = output_layer_options(layer, {}, card, self.model.value)
        except ValueError as error:
            self._fail(str(error))
            return
        settings, source = self._settings(), layer.name
        prepared: list[tuple[SRModel, IntensityRange]] = []
        self._set_running(True)
        self.progress.busy("loading model…")

        def work(job: BackgroundJob) -> tuple[SRModel, IntensityRange]:
            model = load_model(model_path)
            job.report(("busy", "measuring the intensity range…"))
            intensity = colour_range(
                data,
                layout,
                model.card.normalization,
                progress=lambda done, total: job.report(("range", done, total)),
                should_stop=job.stop_flag.is_set,
            )
            options["metadata"][PROVENANCE_KEY] = provenance(model, source=source)
            return model, intensity

        def finished() -> None:
            self._set_running(False)
            if prepared:
                [(model, intensity)] = prepared
                self._add_lazy(data, layout, model, intensity, settings, options)

        self.job = run_job(
            work,
            on_report=self._on_report,
            on_returned=prepared.append,
            on_errored=self._on_errored,
            on_finished=finished,
            owner=self.native,
        )

    def _add_lazy(
        self,
        data,
        layout: ImageLayout,
        model: SRModel,
        intensity: IntensityRange,
        settings: UpscaleSettings,
        options: dict,
    ) -> None:
        """A result layer whose planes are computed in the background as the user browses."""
        notice = blending_notice(model.card, settings.exact)
        if notice is not None:
            show_warning(f"napari-srgan: {notice}")
        lazy = LazyResult(
            data,
            layout,
            model,
            intensity=intensity,
            settings=settings.engine_options(),
            on_request=self._compute_planes,
        )
        lazy.layer = self._viewer.add_image(lazy.array, **options)
        self.lazy_results.append(lazy)
        self.save_button.enabled = not busy(self.job)
        show_status(
            self.status, f"lazy: {options['name']}; each plane is computed when you first view it"
        )
        self._compute_planes()

    def _forget_deleted_result(self, *_args) -> None:
        """A deleted lazy result frees its model and its input (nothing else refers to them)
        and stops being computed."""
        layers = self._viewer.layers
        for lazy in self.lazy_results:
            if lazy.layer not in layers and lazy.job is not None:
                lazy.job.stop()
        self.lazy_results = [lazy for lazy in self.lazy_results if lazy.layer in layers]
        if not self.lazy_results:
            self.save_button.enabled = False

    def _compute_planes(self) -> None:
        """Start computing the planes napari asked for, one lazy result at a time."""
        if busy(self.job):
            return  # the end of the running job calls this again
        lazy = next((lazy for lazy in self.lazy_results if lazy.queue), None)
        if lazy is None:
            return
        planes = list(lazy.queue)
        self._set_running(True)
        self.progress.busy(f"upscaling {len(planes)} plane(s)…")

        def on_view() -> bool:
            return lazy in self.lazy_results

        def returned(_) -> None:
            if on_view():
                show_status(self.status, f"done: {shown(lazy.layer.name)} (as viewed)")

        def errored(error: Exception) -> None:
            lazy.cancelled.update(lazy.queue)
            lazy.queue = []
            if not on_view():
                show_status(self.status, f"stopped: {shown(lazy.layer.name)} was deleted")
            elif isinstance(error, Cancelled):  # the layer stays: "no layer added" is wrong here
                message = f"cancelled: planes of {shown(lazy.layer.name)} not computed stay blank"
                show_status(self.status, f"{message} until viewed again")
                show_info(f"napari-srgan: {message} until viewed again")
            else:
                self._on_errored(error)

        def finished() -> None:
            self._set_running(False)
            if on_view():
                lazy.queue = [plane for plane in lazy.queue if plane not in lazy.array.planes]
                lazy.refresh()
            self._compute_planes()

        self.job = lazy.job = run_job(
            lambda job: lazy.compute(planes, job),
            on_report=self._on_report,
            on_returned=returned,
            on_errored=errored,
            on_finished=finished,
            owner=self.native,
        )

    def save_result(self, *_args) -> None:
        """Save a lazy result (the selected layer, else the newest) as OME-TIFF, computing its
        planes not viewed yet first, in the background: napari calls a writer on the GUI thread
        and waits for it, so File > Save froze napari for as long as the stack took."""
        if self._busy():
            return
        active = self._viewer.layers.selection.active
        chosen = [lazy for lazy in self.lazy_results if lazy.layer is active]
        lazy = (chosen or self.lazy_results or [None])[-1]
        if lazy is None:
            self._fail("no lazy result to save: File > Save Selected Layers saves other layers")
            return
        name = lazy.layer.name
        path = choose_save_path(self.native, name)
        if not path:
            return
        _, meta, _ = lazy.layer.as_layer_data_tuple()
        missing = lazy.array.missing_planes()
        array = lazy.array
        plane_bytes = math.prod(array.shape[array.leading :]) * array.dtype.itemsize
        planes = math.prod(array.shape[: array.leading])
        try:  # the planes still to compute, and the file's copy of them all
            check_fits_in_memory(
                path, declared=(array.shape, (len(missing) + planes) * plane_bytes)
            )
        except ValueError as error:
            self._fail(f"cannot save {shown(name)}: {error}")
            return
        show_status(self.status, "")
        self._set_running(True)
        self.progress.busy(f"upscaling {len(missing)} plane(s) not viewed yet…")

        def work(job: BackgroundJob) -> tuple[Path, list[str]]:
            lazy.compute(missing, job)
            if job.stop_flag.is_set():  # stopped after the last plane: write nothing
                raise Cancelled
            job.report(("busy", f"writing {Path(path).name}…"))
            return save_image_layer(path, array, meta)

        def returned(value: tuple[Path, list[str]]) -> None:
            written, warnings = value
            show_save_warnings(warnings)
            show_status(self.status, f"saved: {shown(written)}")

        def errored(error: Exception) -> None:
            if lazy not in self.lazy_results:
                show_status(self.status, f"stopped: {shown(name)} was deleted; nothing saved")
            elif isinstance(error, Cancelled):
                message = f"cancelled: {shown(name)} not saved; the planes computed are kept"
                show_status(self.status, message)
                show_info(f"napari-srgan: {message}")
            else:
                self._fail(f"cannot save {shown(name)}: {error}")

        def finished() -> None:
            self._set_running(False)
            if lazy in self.lazy_results:
                lazy.queue = [plane for plane in lazy.queue if plane not in array.planes]
                lazy.refresh()
            self._compute_planes()

        self.job = lazy.job = run_job(
            work,
            on_report=self._on_report,
            on_returned=returned,
            on_errored=errored,
            on_finished=finished,
            owner=self.native,
        )

    def add_model_file(self, *_args) -> None:
        """Ask for a model file, convert it into the user model folder, then select it."""
        if self._busy():
            return
        path = choose_model_file(self.native)
        if not path:
            return
        guard_triton()  # spandrel imports torch modules that pull in triton
        show_status(self.status, "")
        self._set_running(True)
        self.progress.busy("checking the model file…")

        def added(saved: Path) -> None:
            model_list.changed.emit()
            self.model.value = saved.stem
            show_status(self.status, f"added model {shown(saved.stem)}")

        self.job = run_job(
            lambda _job: add_model(path),
            on_report=self._on_report,
            on_returned=added,
            on_errored=lambda error: self._fail(f"cannot add {shown(Path(path).name)}: {error}"),
            on_finished=lambda: self._set_running(False),
            owner=self.native,
        )

    def cancel(self, *_args) -> None:
        if self.job is not None:
            self.job.stop()

    def _on_report(self, report: tuple) -> None:
        kind = report[0]
        if kind == "progress":
            _, done, total = report
            self.progress.count(done, total, "tiles")
        elif kind == "range":
            _, done, total = report
            self.progress.count(done, total, "parts read (intensity range)")
        elif kind == "busy":
            self.progress.busy(report[1])
        elif kind == "plane":
            for lazy in self.lazy_results:
                lazy.refresh()
        elif kind == "warning":
            show_warning(f"napari-srgan: {report[1]}")

    def _on_returned(self, value) -> None:
        result, display = value
        if isinstance(result, Path):  # written to OME-Zarr: open it lazily, as a pyramid
            [(data, options, _)] = read_zarr_layer(str(result))
            # placed as the input (in the layer's units, which the file may have converted)
            self._viewer.add_image(data, **{**options, **display})
        else:
            self._viewer.add_image(result, **display)
        show_status(self.status, f"done: {display['name']}")

    def _on_errored(self, error: Exception) -> None:
        if isinstance(error, Cancelled):
            show_status(self.status, "cancelled: no layer added")
            show_info("napari-srgan: upscaling cancelled, no layer added")
        else:
            self._fail(f"failed: {error}")

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = self.add_button.enabled = not running
        self.cancel_button.enabled = running
        self.save_button.enabled = not running and bool(self.lazy_results)
        if not running:
            self.progress.hide()


def minimum_tile_size_for(card: ModelCard) -> int:
    """The smallest tile offered: as big as the model's overlap (a multiple of 8), since a
    smaller kept tile spends over 8/9 of its time on the overlap it reads around it."""
    return max(MIN_AUTO_TILE, math.ceil(card.halo / 8) * 8)
