"""What produced an upscaled image, recorded with it (file metadata, layer metadata)."""

from __future__ import annotations

from datetime import UTC, datetime

from napari_srgan import __version__
from napari_srgan.models.interface import SRModel


def provenance(model: SRModel, *, source: str) -> dict:
    card = model.card
    return {
        "software": f"napari-srgan {__version__}",
        "model": card.name,
        "model_trained": card.trained,
        "model_file": str(model.path) if model.path else None,
        "scale": model.scale,
        "source": source,
        "normalization": card.normalization.to_dict(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
