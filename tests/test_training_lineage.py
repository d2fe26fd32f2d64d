"""A fine-tuned model's card keeps how every stage that made it was trained (its lineage), cut to
what a card can hold and still be read back; a resumed run whose base model was deleted says so
in one line. Tiny random-weight networks and a few steps, as in test_training."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from skimage import data

from conftest import tiny_model
from napari_srgan.cli import main
from napari_srgan.io.images import write_image
from napari_srgan.models.files import load_model, save_model
from napari_srgan.models.interface import ModelCard
from napari_srgan.models.lineage import (
    BASE_TRAINING,
    EARLIER_STAGES_DROPPED,
    MAX_BYTES,
    MAX_STAGES,
    inherited_training,
    training_stages,
)
from napari_srgan.models.registry import read_card
from napari_srgan.models.srresnet import Generator
from napari_srgan.training.job import ResumeBaseError, TrainingJob, run_training
from napari_srgan.training.patches import TrainingImage
from test_training import TINY, tiny_config

#: A photo crop tall enough to hold out validation rows.
PHOTO = data.astronaut()[:160, 100:196]


def fine_tune(folder: Path, name: str, base: str | Path | None, **config) -> Path:
    """Two training steps from ``base`` (None: a tiny network from scratch), saved in
    ``folder`` as ``name``."""
    job = TrainingJob(
        images=[TrainingImage(PHOTO, rgb=True, name="astronaut")],
        output=folder / f"{name}.safetensors",
        config=tiny_config(pretrain_steps=2, **config),
        base_model=base,
        generator_config=TINY if base is None else None,
        validation_crop=32,
        validation_fraction=0.25,
        workers=0,
    )
    return run_training(job).model_path


def stage(number: int) -> dict:
    """A training stage as a card records it (about 1 kB, as a real one)."""
    return {
        "base_model": f"model-{number - 1}",
        "steps": 100 * number,
        "config": {"pixel_loss": "mse", "learning_rate": 1e-4, "perceptual_layers": {"a": 1}},
        "data": [
            {"name": f"image-{i}.tif", "shape": [512, 512], "rows_used": 460} for i in range(8)
        ],
        "degradation": {"kind": "bicubic"},
        "machine": "x86_64 CPU, 2 cores",
    }


def chain(length: int) -> dict:
    """The record of ``length`` stages, each fine-tuned from the one before, as cards nest it."""
    record: dict = {}
    for number in range(1, length + 1):
        record = {**stage(number), **({BASE_TRAINING: record} if record else {})}
    return record


def test_a_fine_tune_of_a_fine_tune_records_every_stage(user_models, capsys):
    """From scratch, then L1, then MSE: the last card holds all three stages, each naming the
    model it started from, with its own settings; the model list still shows one short line."""
    fine_tune(user_models, "scratch", None, pixel_loss="mse")
    fine_tune(user_models, "tuned-l1", "scratch", pixel_loss="l1")
    last = fine_tune(user_models, "tuned-mse", "tuned-l1", pixel_loss="mse", learning_rate=5e-5)
    training = load_model(last).card.training
    stages, dropped = training_stages(training)
    assert dropped == 0
    assert [s["base_model"] for s in stages] == [
        "tuned-l1",
        "scratch",
        "none (trained from scratch)",
    ]
    assert [s["config"]["pixel_loss"] for s in stages] == ["mse", "l1", "mse"]
    assert stages[0]["config"]["learning_rate"] == 5e-5 and all(s["steps"] == 2 for s in stages)
    # the stage before is the base's own record, unchanged
    assert training[BASE_TRAINING] == read_card(user_models / "tuned-l1.safetensors").training
    assert BASE_TRAINING not in training[BASE_TRAINING][BASE_TRAINING]
    assert main(["models"]) == 0
    (line,) = [row for row in capsys.readouterr().out.splitlines() if "tuned-mse" in row]
    assert "fine-tuned from tuned-l1" in line and len(line) < 200


def test_a_chain_of_fine_tunes_keeps_loading_and_keeps_its_recent_stages():
    """Fine-tuned 100 times over: every card reads back; the first stages are all kept, then
    the most recent MAX_STAGES, the oldest counting those left out."""
    record: dict = {}
    for number in range(1, 101):
        inherited = inherited_training(record)
        record = {**stage(number), **({BASE_TRAINING: inherited} if inherited else {})}
        card = ModelCard.from_json(ModelCard(f"model-{number}", training=record).to_json())
        stages, dropped = training_stages(card.training)
        assert len(stages) == min(number, MAX_STAGES) and dropped == number - len(stages)
        assert [s["steps"] for s in stages] == [100 * n for n in range(number, dropped, -1)]
        if number == 20:  # a 20-stage lineage is kept whole
            assert card.training == chain(20)
    oldest = card.training
    while BASE_TRAINING in oldest:
        oldest = oldest[BASE_TRAINING]
    assert oldest["steps"] == 100 * (101 - MAX_STAGES)
    assert oldest[EARLIER_STAGES_DROPPED] == 100 - MAX_STAGES


@pytest.mark.parametrize("where", ["depth", "size"])
def test_a_stage_a_card_could_not_hold_is_left_out_not_written(where):
    """A base whose oldest recorded stage is nested 900 levels deep (JSON stops being readable at
    about 1000) or is 1 MB: that stage and any older are counted, the younger ones kept."""
    if where == "depth":
        deep: object = 1
        for _ in range(900):
            deep = [deep]
        hostile = {**stage(1), "data": deep}
    else:
        hostile = {**stage(1), "notes": "x" * (2 * MAX_BYTES)}
    base = {**stage(3), BASE_TRAINING: {**stage(2), BASE_TRAINING: hostile}}
    record = {**stage(4), BASE_TRAINING: inherited_training(base)}
    card = ModelCard.from_json(ModelCard("tuned", training=record).to_json())
    stages, dropped = training_stages(card.training)
    assert [s["steps"] for s in stages] == [400, 300, 200] and dropped == 1
    assert len(card.to_json()) < 20_000


def test_fine_tuning_a_base_with_a_long_lineage_saves_a_model_that_loads(user_models, capsys):
    """A base whose card records 40 stages: the fine-tune's card keeps the 32 most recent
    (the new one first), loads, and the model list shows it in one short line."""
    card = ModelCard("long-lineage", training=chain(40))
    save_model(user_models / "long-lineage.safetensors", Generator(TINY), card)
    tuned = fine_tune(user_models, "longer", "long-lineage")
    stages, dropped = training_stages(load_model(tuned).card.training)
    assert len(stages) == MAX_STAGES and dropped == 41 - MAX_STAGES
    assert stages[0]["base_model"] == "long-lineage" and stages[1]["steps"] == 4000
    assert main(["models"]) == 0
    (line,) = [row for row in capsys.readouterr().out.splitlines() if "longer" in row]
    assert len(line) < 200 and BASE_TRAINING not in line


def test_the_bioimageio_readme_lists_every_stage(tmp_path):
    """The exported package's README: one line per stage, the stages left out, and the whole
    record as JSON."""
    pytest.importorskip("bioimageio.core")
    from napari_srgan.models.bioimageio import export_bioimageio

    model = tiny_model(3)
    record = {**stage(3), BASE_TRAINING: {**stage(2), EARLIER_STAGES_DROPPED: 5}}
    model.card.training = record
    package = export_bioimageio(model, tmp_path / "tiny.zip")
    with zipfile.ZipFile(package) as archive:
        readme = archive.read("README.md").decode()
    assert "2 stage(s), most recent first" in readme
    assert "1. 300 steps from model-2, bicubic degradation, mse pixel loss" in readme
    assert "2. 200 steps from model-1" in readme and "8 training image(s)" in readme
    assert "(5 older stage(s) were not kept in the model card)" in readme
    written = readme.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(written) == record


def train_command(hr: Path, base: Path, out: Path) -> list[str]:
    return [
        *("train", "--hr", str(hr), "--base", str(base), "--out", str(out)),
        *(
            "--steps",
            "2",
            "--patch",
            "32",
            "--batch",
            "2",
            "--val-crop",
            "32",
            "--val-fraction",
            "0.25",
        ),
        *("--device", "cpu", "--no-download"),
    ]


def photo_and_base(tmp_path):
    """A training photo and a tiny base model written to ``tmp_path``, and the output's path."""
    hr, base = tmp_path / "photo.png", tmp_path / "base.safetensors"
    write_image(hr, PHOTO, rgb=True)
    save_model(base, Generator(TINY), ModelCard("base"))
    return hr, base, tmp_path / "m.safetensors"


def test_resuming_after_the_base_model_was_deleted_says_what_to_do(tmp_path, capsys):
    """One line naming the base and the checkpoint, with what to do; exit 2, nothing changed."""
    hr, base, out = photo_and_base(tmp_path)
    assert main(train_command(hr, base, out)) == 0
    checkpoint = out.with_suffix(".ckpt")
    written = out.read_bytes(), checkpoint.read_bytes()
    capsys.readouterr()
    base.unlink()
    assert main([*train_command(hr, base, out), "--resume"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error == (
        f"napari-srgan: error: base model {base} no longer exists, and the checkpoint "
        f"{checkpoint} was made from it: restore it (or choose a copy of it as the base model) "
        "to resume, or start afresh without resuming"
    )
    assert (out.read_bytes(), checkpoint.read_bytes()) == written


def test_a_missing_base_is_named_so_only_when_resuming(user_models):
    """A base model given by name and deleted since: resuming says the checkpoint was made from
    it; a new run (nothing to resume) says only that no model has that name."""
    fine_tune(user_models, "base", None)
    job = TrainingJob(
        images=[TrainingImage(PHOTO, rgb=True, name="astronaut")],
        output=user_models / "tuned.safetensors",
        config=tiny_config(pretrain_steps=2, checkpoint_every=1),
        base_model="base",
        checkpoint=user_models / "tuned.ckpt",
        validation_crop=32,
        validation_fraction=0.25,
        workers=0,
    )
    saved = run_training(job).model_path.read_bytes()
    (user_models / "base.safetensors").unlink()
    job.resume = True
    with pytest.raises(ResumeBaseError, match=r"^base model base no longer exists.*tuned\.ckpt"):
        run_training(job)
    job.resume, job.overwrite = False, True
    with pytest.raises(ValueError, match="no model named 'base'") as refused:
        run_training(job)
    assert not isinstance(refused.value, ResumeBaseError)
    assert (user_models / "tuned.safetensors").read_bytes() == saved


@pytest.mark.parametrize("made_from", ["base", "scratch"])
def test_resuming_from_another_base_is_refused_and_a_copy_resumes(tmp_path, capsys, made_from):
    """The checkpoint records what its run started from: resuming with another base would give
    the saved model a false lineage (the Train widget falls back to another model when the
    chosen one is deleted); a copy of the same base, under another file name, resumes."""
    hr, base, out = photo_and_base(tmp_path)
    other = tmp_path / "other.safetensors"
    save_model(other, Generator(TINY), ModelCard("other"))
    first = train_command(hr, base, out)
    if made_from == "scratch":
        first = [*first[:3], *first[5:], "--from-scratch", "--channels", "8", "--blocks", "1"]
    assert main(first) == 0
    checkpoint = out.with_suffix(".ckpt")
    capsys.readouterr()
    assert main([*train_command(hr, other, out), "--resume", "--steps", "3"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    if made_from == "scratch":
        assert error == (
            f"napari-srgan: error: the checkpoint {checkpoint} was trained from scratch, not "
            "from other: train from scratch to resume it, or start afresh without resuming"
        )
        return
    assert error == (
        f"napari-srgan: error: the checkpoint {checkpoint} was made from base model {base}, not "
        f"other: choose {base} as the base model to resume, or start afresh without resuming"
    )
    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(base, copy)
    assert main([*train_command(hr, copy, out), "--resume", "--steps", "3"]) == 0
    training = load_model(out).card.training
    assert (training["base_model"], training["steps"]) == ("base", 3)
