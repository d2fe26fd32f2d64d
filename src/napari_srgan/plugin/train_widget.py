"""The "Train" dock widget: fine-tune a generator on image layers with a live loss/PSNR plot.

All training happens in the core (:func:`napari_srgan.training.job.run_training`) on a worker
thread; this widget only turns layers into a job and reports into a plot, a preview layer and a
progress bar.
"""

from __future__ import annotations

import time
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
)
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QMessageBox, QSizePolicy

from napari_srgan.engine.torch_safety import guard_triton
from napari_srgan.io.images import PROVENANCE_KEY
from napari_srgan.messages import shown
from napari_srgan.models.registry import DEFAULT_MODEL, ModelFileError, available_models, read_card
from napari_srgan.plugin.background import BackgroundJob, busy, run_job
from napari_srgan.plugin.controls import (
    DockProgress,
    compact_combo,
    help_link,
    section,
    show_status,
    text_line,
)
from napari_srgan.plugin.model_list import follow_model_list, model_list
from napari_srgan.plugin.upscale_widget import PREVIEW_KEY
from napari_srgan.training.degradations import Bicubic, Crappifier
from napari_srgan.training.job import (
    ResumeBaseError,
    TrainingJob,
    TrainingOutcome,
    run_training,
    user_model_path,
)
from napari_srgan.training.patches import TrainingImage
from napari_srgan.training.trainer import (
    CheckpointSaved,
    Notice,
    StepReport,
    TrainingConfig,
    TrainingEvent,
    ValidationReport,
)
from napari_srgan.training.validation import PREVIEW_PANELS, preview_corners

PREVIEW_LAYER = "srgan training preview"
#: Redraw the loss plot at most this often (seconds): drawing is slow next to a training step.
PLOT_INTERVAL = 0.5
#: The plot never gets shorter than this (px), however many widgets share the dock area.
PLOT_HEIGHT = 180


class TrainingPlot(FigureCanvasQTAgg):
    """Training loss per step (left axis) and validation PSNR against bicubic (right axis)."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(4, 2.6), layout="constrained")
        super().__init__(self.figure)
        self.setMinimumHeight(PLOT_HEIGHT)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip(
            "Blue: the training loss (lower is better). Orange: how close the model's output of "
            "the validation image is to the real high-resolution image, in dB (PSNR, higher is "
            "better), next to plain bicubic enlargement (grey dashes)."
        )
        self.loss_axes = self.figure.add_subplot(111)
        self.psnr_axes = self.loss_axes.twinx()
        self.clear()

    def clear(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.validation: list[tuple[int, float, float]] = []
        self._drawn_at = 0.0
        self.redraw()

    def add_step(self, report: StepReport) -> None:
        self.steps.append(report.step)
        self.losses.append(report.losses.get("generator", report.losses.get("pixel", np.nan)))
        if time.monotonic() - self._drawn_at > PLOT_INTERVAL:
            self.redraw()

    def add_validation(self, report: ValidationReport) -> None:
        self.validation.append((report.step, report.psnr, report.bicubic_psnr))
        self.redraw()

    def redraw(self) -> None:
        self._drawn_at = time.monotonic()
        self.loss_axes.clear()
        self.psnr_axes.clear()
        self.loss_axes.plot(self.steps, self.losses, color="tab:blue", linewidth=0.8)
        self.loss_axes.set_xlabel("training step", fontsize="small")
        self.loss_axes.set_ylabel("loss", color="tab:blue", fontsize="small")
        self.loss_axes.tick_params(labelsize="small")
        self.psnr_axes.tick_params(labelsize="small")
        if self.validation:
            steps, psnr, bicubic = zip(*self.validation, strict=True)
            self.psnr_axes.plot(steps, psnr, "o-", color="tab:orange", label="model", markersize=3)
            self.psnr_axes.plot(steps, bicubic, "--", color="grey", label="bicubic")
            self.psnr_axes.legend(loc="lower right", fontsize="small")
        self.psnr_axes.set_ylabel("validation PSNR (dB)", color="tab:orange", fontsize="small")
        self.psnr_axes.yaxis.set_label_position("right")
        self.draw_idle()


def saved_files(name: str) -> list[Path]:
    """The model and checkpoint files a run saving as ``name`` would write."""
    model = user_model_path(name)
    return [model, model.with_suffix(".ckpt")]


def free_name(name: str) -> str:
    """``name`` with the first suffix -2, -3... that no saved model or checkpoint uses."""
    taken = set(available_models())
    number = 2
    while f"{name}-{number}" in taken or any(p.exists() for p in saved_files(f"{name}-{number}")):
        number += 1
    return f"{name}-{number}"


def ask_replace(parent, name: str, proposal: str) -> str | None:
    """Ask what to do about an existing model ``name``: its name to replace it, ``proposal``
    to save under a free name, or None to cancel (tests replace this)."""
    box = QMessageBox(parent)
    box.setWindowTitle("napari-srgan")
    box.setText(f"A model named {name!r} exists already.")
    box.setInformativeText(f"Replace it, or save the new model as {proposal!r}?")
    replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
    rename = box.addButton(f"Save as {proposal}", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(rename)
    box.exec()
    clicked = box.clickedButton()
    return name if clicked is replace else proposal if clicked is rename else None


def trainable_models(_widget=None) -> list[str]:
    """Models to start from: every listed model whose card reads (native and added community
    models alike can be fine-tuned)."""
    names = []
    for name in available_models():
        try:
            read_card(name)
        except ModelFileError:
            continue
        names.append(name)
    return names


def is_training_data(layer) -> bool:
    """Image layers a user would train on: not this plugin's previews or upscaled results."""
    return (
        isinstance(layer, napari.layers.Image)
        and PREVIEW_KEY not in layer.metadata
        and PROVENANCE_KEY not in layer.metadata
    )


class TrainWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        guard_triton()  # the viewer's canvas exists now; training code may import triton
        self._viewer = viewer
        images = self._image_layers
        self.hr_layers = Select(label="HR layers", choices=images)
        self.hr_layers.native.setMaximumHeight(72)
        self.hr_layers.tooltip = (
            "High-resolution (HR) examples: sharp images of the kind you want the model to "
            "produce. Select one or more layers (Ctrl/Shift-click). Upscaled results and "
            "previews are not listed."
        )
        self.lr_layer = compact_combo(
            ComboBox(
                label="Paired LR",
                choices=lambda w: [("(simulate from HR)", None), *images(w)],
            )
        )
        self.lr_layer.tooltip = (
            "Optional: a real low-resolution (LR) recording of the same field as the HR layer, "
            "aligned and exactly 1/4 of its size. Without one, the LR is simulated from HR."
        )
        self.degradation = ComboBox(label="Simulate LR by", choices=["bicubic", "crappifier"])
        self.degradation.tooltip = (
            "How low-resolution inputs are simulated from your HR images. bicubic: plain "
            "shrinking (clean photos). crappifier: shrinking plus blur and camera noise (shot "
            "and read noise), like a fast, low-light microscope recording; the model then "
            "also learns to remove noise."
        )
        self.validation_layer = compact_combo(
            ComboBox(
                label="Validation",
                choices=lambda w: [("(part of the first HR layer)", None), *images(w)],
            )
        )
        self.validation_layer.tooltip = (
            "An HR image kept out of training to measure progress (the orange curve and the "
            "preview). Without one, the bottom rows of the first HR layer are held out."
        )
        self.validation_fraction = FloatSpinBox(
            label="Held-out fraction", value=0.2, min=0.02, max=0.5, step=0.02
        )
        self.validation_fraction.tooltip = (
            "Without a validation layer: the fraction of the first HR layer's rows (at the "
            "bottom) kept out of training for validation"
        )
        self.base_model = compact_combo(ComboBox(label="Start from", choices=trainable_models))
        self.base_model.tooltip = (
            "The model to fine-tune. Starting from a trained model needs far fewer steps than "
            "starting from scratch. Pick one made for the same kind of image (grey or RGB). "
            "An added community model (ESRGAN, SPAN...) is fine-tuned as its own architecture."
        )
        self.model_name = LineEdit(label="Save as", value="my-srgan")
        self.model_name.tooltip = (
            "Name of the new model. It is saved in your napari-srgan model folder and appears "
            "in the Upscale widget's model list. You are asked before a model is replaced."
        )
        self.steps = SpinBox(label="Content steps", value=1000, min=0, max=1_000_000, step=100)
        self.steps.tooltip = (
            "Training steps that teach the model to reproduce the HR pixels (content). Each "
            "step shows it one batch of patches; about 0.2 s per step on a laptop CPU."
        )
        self.adversarial_steps = SpinBox(
            label="Adversarial steps", value=0, min=0, max=1_000_000, step=100
        )
        self.adversarial_steps.tooltip = (
            "Optional SRGAN stage after the content steps: a second network (discriminator) "
            "pushes the output to look like real images, for sharper texture that may be "
            "invented. Slow on a CPU; 0 skips it."
        )
        self.patch_size = SpinBox(label="Patch size", value=64, min=16, max=512, step=4)
        self.patch_size.tooltip = "Side in HR pixels of the random square pieces trained on"
        self.batch_size = SpinBox(label="Batch size", value=8, min=1, max=256)
        self.batch_size.tooltip = "Patches per training step (more: smoother, slower steps)"
        self.learning_rate = FloatSpinBox(
            label="Learning rate", value=1e-4, min=1e-6, max=1e-2, step=1e-5
        )
        self.learning_rate.tooltip = (
            "How big each training update is; lower is safer when fine-tuning"
        )
        self.validate_every = SpinBox(label="Validate every", value=50, min=1, max=100_000)
        self.validate_every.tooltip = (
            "Steps between two validations (a point on the orange curve and a preview update)"
        )
        self.train_button = PushButton(text="Train")
        self.train_button.tooltip = "Start training a new model with these settings"
        self.resume_button = PushButton(text="Resume")
        self.resume_button.tooltip = "Continue the stopped run saved under this name"
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.stop_button.tooltip = "Stop after the current step; the model so far is saved"
        self.progress = DockProgress("Training steps done / all")
        self.status = text_line(
            "What happened last; full messages also go to napari's notifications"
        )
        form = Container(
            scrollable=True,
            widgets=[
                section("Training data"),
                self.hr_layers,
                self.lr_layer,
                self.degradation,
                self.validation_layer,
                section("Model"),
                self.base_model,
                self.model_name,
                self.steps,
                self.adversarial_steps,
                section("Advanced settings"),
                self.validation_fraction,
                self.patch_size,
                self.batch_size,
                self.learning_rate,
                self.validate_every,
            ],
        )
        buttons = Container(
            layout="horizontal",
            widgets=[self.train_button, self.resume_button, self.stop_button],
            labels=False,
        )
        buttons.margins = (0, 0, 0, 0)
        self.form = form
        self.extend([buttons, self.progress.bar, self.status])
        layout = self.native.layout()
        # the scroll area itself (magicgui would insert the form without it)
        layout.insertWidget(0, form.root_native_widget, 1)
        self.plot = TrainingPlot()
        layout.addWidget(self.plot, 1)
        layout.addWidget(help_link().native)
        self.progress.hide()
        QTimer.singleShot(0, self._claim_height)  # once napari has docked this widget
        self.train_button.changed.connect(lambda: self.start(resume=False))
        self.resume_button.changed.connect(lambda: self.start(resume=True))
        self.stop_button.changed.connect(self.stop)
        follow_model_list(self)
        if DEFAULT_MODEL in self.base_model.choices:
            self.base_model.value = DEFAULT_MODEL
        self.job: BackgroundJob | None = None
        self.outcome: TrainingOutcome | None = None
        self.preview_layer: napari.layers.Image | None = None
        self.preview_labels: napari.layers.Points | None = None
        self._placement: tuple[tuple[float, float], tuple[float, float]] = ((1, 1), (0, 0))

    def _claim_height(self) -> None:
        """Docked below other widgets (the Upscale widget), take the height they do not need,
        so the form and the plot are not squeezed into the smaller half of the dock area."""
        dock = self.native.parent()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
        window = dock.parentWidget() if dock is not None else None
        if not isinstance(window, QMainWindow) or dock.isFloating():
            return
        area = window.dockWidgetArea(dock)
        others = [
            other
            for other in window.findChildren(QDockWidget)
            if other is not dock
            and other.isVisible()
            and not other.isFloating()
            and window.dockWidgetArea(other) == area
        ]
        if others:
            needed = [other.minimumSizeHint().height() for other in others]
            window.resizeDocks([*others, dock], [*needed, 10_000], Qt.Orientation.Vertical)

    def reset_choices(self, *_args) -> None:
        super().reset_choices()
        self.form.reset_choices()

    def _image_layers(self, _widget=None) -> list[tuple[str, object]]:
        return [(layer.name, layer) for layer in self._viewer.layers if is_training_data(layer)]

    def _job(self, resume: bool, replace: bool = False) -> TrainingJob:
        """The core job for the current settings; raises ValueError with a message for the user."""
        layers = list(self.hr_layers.value)
        if not layers:
            raise ValueError("select at least one HR image layer")
        paired = self.lr_layer.value
        if paired is not None and len(layers) != 1:
            raise ValueError("a paired LR layer needs exactly one HR layer")
        validation = self.validation_layer.value
        for layer in [*layers, paired, validation]:  # a pyramid's data is a list of arrays
            if layer is not None and layer.multiscale:
                raise ValueError(f"{shown(layer.name)}: multiscale layers are not supported")
        images = [
            TrainingImage(
                layer.data,
                lr=paired.data if paired is not None else None,
                rgb=layer.rgb,
                name=layer.name,
            )
            for layer in layers
        ]
        output = user_model_path(self.model_name.value.strip())
        config = TrainingConfig(
            patch_size=self.patch_size.value,
            batch_size=self.batch_size.value,
            pretrain_steps=self.steps.value,
            adversarial_steps=self.adversarial_steps.value,
            learning_rate=self.learning_rate.value,
            adversarial_learning_rate=self.learning_rate.value / 2,
            validate_every=self.validate_every.value,
            checkpoint_every=100,
        )
        return TrainingJob(
            images=images,
            output=output,
            config=config,
            base_model=self.base_model.value,
            degradation=Crappifier() if self.degradation.value == "crappifier" else Bicubic(),
            validation=[(validation.data, validation.rgb)] if validation is not None else (),
            validation_fraction=self.validation_fraction.value,
            validation_crop_at="texture",
            checkpoint=output.with_suffix(".ckpt"),
            resume=resume,
            overwrite=replace,
            description=f"fine-tuned from {self.base_model.value} in napari on "
            f"{', '.join(layer.name for layer in layers)}",
        )

    def _fail(self, message: str) -> None:
        show_status(self.status, f"⚠ {message}")
        show_error(f"napari-srgan: {message}")

    def _name_to_save(self, resume: bool) -> bool | None:
        """Never replace a saved model silently: ask, offering a free name. Returns whether
        to replace existing files, or None when the user cancelled."""
        name = self.model_name.value.strip()
        try:
            files = saved_files(name)
        except ValueError:
            return False  # the job reports the bad name
        if resume or not any(path.exists() for path in files):
            return False
        chosen = ask_replace(self.native, name, free_name(name))
        if chosen is None:
            show_status(self.status, f"not started: a model named {shown(name)} exists")
            return None
        self.model_name.value = chosen
        return chosen == name

    def start(self, resume: bool = False) -> None:
        if busy(self.job):  # the buttons are disabled then, but a script can still call in
            self._fail("training is running: wait for it or press Stop")
            return
        show_status(self.status, "")
        replace = self._name_to_save(resume)
        if replace is None:
            return
        try:
            job = self._job(resume, replace)
        except ValueError as error:
            self._fail(str(error))
            return
        if resume and not job.checkpoint.is_file():
            self._fail(f"nothing to resume: no checkpoint {shown(job.checkpoint)}")
            return
        if not resume:
            self.plot.clear()
        self._placement = self._preview_placement(next(iter(self.hr_layers.value)))
        self._set_running(True)
        self.progress.busy("preparing patches and validation…")
        self.job = run_job(
            lambda handle: run_training(
                job, on_event=handle.report, should_stop=handle.stop_flag.is_set
            ),
            on_report=self._on_event,
            on_returned=self._on_returned,
            on_errored=self._on_errored,
            on_finished=lambda: self._set_running(False),
            owner=self.native,
        )

    def stop(self) -> None:
        if self.job is not None:
            self.job.stop()
            show_status(self.status, "stopping after this step (the model so far is saved)…")

    def _on_event(self, event: TrainingEvent) -> None:
        if isinstance(event, StepReport):
            self.plot.add_step(event)
            losses = ", ".join(f"{name} {value:.4g}" for name, value in event.losses.items())
            stage = "content" if event.stage == "pretrain" else event.stage
            show_status(self.status, f"{stage} step {event.step}: {losses}")
            self.progress.count(event.step, event.total_steps, "steps")
        elif isinstance(event, ValidationReport):
            self.plot.add_validation(event)
            self._show_preview(event)
        elif isinstance(event, Notice):
            show_warning(f"napari-srgan: {event.message}")
        elif isinstance(event, CheckpointSaved):
            show_status(self.status, f"checkpoint saved at step {event.step}")

    def _preview_placement(self, layer) -> tuple[tuple[float, float], tuple[float, float]]:
        """Scale and translate that put the preview right of every image layer, at the scale
        of ``layer`` (the first HR layer)."""
        scale = (float(layer.scale[-2]), float(layer.scale[-1]))
        right = max(
            (
                float(other.extent.world[1][-1])
                for other in self._viewer.layers
                if isinstance(other, napari.layers.Image) and PREVIEW_KEY not in other.metadata
            ),
            default=0.0,
        )
        return scale, (float(layer.translate[-2]), right + 16 * scale[1])

    def _show_preview(self, report: ValidationReport) -> None:
        """One preview layer (LR | bicubic | model | HR), refreshed in place and labelled."""
        preview = report.preview
        if preview is None:
            return
        name = f"{PREVIEW_LAYER} (step {report.step}, {report.psnr:.2f} dB)"
        top, left = preview_corners(preview.shape)[PREVIEW_PANELS.index("HR")]
        low, high = np.percentile(preview[top:, left:], [0.5, 99.5])
        limits = (float(low), float(high) if high > low else float(low) + 1e-3)
        scale, translate = self._placement
        layer = self.preview_layer
        selected = list(self._viewer.layers.selection)
        if layer is None or layer not in self._viewer.layers:
            self.preview_layer = self._viewer.add_image(
                preview,
                name=name,
                rgb=preview.ndim == 3,
                contrast_limits=limits,
                scale=scale,
                translate=translate,
                metadata={PREVIEW_KEY: True},
            )
        else:
            layer.data = preview
            layer.name = name
            layer.contrast_limits = limits
        self._label_preview(preview.shape, scale, translate)
        self._viewer.layers.selection = set(selected)  # keep the user's layer controls

    def _label_preview(self, shape: tuple[int, ...], scale, translate) -> None:
        """Panel names as text in each panel's top-left corner."""
        points = np.array(
            [
                [translate[0] + (top - 0.5) * scale[0], translate[1] + (left - 0.5) * scale[1]]
                for top, left in preview_corners(shape)
            ]
        )
        labels = self.preview_labels
        if labels is None or labels not in self._viewer.layers:
            self.preview_labels = self._viewer.add_points(
                points,
                name=f"{PREVIEW_LAYER} labels",
                features={"panel": list(PREVIEW_PANELS)},
                text={"string": "{panel}", "anchor": "lower_left", "color": "yellow", "size": 10},
                size=0.01,
                border_width=0,
                face_color="transparent",
                metadata={PREVIEW_KEY: True},
            )
        else:
            labels.data = points

    def _on_returned(self, outcome: TrainingOutcome) -> None:
        self.outcome = outcome
        state = "finished" if outcome.finished else "stopped"
        show_status(
            self.status, f"{state} at step {outcome.steps}; saved {shown(outcome.model_path.stem)}"
        )
        show_info(
            f"napari-srgan: saved model {shown(outcome.model_path.stem)} ({shown(outcome.model_path)})"
        )
        self.plot.redraw()
        model_list.changed.emit()

    def _on_errored(self, error: Exception) -> None:
        if isinstance(error, ResumeBaseError):  # nothing failed: the line says what to do
            self._fail(str(error))
            return
        self._fail(f"training failed: {error}")

    def _set_running(self, running: bool) -> None:
        self.train_button.enabled = self.resume_button.enabled = not running
        self.stop_button.enabled = running
        if not running:
            self.progress.hide()
