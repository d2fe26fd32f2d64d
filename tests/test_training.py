import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from skimage import data

from conftest import tiny_generator
from napari_srgan.engine.upscale import InvalidImageError
from napari_srgan.models.files import load_model
from napari_srgan.models.normalization import NormalizationSpec
from napari_srgan.models.srresnet import GeneratorConfig
from napari_srgan.training.degradations import Crappifier, bicubic_downscale
from napari_srgan.training.job import TrainingJob, run_training
from napari_srgan.training.patches import PatchSampler, TrainingImage
from napari_srgan.training.trainer import (
    CheckpointSaved,
    Notice,
    StepReport,
    Trainer,
    TrainingConfig,
    ValidationReport,
)

TINY = GeneratorConfig(channels=8, residual_blocks=1)


def tiny_config(**options) -> TrainingConfig:
    settings = {
        "patch_size": 32,
        "batch_size": 2,
        "pretrain_steps": 4,
        "validate_every": 1000,
        "checkpoint_every": 1000,
        "device": "cpu",
        "discriminator_channels": 4,
        "perceptual_layers": {"conv2_2": 1.0},
        "vgg_weights": "random",
    }
    settings.update(options)
    return TrainingConfig(**settings)


def astronaut_images() -> list[TrainingImage]:
    return [TrainingImage(data.astronaut()[:200, :200], rgb=True, name="astronaut")]


def blobs(seed: int) -> np.ndarray:
    return (data.binary_blobs(256, blob_size_fraction=0.1, rng=seed) * 180 + 40).astype(np.uint8)


def test_content_training_beats_the_untrained_model_and_bicubic(tmp_path):
    """A real learning signal: 300 seeded steps on one synthetic image lift PSNR on another,
    unseen one above the untrained model's (exactly bicubic upscaling, thanks to the input skip)
    and above MATLAB bicubic."""
    events = []
    job = TrainingJob(
        images=[TrainingImage(blobs(1), rgb=False, name="blobs")],
        validation=[(blobs(2), False)],
        output=tmp_path / "blobs.safetensors",
        generator_config=GeneratorConfig(
            in_channels=1,
            out_channels=1,
            channels=32,
            residual_blocks=4,
            batch_norm=False,
            input_skip=True,
        ),
        config=TrainingConfig(
            patch_size=48,
            batch_size=8,
            pretrain_steps=300,
            learning_rate=1e-3,
            validate_every=300,
            device="cpu",
            seed=0,
        ),
    )
    outcome = run_training(job, on_event=events.append)
    assert outcome.finished and outcome.steps == 300
    final = [e for e in events if isinstance(e, ValidationReport)][-1]
    untrained = untrained_psnr(job)
    print(
        f"untrained {untrained:.2f} dB, bicubic {final.bicubic_psnr:.2f} dB, "
        f"trained {final.psnr:.2f} dB"
    )
    assert final.psnr > untrained + 0.5
    assert final.psnr > final.bicubic_psnr + 0.5
    card = load_model(outcome.model_path).card
    assert card.trained and card.training["steps"] == 300
    assert card.metrics["validation"]["psnr"] == pytest.approx(final.psnr)


def untrained_psnr(job: TrainingJob) -> float:
    from napari_srgan.models.srresnet import Generator
    from napari_srgan.training.job import _validation_set
    from napari_srgan.training.validation import evaluate

    validation = _validation_set(job, NormalizationSpec(), 1)
    return evaluate(Generator(job.generator_config), validation, torch.device("cpu")).psnr


def make_trainer(config: TrainingConfig, checkpoint=None, events=None) -> Trainer:
    sampler = PatchSampler(
        astronaut_images(),
        patch_size=config.patch_size,
        channels=3,
        normalization=NormalizationSpec(),
        seed=config.seed,
    )
    return Trainer(
        tiny_generator(3, seed=1, batch_norm=True),
        sampler,
        config,
        checkpoint_path=checkpoint,
        on_event=events.append if events is not None else None,
    )


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    """Train 2 content + 4 adversarial steps straight, or stop after 3, checkpoint, rebuild
    everything and resume: weights, optimiser states and loss history come out identical."""
    config = tiny_config(pretrain_steps=2, adversarial_steps=4)
    straight = make_trainer(config)
    straight.run()

    checkpoint = tmp_path / "run.ckpt"
    first = make_trainer(config, checkpoint)
    first.should_stop = lambda: first.step >= 3
    first.run()
    assert torch.load(checkpoint, weights_only=True)["step"] == 3
    saved_optimizer = first.optimizer.state_dict()

    resumed = make_trainer(config, checkpoint)
    resumed.load_checkpoint(checkpoint)
    assert resumed.step == 3
    for key, state in saved_optimizer["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(resumed.optimizer.state_dict()["state"][key][name], value)
    resumed.run()
    assert resumed.step == straight.step == 6
    for (name, a), b in zip(
        straight.generator.state_dict().items(),
        resumed.generator.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, msg=name)
    for a, b in zip(
        straight.discriminator.state_dict().values(),
        resumed.discriminator.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(a, b)
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    for resumed_step, straight_step in zip(resumed.history, straight.history, strict=True):
        assert resumed_step == pytest.approx(straight_step)


def test_sigkill_loses_at_most_one_checkpoint_interval(tmp_path):
    """Kill a training process with SIGKILL; its last checkpoint is intact and resuming from it
    finishes the run with a continuous loss history."""
    image_path = tmp_path / "hr.png"
    iio.imwrite(image_path, data.astronaut())
    model_path = tmp_path / "killed.safetensors"
    checkpoint = tmp_path / "killed.ckpt"
    command = [
        sys.executable,
        "-m",
        "napari_srgan",
        "train",
        "--hr",
        str(image_path),
        "--out",
        str(model_path),
        "--from-scratch",
        "--channels",
        "16",
        "--blocks",
        "2",
        "--patch",
        "64",
        "--batch",
        "4",
        "--checkpoint-every",
        "3",
        "--validate-every",
        "100000",
        "--device",
        "cpu",
        "--val-crop",
        "64",
    ]
    process = subprocess.Popen(
        [*command, "--steps", "100000"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["step"] >= 6:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint appeared")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    state = torch.load(checkpoint, weights_only=True)  # intact, not truncated
    saved = state["step"]
    assert [h["step"] for h in state["history"]] == list(range(1, saved + 1))
    assert not model_path.exists()  # a killed run exported nothing
    total = saved + 4
    subprocess.run([*command, "--steps", str(total), "--resume"], check=True, capture_output=True)
    final = torch.load(checkpoint, weights_only=True)
    assert final["step"] == total
    assert [h["step"] for h in final["history"]] == list(range(1, total + 1))
    assert final["history"][:saved] == state["history"]
    assert load_model(model_path).card.training["steps"] == total


def test_adversarial_stage_without_vgg_weights_says_so_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-cache"))
    events = []
    trainer = make_trainer(
        tiny_config(
            pretrain_steps=1,
            adversarial_steps=2,
            vgg_weights="imagenet",
            allow_download=False,
            relativistic=True,
        ),
        events=events,
    )
    trainer.run()
    notices = [e for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and "VGG19" in notices[0].message
    losses = [e.losses for e in events if isinstance(e, StepReport)]
    assert set(losses[-1]) == {"discriminator", "adversarial", "pixel", "generator"}


def test_adversarial_stage_uses_the_perceptual_loss_when_vgg_is_available():
    events = []
    make_trainer(tiny_config(pretrain_steps=0, adversarial_steps=2), events=events).run()
    losses = [e.losses for e in events if isinstance(e, StepReport)]
    assert "perceptual" in losses[-1] and all(
        np.isfinite(list(step.values())).all() for step in losses
    )


def test_paired_patches_are_aligned():
    hr = data.camera()
    lr = np.clip(
        np.rint(bicubic_downscale(torch.from_numpy(hr.astype(np.float64))).numpy()), 0, 255
    ).astype(np.uint8)
    sampler = PatchSampler(
        [TrainingImage(hr, lr=lr, rgb=False)],
        patch_size=48,
        channels=1,
        normalization=NormalizationSpec(),
        seed=3,
    )
    low, high = sampler.batch(4)
    assert low.shape == (4, 1, 12, 12) and high.shape == (4, 1, 48, 48)
    # the LR patch is the HR patch's bicubic reduction (up to 8-bit rounding and patch borders)
    local = bicubic_downscale(high.double()).float()
    assert (local - low)[..., 2:-2, 2:-2].abs().max() < 3 / 255


def test_crappifier_training_runs_on_a_grey_stack(tmp_path):
    stack = np.stack([data.camera()[:128, :128]] * 3).astype(np.uint16) * 16
    job = TrainingJob(
        images=[TrainingImage(stack, rgb=False, name="stack")],
        output=tmp_path / "grey.safetensors",
        generator_config=GeneratorConfig(
            in_channels=1, out_channels=1, channels=8, residual_blocks=1
        ),
        normalization=NormalizationSpec("percentile", 0.1, 99.9),
        degradation=Crappifier(),
        config=tiny_config(),
        validation_fraction=0.25,
    )
    outcome = run_training(job)
    card = load_model(outcome.model_path).card
    assert card.degradation == "crappifier"
    assert card.normalization.mode == "percentile"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (TrainingImage(np.zeros((20, 20), np.uint8)), "smaller than one 32x32 patch"),
        (
            TrainingImage(np.zeros((64, 64), np.uint8), lr=np.zeros((20, 16), np.uint8)),
            "exactly 1/4",
        ),
        (TrainingImage(np.full((64, 64), np.nan, np.float32)), "NaN"),
        (TrainingImage(np.zeros((64, 64), bool)), "unsupported data type"),
    ],
)
def test_bad_training_data_is_refused(image, message):
    with pytest.raises(InvalidImageError, match=message):
        PatchSampler([image], patch_size=32, channels=1, normalization=NormalizationSpec())


def test_no_images_or_too_little_to_hold_out(tmp_path):
    with pytest.raises(InvalidImageError, match="no training images"):
        PatchSampler([], patch_size=32, channels=1, normalization=NormalizationSpec())
    job = TrainingJob(
        images=[TrainingImage(np.zeros((100, 100), np.uint8))],
        output=tmp_path / "x.safetensors",
        generator_config=TINY,
        config=tiny_config(),
        validation_fraction=0.1,
    )
    with pytest.raises(InvalidImageError, match="choose a validation image"):
        run_training(job)
    assert not (tmp_path / "x.safetensors").exists()


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    checkpoint = tmp_path / "run.ckpt"
    events = []
    trainer = make_trainer(tiny_config(pretrain_steps=2, checkpoint_every=1), checkpoint, events)
    trainer.run()
    assert [e.step for e in events if isinstance(e, CheckpointSaved)][-1] == 2
    good = checkpoint.read_bytes()

    def full_disk(obj, stream, *args, **kwargs):  # the checkpoint is written to an open file
        stream.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"no space left on device while writing .*run\.ckpt"):
        trainer.save_checkpoint()
    assert checkpoint.read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_time_limit_stops_saves_and_resume_finishes(tmp_path, monkeypatch, capsys):
    """--time-limit stops between steps, saves the model and a checkpoint, and says how to go
    on; the same command with --resume trains the remaining steps."""
    import imageio.v3 as iio

    from napari_srgan import cli

    class Clock:  # one second passes per reading: the limit falls after a known step
        now = 0.0

        def monotonic(self) -> float:
            self.now += 1.0
            return self.now

    iio.imwrite(tmp_path / "hr.png", np.random.default_rng(0).integers(0, 255, (96, 96), np.uint8))
    out = tmp_path / "m.safetensors"
    command = ["train", "--hr", str(tmp_path / "hr.png"), "--out", str(out), "--from-scratch"]
    command += ["--grey-model", "--channels", "8", "--blocks", "1", "--steps", "10"]
    command += ["--patch", "32", "--batch", "2", "--val-fraction", "0.34", "--device", "cpu"]
    command += ["--no-download"]
    monkeypatch.setattr(cli, "time", Clock())
    assert cli.main([*command, "--time-limit", "0.05"]) == 0  # 3 s: the 4th check stops
    printed = capsys.readouterr().out
    assert "stopped at the 0.05-minute time limit after 3 of 10 steps" in printed
    assert out.exists() and out.with_suffix(".ckpt").exists()
    assert cli.main([*command, "--resume"]) == 0
    assert f"saved {out} after 10 steps" in capsys.readouterr().out
