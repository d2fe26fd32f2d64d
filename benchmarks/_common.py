"""Shared by the benchmarks: data from ../shared/data, and one short from-scratch training run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from napari_srgan.io.images import read_image
from napari_srgan.models.files import native_model
from napari_srgan.models.interface import ModelCard
from napari_srgan.models.normalization import NormalizationSpec
from napari_srgan.models.srresnet import Generator, GeneratorConfig
from napari_srgan.training.evaluation import evaluate_images, image_files, mean_quality
from napari_srgan.training.metrics import Quality
from napari_srgan.training.patches import PatchSampler, TrainingImage
from napari_srgan.training.trainer import Trainer, TrainingConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_dir(*parts: str) -> Path:
    """A folder of the shared data set, or exit with a clear message when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.is_dir():
        sys.exit(
            f"skipped: {path} is absent (the benchmarks read ../shared/data beside the project)"
        )
    return path


def photo_training_images() -> list[TrainingImage]:
    files = image_files([data_dir("train", "T91"), data_dir("train", "BSD200")])
    return [TrainingImage(read_image(p).data, rgb=None, name=p.name) for p in files]


def load_set(name: str) -> list[tuple[str, object]]:
    return [(p.name, read_image(p).data) for p in image_files([data_dir("val", name)])]


def short_run(
    images: list[TrainingImage], config: GeneratorConfig, pixel_loss: str, steps: int
) -> tuple[float, Quality, Quality]:
    """Train ``config`` from scratch for ``steps`` (batch 16 of 96x96 HR, Adam 2e-4 cosine,
    seed 0) and score it on Set5: (seconds per step, model quality, bicubic quality)."""
    spec = NormalizationSpec()
    sampler = PatchSampler(
        images, patch_size=96, channels=3, normalization=spec, seed=0, skip_small=True
    )
    torch.manual_seed(0)
    trainer = Trainer(
        Generator(config),
        sampler,
        TrainingConfig(pretrain_steps=steps, pixel_loss=pixel_loss, device="cpu"),
    )
    started = time.perf_counter()
    trainer.run()
    seconds = (time.perf_counter() - started) / steps
    model = native_model(trainer.model.eval(), ModelCard("benchmark", normalization=spec))
    quality, bicubic = mean_quality(evaluate_images(model, load_set("Set5"), device="cpu"))
    return seconds, quality, bicubic
