"""The "Train" dock widget: fine-tune a generator on image layers with a live loss/PSNR plot.

All training happens in the core (:func:`napari_srgan.training.job.run_training`) on a worker
thread; this widget only turns layers into a job and reports into a plot, a preview layer and a
progress bar.
"""

from __future__ import annotations

import time

import napari
import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
)
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning

from napari_srgan.models.registry import DEFAULT_MODEL, available_models
from napari_srgan.plugin.background import BackgroundJob, run_job
from napari_srgan.plugin.model_list import follow_model_list, model_list
from napari_srgan.training.degradations import Bicubic, Crappifier
from napari_srgan.training.job import TrainingJob, TrainingOutcome, run_training, user_model_path
from napari_srgan.training.patches import TrainingImage
from napari_srgan.training.trainer import (
    CheckpointSaved,
    Notice,
    StepReport,
    TrainingConfig,
    TrainingEvent,
    ValidationReport,
)

PREVIEW_LAYER = "srgan training preview"
#: Redraw the loss plot at most this often (seconds): drawing is slow next to a training step.
PLOT_INTERVAL = 0.5


class TrainingPlot(FigureCanvasQTAgg):
    """Training loss per step (left axis) and validation PSNR against bicubic (right axis)."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        super().__init__(self.figure)
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
        self.loss_axes.set_xlabel("step")
        self.loss_axes.set_ylabel("loss", color="tab:blue")
        if self.validation:
            steps, psnr, bicubic = zip(*self.validation, strict=True)
            self.psnr_axes.plot(steps, psnr, "o-", color="tab:orange", label="model")
            self.psnr_axes.plot(steps, bicubic, "--", color="grey", label="bicubic")
            self.psnr_axes.legend(loc="lower right", fontsize="small")
        self.psnr_axes.set_ylabel("validation PSNR (dB)", color="tab:orange")
        self.psnr_axes.yaxis.set_label_position("right")
        self.draw_idle()


class TrainWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        images = self._image_layers
        self.hr_layers = Select(label="HR layers", choices=images)
        self.lr_layer = ComboBox(
            label="Paired LR", choices=lambda w: [("(synthesise from HR)", None), *images(w)]
        )
        self.validation_layer = ComboBox(
            label="Validation",
            choices=lambda w: [("(hold out rows of the first HR layer)", None), *images(w)],
        )
        self.validation_fraction = FloatSpinBox(
            label="Held-out fraction", value=0.1, min=0.02, max=0.5, step=0.02
        )
        self.validation_fraction.tooltip = (
            "bottom fraction of the first HR layer kept for validation (without a validation layer)"
        )
        self.degradation = ComboBox(label="Degradation", choices=["bicubic", "crappifier"])
        self.degradation.tooltip = (
            "bicubic: photos; crappifier: blur + shot/read noise (microscopy)"
        )
        self.base_model = ComboBox(label="Base model", choices=lambda w: list(available_models()))
        self.steps = SpinBox(label="Content steps", value=1000, min=0, max=1_000_000)
        self.adversarial_steps = SpinBox(label="Adversarial steps", value=0, min=0, max=1_000_000)
        self.adversarial_steps.tooltip = (
            "SRGAN stage (discriminator + VGG19 loss) after content training; slow on a CPU"
        )
        self.patch_size = SpinBox(label="Patch size", value=64, min=16, max=512, step=4)
        self.batch_size = SpinBox(label="Batch size", value=8, min=1, max=256)
        self.learning_rate = FloatSpinBox(
            label="Learning rate", value=1e-4, min=1e-6, max=1e-2, step=1e-5
        )
        self.validate_every = SpinBox(label="Validate every", value=50, min=1, max=100_000)
        self.validate_every.tooltip = "steps between validations (PSNR point and preview refresh)"
        self.model_name = LineEdit(label="Save as", value="my-srgan")
        self.train_button = PushButton(text="Train")
        self.resume_button = PushButton(text="Resume")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.status = Label(value="")
        self.extend(
            [
                self.hr_layers,
                self.lr_layer,
                self.validation_layer,
                self.validation_fraction,
                self.degradation,
                self.base_model,
                self.steps,
                self.adversarial_steps,
                self.patch_size,
                self.batch_size,
                self.learning_rate,
                self.model_name,
                self.train_button,
                self.resume_button,
                self.stop_button,
                self.status,
            ]
        )
        self.plot = TrainingPlot()
        self.native.layout().addWidget(self.plot)
        self.train_button.changed.connect(lambda: self.start(resume=False))
        self.resume_button.changed.connect(lambda: self.start(resume=True))
        self.stop_button.changed.connect(self.stop)
        follow_model_list(self)
        if DEFAULT_MODEL in self.base_model.choices:
            self.base_model.value = DEFAULT_MODEL
        self.job: BackgroundJob | None = None
        self._progress: progress | None = None
        self.outcome: TrainingOutcome | None = None
        self.preview_layer: napari.layers.Image | None = None

    def _image_layers(self, _widget=None) -> list[tuple[str, object]]:
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, napari.layers.Image)
        ]

    def _job(self, resume: bool) -> TrainingJob:
        """The core job for the current settings; raises ValueError with a message for the user."""
        layers = list(self.hr_layers.value)
        if not layers:
            raise ValueError("select at least one HR image layer")
        paired = self.lr_layer.value
        if paired is not None and len(layers) != 1:
            raise ValueError("a paired LR layer needs exactly one HR layer")
        for layer in layers:
            if layer.multiscale:
                raise ValueError(f"{layer.name}: multiscale layers are not supported")
        images = [
            TrainingImage(
                layer.data,
                lr=paired.data if paired is not None else None,
                rgb=layer.rgb,
                name=layer.name,
            )
            for layer in layers
        ]
        validation = self.validation_layer.value
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
            checkpoint=output.with_suffix(".ckpt"),
            resume=resume,
            description=f"fine-tuned in napari on {', '.join(layer.name for layer in layers)}",
        )

    def start(self, resume: bool = False) -> None:
        try:
            job = self._job(resume)
        except ValueError as error:
            self.status.value = str(error)
            show_error(f"napari-srgan: {error}")
            return
        if resume and not job.checkpoint.is_file():
            show_error(f"napari-srgan: nothing to resume: no checkpoint {job.checkpoint}")
            return
        if not resume:
            self.plot.clear()
        self._set_running(True)
        self._progress = progress(total=job.config.total_steps, desc="Training")
        self.job = run_job(
            lambda handle: run_training(
                job, on_event=handle.relay.report.emit, should_stop=handle.stop_flag.is_set
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
            self.status.value = "stopping after this step..."

    def _on_event(self, event: TrainingEvent) -> None:
        if isinstance(event, StepReport):
            self.plot.add_step(event)
            losses = ", ".join(f"{name} {value:.4g}" for name, value in event.losses.items())
            self.status.value = f"step {event.step}/{event.total_steps} ({event.stage}): {losses}"
            if self._progress is not None:  # last: it may process events (the job's end)
                self._progress.update(event.step - self._progress.n)
        elif isinstance(event, ValidationReport):
            self.plot.add_validation(event)
            self._show_preview(event)
        elif isinstance(event, Notice):
            show_warning(f"napari-srgan: {event.message}")
        elif isinstance(event, CheckpointSaved):
            self.status.value = f"checkpoint at step {event.step}"

    def _show_preview(self, report: ValidationReport) -> None:
        """One preview layer, refreshed in place (re-added if the user deleted it)."""
        if report.preview is None:
            return
        name = f"{PREVIEW_LAYER} (step {report.step}, {report.psnr:.2f} dB)"
        layer = self.preview_layer
        if layer is None or layer not in self._viewer.layers:
            self.preview_layer = self._viewer.add_image(
                report.preview, name=name, rgb=report.preview.ndim == 3, contrast_limits=(0, 1)
            )
        else:
            layer.data = report.preview
            layer.name = name

    def _on_returned(self, outcome: TrainingOutcome) -> None:
        self.outcome = outcome
        state = "finished" if outcome.finished else "stopped"
        self.status.value = f"{state} at step {outcome.steps}; saved {outcome.model_path.stem}"
        show_info(f"napari-srgan: saved model {outcome.model_path.stem} ({outcome.model_path})")
        self.plot.redraw()
        model_list.changed.emit()

    def _on_errored(self, error: Exception) -> None:
        self.status.value = f"failed: {error}"
        show_error(f"napari-srgan: training failed: {error}")

    def _set_running(self, running: bool) -> None:
        self.train_button.enabled = self.resume_button.enabled = not running
        self.stop_button.enabled = running
        if not running and self._progress is not None:
            self._progress.close()
            self._progress = None
