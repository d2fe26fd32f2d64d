"""SIGTERM (SIGHUP, SIGINT) while the CLI writes: the unfinished output is removed, an existing
output keeps its bytes, one line says so, and the exit status is 128 + the signal's number.

The process sends the signal to itself at a chosen moment of the write (a real signal from the
kernel, as from ``kill``, at an exact moment: no timing guesses). Two tests run the CLI in a
child process (exit status, stderr, interpreter exit); the others run ``main`` in this process,
which is faster and also shows that nothing is written after ``main`` returned: a write that
goes on after the signal is slowed down, so a store removed without waiting for it would be
recreated by it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import dask
import imageio.v3 as iio
import numpy as np
import pytest
import torch
import zarr
from zarr.storage import LocalStore

import napari_srgan.io.atomic_files as atomic
from napari_srgan.cli import main
from napari_srgan.models.registry import load_model

SRC = str(Path(__file__).resolve().parents[1] / "src")
#: Seconds a write goes on after the signal.
LATE = 0.3


def stop_during(signame: str, moment: str, patch: Callable = setattr) -> None:
    """Send ``signame`` to this process during a write: ``"fsync N"`` once the Nth temporary
    file holds its data (all file writers: images, models, checkpoints, packages), ``"chunk"``
    during the first chunk written into a zarr store (by a helper thread, or by zarr's IO
    thread while the main thread waits), a write that goes on after the signal; ``"building"``
    once a bioimage.io package's cover is written (most of its parts are, none is zipped)."""
    sent = []

    def send() -> None:
        sent.append(True)
        os.kill(os.getpid(), getattr(signal, signame))

    if moment == "building":
        import napari_srgan.models.bioimageio as bmz

        real_cover = bmz._cover

        def cover(*args) -> None:
            real_cover(*args)
            send()

        patch(bmz, "_cover", cover)
        return

    if moment.startswith("fsync"):
        calls, at, real_fsync = itertools.count(1), int(moment.split()[1]), os.fsync

        def fsync(descriptor: int) -> None:
            real_fsync(descriptor)
            if next(calls) == at:
                send()

        patch(atomic.os, "fsync", fsync)
        return
    real_setitem, real_set = zarr.Array.__setitem__, LocalStore.set

    def slow_setitem(self, key, value) -> None:  # a tile or dask block on a helper thread
        if threading.current_thread() is not threading.main_thread() and not sent:
            send()
            time.sleep(LATE)
        real_setitem(self, key, value)

    async def slow_set(self, key, value) -> None:  # what the main thread waits for
        if not key.rsplit("/", 1)[-1].startswith(".") and not sent:
            send()
            await asyncio.sleep(LATE)
        await real_set(self, key, value)

    patch(zarr.Array, "__setitem__", slow_setitem)
    patch(LocalStore, "set", slow_set)


CHILD = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_stop_signals import stop_during
from napari_srgan.cli import main
stop_during(sys.argv[1], sys.argv[2])
sys.exit(main(sys.argv[3:]))
"""


def stopped_child(signame: str, moment: str, *args) -> tuple[int, str]:
    run = subprocess.run(
        [sys.executable, "-c", CHILD, signame, moment, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    return run.returncode, run.stderr


@pytest.fixture
def stopped(monkeypatch, capsys):
    """Run ``main`` here, stopped by a signal during a write; (exit status, stderr) once any
    late write would have landed. Without the CLI's handlers the signal fails the test (it
    does not end pytest)."""

    def unhandled(signum, frame):
        raise AssertionError(f"the CLI did not handle {signal.Signals(signum).name}")

    handlers = {s: signal.signal(s, unhandled) for s in (signal.SIGTERM, signal.SIGHUP)}
    handlers[signal.SIGINT] = signal.getsignal(signal.SIGINT)

    def run(signame: str, moment: str, *args) -> tuple[int, str]:
        capsys.readouterr()
        stop_during(signame, moment, monkeypatch.setattr)
        code = main([str(arg) for arg in args])
        time.sleep(2 * LATE)
        return code, capsys.readouterr().err

    yield run
    for number, handler in handlers.items():
        signal.signal(number, handler)


def check_stopped(code: int, stderr: str, signame: str, kept: str = "") -> None:
    """Exit 128 + signal number, no traceback, and one line (the last) saying it stopped."""
    assert code == 128 + getattr(signal, signame), stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert [line for line in lines if "stopped" in line] == [lines[-1]], stderr
    assert lines[-1] == f"napari-srgan: stopped by {signame}: no unfinished output was left{kept}"


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def picture(tmp_path) -> Path:
    """200x200 RGB: its 800x800 result is 2x2 zarr chunks."""
    path = tmp_path / "in.png"
    iio.imwrite(path, np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8))
    return path


def model_options(model_file: Path) -> list[str]:
    return ["--model", str(model_file), "--tile", "64", "--device", "cpu"]


@pytest.mark.parametrize(("signame", "suffix"), [("SIGTERM", ".zarr"), ("SIGHUP", ".tif")])
def test_a_stopped_cli_process_leaves_the_old_result(
    tmp_path, picture, tiny_model_file, signame, suffix
):
    output = tmp_path / f"out{suffix}"
    options = model_options(tiny_model_file)
    assert main(["upscale", str(picture), str(output), *options]) == 0
    before = snapshot(tmp_path)
    moment = "chunk" if suffix == ".zarr" else "fsync 1"
    code, stderr = stopped_child(
        signame, moment, "upscale", picture, output, *options, "--overwrite"
    )
    check_stopped(code, stderr, signame)
    assert snapshot(tmp_path) == before  # no temporary file or store; the old result as it was


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_sigterm_during_a_dask_computation_waits_for_its_writes(
    tmp_path, picture, tiny_model_file, stopped, scheduler
):
    """synchronous: the main thread waits for zarr's IO thread; threads: for dask's workers."""
    output = tmp_path / "out.zarr"
    options = [*model_options(tiny_model_file), "--scheduler", scheduler]
    code, stderr = stopped("SIGTERM", "chunk", "upscale", picture, output, *options)
    check_stopped(code, stderr, "SIGTERM")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"], sorted(
        str(p) for p in tmp_path.rglob("*")
    )


def stop_on_a_cluster(tmp_path, tiny_model_file, stopped, monkeypatch) -> tuple[int, str, int, int]:
    """Upscale a 256 x 256 store in 16 blocks of 64 px on a dask.distributed cluster (in this
    process, on threads, so that its writes can be slowed and its blocks counted), stopped
    during the first chunk written: (exit status, stderr, blocks computed, tasks the scheduler
    and its worker still hold once the command returned)."""
    distributed = pytest.importorskip("distributed")
    import napari_srgan.engine.lazy as lazy

    source = tmp_path / "in.zarr"
    image = zarr.open_array(
        str(source), mode="w", shape=(256, 256, 3), dtype="u1", chunks=(64, 64, 3)
    )
    image[:] = np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)
    computed, real_block = [], lazy._upscale_block

    @functools.wraps(real_block)  # dask passes block_info to what takes it
    def counted_block(*args, **kwargs):
        computed.append(True)
        return real_block(*args, **kwargs)

    monkeypatch.setattr(lazy, "_upscale_block", counted_block)
    with (
        dask.config.set({"array.chunk-size": "12KiB"}),  # blocks of the input's 64 x 64 x 3
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
    ):
        options = [*model_options(tiny_model_file), "--scheduler", cluster.scheduler_address]
        code, stderr = stopped(
            "SIGTERM", "chunk", "upscale", source, tmp_path / "out.zarr", *options
        )
        (worker,) = cluster.workers.values()
        left = len(cluster.scheduler.tasks) + len(worker.state.tasks)
    return code, stderr, len(computed), left


def test_sigterm_on_a_distributed_cluster_cancels_the_job_and_waits_for_its_writes(
    tmp_path, tiny_model_file, stopped, monkeypatch, caplog
):
    """The blocks still queued on the cluster are cancelled: none is computed after the stop,
    and the scheduler and its worker hold no task of the job when the command returns. The
    block being written cannot be interrupted: the command waits for it before removing the
    store (before, its late write recreated part of the unfinished store beside the output,
    without the mark that lets a later run remove it)."""
    from napari_srgan.engine import schedulers

    code, stderr, computed, left = stop_on_a_cluster(
        tmp_path, tiny_model_file, stopped, monkeypatch
    )
    check_stopped(code, stderr, "SIGTERM")
    assert left == 0
    waiting = [r.getMessage() for r in caplog.records if r.name == schedulers.__name__]
    assert waiting == [
        "napari-srgan: waiting (at most 60 s) for the tasks that the cluster's "
        "workers are computing: they cannot be interrupted"
    ]
    assert 4 <= computed < 16  # the first of the 2 x 2 output chunks needed 4 blocks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"], sorted(
        str(p) for p in tmp_path.rglob("*")
    )


def test_a_cluster_task_that_outlasts_the_wait_is_named_in_a_warning(
    tmp_path, tiny_model_file, stopped, monkeypatch, caplog
):
    """A hung worker does not keep a stopped command alive for good: after the bound the
    command ends as stopped, with a warning that a chunk may still be written."""
    from napari_srgan.engine import schedulers

    monkeypatch.setattr(schedulers, "DRAIN_TIMEOUT", 0.0)
    code, stderr, _computed, _left = stop_on_a_cluster(
        tmp_path, tiny_model_file, stopped, monkeypatch
    )
    check_stopped(code, stderr, "SIGTERM")
    [waiting, warning] = [r.getMessage() for r in caplog.records if r.name == schedulers.__name__]
    assert waiting.startswith("napari-srgan: waiting (at most 0 s) for the tasks")
    assert warning.startswith("napari-srgan: warning: tasks still run on the cluster 0 s after")


def test_ctrl_c_stops_the_same_way(tmp_path, picture, tiny_model_file, stopped):
    output = tmp_path / "out.png"
    output.write_bytes(b"an earlier result")
    options = model_options(tiny_model_file)
    code, stderr = stopped("SIGINT", "fsync 1", "upscale", picture, output, *options, "--overwrite")
    check_stopped(code, stderr, "SIGINT")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]
    assert output.read_bytes() == b"an earlier result"


def test_sigterm_in_a_batch_keeps_the_finished_results(tmp_path, picture, tiny_model_file, stopped):
    second = tmp_path / "second.png"
    second.write_bytes(picture.read_bytes())
    folder = tmp_path / "results"
    options = model_options(tiny_model_file)
    load_model(tiny_model_file)  # its measured halo is cached now: the fsyncs are the results'
    code, stderr = stopped("SIGTERM", "fsync 2", "upscale", picture, second, folder, *options)
    check_stopped(code, stderr, "SIGTERM", f"; 1 of 2 results are in {folder}")
    assert [p.name for p in folder.iterdir()] == ["in_x4.ome.tif"]


def test_sigterm_while_training_keeps_the_last_checkpoint(tmp_path, stopped):
    image = tmp_path / "hr.png"
    iio.imwrite(image, np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8))
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"an earlier model")
    checkpoint = tmp_path / "run.ckpt"
    args = ["train", "--from-scratch", "--channels", "4", "--blocks", "0", "--patch", "32"]
    args += ["--batch", "1", "--steps", "6", "--checkpoint-every", "2", "--val-crop", "32"]
    args += ["--val-fraction", "0.4", "--device", "cpu", "--hr", image, "--out", out]
    # The checkpoint of step 2 is written, the one of step 4 is stopped while it is written.
    code, stderr = stopped("SIGTERM", "fsync 2", *args, "--checkpoint", checkpoint, "--overwrite")
    check_stopped(
        code, stderr, "SIGTERM", f"; {checkpoint} holds step 2; --resume continues from it"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr.png", "model.safetensors", "run.ckpt"]
    assert out.read_bytes() == b"an earlier model"
    assert torch.load(checkpoint, weights_only=True)["step"] == 2


def test_sigterm_while_exporting_a_package_keeps_the_old_one(tmp_path, tiny_model_file, stopped):
    output = tmp_path / "model.zip"
    output.write_bytes(b"an earlier package")
    code, stderr = stopped(
        "SIGTERM", "fsync 1", "export-bmz", tiny_model_file, output, "--overwrite"
    )
    check_stopped(code, stderr, "SIGTERM")
    assert [p.name for p in tmp_path.iterdir()] == ["model.zip"]
    assert output.read_bytes() == b"an earlier package"


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_stop_while_a_package_is_built_removes_its_parts(
    tmp_path, tiny_model_file, stopped, monkeypatch, signame
):
    system_temporary = tmp_path / "system-tmp"
    system_temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temporary))
    output = tmp_path / "model.zip"
    output.write_bytes(b"an earlier package")
    code, stderr = stopped(
        signame, "building", "export-bmz", tiny_model_file, output, "--overwrite"
    )
    check_stopped(code, stderr, signame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip", "system-tmp"]
    assert output.read_bytes() == b"an earlier package"
    assert list(system_temporary.iterdir()) == []


def test_a_package_export_killed_while_building_leaves_its_parts_only_beside_the_output(
    tmp_path, tiny_model_file, monkeypatch
):
    """Before, the package was built in the system's temporary folder, where what a killed
    export (SIGKILL, power loss) left was never removed; now its hidden build folder beside
    the output is removed by the next export to that output, and the old package is kept."""
    system_temporary, folder = tmp_path / "system-tmp", tmp_path / "packages"
    system_temporary.mkdir()
    folder.mkdir()
    output = folder / "model.zip"
    output.write_bytes(b"an earlier package")
    args = ["export-bmz", str(tiny_model_file), str(output), "--overwrite"]
    monkeypatch.setenv("TMPDIR", str(system_temporary))
    code, stderr = stopped_child("SIGKILL", "building", *args)
    assert code == -signal.SIGKILL, stderr
    assert list(system_temporary.iterdir()) == []
    assert output.read_bytes() == b"an earlier package"
    (leftover,) = (p for p in folder.iterdir() if p != output)
    assert leftover.name.startswith(".model.zip.") and leftover.name.endswith(".partial")
    assert main(args) == 0
    assert [p.name for p in folder.iterdir()] == ["model.zip"]
    assert zipfile.is_zipfile(output)


WORKERS_INTERRUPTED = """
import os, signal, time
import dask
from napari_srgan.engine.schedulers import dask_scheduler
signal.signal(signal.SIGINT, lambda signum, frame: None)  # stands in for the CLI's handler
with dask_scheduler("processes"):
    dask.compute(
        dask.delayed(os.killpg)(os.getpgid(0), signal.SIGINT), dask.delayed(time.sleep)(0.3)
    )
"""


def test_ctrl_c_leaves_the_stop_to_the_cli_not_to_its_dask_worker_processes():
    """Ctrl-C signals the terminal's whole process group: each worker of ``--scheduler
    processes`` printed a KeyboardInterrupt traceback, and one killed mid-task broke the pool,
    while the CLI (which handles the signal) stops the workers itself, after their writes."""
    run = subprocess.run(
        [sys.executable, "-c", WORKERS_INTERRUPTED],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": SRC},
        start_new_session=True,  # its own process group, signalled by a worker
    )
    assert run.returncode == 0 and "KeyboardInterrupt" not in run.stderr, run.stderr
