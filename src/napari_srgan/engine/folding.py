"""An exact, faster inference form of the SRResNet generator's last upsampling stage and tail.

The 9x9 tail convolution (C -> 3 channels) runs at the output resolution on the pixel-shuffled
features: a GEMM with only 3 outputs per pixel over 81*C inputs, which oneDNN runs at a small
fraction of the machine's speed, after a pixel shuffle that copies C channels at full
resolution. Both are linear maps of the last upsampling block's ``f²C``-channel output, so
they fold into one convolution at the resolution *before* that shuffle:

- the PReLU moves before the shuffle (channel ``k`` after the shuffle comes from channels
  ``k f² .. k f² + f² - 1`` before it, so its slope is repeated ``f²`` times);
- output pixel ``Y = f y + p`` of the 9x9 tail reads shuffled rows ``Y - 4 .. Y + 4``, which are
  rows ``y - R .. y + R`` (``R = 2`` for ``f = 2, 3``) of sub-position ``(Y + k - 4) mod f``
  before the shuffle, so the tail is a ``(2R+1)²`` convolution from ``f²C`` to ``3f²`` channels
  followed by a shuffle of the 3-channel result. Zero padding maps to zero padding, since a
  shuffled row is outside the image exactly when its source row is.

Same arithmetic up to float summation order (differences ~1e-6 on [0, 1]); the full-resolution
C-channel tensors (the largest activations of the network) are never made. The folded stage also
runs in horizontal strips (each reading the 3 rows its convolutions need beyond it), so its
``f²C``-channel activations never exist for the whole tile: the peak memory of a pass is that of
the earlier, lower-resolution layers, and a tile can be several times larger in the same memory.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from napari_srgan.models.srresnet import Generator

#: Values of one activation of the folded stage per strip (2^23 float32 = 32 MB); strips are at
#: least :data:`MIN_STRIP_ROWS` rows so the rows read twice stay a small fraction.
STRIP_VALUES = 1 << 23
MIN_STRIP_ROWS = 32


def folded_radius(factor: int, kernel_radius: int) -> int:
    """How many rows before the shuffle a ``2*kernel_radius+1`` tap at ``factor``x reaches."""
    return max(
        max(-((p - kernel_radius) // factor), (p + kernel_radius) // factor) for p in range(factor)
    )


def fold_tail(shuffle_factor: int, tail: nn.Conv2d) -> nn.Conv2d:
    """The tail conv at output resolution as a conv before a ``shuffle_factor`` pixel shuffle:
    ``tail(shuffle(x)) == shuffle(fold_tail(f, tail)(x))``."""
    f = shuffle_factor
    out_channels, in_channels, size, _ = tail.weight.shape
    k = size // 2
    radius = folded_radius(f, k)
    side = 2 * radius + 1
    weight = tail.weight.new_zeros(out_channels, f, f, in_channels, f, f, side, side)
    for py in range(f):
        for px in range(f):
            for ky in range(size):
                dy, qy = divmod(py + ky - k, f)
                for kx in range(size):
                    dx, qx = divmod(px + kx - k, f)
                    weight[:, py, px, :, qy, qx, radius + dy, radius + dx] = tail.weight[
                        :, :, ky, kx
                    ]
    folded = nn.Conv2d(in_channels * f * f, out_channels * f * f, side, padding=radius)
    folded.weight.data = weight.reshape(out_channels * f * f, in_channels * f * f, side, side)
    folded.bias.data = tail.bias.detach().repeat_interleave(f * f)
    return folded.to(tail.weight.device)


class FoldedGenerator(nn.Module):
    """Inference-only form of a :class:`Generator` with the same outputs (see the module doc).
    Shares all weights but the folded tail with the generator it was made from."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.config = generator.config
        self.factor = generator.config.stages[-1]
        self.head, self.trunk, self.trunk_tail = (
            generator.head,
            generator.trunk,
            generator.trunk_tail,
        )
        self.early_upsample = generator.upsample[:-1]
        last = generator.upsample[-1]
        self.last_conv = last.conv
        slopes = last.act.weight.detach()
        self.register_buffer(
            "last_slopes",
            slopes.repeat_interleave(self.factor**2) if slopes.numel() > 1 else slopes.clone(),
        )
        with torch.no_grad():
            self.tail = fold_tail(self.factor, generator.tail)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(x)
        features = features + self.trunk_tail(self.trunk(features))
        out = self.last_stage_in_strips(self.early_upsample(features))
        if self.config.input_skip:
            out = out + F.interpolate(
                x, scale_factor=self.config.scale, mode="bicubic", align_corners=False
            )
        return out

    def last_stage(self, features: torch.Tensor) -> torch.Tensor:
        """Last upsampling conv, PReLU, folded tail, shuffle: to output resolution."""
        activated = F.prelu(self.last_conv(features), self.last_slopes)
        return F.pixel_shuffle(self.tail(activated), self.factor)

    def last_stage_in_strips(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`last_stage` strip by strip. A strip reads ``1 + R`` rows beyond each side (the
        3x3 conv, then the folded tail), so its kept rows saw exactly what the whole pass sees;
        the image border is zero padded as in the whole pass."""
        batch, channels, height, width = features.shape
        f = self.factor
        rows = max(MIN_STRIP_ROWS, STRIP_VALUES // (batch * width * channels * f * f))
        if rows >= height:
            return self.last_stage(features)
        margin = 1 + self.tail.padding[0]
        pieces = []
        for top in range(0, height, rows):
            bottom = min(top + rows, height)
            low, high = max(top - margin, 0), min(bottom + margin, height)
            out = self.last_stage(features[:, :, low:high])
            pieces.append(out[:, :, (top - low) * f : (bottom - low) * f])
        return torch.cat(pieces, dim=2)


def inference_network(network: nn.Module) -> nn.Module:
    """The fastest exact form of ``network`` for inference: folded for native generators with an
    upsampling stage, the network itself otherwise."""
    if type(network) is Generator and network.config.stages:
        return FoldedGenerator(network).eval()
    return network
