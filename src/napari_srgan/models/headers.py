"""Read what a model file says about itself without importing torch (``napari-srgan models``
must answer at once, and listing models should not cost a framework import).

A ``.safetensors`` file starts with an 8-byte little-endian header length and a JSON header
whose ``__metadata__`` holds string values; napari-srgan keeps its model card there.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from napari_srgan.messages import brief, shown

#: Headers larger than this are refused (the format's own reference limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000


class ModelFileError(ValueError):
    """A weight file is missing, unreadable, or does not fit the architecture it claims."""


def parse_json(text: str | bytes):
    """``json.loads`` for text from a model file: JSON nested too deeply for Python's parser
    (a few kB of ``[``) is the ValueError any malformed JSON gives, not a RecursionError that
    no caller expects."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a ``.safetensors`` file (empty if it has none)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ValueError("the file is shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or length > path.stat().st_size - 8:
                raise ValueError(f"header length {length} does not fit the file")
            header = parse_json(handle.read(length))
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {shown(path)}") from None
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ModelFileError(
            f"{shown(path)} is not a readable .safetensors file ({error})"
        ) from None
    if not isinstance(header, dict):
        raise ModelFileError(
            f"{shown(path)} is not a readable .safetensors file (header is not a map)"
        )
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{shown(path)} has a malformed safetensors __metadata__")
    return metadata


@dataclass(frozen=True)
class ModelSummary:
    """One row of ``napari-srgan models``: what a user chooses a model by."""

    name: str
    path: Path
    architecture: str = "?"
    scale: int | None = None
    channels: int | None = None
    degradation: str = "?"
    source: str = "?"
    license: str = "?"
    intended_use: str = ""
    trained: bool = True
    #: Why the file could not be described (the row then shows only this).
    problem: str = ""


def summarize(name: str, path: Path, *, location: str, use_fallback: str = "") -> ModelSummary:
    """A model file's card fields, read from its header; ``location`` says where it is installed
    ("bundled", "user"); ``use_fallback`` describes models whose card has no ``intended_use``."""
    try:
        metadata = safetensors_metadata(path)
        card = parse_json(metadata.get("model_card", "{}"))
        network = parse_json(metadata.get("generator_config", "{}"))
        if not isinstance(card, dict) or not isinstance(network, dict):
            raise ValueError("the model card is not a JSON object")
    except ModelFileError as error:
        return ModelSummary(name, path, problem=str(error))
    except (ValueError, TypeError) as error:
        return ModelSummary(name, path, problem=f"{shown(path)} has broken model metadata: {error}")
    if not card and not network:
        return ModelSummary(name, path, problem=f"{shown(path)} carries no napari-srgan model card")
    source = brief(str(card.get("source", "native")))
    description = (str(card.get("description", "")).strip().splitlines() or [""])[0]
    return ModelSummary(
        name,
        path,
        architecture=brief(str(card.get("architecture", "srresnet"))),
        scale=_whole(network.get("scale", card.get("scale", 4))),
        channels=_whole(network.get("in_channels", card.get("in_channels"))),
        degradation=brief(str(card.get("degradation", "bicubic"))),
        source=location if source == "native" else f"{location} ({source})",
        license=brief(str(card.get("license", "BSD-3-Clause"))),
        intended_use=brief(str(card.get("intended_use") or use_fallback or description)),
        trained=bool(card.get("trained", True)),
    )


def _whole(value: object) -> int | None:
    """A whole number from a header, or None (shown as "?"): anything else (a string with an
    escape sequence or a line break) would be printed as it is in the list."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
