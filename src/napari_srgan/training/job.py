"""One training run from images to a saved model: what the Train widget and the CLI both call."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import torch
from filelock import FileLock, Timeout

from napari_srgan.engine.devices import choose_device
from napari_srgan.engine.upscale import InvalidImageError
from napari_srgan.io.atomic_files import OutputExistsError, check_writable, refuse_existing
from napari_srgan.messages import shown
from napari_srgan.models.halo import cache_path
from napari_srgan.models.headers import ModelFileError
from napari_srgan.models.interface import ModelCard, TrainableNetwork
from napari_srgan.models.lineage import BASE_TRAINING, inherited_training
from napari_srgan.models.normalization import NormalizationSpec, regular_subsample
from napari_srgan.models.registry import (
    bundled_model_dir,
    is_bioimageio,
    load_model,
    resolve_model,
    save_trained,
    user_model_dir,
)
from napari_srgan.models.srresnet import SCALE, Generator, GeneratorConfig
from napari_srgan.training.degradations import Bicubic, Degradation
from napari_srgan.training.device_sampler import (
    DeviceSampler,
    ParallelSampler,
    data_bytes,
    memory_budget,
)
from napari_srgan.training.metrics import measurable
from napari_srgan.training.patches import (
    PatchSampler,
    TrainingImage,
    held_out_rows,
    to_model_channels,
)
from napari_srgan.training.trainer import Notice, Trainer, TrainingConfig, TrainingEvent
from napari_srgan.training.validation import (
    ValidationImage,
    make_validation_image,
    to_8bit_layout,
)

#: Held-out validation needs at least this many HR rows.
MIN_VALIDATION_ROWS = 32
#: Smallest validation image side (HR pixels, after cropping): SSIM's 7-pixel window must fit
#: inside the 4-pixel border that PSNR and SSIM leave out.
MIN_VALIDATION_SIDE = 16


@dataclass
class TrainingJob:
    """What to train on, from which starting point, and where the result goes."""

    images: list[TrainingImage]
    output: Path
    config: TrainingConfig = field(default_factory=TrainingConfig)
    #: Start from this model's weights (a name or a path: a native model, or a community model
    #: spandrel recognises); None trains ``generator_config`` anew.
    base_model: str | os.PathLike | None = None
    generator_config: GeneratorConfig | None = None
    #: Default: the base model's, else the dtype convention.
    normalization: NormalizationSpec | None = None
    degradation: Degradation = field(default_factory=Bicubic)
    #: Explicit validation images (``(data, rgb)`` pairs); otherwise the bottom
    #: ``validation_fraction`` of the first image's rows is held out.
    validation: Sequence[tuple[object, bool | None]] = ()
    validation_fraction: float = 0.1
    validation_crop: int = 256
    #: Where validation crops are taken: "centre", or "texture" (the most detailed window).
    validation_crop_at: str = "centre"
    checkpoint: Path | None = None
    resume: bool = False
    description: str = ""
    #: Leave out images smaller than a patch (a folder of mixed sizes) instead of failing.
    skip_small: bool = False
    #: Store fp16 weights (half the file size; for bundling).
    half: bool = False
    #: Sampling processes for data larger than memory; 0 always uses the device sampler.
    workers: int = 2
    #: Replace an existing model file (and, without ``resume``, an existing checkpoint).
    overwrite: bool = False


@dataclass(frozen=True)
class TrainingOutcome:
    model_path: Path
    checkpoint: Path | None
    steps: int
    finished: bool
    validation: dict | None


def user_model_path(name: str) -> Path:
    """Where a user model called ``name`` is saved (the Upscale widget lists that folder)."""
    if not name or any(sep in name for sep in "/\\") or name.startswith("."):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '-' and '_'")
    if (bundled_model_dir() / f"{name}.safetensors").exists():
        # it would be listed as "user:<name>" while "<name>" stays the bundled model
        raise ValueError(f"{name} is the name of a bundled model; choose another name")
    return user_model_dir() / f"{name}.safetensors"


def _starting_point(job: TrainingJob) -> tuple[TrainableNetwork, NormalizationSpec, ModelCard]:
    """The network to train, its normalisation, and the card the result inherits (architecture,
    source, licence: a fine-tuned community model stays that architecture)."""
    if job.base_model is not None:
        path = resolve_model(job.base_model)
        if is_bioimageio(path):
            raise ModelFileError(
                f"{shown(path.name)} is a bioimage.io package: its weights (TorchScript, or code from "
                "the package) have no state dict napari-srgan can train; fine-tune a native "
                "or spandrel model"
            )
        base = load_model(path)
        # spandrel hands out networks set up for inference; training needs gradients.
        base.network.requires_grad_(True)
        spec = job.normalization or base.card.normalization
        return base.network, spec, base.card
    config = job.generator_config or GeneratorConfig()
    return (
        Generator(config),
        job.normalization or NormalizationSpec(),
        ModelCard("none (trained from scratch)"),
    )


def _validation_set(
    job: TrainingJob, spec: NormalizationSpec, channels: int, scale: int = SCALE
) -> list[ValidationImage]:
    if not job.validation and not 0 < job.validation_fraction < 1:
        raise ValueError(
            f"the validation fraction must be between 0 and 1, not {job.validation_fraction}"
        )
    if job.validation_crop is not None and job.validation_crop < MIN_VALIDATION_SIDE:
        raise ValueError(
            f"a validation crop of {job.validation_crop} pixels is too small to measure: use "
            f"at least {MIN_VALIDATION_SIDE} (or none for the whole image)"
        )
    pairs: list[tuple[np.ndarray, str, np.ndarray | None]] = []
    if job.validation:
        for index, (data, rgb) in enumerate(job.validation):
            image = TrainingImage(data, rgb=rgb, name=f"validation {index + 1}")
            image.prepare(spec, scale)
            plane = (0,) * len(image.layout.leading_shape)
            unit = image.hr_range.to_unit(np.asarray(data[plane]))
            pairs.append((to_model_channels(unit, image.layout.rgb, channels), image.name, None))
    else:
        first = job.images[0]
        first.prepare(spec, scale)
        height = first.layout.height
        rows = held_out_rows(height, job.validation_fraction)
        if rows < MIN_VALIDATION_ROWS:
            raise InvalidImageError(
                f"{shown(first.name)}: {height} rows leave only {rows} for validation "
                f"(at least {MIN_VALIDATION_ROWS} needed); choose a validation image instead"
            )
        start = height - rows
        factor = 1 if first.lr is None or first.lr_on_hr_grid else scale
        # Paired LR at 1/scale: the held-out HR starts on an LR row, or the pairs are shifted.
        start = start // factor * factor
        first.rows = start
        plane = (0,) * len(first.layout.leading_shape)
        held_out = np.asarray(first.hr[(*plane, slice(start, height))])
        unit = first.hr_range.to_unit(held_out)
        paired = None
        if first.lr is not None:  # validate on the real pairs, not on a synthetic degradation
            lr = np.asarray(first.lr[(*plane, slice(start // factor, height // factor))])
            paired = to_model_channels(first.lr_range.to_unit(lr), first.layout.rgb, channels)
        pairs.append(
            (
                to_model_channels(unit, first.layout.rgb, channels),
                f"{shown(first.name)} (held out)",
                paired,
            )
        )
    images = [
        _measurable(job, hr, name, paired, index, scale)
        for index, (hr, name, paired) in enumerate(pairs)
    ]
    for image in images:
        height, width = image.hr.shape[-2:]
        if min(height, width) < MIN_VALIDATION_SIDE:
            raise InvalidImageError(
                f"{shown(image.name)}: {height}x{width} pixels are too small to validate on (at least "
                f"{MIN_VALIDATION_SIDE}x{MIN_VALIDATION_SIDE} at {scale}x)"
            )
    return images


def _measurable(
    job: TrainingJob, hr: np.ndarray, name: str, paired: np.ndarray | None, index: int, scale: int
) -> ValidationImage:
    """The validation crop of ``hr``; where the centre is flat, the crop with the most detail.
    A crop that is one value where PSNR is measured is refused: bicubic (and any flat output)
    would score "inf dB" there, and the model's PSNR says nothing about detail."""
    for crop_at in dict.fromkeys((job.validation_crop_at, "texture")):
        image = make_validation_image(
            hr,
            job.degradation,
            name=name,
            crop=job.validation_crop,
            seed=index,
            scale=scale,
            paired_lr=paired,
            crop_at=crop_at,
        )
        too_small = min(image.hr.shape[-2:]) < MIN_VALIDATION_SIDE  # said by the caller
        if too_small or measurable(to_8bit_layout(image.hr)):
            return image
    if job.validation:
        raise InvalidImageError(
            f"{shown(name)} is one constant value where it is measured: PSNR and SSIM cannot be "
            "measured on it; choose an image with detail"
        )
    raise InvalidImageError(
        f"{shown(name)}: the held-out rows are one constant value: PSNR and SSIM cannot be "
        "measured on them; choose a validation image with detail"
    )


def _check_detail(images: Sequence[TrainingImage]) -> None:
    """Refuse data without any detail, in memory or read lazily alike: every patch would be
    background, and the model would learn to paint one grey value."""
    if any(_has_detail(image) for image in images):
        return
    names = ", ".join(shown(image.name) for image in images[:3]) + (
        ", ..." if len(images) > 3 else ""
    )
    raise InvalidImageError(
        f"every training image is one constant value ({names}): there is no detail to learn from"
    )


def _has_detail(image: TrainingImage) -> bool:
    """Whether the training rows of ``image`` hold more than one value. Lazy data (zarr, dask,
    memmap) is never loaded whole: a regular subsample decides for almost any real image, and
    only where it is flat are the blocks read one at a time, until a second value turns up."""
    rows = (*(slice(None),) * len(image.layout.leading_shape), slice(0, image.rows))
    data = image.hr
    if isinstance(data, np.ndarray) and not isinstance(data, np.memmap):
        return bool(np.ptp(data[rows]) > 0)
    if not isinstance(data, da.Array):
        chunks = getattr(data, "chunks", None)
        data = da.from_array(data, chunks=chunks if isinstance(chunks, tuple) else "auto")
    region = data[rows]
    sample = regular_subsample(region)
    if np.ptp(sample) > 0:
        return True
    value = sample.flat[0] if sample.size else None
    for index in np.ndindex(*region.numblocks):
        block = np.asarray(region.blocks[index].compute())
        if block.size and (np.ptp(block) > 0 or block.flat[0] != value):
            return True
    return False


def make_sampler(
    job: TrainingJob, spec: NormalizationSpec, channels: int, scale: int
) -> DeviceSampler | ParallelSampler:
    """The device sampler when the data fit in (device or pinned host) memory, else the
    slicing sampler in worker processes."""
    config = job.config
    device = choose_device(config.device)
    options = {
        "patch_size": config.patch_size,
        "channels": channels,
        "normalization": spec,
        "degradation": job.degradation,
        "seed": config.seed,
        "skip_small": job.skip_small,
    }
    for image in job.images:
        image.prepare(spec, scale)
    in_memory = all(
        isinstance(image.hr, np.ndarray) and (image.lr is None or isinstance(image.lr, np.ndarray))
        for image in job.images
    )
    if job.workers == 0 or (
        in_memory and data_bytes(job.images, channels, scale) <= memory_budget(torch.device("cpu"))
    ):
        return DeviceSampler(job.images, device=device, scale=scale, **options)
    if scale != SCALE or any(image.lr_on_hr_grid for image in job.images):
        raise InvalidImageError(
            f"training data larger than memory work at {SCALE}x with LR synthesised or 1/{SCALE} "
            "the HR size; load the data into memory for other pairs"
        )
    return ParallelSampler(
        PatchSampler(job.images, **options),
        batch_size=config.batch_size,
        seed=config.seed,
        workers=job.workers,
    )


def _describe_data(images: Sequence[TrainingImage]) -> dict | list:
    """Every image for a few layers; a summary for a data set of hundreds of files."""
    if len(images) <= 10:
        return [
            {"name": i.name, "shape": list(i.layout.shape), "rows_used": i.rows} for i in images
        ]
    return {
        "images": len(images),
        "pixels": int(sum(i.weight for i in images)),
        "first": images[0].name,
        "last": images[-1].name,
    }


#: Settings a resumed run may change without a word: the steps to go, and where it runs.
_RESUMABLE_CHANGES = {"pretrain_steps", "adversarial_steps", "device", "allow_download"}


def _resumed_change(trainer: Trainer, config: TrainingConfig) -> str:
    """What differs between the checkpoint's run and this one (data, other settings), as words
    for a notice; empty when it is the same run going on. Checkpoints written before the data
    was recorded say nothing about it."""
    stored = trainer.resumed_from
    changes = []
    if stored.get("data") is not None and stored["data"] != trainer.data:
        changes.append("was trained on other data")
    if isinstance(stored.get("config"), dict):
        now = asdict(config)
        differing = sorted(
            key
            for key in now.keys() - _RESUMABLE_CHANGES
            if key in stored["config"] and _comparable(stored["config"][key]) != now[key]
        )
        if differing:
            changes.append(f"had other settings ({', '.join(differing)})")
    return " and ".join(changes)


def _comparable(value: object) -> object:
    """A stored setting as the config holds it (checkpoints keep tuples as lists)."""
    return tuple(value) if isinstance(value, list) else value


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def _check_folder(path: Path) -> None:
    """The folder ``path`` will be written in is a folder (or can be made as one) and takes
    files: found now, not after hours of training."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(
            f"cannot write {shown(path)}: {shown(folder)} is a file, not a folder"
        )
    check_writable(folder)


def _check_outputs(job: TrainingJob) -> bool:
    """Refuse, before any work, to replace a model or checkpoint without ``overwrite`` (the
    base model being fine-tuned: never); a resumed run continues its own checkpoint and model.
    Returns whether the run resumes."""
    if job.config.total_steps == 0:
        raise ValueError("nothing to train: the content and adversarial steps are both 0")
    resuming = bool(job.resume and job.checkpoint and Path(job.checkpoint).is_file())
    if job.base_model is not None and (base := _base_path(job, resuming)).is_file():
        for written in filter(None, (job.output, job.checkpoint)):
            if _same_file(base, Path(written)):
                raise OutputExistsError(
                    f"{shown(written)} is the base model being fine-tuned; choose another name"
                )
    if not resuming:
        refuse_existing(job.output, overwrite=job.overwrite)
        if job.checkpoint is not None:
            refuse_existing(job.checkpoint, overwrite=job.overwrite)
    if job.checkpoint is not None and _same_file(Path(job.checkpoint), Path(job.output)):
        raise ValueError(f"the checkpoint and the model are the same file: {shown(job.output)}")
    for written in filter(None, (job.output, job.checkpoint)):
        _check_folder(Path(written))
    return resuming


class ResumeBaseError(ModelFileError):
    """A run being resumed is not given the base model its checkpoint was made from (deleted
    since, or another chosen): the network, normalisation and card it continues come from it."""


def _base_path(job: TrainingJob, resuming: bool) -> Path:
    """The base model's file; a resumed run whose base was deleted (or renamed) since says so,
    and what to do, rather than only "no model named ..."."""
    try:
        return resolve_model(job.base_model)
    except ModelFileError:
        if not resuming or Path(job.base_model).exists():
            raise  # not resuming, or there but unreadable: resolve_model's own words
    raise ResumeBaseError(_base_gone(job.base_model, job.checkpoint))


def _base_gone(base: str | os.PathLike, checkpoint: Path) -> str:
    return (
        f"base model {shown(base)} no longer exists, and the checkpoint {shown(checkpoint)} was "
        "made from it: restore it (or choose a copy of it as the base model) to resume, or start "
        "afresh without resuming"
    )


def _check_resumed_base(
    job: TrainingJob, trainer: Trainer, base: ModelCard, *, network_fits: bool = True
) -> None:
    """A resumed run starts from the base its checkpoint was made from (a copy of it, under
    any file name, will do): another one would give the saved model a false lineage. The Train
    widget falls back to the first listed model when the chosen base is deleted. Where the
    checkpoint's network does not fit (``network_fits`` False), its own message stands unless
    its base is gone. Checkpoints written before the base was recorded say nothing."""
    made_from = trainer.resumed_from.get("base")
    if not isinstance(made_from, dict) or made_from.get("name") == base.name:
        return
    given = made_from.get("given")
    if given is not None:
        try:
            resolve_model(given)
        except ModelFileError:
            raise ResumeBaseError(_base_gone(given, job.checkpoint)) from None
    if not network_fits:
        return
    if given is None:
        raise ResumeBaseError(
            f"the checkpoint {shown(job.checkpoint)} was trained from scratch, not from "
            f"{shown(base.name)}: train from scratch to resume it, or start afresh without resuming"
        )
    raise ResumeBaseError(
        f"the checkpoint {shown(job.checkpoint)} was made from base model {shown(given)}, not "
        f"{shown(base.name)}: choose {shown(given)} as the base model to resume, or start afresh "
        "without resuming"
    )


def _same_file(first: Path, second: Path) -> bool:
    if first.resolve() == second.resolve():
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # the output does not exist yet
        return False


def run_training(
    job: TrainingJob,
    *,
    on_event: Callable[[TrainingEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainingOutcome:
    """Train, then save the (EMA) generator with its model card to ``job.output``.

    Bad inputs raise before anything is written. Stopping early still saves the model of the last
    finished step (and a checkpoint to resume from). One run at a time writes a model or
    checkpoint: a second one refuses (their checkpoints would interleave).
    """
    with _only_run_writing(job):
        return _train(job, on_event, should_stop)


@contextlib.contextmanager
def _only_run_writing(job: TrainingJob) -> Iterator[None]:
    """Hold an exclusive lock per output file for the whole run; a lock held elsewhere refuses
    in one line. The locks live in the user's own cache folder: not beside the user's files,
    and not in a shared temporary folder where another user could plant a lock file as a link
    to one of them. Where that folder cannot be made, runs are not locked."""
    folder = cache_path().parent / "training-locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield
        return
    outputs = sorted({str(Path(p).resolve()) for p in (job.output, job.checkpoint) if p})
    with contextlib.ExitStack() as locks:
        for output in outputs:
            name = hashlib.sha256(output.encode()).hexdigest()[:32]
            try:
                locks.enter_context(FileLock(folder / f"{name}.lock", timeout=0))
            except Timeout:
                raise OutputExistsError(
                    f"another training run is writing {shown(output)}; wait for it or choose "
                    "another name"
                ) from None
        yield


def _train(
    job: TrainingJob,
    on_event: Callable[[TrainingEvent], None] | None,
    should_stop: Callable[[], bool] | None,
) -> TrainingOutcome:
    started = time.perf_counter()
    resuming = _check_outputs(job)
    torch.manual_seed(job.config.seed)  # a new generator's initial weights come from the seed
    generator, spec, base = _starting_point(job)
    geometry = generator.training_spec()
    channels, scale = geometry.in_channels, geometry.scale
    validation = _validation_set(job, spec, channels, scale)
    sampler = make_sampler(job, spec, channels, scale)
    _check_detail(sampler.images)
    if sampler.skipped and on_event is not None:
        on_event(Notice(f"left out {len(sampler.skipped)} images smaller than one patch"))
    trainer = Trainer(
        generator,
        sampler,
        job.config,
        validation=validation,
        checkpoint_path=job.checkpoint,
        on_event=on_event,
        should_stop=should_stop,
    )
    trainer.data = _describe_data(sampler.images)
    given = None if job.base_model is None else os.fspath(job.base_model)
    trainer.base = {"name": base.name, "given": given}
    if resuming:
        try:
            trainer.load_checkpoint(job.checkpoint)
        except ValueError:  # another network: a deleted base says why, and what to do
            _check_resumed_base(job, trainer, base, network_fits=False)
            raise
        _check_resumed_base(job, trainer, base)
        if on_event is not None and (change := _resumed_change(trainer, job.config)):
            on_event(
                Notice(f"{shown(job.checkpoint)} {change}; resuming from its step {trainer.step}")
            )
    trainer.run()
    if trainer.step == 0:
        raise ValueError("stopped before the first training step: nothing was saved")
    trainer.check_finite()
    last = trainer.validations[-1] if trainer.validations else None
    recent = trainer.history[-20:]
    final_losses = {
        name: float(np.mean([entry[name] for entry in recent if name in entry]))
        for name in (recent[-1] if recent else {})
        if name != "step"
    }
    # The base's architecture, source and licence carry over; what training changed does not.
    # Its own training record is kept as this stage's base: the model's whole lineage.
    lineage = inherited_training(base.training)
    card = dataclasses.replace(
        base,
        name=Path(job.output).stem,
        description=job.description or f"fine-tuned from {base.name}",
        trained=True,
        normalization=spec,
        degradation=job.degradation.describe()["kind"],
        intended_use="",
        measured_halo=None,
        training={
            "base_model": base.name,
            "data": _describe_data(sampler.images),
            "degradation": job.degradation.describe(),
            "steps": trainer.step,
            "config": asdict(job.config),
            "final_losses": final_losses,
            "training_time_s": round(trainer.elapsed, 1),
            "wall_time_s_last_run": round(time.perf_counter() - started, 1),
            "machine": machine_description(choose_device(job.config.device)),
            **({BASE_TRAINING: lineage} if lineage else {}),
        },
        metrics={"validation": last} if last else {},
    )
    path = save_trained(
        job.output, trainer.model, card, half=job.half, overwrite=job.overwrite or resuming
    )
    return TrainingOutcome(
        path, job.checkpoint, trainer.step, trainer.step >= job.config.total_steps, last
    )
