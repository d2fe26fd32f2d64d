"""A hostile-input round on training (the ``train`` CLI, ``run_training`` and the Train
widget's core): each case ended in a traceback, a late error after the whole run, a NaN or
untrained model saved as trained, a replaced base model, or validation on shifted pairs.
Every one now ends in one line before anything is written (CLI: exit 2, nothing changed)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_srgan.cli import main
from napari_srgan.engine.upscale import InvalidImageError, is_out_of_memory
from napari_srgan.io.atomic_files import OutputExistsError
from napari_srgan.models.normalization import NormalizationSpec
from napari_srgan.models.srresnet import Generator, GeneratorConfig
from napari_srgan.training.degradations import Bicubic, Crappifier, Mixture
from napari_srgan.training.job import (
    TrainingJob,
    _has_detail,
    _only_run_writing,
    _validation_set,
    run_training,
)
from napari_srgan.training.patches import TrainingImage
from napari_srgan.training.trainer import Trainer, TrainingConfig, TrainingDiverged


def tiny_job(folder: Path, *, steps: int = 1, **options) -> TrainingJob:
    """A job of ``steps`` steps of a tiny new grey generator on one 96x96 random image, its
    files in ``folder``; ``options`` override the job's fields."""
    fields = {
        "images": [TrainingImage(np.random.default_rng(0).random((96, 96), np.float32))],
        "output": folder / "m.safetensors",
        "config": TrainingConfig(patch_size=16, batch_size=1, pretrain_steps=steps, device="cpu"),
        "generator_config": GeneratorConfig(1, 1, channels=4, residual_blocks=1),
        "validation_fraction": 0.4,
        "validation_crop": 32,
        **options,
    }
    return TrainingJob(**fields)


def tiny_run(folder: Path, *, base: Path | None = None) -> list[str]:
    """A 2-step run on ``folder/hr.png`` (a second or so on a CPU): a tiny new generator, or
    fine-tuning ``base``."""
    start = (
        ["--base", str(base)] if base else ["--from-scratch", "--channels", "4", "--blocks", "1"]
    )
    return [
        "train",
        "--hr",
        str(folder / "hr.png"),
        *start,
        "--patch",
        "16",
        "--batch",
        "1",
        "--val-crop",
        "32",
        "--val-fraction",
        "0.4",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--no-download",
        "--out",
        str(folder / "m.safetensors"),
    ]


def folder_state(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    rng = np.random.default_rng(1)
    iio.imwrite(folder / "hr.png", rng.integers(0, 255, (96, 96, 3), np.uint8))
    return folder


def refused(folder: Path, argv: list[str], capsys) -> str:
    """Run the CLI in-process; it must exit 2 with one error line and change nothing."""
    before = folder_state(folder)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1, lines  # refused before any training step printed progress
    assert re.match(r"napari-srgan( \w+)?: error: ", lines[0]), lines
    assert folder_state(folder) == before
    return lines[0]


# --- degradation ranges: blur wider than the window, infinite or underflowing noise ----------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--degradation", "crappifier", "--blur-sigma", "0", "inf"], "blur_sigma must lie"),
        (["--degradation", "crappifier", "--blur-sigma", "1e6", "1e6"], "blur_sigma must lie"),
        (["--degradation", "mixture", "--blur-sigma", "1e20", "1e20"], "blur_sigma must lie"),
        (["--degradation", "crappifier", "--read-noise", "0", "inf"], "read_noise must lie"),
        (["--degradation", "crappifier", "--photons", "1e-300", "1e-300"], "photons must lie"),
        (["--degradation", "mixture", "--photons", "10", "inf"], "photons must lie"),
    ],
    ids=["blur inf", "blur 1e6", "mixture blur 1e20", "read noise inf", "photons 1e-300", "inf"],
)
def test_degradation_ranges_that_break_the_arithmetic_are_refused(folder, capsys, options, message):
    # before: OverflowError / RuntimeError tracebacks, or a model trained on NaN pairs
    assert message in refused(folder, [*tiny_run(folder), *options], capsys)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--photons", "-1", "-5"], "--photons: not used by --degradation bicubic"),
        (["--read-noise", "0", "0.5"], "--read-noise: not used by --degradation bicubic"),
        (
            ["--degradation", "crappifier", "--noise-probability", "1"],
            "--noise-probability: not used by --degradation crappifier; choose --degradation "
            "mixture",
        ),
    ],
    ids=["photons with bicubic", "read noise with bicubic", "probability with crappifier"],
)
def test_degradation_options_the_chosen_degradation_ignores_are_refused(
    folder, capsys, options, message
):
    # before: trained with plain bicubic LR, the noise the user asked for silently left out
    assert message in refused(folder, [*tiny_run(folder), *options], capsys)


def test_the_default_degradations_stay_within_the_limits():
    Crappifier(), Mixture()
    with pytest.raises(ValueError, match="read_noise must lie within"):
        Mixture(read_noise=(0.0, 2.0))


# --- numbers that passed the argument checks -------------------------------------------------


def test_a_diverging_run_saves_neither_a_nan_model_nor_a_nan_checkpoint(folder, capsys):
    # before: "PSNR nan dB", then a model of NaN weights (which loading refuses) was saved
    argv = [*tiny_run(folder), "--learning-rate", "1e30", "--checkpoint-every", "1"]
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "training diverged at step 2" in lines[-1], lines
    assert sum("error" in line for line in lines) == 1
    assert not (folder / "m.safetensors").exists()
    # the checkpoint of the last step whose weights were finite is kept, to resume from
    state = torch.load(folder / "m.ckpt", weights_only=True)
    assert state["step"] == 1
    assert all(
        torch.isfinite(t).all() for t in state["generator"].values() if t.is_floating_point()
    )


def test_nan_weights_are_never_written_as_a_checkpoint(tmp_path):
    trainer = Trainer(
        Generator(GeneratorConfig(1, 1, channels=4, residual_blocks=1)),
        sampler=None,
        config=TrainingConfig(device="cpu"),
        checkpoint_path=tmp_path / "run.ckpt",
    )
    with torch.no_grad():
        next(trainer.generator.parameters())[0] = float("nan")
    with pytest.raises(TrainingDiverged, match="weights are no longer finite"):
        trainer.save_checkpoint()
    assert not (tmp_path / "run.ckpt").exists()


def test_a_batch_larger_than_memory_is_one_line(folder, capsys):
    # before: a 24-line traceback from the CPU allocator (the engine's out-of-memory check
    # knew only CUDA's wording)
    message = refused(folder, [*tiny_run(folder), "--batch", "99999999999999"], capsys)
    assert "not enough memory for a batch of 99999999999999" in message
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: 8 bytes"))


@pytest.mark.parametrize("crop", ["3", "5"])
def test_a_validation_crop_too_small_to_measure_is_refused(folder, capsys, crop):
    # before: ZeroDivisionError traceback (3), or skimage's multi-line message (5)
    assert "too small to measure" in refused(
        folder, [*tiny_run(folder), "--val-crop", crop], capsys
    )


@pytest.mark.parametrize("fraction", [float("nan"), 1.5, 0.0])
def test_a_validation_fraction_outside_0_1_is_named(tmp_path, fraction):
    # before (API; the CLI's parser checks it): "cannot convert float NaN to integer", or
    # "-48x96 pixels available for training" (0 was already named, less directly)
    job = tiny_job(tmp_path, validation_fraction=fraction)
    with pytest.raises(ValueError, match="validation fraction must be between 0 and 1"):
        run_training(job)
    assert list(tmp_path.iterdir()) == []


def test_a_tiny_validation_image_is_refused(folder, capsys):
    iio.imwrite(folder / "v.png", np.random.default_rng(2).integers(0, 255, (5, 5, 3), np.uint8))
    argv = [*tiny_run(folder), "--val", str(folder / "v.png")]
    assert "too small to validate on" in refused(folder, argv, capsys)


def test_a_seed_beyond_64_bits_is_named(folder, capsys):
    # before: "Overflow when unpacking long long"
    message = refused(folder, [*tiny_run(folder), "--seed", str(2**64 - 1)], capsys)
    assert "seed must be a whole number from 0 to" in message


def test_adversarial_batches_the_discriminator_cannot_normalise_are_refused(folder, capsys):
    # before: after the content stage, "Expected more than 1 value per channel when training"
    argv = [*tiny_run(folder), "--adversarial-steps", "1"]
    assert "adversarial stage needs a batch of at least 2" in refused(folder, argv, capsys)
    TrainingConfig(patch_size=16, batch_size=2, adversarial_steps=1)  # these work
    TrainingConfig(patch_size=32, batch_size=1, adversarial_steps=1)


def test_core_config_refuses_what_the_cli_parser_would():
    for options in (
        {"learning_rate": float("nan")},
        {"adversarial_learning_rate": -1.0},
        {"validate_every": 0},
        {"checkpoint_every": 0},
        {"seed": -1},
    ):
        with pytest.raises(ValueError):
            TrainingConfig(**options)


# --- nothing to learn, or nothing learnt -----------------------------------------------------


def test_zero_steps_are_refused_instead_of_saving_an_untrained_model(folder, capsys):
    # before: "saved m.safetensors after 0 steps", a random network marked as trained
    assert "nothing to train" in refused(folder, [*tiny_run(folder), "--steps", "0"], capsys)


def test_stopping_before_the_first_step_saves_nothing(tmp_path):
    # before: a time limit that ran out while the data loaded saved the base as "trained"
    job = tiny_job(tmp_path, steps=3, checkpoint=tmp_path / "m.ckpt")
    with pytest.raises(ValueError, match="stopped before the first training step"):
        run_training(job, should_stop=lambda: True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_constant_training_images_are_refused(folder, capsys, dtype):
    # before: trained on background only ("bicubic inf dB") and saved the model
    tifffile.imwrite(folder / "flat.tif", np.full((96, 96), 7, dtype))
    argv = [*tiny_run(folder), "--grey-model", "--hr", str(folder / "flat.tif")]
    assert "one constant value" in refused(folder, argv, capsys)


def lazy(array: np.ndarray, kind: str, folder: Path):
    """``array`` as data read on demand: a dask array, a zarr array or a memmap."""
    if kind == "dask":
        return da.from_array(array, chunks=32)
    if kind == "zarr":
        stored = zarr.open(str(folder / "data.zarr"), mode="w", shape=array.shape, chunks=(32, 32))
        stored[:] = array
        return stored
    np.save(folder / "data.npy", array)
    return np.load(folder / "data.npy", mmap_mode="r")


@pytest.mark.parametrize("kind", ["dask", "zarr", "memmap"])
def test_constant_training_images_read_lazily_are_refused(tmp_path, kind):
    # before: only in-memory data was scanned; a flat zarr, dask or memmap image trained
    flat = lazy(np.full((96, 96), 7, np.uint8), kind, tmp_path)
    detail = np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
    out = tmp_path / "out"
    job = tiny_job(out, images=[TrainingImage(flat)], validation=[(detail, False)])
    with pytest.raises(InvalidImageError, match="every training image is one constant value"):
        run_training(job)
    assert not out.exists()


def test_lazy_detail_that_a_subsample_misses_is_found_block_by_block():
    sparse = np.zeros((2, 1500, 1500), np.uint8)  # above the subsample size: every 2nd pixel
    sparse[1, 1001, 1001] = 1
    image = TrainingImage(da.from_array(sparse, chunks=(1, 500, 500)))
    image.prepare(NormalizationSpec())
    assert _has_detail(image)
    image.rows = 1000  # the pixel is in the rows held out for validation
    assert not _has_detail(image)


def test_a_constant_validation_image_is_refused(folder, capsys):
    tifffile.imwrite(folder / "v.tif", np.zeros((64, 64), np.uint8))
    argv = [*tiny_run(folder), "--val", str(folder / "v.tif")]
    assert "PSNR and SSIM cannot be measured" in refused(folder, argv, capsys)


def test_flat_held_out_rows_are_refused_before_training(tmp_path, capsys):
    # before: "step 2: PSNR 35.71 dB (bicubic inf dB)", a model "measured" on background
    image = np.random.default_rng(0).integers(0, 255, (96, 96), np.uint8)
    image[56:] = 9
    job = tiny_job(tmp_path, images=[TrainingImage(image, name="cells")])
    with pytest.raises(InvalidImageError, match=r"cells \(held out\): the held-out rows are one"):
        run_training(job)
    assert list(tmp_path.iterdir()) == []


def test_a_flat_validation_centre_is_measured_where_the_image_has_detail():
    # before: the centre crop of a validation image with detail only at its side was flat
    validation = np.zeros((64, 200), np.uint8)
    validation[8:56, 150:190] = np.random.default_rng(0).integers(0, 255, (48, 40))
    job = tiny_job(Path("unused"), validation=[(validation, False)])
    (image,) = _validation_set(job, NormalizationSpec(), 1)
    assert image.hr.std() > 0.1 and image.hr.shape[-1] == 32


def test_one_constant_image_among_others_still_trains(tmp_path):
    images = [
        TrainingImage(np.zeros((64, 64), np.uint8), name="flat"),
        TrainingImage(np.random.default_rng(0).integers(0, 255, (96, 96), np.uint8)),
    ]
    job = tiny_job(tmp_path, images=images, validation=[(images[1].hr, False)])
    assert run_training(job).steps == 1


# --- where the results go --------------------------------------------------------------------


def test_an_output_under_a_file_is_refused_before_training(folder, capsys):
    # before: the whole run trained, then "[Errno 17] File exists"
    (folder / "f").write_text("a file, not a folder")
    argv = [*tiny_run(folder), "--out", str(folder / "f" / "m.safetensors")]
    assert "is a file, not a folder" in refused(folder, argv, capsys)


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a folder no file can be made in")
def test_a_checkpoint_in_a_folder_that_takes_no_files_is_refused_before_training(folder, capsys):
    # before: the whole run trained, then "output folder is not writable" (root ignores
    # permission bits, so /sys, where nobody can create files, stands in for a read-only folder)
    argv = [*tiny_run(folder), "--checkpoint", "/sys/run.ckpt"]
    assert "output folder is not writable: /sys" in refused(folder, argv, capsys)


def test_fine_tuning_never_writes_over_its_base_model(folder, capsys):
    # before: with --overwrite, the base model was replaced by its fine-tuned version
    base = folder / "base.safetensors"
    assert main([*tiny_run(folder), "--out", str(base)]) == 0
    (folder / "base.ckpt").unlink()
    for written in ("--out", "--checkpoint"):
        argv = [*tiny_run(folder, base=base), written, str(base), "--overwrite"]
        assert "is the base model being fine-tuned" in refused(folder, argv, capsys)


# --- paired LR whose height is not a multiple of the scale -----------------------------------


def test_held_out_paired_lr_starts_on_an_lr_row():
    # before: a 98-row HR image held out rows 62.. against LR rows 15.. (HR row 60): every
    # validation pair was shifted by two HR rows, so PSNR measured misaligned images
    hr = np.random.default_rng(0).integers(0, 255, (98, 64), np.uint8)
    lr = hr[::4, ::4][:24]  # LR pixel i is HR pixel 4i
    job = TrainingJob(
        images=[TrainingImage(hr, lr=lr)],
        output=Path("unused.safetensors"),
        degradation=Bicubic(),
        validation_fraction=0.4,
        validation_crop=None,
    )
    (image,) = _validation_set(job, NormalizationSpec(), 1)
    assert job.images[0].rows % 4 == 0
    np.testing.assert_array_equal(image.lr, image.hr[:, ::4, ::4])


# --- two runs at once ------------------------------------------------------------------------


def test_a_second_run_writing_the_same_files_is_refused(tmp_path):
    # before: two runs (e.g. a resubmitted cluster job with --resume) both passed the start
    # checks and wrote one checkpoint in turns, and the model of one with the state of the other
    job = tiny_job(tmp_path, checkpoint=tmp_path / "m.ckpt", resume=True)
    other_run = _only_run_writing(job)  # what the other run holds while it trains
    with other_run, pytest.raises(OutputExistsError, match="another training run is writing"):
        run_training(job)
    assert list(tmp_path.iterdir()) == []
    assert run_training(job).steps == 1  # once it is done, the files are free


# --- a checkpoint whose progress was tampered with -------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    """A real checkpoint of a 2-step run of :func:`tiny_run`."""
    folder = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(1)
    iio.imwrite(folder / "hr.png", rng.integers(0, 255, (96, 96, 3), np.uint8))
    assert main([*tiny_run(folder), "--checkpoint", str(folder / "run.ckpt")]) == 0
    return (folder / "run.ckpt").read_bytes()


def nan_ema(state: dict) -> dict:
    return {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("step", 10**18, "step 1000000000000000000 does not match its 2 loss records"),
        ("step", -5, "step -5 does not match"),
        ("history", [{"step": 1, "pixel": "abc"}] * 2, "history are not records of numbers"),
        ("validations", ["junk"], "validations are not records of numbers"),
        ("elapsed", float("nan"), "training time nan is not a number of seconds"),
        ("ema", nan_ema, "weights are not all finite"),
    ],
    ids=["step 1e18", "step -5", "history of text", "validations junk", "time nan", "NaN EMA"],
)
def test_a_checkpoint_with_tampered_progress_is_refused(
    folder, capsys, checkpoint_bytes, field, value, message
):
    # before: 10^18 steps "trained" and saved with no step run, a numpy traceback after the
    # whole run (a loss record of text), a card with NaN time, or a NaN EMA trained on
    path = folder / "run.ckpt"
    path.write_bytes(checkpoint_bytes)
    state = torch.load(path, weights_only=True)
    state[field] = value(state[field]) if callable(value) else value
    torch.save(state, path)
    argv = [*tiny_run(folder), "--checkpoint", str(path), "--resume", "--steps", "3"]
    text = refused(folder, argv, capsys)
    assert "is a damaged training checkpoint" in text and message in text


def test_resuming_another_runs_checkpoint_says_so(folder, capsys):
    # before: a checkpoint of a run on other data, or with another patch size, was continued
    # without a word (the loss curve and step count carried on as if it were the same run)
    checkpoint = ["--checkpoint", str(folder / "run.ckpt"), "--resume", "--overwrite"]
    assert main([*tiny_run(folder), *checkpoint]) == 0
    capsys.readouterr()
    assert main([*tiny_run(folder), *checkpoint, "--steps", "3"]) == 0  # the same run goes on
    assert "note:" not in capsys.readouterr().err
    iio.imwrite(folder / "hr.png", np.random.default_rng(5).integers(0, 255, (128, 96, 3), "u1"))
    assert main([*tiny_run(folder), *checkpoint, "--steps", "4", "--patch", "32"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert len(notes) == 1, notes
    assert "was trained on other data and had other settings (patch_size)" in notes[0]
    assert "resuming from its step 3" in notes[0]
