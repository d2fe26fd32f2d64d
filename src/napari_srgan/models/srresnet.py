"""SRGAN networks (Ledig et al. 2017, arXiv 1609.04802): the 4x generator and the discriminator.

Plain ``torch.nn`` modules, configured by small frozen dataclasses that are stored next to the
weights, so a weight file always says which architecture it belongs to.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

from napari_srgan.models.interface import NetworkSpec

#: The default upscaling factor (two PixelShuffle x2 stages); the bundled models are 4x.
SCALE = 4
#: Upscaling factors a generator can be built for, and their PixelShuffle stages.
UPSAMPLE_STAGES = {1: (), 2: (2,), 3: (3,), 4: (2, 2), 8: (2, 2, 2)}


#: Largest sizes a generator may declare (far above any useful model, far below what would
#: exhaust memory while the network is built).
GENERATOR_LIMITS = {"in_channels": 16, "out_channels": 16, "channels": 1024, "residual_blocks": 256}


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of an SRResNet / SRGAN generator (4x as in the paper; 1x, 2x, 3x, 8x too).

    ``batch_norm=True, residual_scale=1, input_skip=False`` is the paper's SRResNet. Dropping batch
    norm (EDSR) and adding a bicubic upsampled copy of the input to the output (so the network
    learns only the residual, and starts out as bicubic) are options because they train faster and
    better on small data; ``docs/models.md`` records which one ships and why.
    """

    in_channels: int = 3
    out_channels: int = 3
    channels: int = 64
    residual_blocks: int = 16
    batch_norm: bool = True
    residual_scale: float = 1.0
    input_skip: bool = False
    #: Output pixels per input pixel: 1 (restoration), 2, 3, 4 (the paper) or 8.
    scale: int = SCALE

    def __post_init__(self) -> None:
        # A stored config is read from a file anyone may write: 4.0 and True compare equal to
        # 4 and 1 (and would pass the lookup below), but break slicing and shapes later on.
        if type(self.scale) is not int or self.scale not in UPSAMPLE_STAGES:
            raise ValueError(
                f"GeneratorConfig.scale must be one of {sorted(UPSAMPLE_STAGES)}, "
                f"got {self.scale!r}"
            )
        for name in ("batch_norm", "input_skip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"GeneratorConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )
        # Checked before any layer is built: a file claiming 20000 features must not allocate.
        for name, top in GENERATOR_LIMITS.items():
            value = getattr(self, name)
            low = 0 if name == "residual_blocks" else 1
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= top:
                raise ValueError(f"GeneratorConfig.{name} must be {low}..{top}, got {value!r}")
        if not (isinstance(self.residual_scale, int | float) and 0 < self.residual_scale <= 10):
            raise ValueError(
                f"GeneratorConfig.residual_scale must be in (0, 10], got {self.residual_scale!r}"
            )
        if self.input_skip and self.in_channels != self.out_channels:
            raise ValueError("input_skip needs in_channels == out_channels")

    @classmethod
    def from_dict(cls, values: dict) -> GeneratorConfig:
        """Build from a stored dict, naming unknown keys instead of failing obscurely."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown generator settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def stages(self) -> tuple[int, ...]:
        """The PixelShuffle factor of each upsampling block."""
        return UPSAMPLE_STAGES[self.scale]

    @property
    def receptive_radius(self) -> float:
        """How far (in input pixels, centre to centre) an output pixel can see: 4 for the 9x9
        head, 2 per residual block, 1 for the trunk's closing conv, 1 pixel of the current
        resolution for each upsampling conv (1, then 0.5 at 2x for 4x), 4 output pixels for the
        9x9 tail, plus (s - 1) / 2s by which the pixel shuffles move output pixel centres away
        from their source pixel's centre (0.375 at 4x). (The bicubic input skip reaches only 2.)"""
        upsampling = sum(1 / math.prod(self.stages[:i]) for i in range(len(self.stages)))
        tail = 4 / self.scale
        shift = (self.scale - 1) / (2 * self.scale)
        return 4 + 2 * self.residual_blocks + 1 + upsampling + tail + shift

    @property
    def tile_margin(self) -> int:
        """Input pixels of overlap each tile needs so tiled output equals whole-image output."""
        return math.ceil(self.receptive_radius)

    @property
    def macs_per_input_pixel(self) -> int:
        """Multiply-adds per input pixel of one forward pass (for GFLOP/s figures)."""
        c = self.channels
        head = 81 * self.in_channels * c
        trunk = (2 * self.residual_blocks + 1) * 9 * c * c
        upsample = sum(
            9 * c * factor * factor * c * math.prod(self.stages[:i]) ** 2
            for i, factor in enumerate(self.stages)
        )
        tail = 81 * c * self.out_channels * self.scale * self.scale
        return head + trunk + upsample + tail


class ResidualBlock(nn.Module):
    """conv-BN-PReLU-conv-BN plus identity, as in the paper (BN optional)."""

    def __init__(self, channels: int, batch_norm: bool, residual_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm),
            nn.BatchNorm2d(channels) if batch_norm else nn.Identity(),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm),
            nn.BatchNorm2d(channels) if batch_norm else nn.Identity(),
        )
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_scale * self.body(x)


class UpsampleBlock(nn.Module):
    """conv to factor² x channels, PixelShuffle x factor, PReLU."""

    def __init__(self, channels: int, factor: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * factor * factor, 3, padding=1)
        self.shuffle = nn.PixelShuffle(factor)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))


class Generator(nn.Module):
    """The SRGAN / SRResNet generator (``config.scale``, 4x by default). Input and output are in
    [0, 1] (roughly)."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GeneratorConfig()
        c = config.channels
        self.head = nn.Sequential(nn.Conv2d(config.in_channels, c, 9, padding=4), nn.PReLU(c))
        self.trunk = nn.Sequential(
            *(
                ResidualBlock(c, config.batch_norm, config.residual_scale)
                for _ in range(config.residual_blocks)
            )
        )
        self.trunk_tail = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=not config.batch_norm),
            nn.BatchNorm2d(c) if config.batch_norm else nn.Identity(),
        )
        self.upsample = nn.Sequential(*(UpsampleBlock(c, factor) for factor in config.stages))
        self.tail = nn.Conv2d(c, config.out_channels, 9, padding=4)
        if config.input_skip:
            # Residual learning: an untrained network returns plain bicubic upscaling.
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def training_spec(self) -> NetworkSpec:
        """Geometry and identity for training; the identity is the config, as checkpoints have
        always stored it."""
        config = self.config
        return NetworkSpec(config.scale, config.in_channels, config.out_channels, config.to_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(x)
        features = features + self.trunk_tail(self.trunk(features))
        out = self.tail(self.upsample(features))
        if self.config.input_skip:
            scale = self.config.scale
            out = out + (
                x
                if scale == 1
                else F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
            )
        return out


@dataclass(frozen=True)
class DiscriminatorConfig:
    """The paper's discriminator: 8 conv layers (64 to 512 features, every second one strided),
    then dense 1024 and dense 1. ``channels`` scales the widths (64 in the paper)."""

    in_channels: int = 3
    channels: int = 64
    dense_features: int = 1024

    def to_dict(self) -> dict:
        return asdict(self)


class Discriminator(nn.Module):
    """Says whether an HR patch is real; returns logits (use BCE-with-logits)."""

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DiscriminatorConfig()
        c = config.channels
        widths = [c, c, 2 * c, 2 * c, 4 * c, 4 * c, 8 * c, 8 * c]
        layers: list[nn.Module] = [
            nn.Conv2d(config.in_channels, c, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for index in range(1, len(widths)):
            stride = 2 if index % 2 == 1 else 1
            layers += [
                nn.Conv2d(
                    widths[index - 1], widths[index], 3, stride=stride, padding=1, bias=False
                ),
                nn.BatchNorm2d(widths[index]),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        # A 96x96 patch is 6x6 after four strided convs; pooling to 6x6 accepts any patch size.
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(widths[-1] * 36, config.dense_features),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(config.dense_features, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x))).squeeze(1)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
