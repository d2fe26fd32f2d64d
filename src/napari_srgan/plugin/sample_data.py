"""Sample data contributions (see :mod:`napari_srgan.samples`)."""

from __future__ import annotations

from napari_srgan.samples import low_resolution_sample


def _layer(key: str, name: str) -> list[tuple]:
    image, description = low_resolution_sample(key)
    return [(image, {"name": name, "metadata": {"napari_srgan_sample": description}}, "image")]


def astronaut_low_resolution() -> list[tuple]:
    return _layer("astronaut", "astronaut (LR)")


def cell_low_resolution() -> list[tuple]:
    return _layer("cell", "cell (LR)")


def ihc_low_resolution() -> list[tuple]:
    return _layer("ihc", "ihc (LR)")
