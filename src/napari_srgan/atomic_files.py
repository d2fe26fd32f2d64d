"""Write files so that a crash, a full disk or a kill never leaves a truncated file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def check_writable(directory: str | os.PathLike) -> None:
    """Raise a clear error unless a file can really be created in ``directory`` (permission
    bits alone do not tell: root ignores them, read-only or special file systems do not)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {directory}")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise PermissionError(
            f"output folder is not writable: {directory} ({error.strerror})"
        ) from None


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(temp_path)`` on a temporary file beside ``path``, flush it to disk, then
    rename it over ``path`` (an atomic step on POSIX and Windows). On failure the temporary file
    is removed and ``path`` is untouched."""
    path = Path(path)
    directory = path.parent
    check_writable(directory)
    handle, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp_name)
        with open(temp_name, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path
