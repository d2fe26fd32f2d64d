"""Faults: SIGKILL while a zarr store is replaced, two writers of one output at once and
SIGKILL during training followed by --resume (in real processes), and a full disk (writers
patched to raise ENOSPC, in this process).

Each kill happens in a child process at a chosen moment (the child kills itself there, so the
moment is exact and the test is not timing-dependent); the parent then checks what is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

import napari_srgan.io.atomic_files as atomic
from conftest import TINY_TRAINING, fill_the_disk
from napari_srgan.cli import main
from napari_srgan.engine.file_upscale import UpscaleSettings, upscale_file
from napari_srgan.io.atomic_files import STORE_MARKER, clean_leftovers
from napari_srgan.io.zarr_files import OmeZarrWriter, open_pyramid

SRC = str(Path(__file__).resolve().parents[1] / "src")
#: Image side of the test stores: 2x2 chunks of 512 at full resolution and a pyramid level.
SIDE = 600

WRITE_STORE = """
import os, signal, sys
import numpy as np
import napari_srgan.io.atomic_files as atomic
from napari_srgan.io.zarr_files import OmeZarrWriter

path, value, moment = sys.argv[1], int(sys.argv[2]), sys.argv[3]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_exchange, real_rename, real_rmtree = atomic._exchange, os.rename, atomic.shutil.rmtree
if moment == "before swap":
    atomic._exchange = lambda a, b: die()
elif moment == "after swap":
    atomic._exchange = lambda a, b: (real_exchange(a, b), die())
elif moment == "deleting old":  # after the first pyramid level of the old store is gone
    def rmtree(folder, *args, **kwargs):
        real_rmtree(folder, *args, **kwargs)
        die()
    atomic.shutil.rmtree = rmtree
elif moment == "between renames":  # systems without an atomic exchange
    atomic._exchange = lambda a, b: False
    def rename(a, b):
        real_rename(a, b)
        if str(a) == path:  # the old store has just been moved aside
            die()
    atomic.os.rename = rename
writer = OmeZarrWriter(path, (SIDE, SIDE), "uint8", rgb=False, scale=(1.0, 1.0),
                       translate=(0.0, 0.0), overwrite=True)
for row in range(0, SIDE, 512):
    writer.level0[row : row + 512, :] = np.full((min(512, SIDE - row), SIDE), value, np.uint8)
    if moment == "writing" and row:
        die()
writer.finish()
""".replace("SIDE", str(SIDE))


def write_store(path: Path, value: int) -> None:
    """A complete store (in this process) for a child to replace."""
    writer = OmeZarrWriter(
        path,
        (SIDE, SIDE),
        "uint8",
        rgb=False,
        scale=(1.0, 1.0),
        translate=(0.0, 0.0),
        overwrite=True,
    )
    writer.level0[:, :] = np.full((SIDE, SIDE), value, np.uint8)
    writer.finish()


def child(script: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": SRC, **(env or {})},
    )


def store_value(path: Path) -> int:
    """The one value a complete test store holds on every level (fails if incomplete)."""
    assert (path / STORE_MARKER).is_file()
    levels, _ = open_pyramid(path)
    assert [level.shape for level in levels] == [(SIDE, SIDE), (SIDE // 2, SIDE // 2)]
    values = {int(v) for level in levels for v in np.unique(level.compute())}
    assert len(values) == 1, values
    return values.pop()


@pytest.mark.parametrize(
    "moment", ["writing", "before swap", "after swap", "deleting old", "between renames"]
)
def test_sigkill_while_replacing_a_store_keeps_a_complete_store(tmp_path, moment):
    target = tmp_path / "out.zarr"
    write_store(target, 1)
    killed = child(WRITE_STORE, target, 2, moment)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if moment != "between renames":  # an atomic exchange: complete at every instant
        assert store_value(target) == (2 if moment in ("after swap", "deleting old") else 1)
    assert [p for p in tmp_path.iterdir() if p != target]  # the killed writer's leftovers
    clean_leftovers(target)  # what the next write to the same output does first
    assert store_value(target) == (2 if moment in ("after swap", "deleting old") else 1)
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]
    write_store(target, 3)
    assert store_value(target) == 3


CONCURRENT = """
import sys, time
from pathlib import Path
import numpy as np
from napari_srgan.io.zarr_files import OmeZarrWriter

path, value, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
writer = OmeZarrWriter(path, (SIDE, SIDE), "uint8", rgb=False, scale=(1.0, 1.0),
                       translate=(0.0, 0.0))
(folder / f"ready-{value}").touch()
while len(list(folder.glob("ready-*"))) < 2:  # both have started before either finishes
    time.sleep(0.01)
writer.level0[:, :] = np.full((SIDE, SIDE), value, np.uint8)
try:
    writer.finish()
except FileExistsError as error:
    writer.abort()
    print(error)
    sys.exit(2)
""".replace("SIDE", str(SIDE))


def two_writers(script: str, target: Path, **pipes) -> list[subprocess.Popen]:
    """Two processes running ``script`` with the arguments ``target``, their value (1 and 2)
    and a folder they meet in."""
    sync = target.parent / "sync"
    sync.mkdir()
    return [
        subprocess.Popen(
            [sys.executable, "-c", script, str(target), str(value), str(sync)],
            env={**os.environ, "PYTHONPATH": SRC},
            text=True,
            **pipes,
        )
        for value in (1, 2)
    ]


def test_two_concurrent_writers_one_wins_and_nothing_is_incomplete(tmp_path):
    target = tmp_path / "out.zarr"
    processes = two_writers(CONCURRENT, target, stdout=subprocess.PIPE)
    codes = [process.wait(timeout=120) for process in processes]
    outputs = [process.stdout.read() for process in processes]
    assert sorted(codes) == [0, 2], outputs
    winner = (1, 2)[codes.index(0)]
    assert f"{target} was written by another writer meanwhile" in outputs[codes.index(2)]
    assert store_value(target) == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "sync"]


def test_the_next_write_leaves_a_writer_on_another_host_alone(tmp_path, monkeypatch):
    """A folder shared by machines (or containers): a process id from another host says nothing
    here. Before, a write on this host took the temporary store of a live writer on another
    host, whose process id does not exist here, for a killed writer's leftover and deleted it."""
    target = tmp_path / "out.zarr"
    no_such_process = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    with monkeypatch.context() as other_host:
        other_host.setattr(atomic, "HOST", "otherhost", raising=False)
        other_host.setattr(atomic.os, "getpid", lambda: no_such_process)
        theirs = atomic.new_store(target)
    write_store(target, 1)
    assert atomic.is_own_store(theirs)
    assert store_value(target) == 1


def test_a_temporary_store_deleted_while_written_is_never_swapped_in(tmp_path):
    """Whoever deleted it, zarr made its folders again at the next chunk write, and the writer
    swapped a store without its marker, metadata or first chunks in over the user's store."""
    target = tmp_path / "out.zarr"
    write_store(target, 1)
    writer = OmeZarrWriter(
        target, (SIDE, SIDE), "uint8", rgb=False, scale=(1.0, 1.0), translate=(0.0, 0.0),
        overwrite=True,
    )  # fmt: skip
    writer.level0[:512, :] = np.full((512, SIDE), 2, np.uint8)
    atomic.remove_store(writer.temporary)
    writer.level0[512:, :] = np.full((SIDE - 512, SIDE), 2, np.uint8)
    with pytest.raises(OSError, match=f"the temporary store of {target} was deleted while"):
        writer.finish()
    writer.abort()
    assert store_value(target) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]


def write_tiled_tiff(path: Path, value: int) -> None:
    """Another writer's atomic save: a new file renamed over the old one."""
    new = path.with_name("new.tif")
    tifffile.imwrite(new, np.full((128, 128), value, np.uint8), tile=(32, 32))
    os.replace(new, path)


@pytest.mark.parametrize(
    ("name", "write_input"), [("in.zarr", write_store), ("in.tif", write_tiled_tiff)]
)
def test_an_input_replaced_while_it_is_read_stops_the_run(tmp_path, grey_model, name, write_input):
    """Another writer swapped a new store or TIFF in at the input's path mid-run: chunks and
    tiles are read by path, so the remaining tiles came from the new image and the result
    silently mixed two (stores were checked for this first, streamed TIFFs later)."""
    source, output = tmp_path / name, tmp_path / "out.zarr"

    def replace_input_after_the_first_tile(done: int, total: int) -> None:
        if done == 1:
            write_input(source, 2)

    write_input(source, 1)
    with pytest.raises(ValueError, match=f"^{source} was replaced by another writer while it"):
        upscale_file(
            source,
            output,
            grey_model,
            settings=UpscaleSettings(tile=32),
            progress=replace_input_after_the_first_tile,
        )
    assert [p.name for p in tmp_path.iterdir()] == [name]


RENAME_AT_ONCE = """
import os, sys, time
from pathlib import Path
import numpy as np
import napari_srgan.io.atomic_files as atomic
from napari_srgan.io.zarr_files import OmeZarrWriter

path, value, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
real_rename = os.rename

def rename(source, target):  # both writers found the path free; now both move onto it
    if str(target) == path:
        (folder / f"ready-{value}").touch()
        while len(list(folder.glob("ready-*"))) < 2:
            time.sleep(0.01)
        time.sleep(0.2 * value)
    real_rename(source, target)

atomic.os.rename = rename
writer = OmeZarrWriter(path, (SIDE, SIDE), "uint8", rgb=False, scale=(1.0, 1.0),
                       translate=(0.0, 0.0), overwrite=True)
writer.level0[:, :] = np.full((SIDE, SIDE), value, np.uint8)
writer.finish()
""".replace("SIDE", str(SIDE))


def test_two_writers_with_overwrite_at_once_both_succeed_and_the_last_store_stays(tmp_path):
    """Both were told to replace the output: the second to finish replaces the first's store,
    as when they run one after the other. Before, the one whose rename came second failed with
    "exists; pass --overwrite to replace it", though --overwrite had been given."""
    target = tmp_path / "out.zarr"
    processes = two_writers(RENAME_AT_ONCE, target, stderr=subprocess.PIPE)
    codes = [process.wait(timeout=120) for process in processes]
    assert codes == [0, 0], [process.stderr.read() for process in processes]
    assert store_value(target) in (1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "sync"]


@pytest.mark.parametrize("suffix", [".tif", ".png", ".zarr"])
def test_a_full_disk_is_one_line_and_leaves_nothing(
    tmp_path, tiny_model_file, monkeypatch, capsys, suffix
):
    """The disk fills up while the result is written: the chunk writes of a store fail, or a
    file's data does not fit (reported by write or, on NFS and quotas, by fsync)."""
    fill_the_disk(monkeypatch, suffix)
    source = tmp_path / "in.png"
    iio.imwrite(source, np.random.default_rng(0).integers(0, 255, (24, 24, 3), np.uint8))
    output = tmp_path / f"out{suffix}"
    code = main(["upscale", str(source), str(output), "--model", str(tiny_model_file)])
    assert code == 2
    # Before it: the untrained-model warning and progress lines (the work had started).
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"napari-srgan: error: no space left on device while writing {output}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


TRAIN = [*TINY_TRAINING, "--steps", "12", "--seed", "3"]

KILL_AT_STEP = """
import os, signal, sys
import napari_srgan.training.trainer as trainer
from napari_srgan.cli import main
from napari_srgan.engine.file_upscale import UpscaleSettings, upscale_file

real = trainer.Trainer.save_checkpoint
def save_then_die(self, path=None):
    saved = real(self, path)
    if self.step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return saved
trainer.Trainer.save_checkpoint = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_training_then_resume_is_bit_for_bit(tmp_path):
    """A run killed after step 6 and resumed ends with exactly the weights, step count and
    loss history of an uninterrupted run with the same seed (CPU). Its first 6 steps ran in
    another process than the straight run's, so this also shows that two runs with one seed
    are identical (they were not while a new generator's weights were drawn unseeded)."""
    image = tmp_path / "hr.png"
    iio.imwrite(image, np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8))
    runs = {}
    for name in ("straight", "killed"):
        out = tmp_path / f"{name}.safetensors"
        args = [*TRAIN, "--hr", image, "--out", out]
        killed = child(KILL_AT_STEP, *args, env={"KILL_AT_STEP": "6" if name == "killed" else "0"})
        if name == "killed":
            assert killed.returncode == -signal.SIGKILL and not out.exists()
            assert torch.load(out.with_suffix(".ckpt"), weights_only=True)["step"] == 6
            resumed = child(KILL_AT_STEP, *args, "--resume", env={"KILL_AT_STEP": "0"})
            assert resumed.returncode == 0, resumed.stderr
        else:
            assert killed.returncode == 0, killed.stderr
        runs[name] = torch.load(out.with_suffix(".ckpt"), weights_only=True)
    straight, resumed = runs["straight"], runs["killed"]
    assert resumed["step"] == straight["step"] == 12
    assert [h["step"] for h in resumed["history"]] == list(range(1, 13))
    assert resumed["history"] == straight["history"]
    assert resumed["validations"] == straight["validations"]
    for name, tensor in straight["generator"].items():
        assert torch.equal(tensor, resumed["generator"][name]), name
    for name, tensor in straight["ema"].items():
        assert torch.equal(tensor, resumed["ema"][name]), name


def test_killed_atomic_file_write_is_cleaned_by_the_next_write(tmp_path):
    script = textwrap.dedent(
        """
        import os, signal, sys
        from napari_srgan.io.atomic_files import atomic_write
        def write(temp):
            open(temp, "wb").write(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write(sys.argv[1], write)
        """
    )
    target = tmp_path / "out.bin"
    assert child(script, target).returncode == -signal.SIGKILL
    [leftover] = tmp_path.iterdir()
    assert leftover.name.startswith(".out.bin.") and leftover.name.endswith(".tmp")
    from napari_srgan.io.atomic_files import atomic_write

    atomic_write(target, lambda temp: Path(temp).write_bytes(b"whole"))
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert target.read_bytes() == b"whole"
