"""Losses of SRGAN training: pixel, VGG19 perceptual and adversarial (BCE)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import VGG19_Weights, vgg19

from napari_srgan.io.hashing import file_sha256
from napari_srgan.messages import shown
from napari_srgan.models.files import load_weights_only

log = logging.getLogger(__name__)

#: Indices of VGG19's conv layers in ``vgg19().features`` (outputs before the ReLU, as in
#: ESRGAN: pre-activation features keep more information than post-ReLU ones).
VGG19_LAYERS = {
    "conv1_2": 2,
    "conv2_2": 7,
    "conv3_4": 16,
    "conv4_4": 25,
    "conv5_4": 34,
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def pixel_loss(kind: str) -> nn.Module:
    losses = {"l1": nn.L1Loss(), "mse": nn.MSELoss()}
    if kind not in losses:
        raise ValueError(f"pixel loss must be one of {sorted(losses)}, not {kind!r}")
    return losses[kind]


class WeightsFileError(ValueError):
    """A weights file is not the published one (or not a plain tensor file); never loaded."""


def cached_vgg19_file() -> Path:
    """Where torchvision keeps the ImageNet VGG19 weights once downloaded."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG19_Weights.IMAGENET1K_V1.url).name


def published_hash_prefix(path: Path) -> str:
    """torchvision names its files ``<name>-<first 8 hex digits of the SHA-256>.pth``."""
    return path.stem.rsplit("-", 1)[-1]


def load_checked_state_dict(path: Path, sha256_prefix: str) -> dict[str, torch.Tensor]:
    """Tensors from a torch file whose SHA-256 starts with ``sha256_prefix``.

    The file is hashed before it is opened, then read with ``weights_only=True`` (torch's
    restricted unpickler: tensors and plain containers only), so a planted or damaged file is
    refused and no code in it can run. torch.hub's own loader unpickles without that guard.
    """
    if not file_sha256(path).startswith(sha256_prefix):
        raise WeightsFileError(
            f"{shown(path)} is not the published VGG19 weights file (its SHA-256 does not start with "
            f"{sha256_prefix}); not loading it: delete it to download the real one"
        )
    try:
        state = load_weights_only(path)
    except Exception as error:  # any unpickling refusal or damage: never fall back
        raise WeightsFileError(
            f"{shown(path)} holds more than tensors; not loading it ({error})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise WeightsFileError(f"{shown(path)} is not a state dict of tensors; not loading it")
    return state


def load_vgg19_features(weights: str, allow_download: bool) -> nn.Sequential | None:
    """VGG19's convolutional part, or None when ImageNet weights are wanted but unavailable.

    ``weights="imagenet"`` uses the torch cache, downloading only when ``allow_download``
    (torchvision's URL, checked against the SHA-256 prefix in its name); a cached file that is
    not the published one raises :class:`WeightsFileError`. ``weights="random"`` is for tests
    only (a random VGG is no perceptual loss).
    """
    if weights == "random":
        return vgg19(weights=None).features
    if weights != "imagenet":
        raise ValueError(f"VGG weights must be 'imagenet' or 'random', not {weights!r}")
    path = cached_vgg19_file()
    if not path.is_file():
        if not allow_download:
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                VGG19_Weights.IMAGENET1K_V1.url,
                str(path),
                hash_prefix=published_hash_prefix(path),
                progress=False,
            )
        except Exception as error:  # offline, proxy, disk full: all mean "not available"
            log.warning("could not get VGG19 ImageNet weights: %s", error)
            return None
    state = load_checked_state_dict(path, published_hash_prefix(path))  # before building VGG
    network = vgg19(weights=None)
    network.load_state_dict(state)
    return network.features


class PerceptualLoss(nn.Module):
    """Weighted MSE between VGG19 features of SR and HR (Ledig et al. use conv5_4 scaled by
    1/12.75, i.e. a weight of ~0.006 on the plain MSE)."""

    def __init__(self, features: nn.Sequential, layers: dict[str, float]) -> None:
        super().__init__()
        unknown = sorted(set(layers) - set(VGG19_LAYERS))
        if unknown:
            raise ValueError(f"unknown VGG19 layers {unknown}; choose from {list(VGG19_LAYERS)}")
        self.layers = {VGG19_LAYERS[name]: weight for name, weight in layers.items()}
        self.features = features[: max(self.layers) + 1].eval()
        for parameter in self.features.parameters():
            parameter.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def _features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        found = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.layers:
                found[index] = x
        return found

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        sr_features = self._features(sr)
        with torch.no_grad():
            hr_features = self._features(hr)
        return sum(
            weight * F.mse_loss(sr_features[index], hr_features[index])
            for index, weight in self.layers.items()
        )

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.features.eval()  # VGG is a fixed feature extractor
        return self


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, relativistic: bool = False
) -> torch.Tensor:
    """BCE for telling real from (detached) SR patches; relativistic average (ESRGAN) optional."""
    if relativistic:
        real_logits, fake_logits = (
            real_logits - fake_logits.mean(),
            fake_logits - real_logits.mean(),
        )
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return (real + fake) / 2


def generator_adversarial_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, relativistic: bool = False
) -> torch.Tensor:
    """BCE that rewards SR patches the discriminator takes for real (the paper's -log D(G(x)))."""
    if not relativistic:
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    # Swapping the arguments swaps the roles: SR should look "more real than real".
    return discriminator_loss(fake_logits, real_logits.detach(), relativistic=True)
