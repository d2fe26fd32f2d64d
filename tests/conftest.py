"""Shared fixtures: tiny generators (fast on 2 CPU cores) and an isolated user model folder.

No fixture imports torch._dynamo / triton early: the plugin's own triton guard must be what keeps
napari alive when training starts after a canvas exists.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from zarr.storage import LocalStore

from napari_srgan.models.files import native_model, save_model
from napari_srgan.models.halo import CACHE_DIR_ENV
from napari_srgan.models.interface import ModelCard, SRModel
from napari_srgan.models.normalization import NormalizationSpec
from napari_srgan.models.registry import MODEL_DIR_ENV
from napari_srgan.models.srresnet import Generator, GeneratorConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A folder of ../shared/data, or skip the test saying it is absent."""
    path = DATA.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"{path} is absent (tests read ../shared/data beside the project)")
    return path


@pytest.fixture(autouse=True)
def user_models(tmp_path_factory, monkeypatch) -> Path:
    folder = tmp_path_factory.mktemp("user-models")
    monkeypatch.setenv(MODEL_DIR_ENV, str(folder))
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path_factory.mktemp("cache")))
    return folder


def tiny_generator(channels: int = 3, seed: int = 0, **options) -> Generator:
    torch.manual_seed(seed)
    settings = {"channels": 8, "residual_blocks": 1, **options}
    config = GeneratorConfig(in_channels=channels, out_channels=channels, **settings)
    generator = Generator(config)
    for module in generator.modules():  # non-trivial BN statistics so eval mode is tested
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return generator.eval()


def tiny_model(channels: int = 3, mode: str = "dtype", **options) -> SRModel:
    spec = NormalizationSpec(mode) if mode == "dtype" else NormalizationSpec(mode, 1.0, 99.0)
    card = ModelCard(f"tiny-{channels}ch", trained=False, normalization=spec)
    return native_model(tiny_generator(channels, **options), card)


@pytest.fixture
def rgb_model() -> SRModel:
    return tiny_model(3)


@pytest.fixture
def grey_model() -> SRModel:
    return tiny_model(1, mode="percentile")


@pytest.fixture
def tiny_model_file(user_models) -> Path:
    """An RGB model close to bicubic (input skip, small random tail) so results look like the
    input, yet every layer of the network contributes."""
    model = tiny_model(3, batch_norm=False, input_skip=True)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.network.tail.weight, std=1e-3)
    return save_model(user_models / "tiny-rgb.safetensors", model.network, model.card)


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """The Upscale widget's error notifications, its jobs run synchronously (napari is
    imported here, not at the top: the core's tests run without it)."""
    from napari_srgan.plugin import upscale_widget
    from napari_srgan.plugin.background import SYNCHRONOUS_ENV

    monkeypatch.setenv(SYNCHRONOUS_ENV, "1")
    shown: list[str] = []
    monkeypatch.setattr(upscale_widget, "show_error", shown.append)
    return shown


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


#: A training run from scratch small enough for a test (seconds on 2 CPU cores), checkpointed
#: and validated every few steps; add ``--steps`` and the data.
TINY_TRAINING = [
    "train",
    "--from-scratch",
    *("--channels", "8", "--blocks", "1", "--patch", "32", "--batch", "2"),
    *("--checkpoint-every", "2", "--validate-every", "4"),
    *("--val-crop", "32", "--val-fraction", "0.4", "--device", "cpu"),
]


def fill_the_disk(monkeypatch, suffix: str) -> None:
    """Make writing a result of ``suffix`` fail as a full disk does: a store's chunk writes, or a
    file's data (reported by write or, on NFS and quotas, by fsync)."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    async def full_async(*args, **kwargs):
        full()

    if suffix == ".zarr":
        monkeypatch.setattr(LocalStore, "set", full_async)
    else:
        monkeypatch.setattr(os, "fsync", full)
