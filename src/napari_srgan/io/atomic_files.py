"""Write files so that a crash, a full disk or a kill never leaves a truncated file behind."""

from __future__ import annotations

import os
import secrets
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
    # Not mkstemp: its files are private (0600); results should get the usual umask permissions.
    temp_name = str(directory / f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(temp_name)
        with open(temp_name, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path
