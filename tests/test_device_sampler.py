"""The device-side sampler: shapes, ranges, augmentation, background skipping, seeds, pairs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_srgan.engine.ensemble import TRANSFORMS, transform
from napari_srgan.engine.upscale import InvalidImageError
from napari_srgan.models.normalization import NormalizationSpec
from napari_srgan.training.degradations import Mixture, bicubic_downscale
from napari_srgan.training.device_sampler import DeviceSampler, ParallelSampler
from napari_srgan.training.patches import PatchSampler, TrainingImage

SPEC = NormalizationSpec()


def sampler(images, **options) -> DeviceSampler:
    settings = {"patch_size": 32, "channels": 1, "normalization": SPEC, "seed": 0}
    return DeviceSampler(images, **{**settings, **options})


def noise(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_shapes_dtypes_and_ranges_for_grey_and_rgb_images():
    images = [TrainingImage(noise((70, 90, 3)), rgb=True), TrainingImage(noise((64, 80), 1))]
    lr, hr = sampler(images, channels=3, degradation=Mixture()).batch(12)
    assert lr.shape == (12, 3, 8, 8) and hr.shape == (12, 3, 32, 32)
    assert lr.dtype == hr.dtype == torch.float32
    assert float(hr.min()) >= 0 and float(hr.max()) <= 1
    assert float(lr.min()) > -0.5 and float(lr.max()) < 1.5  # noise may leave [0, 1] a little


def test_patches_are_crops_of_the_image_under_the_eight_flips_and_turns():
    height, width = 40, 50
    image = np.arange(height * width, dtype=np.float32).reshape(height, width)
    _, hr = sampler([TrainingImage(image)], patch_size=16).batch(64)  # floats: min/max -> 0/1
    seen = set()
    for patch in hr[:, 0].double() * (height * width - 1):
        for index, (turns, flip) in enumerate(TRANSFORMS):
            # Undo each candidate transform; a plain crop has steps of 1 along x, width along y.
            crop = patch
            crop = torch.rot90(crop, -turns, dims=(0, 1))
            crop = crop.flip(-1) if flip else crop
            steps_x, steps_y = crop.diff(dim=1), crop.diff(dim=0)
            if (steps_x - 1).abs().max() < 0.01 and (steps_y - width).abs().max() < 0.01:
                seen.add(index)
                break
        else:
            pytest.fail("a patch is not a flipped / turned crop of the image")
    assert len(seen) == 8


def test_background_is_skipped():
    image = np.zeros((64, 128), np.uint8)
    image[:, 64:] = noise((64, 64))  # half of the image has content
    _, hr = sampler([TrainingImage(image)], patch_size=16).batch(64)
    assert float(hr.flatten(1).std(dim=1).min()) > 0.05
    _, hr = sampler([TrainingImage(image)], patch_size=16, min_std=0).batch(64)
    assert float(hr.flatten(1).std(dim=1).min()) == 0  # without the check, background comes


def test_seeded_reproducible_and_resumable():
    images = [TrainingImage(noise((80, 80)))]
    first = sampler(images, degradation=Mixture())
    a = [first.batch(4) for _ in range(2)]
    state = first.state_dict()
    after = first.batch(4)
    second = sampler(images, degradation=Mixture())
    b = [second.batch(4) for _ in range(2)]
    assert all(
        torch.equal(x, y) for pa, pb in zip(a, b, strict=True) for x, y in zip(pa, pb, strict=True)
    )
    other = sampler(images, degradation=Mixture(), seed=1).batch(4)
    assert not torch.equal(other[1], a[0][1])
    resumed = sampler(images, degradation=Mixture())
    resumed.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(resumed.batch(4), after, strict=True))


def test_synthetic_lr_sees_the_mirrored_border_like_a_whole_image_resize():
    """One 32x32 image = one patch: its LR must be the whole-image MATLAB resize (which mirrors
    the border), flipped / turned as the patch was."""
    image = noise((32, 32))
    lr, hr = sampler([TrainingImage(image)], min_std=0).batch(8)
    whole = bicubic_downscale(torch.from_numpy(image / 255.0)[None, None])[0]
    for patch_lr, patch_hr in zip(lr, hr, strict=True):
        turned = [
            (t, f)
            for t, f in TRANSFORMS
            if torch.allclose(
                transform(torch.from_numpy(image / 255.0).float()[None], t, f), patch_hr
            )
        ]
        assert len(turned) == 1
        expected = transform(whole, *turned[0]).float()
        assert torch.allclose(patch_lr, expected, atol=1e-5)


def test_paired_lr_at_a_quarter_of_the_size_stays_aligned():
    lr_image = noise((20, 24))
    hr_image = np.kron(lr_image, np.ones((4, 4), np.uint8))  # HR pixel blocks = LR pixels
    lr, hr = sampler([TrainingImage(hr_image, lr=lr_image)], patch_size=16).batch(16)
    assert lr.shape == (16, 1, 4, 4)
    assert torch.allclose(lr, torch.nn.functional.avg_pool2d(hr, 4), atol=1e-6)


def test_paired_lr_on_the_hr_grid_is_downsampled_like_synthetic_bicubic_lr():
    image = noise((64, 72))
    paired = sampler([TrainingImage(image, lr=image.copy())]).batch(8)
    synthetic = sampler([TrainingImage(image)]).batch(8)  # Bicubic: same draws, same positions
    assert torch.equal(paired[1], synthetic[1])
    assert torch.allclose(paired[0], synthetic[0], atol=1e-6)


def test_one_x_pairs_on_the_same_grid():
    image = noise((48, 56))
    lr, hr = sampler([TrainingImage(image, lr=255 - image)], scale=1).batch(8)
    assert lr.shape == hr.shape == (8, 1, 32, 32)
    assert torch.allclose(lr, 1 - hr, atol=1e-6)


def test_lr_of_another_size_is_refused():
    with pytest.raises(InvalidImageError, match="1/4 its size"):
        sampler([TrainingImage(noise((64, 64)), lr=noise((30, 30)))])


def test_parallel_sampler_is_reproducible_for_any_worker_count_and_resumes():
    def draw(workers: int, start: int = 0, count: int = 3):
        patches = PatchSampler(
            [TrainingImage(noise((80, 80)))], patch_size=32, channels=1, normalization=SPEC
        )
        parallel = ParallelSampler(patches, batch_size=2, seed=0, workers=workers)
        parallel.load_state_dict({"drawn": start})
        return [parallel.batch(2)[1] for _ in range(count)]

    serial = draw(0)
    assert all(torch.equal(a, b) for a, b in zip(serial, draw(2), strict=True))
    assert torch.equal(draw(0, start=2, count=1)[0], serial[2])
    assert not torch.equal(serial[0], serial[1])


@pytest.mark.parametrize("scale", [1, 4])
def test_paired_training_on_one_pixel_grid(tmp_path, scale):
    """Noisy -> clean pairs on the same grid train a 1x restoration model, or a 4x model whose
    LR is downsampled from the grid; validation uses held-out real pairs, not a degradation."""
    from skimage import data as samples

    from napari_srgan.engine.upscale import upscale
    from napari_srgan.models.files import load_model
    from napari_srgan.models.srresnet import GeneratorConfig
    from napari_srgan.training.job import TrainingJob, run_training
    from napari_srgan.training.trainer import TrainingConfig

    clean = (samples.binary_blobs(192, blob_size_fraction=0.1, rng=0) * 180 + 40).astype(np.uint8)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255)
    job = TrainingJob(
        images=[TrainingImage(clean, lr=noisy.astype(np.uint8), rgb=False)],
        output=tmp_path / "paired.safetensors",
        generator_config=GeneratorConfig(
            in_channels=1,
            out_channels=1,
            channels=8,
            residual_blocks=1,
            batch_norm=False,
            input_skip=True,
            scale=scale,
        ),
        config=TrainingConfig(
            patch_size=32,
            batch_size=4,
            pretrain_steps=40,
            learning_rate=1e-3,
            validate_every=40,
            device="cpu",
        ),
        validation_fraction=0.25,
    )
    outcome = run_training(job)
    assert outcome.finished and outcome.validation is not None
    model = load_model(outcome.model_path)
    assert model.scale == scale
    result = upscale(noisy.astype(np.uint8), model, rgb=False, device="cpu")
    assert result.shape == (192 * scale, 192 * scale)
    if scale == 1:  # the learnt restoration beats the identity (the "bicubic" of 1x)
        assert outcome.validation["psnr"] > outcome.validation["bicubic_psnr"]


def test_train_command_makes_a_one_x_model_from_same_grid_pairs(tmp_path):
    import imageio.v3 as iio

    from napari_srgan.cli import main
    from napari_srgan.models.files import load_model

    clean = noise((96, 96))
    iio.imwrite(tmp_path / "hr.png", clean)
    iio.imwrite(tmp_path / "lr.png", np.clip(clean.astype(int) + 20, 0, 255).astype(np.uint8))
    iio.imwrite(tmp_path / "bad.png", clean[:50, :50])
    common = ["train", "--hr", str(tmp_path / "hr.png"), "--from-scratch", "--grey-model"]
    common += ["--channels", "8", "--blocks", "1", "--scale", "1", "--steps", "2", "--patch", "32"]
    common += ["--batch", "2", "--val-fraction", "0.34", "--device", "cpu", "--no-download"]
    out = tmp_path / "restore.safetensors"
    assert main([*common, "--lr", str(tmp_path / "lr.png"), "--out", str(out)]) == 0
    assert load_model(out).scale == 1
    assert main([*common, "--lr", str(tmp_path / "bad.png"), "--out", str(tmp_path / "x")]) == 2


COMPUTED_DASK_DATA = """
import dask.array as da
import numpy as np
from napari_srgan.models.normalization import NormalizationSpec
from napari_srgan.training.device_sampler import ParallelSampler
from napari_srgan.training.patches import PatchSampler, TrainingImage

data = (da.random.RandomState(0).random_sample((96, 96), chunks=16) * 255).astype(np.uint8)
print(data.max().compute())  # dask's thread pool now has threads, as after the checks
image = TrainingImage(data)
patches = PatchSampler([image], patch_size=32, channels=1, normalization=NormalizationSpec())
print(ParallelSampler(patches, batch_size=2, workers=2).batch(2)[1].shape)
"""


def test_worker_processes_read_computed_dask_data_after_the_parent_used_dask():
    """The workers are forked: they inherited dask's thread pool without its threads, and the
    first patch read through the threaded scheduler waited forever (training never began)."""
    source = str(Path(__file__).resolve().parents[1] / "src")
    run = subprocess.run(
        [sys.executable, "-c", COMPUTED_DASK_DATA],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONPATH": source},
        start_new_session=True,
    )
    assert run.returncode == 0 and "torch.Size([2, 1, 32, 32])" in run.stdout, run.stderr
