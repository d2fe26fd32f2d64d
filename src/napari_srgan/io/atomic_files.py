"""Write files and zarr stores so that a crash, a full disk, a kill or a second writer never
leaves a truncated result behind, and an existing result is replaced only when asked.

Files are written to a temporary name beside the target and renamed into place. Zarr stores
(folders) are written to a unique temporary store and swapped in atomically (Linux
``renameat2(RENAME_EXCHANGE)``; elsewhere: old store aside, new store in, old store deleted,
with the next run restoring the old store if a kill came between the two renames). Temporary
names carry the writer's host and process id, so leftovers of a killed writer are recognised and
removed by the next write to the same output on that host, and a live writer's temporary files
are never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import psutil

from napari_srgan.messages import shown

#: A file inside every zarr store (and temporary build folder) this package writes; only such
#: folders are ever replaced or deleted (a folder without it is someone else's data).
STORE_MARKER = ".napari-srgan-store"
#: This machine in temporary names (letters and digits of its host name): which process ids
#: mean anything (containers sharing a folder get their own host names).
HOST = re.sub(r"[^0-9A-Za-z]", "", socket.gethostname())[:40]
#: Errors that mean the disk (or the user's quota) is full.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputExistsError(FileExistsError):
    """The output exists and the user did not ask to replace it."""


class DiskFullError(OSError):
    """No space left while writing an output (nothing partial is left behind)."""


def refuse_existing(path: str | os.PathLike, *, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` if ``path`` exists and may not be replaced."""
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(f"{shown(path)} exists; pass --overwrite to replace it")
    if path.is_dir() and path.is_symlink():  # replacing it would empty the folder it links to
        raise OutputExistsError(f"{shown(path)} is a link to a folder; not replacing it")
    if path.is_dir() and not is_own_store(path):
        raise OutputExistsError(
            f"{shown(path)} is a folder napari-srgan did not write; not replacing it"
        )


def written_meanwhile(path: Path) -> OutputExistsError:
    """``path`` was free when a write to it began and another writer has made it since."""
    return OutputExistsError(
        f"{shown(path)} was written by another writer meanwhile; not replacing it"
    )


def refuse_same_file(source: str | os.PathLike, output: str | os.PathLike) -> None:
    """Writing a result over its own input would destroy the input: always refused."""
    source, output = Path(source), Path(output)
    same = source.resolve() == output.resolve()
    with contextlib.suppress(OSError):
        same = same or os.path.samefile(source, output)
    if same:
        raise OutputExistsError(
            f"the output {shown(output)} is the input file; choose another name"
        )
    refuse_output_inside(source, output)
    if source.resolve().is_relative_to(output.resolve()):  # replacing the output deletes it
        raise OutputExistsError(
            f"the input {shown(source)} is inside the output {shown(output)}; choose another name"
        )


def refuse_output_inside(source: str | os.PathLike, output: str | os.PathLike) -> None:
    """An output inside an input folder (a zarr store) would add to or replace part of the
    input while it is read: always refused."""
    source, output = Path(source), Path(output)
    if source.is_dir() and output.resolve().is_relative_to(source.resolve()):
        raise OutputExistsError(
            f"the output {shown(output)} is inside the input {shown(source)}; choose another place"
        )


def check_writable(directory: str | os.PathLike) -> None:
    """Raise a clear error unless a file can really be created in ``directory`` (permission
    bits alone do not tell: root ignores them, read-only or special file systems do not)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {shown(directory)}")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        if error.errno in DISK_FULL:
            raise DiskFullError(f"no space left on device in {shown(directory)}") from None
        raise PermissionError(
            f"output folder is not writable: {shown(directory)} ({error.strerror})"
        ) from None


#: numpy's ``tofile`` (used by tifffile and ``np.save``) on a short write: it gives no errno.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


@contextlib.contextmanager
def disk_full_is_one_line(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk or a file too large for its file system (however deep in a writer it
    happens) into one clear error. A writer may report it as an error of its own raised while
    the ``OSError`` was handled (torch's zip writer does): the whole chain is looked at."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        cause = _write_failure(error)
        if cause is None:
            raise
        if cause.errno == errno.EFBIG:  # FAT32 (4 GiB) or a file size limit (ulimit -f)
            raise OSError(f"{shown(path)} is larger than its file system or limit allows") from None
        if cause.errno is None:  # numpy's short write
            raise DiskFullError(
                f"could not write all of {shown(path)}: the disk is full or the file too large"
            ) from None
        raise DiskFullError(f"no space left on device while writing {shown(path)}") from None


def _write_failure(error: BaseException | None) -> OSError | None:
    """The full disk, file size limit or short write in ``error``'s chain, if any."""
    while error is not None:
        if isinstance(error, OSError) and (
            error.errno in (*DISK_FULL, errno.EFBIG)
            or (error.errno is None and _SHORT_WRITE.fullmatch(str(error)))
        ):
            return error
        error = error.__cause__ or error.__context__
    return None


#: The longest file name (in bytes) most file systems allow.
NAME_MAX = 255
#: What a temporary name adds to the output's name: ".", ".<host>-<pid>-<token>.partial".
_TEMPORARY_PART = len(f"..{'h' * 40}-{'9' * 7}-{'0' * 8}.partial")


def check_name_length(path: str | os.PathLike) -> None:
    """Refuse, before any work, a file name longer than the file system allows (its write
    would fail only at the end)."""
    path = Path(path)
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = NAME_MAX
    if len(os.fsencode(path.name)) > limit:
        raise ValueError(
            f"the output name {shown(path.name)} is longer than the {limit} bytes the file "
            "system allows"
        )


def _temporary_stem(path: Path) -> str:
    """The output's name as its temporary names carry it: shortened, with a hash of the whole
    (so two long names still differ), where the temporary name would pass :data:`NAME_MAX`."""
    name = os.fsencode(path.name)
    room = NAME_MAX - _TEMPORARY_PART
    if len(name) <= room:
        return path.name
    digest = hashlib.sha256(name).hexdigest()[:16]
    return f"{os.fsdecode(name[: room - len(digest) - 1])}~{digest}"


def _temporary_name(path: Path, kind: str) -> Path:
    token = secrets.token_hex(4)
    return path.with_name(f".{_temporary_stem(path)}.{HOST}-{os.getpid()}-{token}.{kind}")


def _leftovers(path: Path) -> Iterator[tuple[Path, str]]:
    """This package's temporary names for ``path`` whose writer process is gone. Only this
    host's: a process id says nothing about a writer on another machine (or container) that
    shares the folder, whose temporary files must be left alone."""
    pattern = re.compile(
        rf"\.{re.escape(_temporary_stem(path))}\.([0-9A-Za-z]*)-(\d+)-[0-9a-f]{{8}}\.(tmp|partial|old)"
    )
    if not path.parent.is_dir():
        return
    for entry in path.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and match[1] == HOST and not psutil.pid_exists(int(match[2])):
            yield entry, match[3]


def clean_leftovers(path: str | os.PathLike) -> None:
    """Remove what killed writers of ``path`` left behind; if a kill came between moving an old
    store aside and moving the new one in, put the old store back under its name."""
    path = Path(path)
    for entry, kind in sorted(_leftovers(path), key=lambda item: item[1] != "old"):
        if kind == "tmp" and entry.is_file():
            entry.unlink(missing_ok=True)
        elif is_own_store(entry):
            if kind == "old" and not os.path.lexists(path):
                os.rename(entry, path)
            else:
                remove_store(entry)


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], object], *, overwrite: bool = False
) -> Path:
    """Call ``write(temp_path)`` on a temporary file beside ``path``, flush it to disk, then
    rename it to ``path`` (an atomic step). Without ``overwrite`` the last step is a hard link
    that fails if ``path`` appeared meanwhile, so of two writers one wins. On failure the
    temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    refuse_existing(path, overwrite=overwrite)
    directory = path.parent
    check_writable(directory)
    clean_leftovers(path)
    # Not mkstemp: its files are private (0600); results should get the usual umask permissions.
    temp_name = str(_temporary_name(path, "tmp"))
    try:  # an interruption (SIGTERM) right after creating it still removes it
        os.close(os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        with disk_full_is_one_line(path):
            write(temp_name)
            with open(temp_name, "rb+") as stream:
                os.fsync(stream.fileno())
        if overwrite:
            os.replace(temp_name, path)
        else:
            _link_new(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_stream(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], *, overwrite: bool = False
) -> Path:
    """:func:`atomic_write` for a serializer that writes to an open file. Its data then goes
    through Python's own writes: a full disk is an ``OSError`` with its errno (``torch.save``
    and safetensors' ``save_file`` given a name raise errors of their own without one), and no
    serializer makes a temporary file of its own (safetensors does, private and named
    ``.tmpXXXXXX``) that a kill would leave behind unrecognised."""

    def write_file(temp: str) -> None:
        with open(temp, "wb") as stream:
            write(stream)

    return atomic_write(path, write_file, overwrite=overwrite)


def _link_new(temp_name: str, path: Path) -> None:
    """Give the finished file its final name only if that name is still free."""
    try:
        os.link(temp_name, path)
    except FileExistsError:
        raise written_meanwhile(path) from None
    except OSError:  # a file system without hard links: a (tiny) race is unavoidable there
        if os.path.lexists(path):
            raise written_meanwhile(path) from None
        os.rename(temp_name, path)
    else:
        os.unlink(temp_name)


def remove_store(path: str | os.PathLike) -> None:
    """Delete a store this package wrote, its marker last: a kill halfway leaves a folder that
    is still recognised as this package's and removed by the next run."""
    path = Path(path)
    if path.is_symlink():  # a link swapped in meanwhile: never delete what it points to
        path.unlink()
        return
    for entry in path.iterdir():
        if entry.name == STORE_MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (path / STORE_MARKER).unlink(missing_ok=True)
    path.rmdir()


def is_own_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder this package wrote (it holds :data:`STORE_MARKER`); a link
    to one is not: replacing it would delete the store it links to."""
    path = Path(path)
    return not path.is_symlink() and (path / STORE_MARKER).is_file()


def new_store(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """A fresh, uniquely named temporary folder beside ``path`` for a store that will replace
    it, marked as this package's. Refuses before any work if ``path`` may not be replaced."""
    path = Path(path)
    refuse_existing(path, overwrite=overwrite)
    if os.path.lexists(path) and not is_own_store(path):
        raise OutputExistsError(
            f"{shown(path)} is not a store napari-srgan wrote; not replacing it"
        )
    check_writable(path.parent)
    clean_leftovers(path)
    return _marked_folder(path)


def _marked_folder(path: Path) -> Path:
    """A fresh temporary folder beside ``path``, marked as this package's: a killed writer's
    is recognised and removed by the next write to ``path`` (:func:`clean_leftovers`)."""
    temporary = _temporary_name(path, "partial")
    temporary.mkdir()
    try:  # a folder without the marker would not be recognised (and removed) as a leftover
        (temporary / STORE_MARKER).write_text(json.dumps({"written_by": "napari-srgan"}))
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return temporary


@contextlib.contextmanager
def build_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` to assemble its parts in (a package zipped from
    several files), removed afterwards, also when a stop signal interrupts the work. Not in the
    system's temporary folder: what a kill (SIGKILL, power loss) leaves there is never removed;
    beside ``path`` it is removed by the next write to ``path``, and the finished file is
    renamed into place from the same file system."""
    path = Path(path)
    check_writable(path.parent)
    clean_leftovers(path)
    folder = _marked_folder(path)
    try:
        yield folder
    finally:
        remove_store(folder)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where that is unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange):
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            return False
        raise OSError(code, os.strerror(code), str(second))
    return True


def replace_store(
    temporary: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool
) -> Path:
    """Move the complete store ``temporary`` (from :func:`new_store`) to ``path``.

    At every moment ``path`` holds either the complete old store or the complete new one.
    Without ``overwrite`` a store another writer put at ``path`` meanwhile is kept and this is
    an error; with it, the last writer's store stays (as when one writer runs after the other).
    """
    temporary, path = Path(temporary), Path(path)
    if not is_own_store(temporary):  # emptied by someone meanwhile: never move that in
        raise OSError(f"the temporary store of {shown(path)} was deleted while it was written")
    if not os.path.lexists(path):
        try:
            os.rename(temporary, path)
            return path
        except OSError as error:  # another writer got there first
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
    if not overwrite:  # the path was free when this write began (see new_store)
        raise written_meanwhile(path)
    if not is_own_store(path):
        raise OutputExistsError(
            f"{shown(path)} is not a store napari-srgan wrote; not replacing it"
        )
    if _exchange(temporary, path):
        remove_store(temporary)  # now the old store
        return path
    aside = _temporary_name(path, "old")
    os.rename(path, aside)
    os.rename(temporary, path)
    remove_store(aside)
    return path
