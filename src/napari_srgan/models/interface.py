"""One description of a super-resolution model, whatever its source (native, spandrel, BMZ).

The engine, the CLI and the widgets only ever see an :class:`SRModel`: a torch module that maps
``(b, in_channels, h, w)`` in [0, 1] to ``(b, out_channels, scale * h, scale * w)``, and a
:class:`ModelCard` that says how to feed it, how far its pixels see (the tiling halo) and where
it came from. Each source (a native safetensors file, a spandrel state dict, a bioimage.io
package) is one loader that builds these two.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

from torch import nn

from napari_srgan.messages import brief
from napari_srgan.models.headers import parse_json
from napari_srgan.models.normalization import NormalizationSpec


@dataclass
class ModelCard:
    """What a user and the engine need to know about a model; stored as JSON in native files."""

    name: str
    description: str = ""
    #: False for a randomly initialised placeholder; the UI and CLI warn about such models.
    trained: bool = True
    #: Output pixels per input pixel along each image axis (1 = restoration at the same size).
    scale: int = 4
    in_channels: int = 3
    out_channels: int = 3
    normalization: NormalizationSpec = field(default_factory=NormalizationSpec)
    #: How the low-resolution training inputs were made ("bicubic", "crappifier", "paired").
    degradation: str = "bicubic"
    #: What the model is for, in a line a user can choose by ("photos", "noisy EM"...).
    intended_use: str = ""
    #: Architecture id (e.g. "srresnet", spandrel's "ESRGAN", "SwinIR") and where it came from.
    architecture: str = "srresnet"
    source: str = "native"
    license: str = "BSD-3-Clause"
    #: Input pixels an output pixel can depend on, from the architecture (None: unbounded or
    #: unknown, e.g. global attention). Tiling with this overlap is exact.
    theoretical_halo: int | None = None
    #: The smallest overlap measured to keep tiled output within the tiling tolerance of
    #: untiled output with this model's own weights (None: not measured yet).
    measured_halo: int | None = None
    #: Inputs must be padded to a multiple of this (window attention models), 1 otherwise.
    size_multiple: int = 1
    supports_half: bool = True
    #: Free-form provenance: data, steps, wall time, machine, losses, base model, command.
    training: dict = field(default_factory=dict)
    #: Validation metrics, e.g. {"Set5": {"psnr_y": 30.1, "ssim_y": 0.86}}.
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Text from a model file (native card, bioimage.io package, file name) must not break
        the one-line messages and lists it is shown in, nor drive a terminal, nor fill them."""
        for name in SHOWN_IN_A_LINE:
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, brief(value))

    def to_json(self) -> str:
        values = asdict(self)
        values["normalization"] = self.normalization.to_dict()
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse a stored card; raises ValueError naming the problem (not a JSON object,
        unknown or missing fields)."""
        values = parse_json(text)
        if not isinstance(values, dict):
            raise ValueError(f"the model card is a JSON {type(values).__name__}, not an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model card fields {unknown}")
        normalization = values.get("normalization", {})
        if not isinstance(normalization, dict):
            raise ValueError("the model card's normalization is not an object")
        types = {f.name: f.type for f in fields(cls)}
        for name, value in values.items():
            if name != "normalization":
                _check_card_field(name, value, types[name])
        values["normalization"] = NormalizationSpec(**normalization)
        return cls(**values)

    @property
    def halo(self) -> int:
        """The overlap tiles read by default: measured where known, else the theoretical one
        (else a conservative 32 px for models whose reach is unknown)."""
        if self.measured_halo is not None:
            return self.measured_halo
        return self.theoretical_halo if self.theoretical_halo is not None else 32


#: Card fields shown in one line (model lists, messages, layer names): unprintable characters
#: in them are escaped, and long text shortened, when a card is made.
SHOWN_IN_A_LINE = ("name", "degradation", "intended_use", "architecture", "source", "license")
#: The Python types a stored card's field may hold, by its annotation.
_CARD_TYPES = {"str": str, "bool": bool, "int": int, "int | None": (int, type(None)), "dict": dict}
#: Whole-number fields' bounds: the engine tiles, pads and allocates by them.
CARD_LIMITS = {
    "scale": (1, 16),
    "in_channels": (1, 1024),
    "out_channels": (1, 1024),
    "theoretical_halo": (0, 100_000),
    "measured_halo": (0, 100_000),
    "size_multiple": (1, 4096),
}


def beyond_card_limits(facts: dict[str, object]) -> str | None:
    """What is wrong with the first of ``facts`` (card fields a network implies, in
    :data:`CARD_LIMITS`) outside its bounds, or None: checked before the engine pads, tiles or
    allocates by them (or a probe runs the network)."""
    for name, value in facts.items():
        low, high = CARD_LIMITS.get(name, (None, None))
        if low is not None and not low <= value <= high:
            return (
                f"its {name.replace('_', ' ')} is {value}; napari-srgan runs models with "
                f"{low}..{high}"
            )
    return None


def _check_card_field(name: str, value, annotation: str) -> None:
    """A stored card is read from a file anyone may have written: a field of the wrong type
    (``"measured_halo": "abc"``) or size (``"size_multiple": 0``) fails here in one line, not as
    a traceback in the engine."""
    expected = _CARD_TYPES[annotation]
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise ValueError(f"model card field {name!r} is {repr(value)[:40]}, not {annotation}")
    low, high = CARD_LIMITS.get(name, (None, None))
    if isinstance(value, int) and low is not None and not low <= value <= high:
        raise ValueError(f"model card field {name!r} is {value}, not within {low}..{high}")


@dataclass
class SRModel:
    """A network ready to run, with the card that says how to feed it."""

    network: nn.Module
    card: ModelCard
    path: Path | None = None

    @property
    def scale(self) -> int:
        return self.card.scale

    @property
    def in_channels(self) -> int:
        return self.card.in_channels


@dataclass(frozen=True)
class NetworkSpec:
    """What training needs to know about a network, whatever its source: its geometry, and a
    dict identifying its layout, stored in checkpoints so that one network's training state is
    never loaded into another."""

    scale: int
    in_channels: int
    out_channels: int
    identity: dict


def network_label(identity: object) -> str:
    """A network identity (:attr:`NetworkSpec.identity`) in a few words, for messages."""
    if not isinstance(identity, dict):
        return "unknown network"
    architecture = identity.get("architecture", "srresnet")
    return f"{architecture} {identity.get('scale', '?')}x"


class TrainableNetwork(Protocol):
    """A network the trainer can fine-tune: native generators and spandrel networks."""

    def training_spec(self) -> NetworkSpec: ...
