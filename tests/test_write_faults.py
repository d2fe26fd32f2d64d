"""The write side under a full disk and a kill mid-write, for the writers that hand their data to
a serializer (safetensors, torch.save, tifffile) rather than writing it themselves.

A real write that fails part-way is made with a file size limit (``RLIMIT_FSIZE``): with
SIGXFSZ ignored (Python's default) the write fails with EFBIG where the limit falls, as it fails
with ENOSPC where a disk fills up (both reach the serializer as a failed ``write``); in a child
with SIGXFSZ at its default the process is killed at that write, a kill at an exact moment.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import TINY_TRAINING
from napari_srgan.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
#: Bytes any one file may have under the limit: less than every output written here.
LIMIT = 20_000

KILLED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from napari_srgan.cli import main
sys.exit(main(sys.argv[2:]))
"""


@contextlib.contextmanager
def file_size_limit() -> Iterator[None]:
    """Writes past :data:`LIMIT` bytes fail in this process (the soft limit; restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def community_file(folder: Path) -> Path:
    """A random-weight community model (Compact: quick to measure; a plain state dict) of
    about 140 kB."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    network = Compact(num_in_ch=3, num_out_ch=3, num_feat=32, num_conv=2, upscale=4)
    path = folder / "compact.pth"
    torch.save({name: t.contiguous() for name, t in network.state_dict().items()}, path)
    return path


def picture(path: Path, side: int) -> Path:
    iio.imwrite(path, np.random.default_rng(0).integers(0, 255, (side, side, 3), np.uint8))
    return path


TRAIN = [*TINY_TRAINING, "--steps", "4", "--hr", "hr.png", "--out", "run/m.safetensors"]


@pytest.mark.parametrize(
    "command", ["models add", "train", "export-bmz", "upscale tif", "upscale zarr"]
)
def test_a_write_that_fails_part_way_is_one_line_and_leaves_nothing(
    tmp_path, user_models, tiny_model_file, monkeypatch, capsys, command
):
    """Before, safetensors (models add, the trained model) and torch.save (checkpoints, the
    bioimage.io package's weights) raised errors of their own with no errno: a traceback; a
    TIFF's short write (numpy gives no errno) was the line "27648 requested and 7920 written"."""
    work = tmp_path / "work"
    work.mkdir()
    args, output = {
        "models add": (["models", "add", community_file(tmp_path), "--name", "s"], user_models),
        "train": (TRAIN, work / "run"),
        "export-bmz": (["export-bmz", tiny_model_file, "out.zip"], work),
        **{
            f"upscale {kind}": (
                ["upscale", "in.png", f"out.{kind}", "--model", tiny_model_file],
                work,
            )
            for kind in ("tif", "zarr")
        },
    }[command]
    picture(work / "hr.png", 96)
    picture(work / "in.png", 24)
    before = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    monkeypatch.chdir(work)
    capsys.readouterr()
    with file_size_limit():
        code = main([str(arg) for arg in args])
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("napari-srgan: error: ") and (
        "is larger than its file system or limit allows" in last
        or "the disk is full or the file too large" in last
    ), last
    assert sorted(p.name for p in output.iterdir()) == before


def test_a_full_disk_at_the_trained_model_says_the_checkpoint_resumes(
    tmp_path, monkeypatch, capsys
):
    """The run's last checkpoint was written, then the model did not fit: the error line says
    that --resume goes on from the checkpoint (before, it named only the model file)."""
    import napari_srgan.training.job as job

    real = job.save_trained

    def save_trained_on_a_full_disk(*args, **kwargs):
        with file_size_limit():
            return real(*args, **kwargs)

    monkeypatch.setattr(job, "save_trained", save_trained_on_a_full_disk)
    picture(tmp_path / "hr.png", 96)
    monkeypatch.chdir(tmp_path)
    assert main(TRAIN) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "napari-srgan: error: run/m.safetensors is larger than its file system or limit "
        "allows; run/m.ckpt holds step 4; --resume continues from it"
    )
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["m.ckpt"]


def test_a_models_add_killed_mid_write_leaves_nothing_listed_and_the_next_add_cleans_up(
    tmp_path, user_models, capsys
):
    """Before, safetensors wrote through a temporary file of its own (``.tmpXXXXXX``, private)
    and renamed it over this package's: a kill left it in the user's model folder for good,
    and every model file was written readable by its owner only (0600)."""
    source = community_file(tmp_path)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED, str(LIMIT), "models", "add", str(source), "--name", "s"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    [leftover] = user_models.iterdir()
    assert leftover.name.startswith(".s.safetensors.") and leftover.name.endswith(".tmp")
    assert main(["models"]) == 0
    assert " s " not in capsys.readouterr().out
    assert main(["models", "add", str(source), "--name", "s"]) == 0
    [added] = user_models.iterdir()
    assert added.name == "s.safetensors"
    umask = os.umask(0)
    os.umask(umask)
    assert added.stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_napari_writer_on_a_full_disk_is_one_notification_and_keeps_the_old_file(
    tmp_path, monkeypatch
):
    """napari's save dialog has asked to replace the file: a write that fails part-way keeps
    the old one whole. Before, the notification was numpy's "27648 requested and 19392
    written" (a TIFF's pixels go through numpy's tofile, which gives no errno)."""
    from napari_srgan.plugin import writer

    errors = []
    monkeypatch.setattr(writer, "show_error", errors.append)
    path = tmp_path / "layer.tif"
    path.write_bytes(b"the user's file")
    data = np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8)
    with file_size_limit():
        assert writer.write_image_layer(str(path), data, {"name": "cells", "rgb": True}) == []
    assert errors == [
        f"napari-srgan: cannot save cells: could not write all of {path}: the disk is full or "
        "the file too large"
    ]
    assert path.read_bytes() == b"the user's file"
    assert [p.name for p in tmp_path.iterdir()] == ["layer.tif"]


def test_two_models_add_of_one_name_at_once_keep_the_first_and_name_the_option(
    tmp_path, user_models, monkeypatch, capsys
):
    """Another ``models add`` of the same name finishes while this one measures its tiling.
    Before, the second said "exists; pass --overwrite to replace it": an option ``models add``
    does not have."""
    import napari_srgan.models.halo as halo

    real = halo.measure_tiling

    def measure_while_another_adds(model):
        real(model)
        (user_models / "c.safetensors").write_bytes(b"the other add's model")

    monkeypatch.setattr(halo, "measure_tiling", measure_while_another_adds)
    assert main(["models", "add", str(community_file(tmp_path)), "--name", "c"]) == 2
    assert capsys.readouterr().err == (
        "napari-srgan: error: a model named 'c' was added meanwhile; choose another --name\n"
    )
    assert [p.name for p in user_models.iterdir()] == ["c.safetensors"]
    assert (user_models / "c.safetensors").read_bytes() == b"the other add's model"


CACHE_KILLED = """
import resource, signal, sys
from napari_srgan.models.halo import cached_halo
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (8, 8))
cached_halo(sys.argv[1], lambda: 3)
"""


def test_a_halo_cache_write_killed_midway_is_cleaned_up_by_the_next_one(tmp_path):
    """Before, the cache was written through ``measured-halos.<pid>.tmp``, which a killed
    writer left in the user's cache folder for good."""
    from napari_srgan.models.halo import CACHE_DIR_ENV, cache_path, cached_halo

    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    killed = subprocess.run(
        [sys.executable, "-c", CACHE_KILLED, str(model)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    folder = Path(os.environ[CACHE_DIR_ENV])
    assert [p.name for p in folder.iterdir()] != []  # the killed writer's temporary file
    assert cached_halo(model, lambda: 5) == 5
    assert [p.name for p in folder.iterdir()] == [cache_path().name]
    assert cached_halo(model, lambda: 7) == 5
