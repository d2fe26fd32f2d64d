"""Shared data access for the benchmarks: ../shared/data relative to the project root."""

from __future__ import annotations

import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_dir(*parts: str) -> Path:
    """A folder of the shared data set, or exit with a clear message when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.is_dir():
        sys.exit(
            f"skipped: {path} is absent (the benchmarks read ../shared/data beside the project)"
        )
    return path
