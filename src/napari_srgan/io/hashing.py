"""The SHA-256 of a file, read in blocks: it keys the measured-halo cache and checks downloaded
weights against their published hash, and either file may be hundreds of MB."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
