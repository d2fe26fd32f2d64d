"""Self-ensemble: the tiled, per-tile ensemble equals the mean of 8 transformed whole-image passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_model
from napari_srgan.engine.ensemble import TRANSFORMS, invert, self_ensemble, transform
from napari_srgan.engine.upscale import upscale


def test_transforms_are_the_eight_distinct_symmetries_and_invert():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    images = {tuple(transform(x, t, f).flatten().tolist()) for t, f in TRANSFORMS}
    assert len(TRANSFORMS) == len(images) == 8
    for turns, flip in TRANSFORMS:
        assert torch.equal(invert(transform(x, turns, flip), turns, flip), x)


def test_ensemble_of_an_equivariant_function_is_that_function():
    double = self_ensemble(lambda x: 2 * x)
    x = torch.rand(2, 3, 5, 7)
    assert torch.allclose(double(x), 2 * x)


@pytest.mark.parametrize("shape", [(29, 37), (27, 34, 3)])
def test_tiled_ensemble_equals_mean_of_eight_whole_image_passes(shape, rng):
    channels = 3 if len(shape) == 3 else 1
    model = tiny_model(channels, residual_blocks=2, batch_norm=False, input_skip=True)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.network.tail.weight, std=0.05)  # far from plain bicubic
    image = rng.random(shape, dtype=np.float32)
    rgb = channels == 3
    expected = np.zeros((shape[0] * 4, shape[1] * 4, *shape[2:]), np.float64)
    for turns, flip in TRANSFORMS:
        hwc = torch.from_numpy(image if rgb else image[..., None]).permute(2, 0, 1)
        turned = transform(hwc, turns, flip).permute(1, 2, 0).numpy()
        whole = upscale(turned if rgb else turned[..., 0], model, rgb=rgb, device="cpu")
        whole = torch.from_numpy(whole if rgb else whole[..., None]).permute(2, 0, 1)
        back = invert(whole, turns, flip).permute(1, 2, 0).numpy()
        expected += back if rgb else back[..., 0]
    expected /= len(TRANSFORMS)
    margin = model.card.halo
    result = upscale(image, model, rgb=rgb, tile=2 * margin + 5, batch_size=2, ensemble=True)
    assert result.shape == expected.shape
    assert np.abs(result - expected).max() <= 1e-5
    plain = upscale(image, model, rgb=rgb, device="cpu")
    assert np.abs(plain - expected).max() > 1e-3  # the ensemble is not the plain pass


def test_cli_ensemble_flag_runs_the_ensemble(tmp_path, user_models):
    import imageio.v3 as iio

    from napari_srgan.cli import main
    from napari_srgan.models.files import save_model

    model = tiny_model(3, batch_norm=False, input_skip=True)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.network.tail.weight, std=0.05)
    save_model(user_models / "tiny-rgb.safetensors", model.network, model.card)
    image = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "in.png", image)
    arguments = ["upscale", str(tmp_path / "in.png"), str(tmp_path / "out.png")]
    assert main([*arguments, "--model", "tiny-rgb", "--ensemble"]) == 0
    expected = upscale(image, model, rgb=True, ensemble=True)
    assert np.array_equal(iio.imread(tmp_path / "out.png"), expected)
    assert not np.array_equal(expected, upscale(image, model, rgb=True))
