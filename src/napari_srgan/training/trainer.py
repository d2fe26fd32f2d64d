"""The SRGAN training loop: content pretraining, then adversarial training with a VGG loss.

Qt-free. Progress leaves through ``on_event`` (typed reports below); stopping comes in through
``should_stop``. Checkpoints hold everything needed to continue bit-for-bit (weights, EMA,
optimisers, sampler and torch RNG states, the loss history) and are written atomically.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from napari_srgan.engine.devices import choose_device
from napari_srgan.engine.torch_safety import guard_triton
from napari_srgan.engine.upscale import CHANNELS_LAST_DEVICES, is_out_of_memory
from napari_srgan.io.atomic_files import atomic_write_stream
from napari_srgan.messages import shown, with_type
from napari_srgan.models.files import load_weights_only
from napari_srgan.models.interface import TrainableNetwork, network_label
from napari_srgan.models.srresnet import Discriminator, DiscriminatorConfig
from napari_srgan.training.losses import (
    PerceptualLoss,
    discriminator_loss,
    generator_adversarial_loss,
    load_vgg19_features,
    pixel_loss,
)
from napari_srgan.training.validation import ValidationImage, evaluate

CHECKPOINT_FORMAT = 1
#: Largest seed: the samplers seed a second torch generator with ``seed + 1`` (64-bit).
MAX_SEED = 2**63 - 1


class TrainingDiverged(ValueError):
    """The loss or the weights stopped being finite: nothing of that step is saved."""


class Sampler(Protocol):
    """Where batches come from: the device sampler, the slicing sampler, or worker processes."""

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainingConfig:
    """Every knob of a training run; stored in checkpoints and model cards."""

    patch_size: int = 96
    batch_size: int = 16
    pretrain_steps: int = 1000
    adversarial_steps: int = 0
    learning_rate: float = 2e-4
    adversarial_learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    #: "cosine" decays each stage's rate to 1% of its start; "constant" keeps it.
    schedule: str = "cosine"
    pixel_loss: str = "l1"
    #: Max gradient norm (0 disables clipping).
    grad_clip: float = 1.0
    #: EMA of generator weights, used for validation and export (0 disables).
    ema_decay: float = 0.999
    seed: int = 0
    validate_every: int = 100
    checkpoint_every: int = 100
    perceptual_layers: dict[str, float] = field(default_factory=lambda: {"conv5_4": 1.0})
    perceptual_weight: float = 0.006
    adversarial_weight: float = 1e-3
    adversarial_pixel_weight: float = 1e-2
    relativistic: bool = False
    discriminator_channels: int = 64
    #: "imagenet" (from the torch cache, or downloaded if allowed) or "random" (tests only).
    vgg_weights: str = "imagenet"
    allow_download: bool = True
    #: "fp32", "bf16", "fp16" or "auto" (bf16 on CUDA where supported, else fp32).
    precision: str = "auto"
    device: str = "auto"

    @property
    def total_steps(self) -> int:
        return self.pretrain_steps + self.adversarial_steps

    def learning_rate_at(self, step: int) -> float:
        """The generator's rate for (0-based) ``step``."""
        if step < self.pretrain_steps:
            start, progress = self.learning_rate, step / max(self.pretrain_steps, 1)
        else:
            start = self.adversarial_learning_rate
            progress = (step - self.pretrain_steps) / max(self.adversarial_steps, 1)
        if self.schedule == "constant":
            return start
        return start * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', not {self.schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        if self.pretrain_steps < 0 or self.adversarial_steps < 0:
            raise ValueError("step counts must be >= 0")
        if self.batch_size < 1:
            raise ValueError("batch size must be >= 1")
        for name in ("learning_rate", "adversarial_learning_rate"):
            rate = getattr(self, name)
            if not (rate > 0 and math.isfinite(rate)):
                raise ValueError(f"{name.replace('_', ' ')} must be a positive number, not {rate}")
        if self.validate_every < 1 or self.checkpoint_every < 1:
            raise ValueError("validate_every and checkpoint_every must be >= 1")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}, not {self.seed}")
        # The discriminator's batch norm needs two values per channel; its last feature map is
        # 1/16 of the patch, so a 16-px patch in batches of 1 gives it one.
        if self.adversarial_steps > 0 and self.batch_size * (self.patch_size // 16) ** 2 < 2:
            raise ValueError(
                "the adversarial stage needs a batch of at least 2 or patches of at least 32 "
                f"pixels (got a batch of {self.batch_size} {self.patch_size}-pixel patches)"
            )
        self.betas = tuple(self.betas)


# Reports sent to ``on_event``.
@dataclass(frozen=True)
class StepReport:
    step: int
    total_steps: int
    stage: str
    losses: dict[str, float]
    learning_rate: float
    seconds_per_step: float


@dataclass(frozen=True)
class ValidationReport:
    step: int
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    #: LR, bicubic, the current model's output and HR of the first validation image side by
    #: side (:func:`napari_srgan.training.validation.preview_panels`), unit scale.
    preview: np.ndarray | None = None


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: Path


@dataclass(frozen=True)
class Notice:
    """Something the user should read once (e.g. perceptual loss unavailable offline)."""

    message: str


TrainingEvent = StepReport | ValidationReport | CheckpointSaved | Notice


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _check_progress(state: dict) -> None:
    """The step count, time and records a model card is written from: a whole step count with
    one loss record per step, a finite time, and records of names and numbers (a tampered
    checkpoint claimed 10^18 steps, or failed with a numpy traceback after the whole run)."""
    step, history = state["step"], state["history"]
    records = len(history) if isinstance(history, list) else "no"
    if type(step) is not int or records != step:
        raise ValueError(f"step {step!r} does not match its {records} loss records")
    elapsed = state["elapsed"]
    if type(elapsed) not in (int, float) or not 0 <= elapsed < math.inf:
        raise ValueError(f"training time {elapsed!r} is not a number of seconds")
    for name in ("history", "validations"):
        records = state[name]
        if not isinstance(records, list) or not all(
            isinstance(record, dict)
            and all(
                isinstance(key, str) and type(value) in (int, float)
                for key, value in record.items()
            )
            for record in records
        ):
            raise ValueError(f"its {name} are not records of numbers")


def _losses_text(losses: dict[str, float]) -> str:
    return ", ".join(f"{name} {value}" for name, value in losses.items())


def _mismatch(stored: object, identity: dict) -> str:
    """Why a checkpoint's network is not this one: the architectures, or (the same
    architecture) the settings that differ."""
    text = f"is a checkpoint of {network_label(stored)} training, not of {network_label(identity)}"
    if isinstance(stored, dict) and network_label(stored) == network_label(identity):
        differing = sorted(
            k for k in stored.keys() | identity.keys() if stored.get(k) != identity.get(k)
        )
        text += f" (they differ in {', '.join(differing)})"
    return text


class Trainer:
    """Runs :class:`TrainingConfig` on a generator with batches from a :class:`Sampler`.

    The generator is any :class:`~napari_srgan.models.interface.TrainableNetwork` (a native
    SRResNet or a spandrel network): the trainer needs only its :class:`NetworkSpec`.
    """

    def __init__(
        self,
        generator: TrainableNetwork,
        sampler: Sampler,
        config: TrainingConfig,
        *,
        validation: Sequence[ValidationImage] = (),
        checkpoint_path: str | os.PathLike | None = None,
        on_event: Callable[[TrainingEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        guard_triton()  # before torch.optim pulls in torch._dynamo
        self.config = config
        self.device = choose_device(config.device)
        self.sampler = sampler
        self.validation = list(validation)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.on_event = on_event or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        torch.manual_seed(config.seed)
        # Channels-last convolutions are ~25% faster with oneDNN (CPU) and cuDNN (tensor cores).
        self.memory_format = (
            torch.channels_last
            if self.device.type in CHANNELS_LAST_DEVICES
            else torch.contiguous_format
        )
        #: Scale, channels and the identity checkpoints are checked against.
        self.spec = generator.training_spec()
        self.generator = generator.to(self.device, memory_format=self.memory_format).train()
        # The EMA copy (AveragedModel keeps the checkpoint layout); :meth:`_update_ema` updates it.
        self.ema = AveragedModel(self.generator, use_buffers=True)
        #: EMA updates so far, kept on the host: reading ``ema.n_averaged`` would sync a GPU.
        self.ema_updates = 0
        # Fused Adam: one kernel for all parameters on a GPU instead of several per tensor.
        self.optimizer = torch.optim.Adam(
            self.generator.parameters(),
            lr=config.learning_rate,
            betas=config.betas,
            fused=self.device.type == "cuda",
        )
        self.pixel_loss = pixel_loss(config.pixel_loss)
        self.autocast = _autocast_dtype(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.autocast == torch.float16)
        self.step = 0
        #: Seconds spent training, across resumes (for model cards).
        self.elapsed = 0.0
        self.history: list[dict[str, float]] = []
        self.validations: list[dict[str, float]] = []
        #: What the run trains on (names and shapes), kept in checkpoints so a resumed run can
        #: say when it continues on other data; ``resumed_from`` is that of the loaded checkpoint.
        self.data: object = None
        #: The model the run started from (its card's name, and the name or path it was given
        #: by; None from scratch), kept in checkpoints for the same reason.
        self.base: dict | None = None
        self.resumed_from: dict = {}
        self.discriminator: Discriminator | None = None
        self.perceptual: PerceptualLoss | None = None
        if config.adversarial_steps > 0:
            self._build_adversarial_stage()

    def _build_adversarial_stage(self) -> None:
        config = self.config
        channels = self.spec.out_channels
        self.discriminator = Discriminator(
            DiscriminatorConfig(in_channels=channels, channels=config.discriminator_channels)
        ).to(self.device, memory_format=self.memory_format)
        self.optimizer_d = torch.optim.Adam(
            self.discriminator.parameters(), lr=config.adversarial_learning_rate, betas=config.betas
        )
        features = load_vgg19_features(config.vgg_weights, config.allow_download)
        if features is None:
            self.on_event(
                Notice(
                    "VGG19 ImageNet weights are not in the torch cache and could not be downloaded: "
                    "adversarial training continues without the perceptual loss (pixel + "
                    "adversarial only). Put vgg19-dcbb9e9d.pth in "
                    f"{Path(torch.hub.get_dir()) / 'checkpoints'} to enable it."
                )
            )
        else:
            self.perceptual = PerceptualLoss(features, config.perceptual_layers).to(self.device)

    @property
    def stage(self) -> str:
        return "content" if self.step < self.config.pretrain_steps else "adversarial"

    @property
    def model(self) -> torch.nn.Module:
        """The weights to validate and export: the EMA where enabled."""
        return self.ema.module if self.config.ema_decay > 0 else self.generator

    def run(self) -> None:
        """Train until the configured steps are done or ``should_stop()``; always leaves a
        checkpoint of the last finished step (when a checkpoint path is set)."""
        config = self.config
        # Patch shapes are fixed: cuDNN times its kernels once and keeps the fastest (only while
        # training: the setting is process-wide, and upscaling sees many tile shapes).
        autotune = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = autotune or self.device.type == "cuda"
        try:
            while self.step < config.total_steps:
                if self.should_stop():
                    break
                started = time.perf_counter()
                stage = self.stage
                learning_rate = config.learning_rate_at(self.step)
                try:
                    losses = self._train_step(learning_rate)
                except RuntimeError as error:
                    if not is_out_of_memory(error):
                        raise
                    raise MemoryError(
                        f"not enough memory for a batch of {config.batch_size} "
                        f"{config.patch_size}x{config.patch_size} patches on {self.device}; use "
                        "a smaller batch or patch size"
                    ) from None
                if not all(math.isfinite(value) for value in losses.values()):
                    raise TrainingDiverged(
                        f"training diverged at step {self.step + 1}: the loss is "
                        f"{_losses_text(losses)} (try a lower learning rate); nothing of this "
                        "step was saved"
                    )
                self.step += 1
                self.elapsed += time.perf_counter() - started
                self.history.append({"step": self.step, **losses})
                self.on_event(
                    StepReport(
                        self.step,
                        config.total_steps,
                        stage,
                        losses,
                        learning_rate,
                        time.perf_counter() - started,
                    )
                )
                finished = self.step == config.total_steps
                if self.validation and (self.step % config.validate_every == 0 or finished):
                    self.validate()
                if self.checkpoint_path and self.step % config.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.checkpoint_path and self.step > 0:
                self.save_checkpoint()
        finally:
            torch.backends.cudnn.benchmark = autotune
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _forward(self, lr: torch.Tensor) -> torch.Tensor:
        with torch.autocast(
            self.device.type, dtype=self.autocast, enabled=self.autocast is not None
        ):
            return self.generator(lr)

    def _train_step(self, learning_rate: float) -> dict[str, float]:
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        lr, hr = (
            t.to(self.device, memory_format=self.memory_format)
            for t in self.sampler.batch(config.batch_size)
        )
        sr = self._forward(lr)
        losses: dict[str, torch.Tensor] = {}
        if self.stage == "content":
            total = losses["pixel"] = self.pixel_loss(sr.float(), hr)
        else:
            losses["discriminator"] = self._discriminator_step(sr.detach(), hr, learning_rate)
            total = self._adversarial_generator_loss(sr, hr, losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self._clip_and_step(self.optimizer, self.generator)
        if config.ema_decay > 0:
            self._update_ema()
        return {name: float(value.detach()) for name, value in losses.items()}

    def _update_ema(self) -> None:
        """Move the EMA towards the weights, with warm-up: early on it follows them closely (decay
        (1+n)/(10+n)), so short fine-tuning runs are not dominated by the starting weights. A few
        fused kernels and no host sync (AveragedModel's avg_fn reads its count per tensor)."""
        averaged = [*self.ema.module.parameters(), *self.ema.module.buffers()]
        current = [*self.generator.parameters(), *self.generator.buffers()]
        count = self.ema_updates
        with torch.no_grad():
            if count == 0:
                torch._foreach_copy_(averaged, current)
            else:
                weight = 1.0 - min(self.config.ema_decay, (1.0 + count) / (10.0 + count))
                floating = [i for i, tensor in enumerate(averaged) if tensor.is_floating_point()]
                torch._foreach_lerp_(
                    [averaged[i] for i in floating], [current[i] for i in floating], weight
                )
                for target, source in zip(averaged, current, strict=True):
                    if not target.is_floating_point():  # e.g. batch norm's step counter
                        target.copy_(source)
            self.ema.n_averaged += 1
        self.ema_updates += 1

    def _clip_and_step(self, optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> None:
        if self.config.grad_clip > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.config.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    def _discriminator_step(
        self, sr: torch.Tensor, hr: torch.Tensor, learning_rate: float
    ) -> torch.Tensor:
        assert self.discriminator is not None
        for group in self.optimizer_d.param_groups:
            group["lr"] = learning_rate
        self.discriminator.requires_grad_(True)
        with torch.autocast(
            self.device.type, dtype=self.autocast, enabled=self.autocast is not None
        ):
            loss = discriminator_loss(
                self.discriminator(hr).float(),
                self.discriminator(sr).float(),
                self.config.relativistic,
            )
        self.optimizer_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self._clip_and_step(self.optimizer_d, self.discriminator)
        return loss.detach()

    def _adversarial_generator_loss(
        self, sr: torch.Tensor, hr: torch.Tensor, losses: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        config = self.config
        assert self.discriminator is not None
        self.discriminator.requires_grad_(False)
        with torch.autocast(
            self.device.type, dtype=self.autocast, enabled=self.autocast is not None
        ):
            fake = self.discriminator(sr).float()
            real = self.discriminator(hr).float() if config.relativistic else fake
        sr = sr.float()
        losses["adversarial"] = generator_adversarial_loss(real, fake, config.relativistic)
        losses["pixel"] = self.pixel_loss(sr, hr)
        total = config.adversarial_weight * losses["adversarial"]
        total = total + config.adversarial_pixel_weight * losses["pixel"]
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual(sr, hr)
            total = total + config.perceptual_weight * losses["perceptual"]
        losses["generator"] = total.detach()
        return total

    def validate(self) -> ValidationReport:
        """Validation metrics of the current (EMA) model and of bicubic, on the validation set."""
        result = evaluate(self.model, self.validation, self.device)
        self.model.train()  # evaluate() switched it to eval mode
        report = ValidationReport(
            self.step,
            result.psnr,
            result.ssim,
            result.bicubic_psnr,
            result.bicubic_ssim,
            result.preview,
        )
        self.validations.append(
            {
                "step": self.step,
                "psnr": report.psnr,
                "ssim": report.ssim,
                "bicubic_psnr": report.bicubic_psnr,
                "bicubic_ssim": report.bicubic_ssim,
            }
        )
        self.on_event(report)
        return report

    def state_dict(self) -> dict:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "elapsed": self.elapsed,
            "config": asdict(self.config),
            # The network's identity (the key predates other architectures: native
            # checkpoints written before still resume).
            "generator_config": self.spec.identity,
            "generator": self.generator.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "validations": self.validations,
        }
        if self.data is not None:
            state["data"] = self.data
        if self.base is not None:
            state["base"] = self.base
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["optimizer_d"] = self.optimizer_d.state_dict()
        return state

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Write the full training state atomically (temp file, fsync, rename)."""
        path = Path(path or self.checkpoint_path)
        self.check_finite()
        path.parent.mkdir(parents=True, exist_ok=True)
        # The run's own checkpoint: replacing it is the point (run_training checked at start).
        atomic_write_stream(
            path, lambda stream: torch.save(self.state_dict(), stream), overwrite=True
        )
        self.on_event(CheckpointSaved(self.step, path))
        return path

    def check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` when a weight (or the EMA's) is NaN or infinite:
        such a model would be refused on loading, and a checkpoint of it cannot recover."""
        modules = [self.generator, self.ema.module]
        tensors = [t for module in modules for t in module.state_dict().values()]
        floating = [t for t in tensors if t.is_floating_point()]
        if floating and not bool(torch.stack([torch.isfinite(t).all() for t in floating]).all()):
            raise TrainingDiverged(
                f"training diverged by step {self.step}: the weights are no longer finite (try "
                "a lower learning rate); the last checkpoint and saved model are kept"
            )

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint (loaded with ``weights_only``: no code can run). A
        corrupt, truncated or foreign file raises one ValueError naming it."""
        try:
            state = load_weights_only(Path(path), map_location=self.device)
        except Exception as error:  # torch raises many types for a damaged zip or record
            reason = with_type(error)
            if isinstance(error, pickle.UnpicklingError):  # not torch's tip to unpickle it
                reason = f"{type(error).__name__}: it is not a tensors-only checkpoint"
            raise ValueError(
                f"{shown(path)} is not a readable training checkpoint ({reason})"
            ) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{shown(path)} is not a napari-srgan training checkpoint")
        # before its network is checked: another base explains a network that does not fit
        self.resumed_from = {key: state.get(key) for key in ("data", "config", "base")}
        if state.get("generator_config") != self.spec.identity:
            raise ValueError(
                f"{shown(path)} {_mismatch(state.get('generator_config'), self.spec.identity)}"
            )
        try:
            self._load_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise ValueError(
                f"{shown(path)} is a damaged training checkpoint ({with_type(error)})"
            ) from None

    def _load_state(self, state: dict) -> None:
        _check_progress(state)
        self.generator.load_state_dict(state["generator"])
        self.ema.load_state_dict(state["ema"])
        self.ema_updates = int(self.ema.n_averaged)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        if self.discriminator is not None and "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.optimizer_d.load_state_dict(state["optimizer_d"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.history = list(state["history"])
        self.validations = list(state["validations"])
        try:
            self.check_finite()
        except TrainingDiverged:
            raise ValueError("its weights are not all finite (a run that diverged)") from None
