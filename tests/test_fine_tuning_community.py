"""Fine-tuning community (spandrel) models: they train as their own architecture, are saved as
converted models that keep where they came from, resume exactly, and what cannot work is refused
in one line. Tiny random-weight networks from test_community_models; nothing is downloaded."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from skimage import data

from napari_srgan.cli import main
from napari_srgan.io.images import write_image
from napari_srgan.models.community import SpandrelNetwork
from napari_srgan.models.registry import load_model
from napari_srgan.training.degradations import Bicubic
from napari_srgan.training.job import TrainingJob, run_training
from napari_srgan.training.patches import TrainingImage
from napari_srgan.training.trainer import StepReport, TrainingConfig
from napari_srgan.training.validation import evaluate, make_validation_image
from test_community_models import community_file

pytest.importorskip("spandrel.architectures")

#: A photo crop tall enough to hold out validation rows.
PHOTO = data.astronaut()[:320, 100:196]


def config(steps: int) -> TrainingConfig:
    return TrainingConfig(
        patch_size=24,
        batch_size=2,
        pretrain_steps=steps,
        learning_rate=2e-3,
        schedule="constant",
        validate_every=1000,
        checkpoint_every=1000,
        device="cpu",
    )


def psnr_on(network: torch.nn.Module, image: np.ndarray) -> float:
    """PSNR of a 4x network on a bicubic-downscaled centre crop of ``image``."""
    unit = np.moveaxis(image.astype(np.float32) / 255.0, -1, 0)
    validation = make_validation_image(unit, Bicubic(), crop=64, scale=4)
    return evaluate(network, [validation], torch.device("cpu")).psnr


def test_fine_tuned_esrgan_keeps_its_architecture_and_learns(tmp_path):
    """12 steps on one photo: the result reloads as the same ESRGAN (scale, tensor layout,
    licence, source), records its base, has a measured halo, and beats the random base on the
    training image by a margin random weight changes do not give."""
    base_file = community_file(tmp_path, "esrgan-x4")
    outcome = run_training(
        TrainingJob(
            images=[TrainingImage(PHOTO, rgb=True, name="astronaut")],
            output=tmp_path / "tuned.safetensors",
            config=config(12),
            base_model=base_file,
            validation=[(PHOTO, True)],
            validation_crop=64,
            checkpoint=tmp_path / "tuned.ckpt",
            workers=0,
        )
    )
    base, tuned = load_model(base_file), load_model(outcome.model_path)
    assert isinstance(tuned.network, SpandrelNetwork)
    card = tuned.card
    assert (card.architecture, card.scale, card.in_channels) == ("ESRGAN", 4, 3)
    assert tuned.network.training_spec() == base.network.training_spec()
    assert (card.license, card.source) == (base.card.license, base.card.source)
    assert card.description == "fine-tuned from esrgan-x4" and card.trained
    assert card.training["base_model"] == "esrgan-x4" and card.training["steps"] == 12
    assert card.measured_halo is not None and card.metrics["tiling"]["exact"]
    before, after = base.network.state_dict(), tuned.network.state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    tuned_psnr = psnr_on(tuned.network, PHOTO)
    assert tuned_psnr == pytest.approx(outcome.validation["psnr"], abs=1e-3)  # the saved model
    assert tuned_psnr > psnr_on(base.network, PHOTO) + 3.0


def _compact_job(tmp_path: Path, base: Path, name: str) -> TrainingJob:
    return TrainingJob(
        images=[TrainingImage(data.camera()[:320, :96], rgb=False, name="camera")],
        output=tmp_path / f"{name}.safetensors",
        config=config(4),
        base_model=base,
        checkpoint=tmp_path / f"{name}.ckpt",
        validation_crop=32,
        workers=0,
    )


def test_resumed_fine_tuning_matches_an_uninterrupted_run(tmp_path):
    """Stopped after 2 of 4 steps, then resumed from its checkpoint: the same weights, bit for
    bit, as 4 steps straight (a grey Compact network)."""
    base = community_file(tmp_path, "compact-grey-x4")
    straight = run_training(_compact_job(tmp_path, base, "straight"))
    steps: list[int] = []
    job = _compact_job(tmp_path, base, "resumed")
    stopped = run_training(
        job,
        on_event=lambda event: isinstance(event, StepReport) and steps.append(event.step),
        should_stop=lambda: len(steps) >= 2,
    )
    assert (stopped.steps, stopped.finished) == (2, False)
    job.resume = True
    resumed = run_training(job)
    assert (resumed.steps, resumed.finished) == (4, True)
    expected, found = load_file(straight.model_path), load_file(resumed.model_path)
    assert expected.keys() == found.keys()
    assert all(torch.equal(expected[name], found[name]) for name in expected)
    assert load_model(resumed.model_path).card.architecture == "Compact"


def _write_photo(folder: Path) -> Path:
    path = folder / "photo.png"
    write_image(path, PHOTO, rgb=True)
    return path


def _train(*arguments: str) -> list[str]:
    return [
        "train",
        *arguments,
        "--steps",
        "2",
        "--patch",
        "24",
        "--batch",
        "2",
        "--val-crop",
        "32",
        "--device",
        "cpu",
    ]


def test_cli_fine_tunes_a_community_file_and_refuses_a_native_checkpoint(tmp_path, capsys):
    hr, base = _write_photo(tmp_path), community_file(tmp_path, "esrgan-x4")
    out = tmp_path / "tuned.safetensors"
    assert main(_train("--hr", str(hr), "--base", str(base), "--out", str(out))) == 0
    assert "saved" in capsys.readouterr().out
    tuned = load_model(out)
    assert (tuned.card.architecture, tuned.scale) == ("ESRGAN", 4)
    assert (tmp_path / "tuned.ckpt").is_file()
    native = tmp_path / "native.safetensors"
    scratch = ["--from-scratch", "--channels", "8", "--blocks", "1", "--out", str(native)]
    assert main(_train("--hr", str(hr), *scratch)) == 0
    capsys.readouterr()
    resume = ["--checkpoint", str(tmp_path / "native.ckpt"), "--resume"]
    other = tmp_path / "other.safetensors"
    command = _train("--hr", str(hr), "--base", str(base), "--out", str(other), *resume)
    assert main(command) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "is a checkpoint of srresnet 4x training, not of ESRGAN 4x" in error[0]
    assert not other.exists()


def _bioimageio_zip(folder: Path) -> Path:
    path = folder / "package.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\n")
    return path


def _torchscript(folder: Path) -> Path:
    path = folder / "scripted.pt"
    torch.jit.script(torch.nn.Conv2d(3, 3, 3)).save(str(path))
    return path


@pytest.mark.parametrize(
    ("make_base", "lr_factor", "message"),
    [
        (_bioimageio_zip, None, "is a bioimage.io package: its weights"),
        (_torchscript, None, "is a TorchScript program, not a weights file"),
        (lambda folder: community_file(folder, "esrgan-x4"), 2, "for a 4x model an HR image"),
    ],
    ids=["bioimageio", "torchscript", "pairs-at-2x"],
)
def test_what_cannot_be_fine_tuned_is_refused_in_one_line(
    tmp_path, capsys, make_base, lr_factor, message
):
    hr, base = _write_photo(tmp_path), make_base(tmp_path)
    pairs = []
    if lr_factor:
        lr = tmp_path / "lr.png"
        write_image(lr, PHOTO[::lr_factor, ::lr_factor], rgb=True)
        pairs = ["--lr", str(lr)]
    out = tmp_path / "tuned.safetensors"
    assert main(_train("--hr", str(hr), *pairs, "--base", str(base), "--out", str(out))) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]
    assert not out.exists() and not (tmp_path / "tuned.ckpt").exists()


def test_the_train_widget_offers_added_community_models_as_a_base(tmp_path):
    from napari_srgan.models.registry import add_model
    from napari_srgan.plugin.train_widget import trainable_models

    add_model(community_file(tmp_path, "compact-grey-x4"), "my-compact")
    assert "my-compact" in trainable_models() and "srresnet-rgb-x4" in trainable_models()
