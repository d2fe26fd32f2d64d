import numpy as np
import pytest
import torch

from conftest import shared_data
from napari_srgan.io.images import read_image
from napari_srgan.training.degradations import (
    Bicubic,
    Crappifier,
    Mixture,
    batched_blur,
    bicubic_downscale,
    bicubic_upscale,
    degradation_from_dict,
    resize_matrix,
)
from napari_srgan.training.evaluation import evaluate_images, image_files


@pytest.mark.parametrize(("n_in", "n_out"), [(96, 24), (24, 96), (13, 52), (7, 3)])
def test_resize_weights_are_normalised(n_in, n_out):
    matrix = resize_matrix(n_in, n_out)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)


def test_first_upscaled_pixel_by_hand():
    """imresize(1:4, [1 8]): output pixel 1 is centred at input coordinate u = 1/2 + 0.5*(1 - 1/2)
    = 0.75 (1-based). Keys taps at 1.75, 0.75, 0.25, 1.25 from input pixels -1, 0, 1, 2, which the
    symmetric border maps to values 2, 1, 1, 2; weights -0.0234375, 0.2265625, 0.8671875,
    -0.0703125. Sum: 0.90625."""
    out = resize_matrix(4, 8) @ np.arange(1.0, 5.0)
    assert out[0] == pytest.approx(0.90625)
    assert out[-1] == pytest.approx(5 - 0.90625)  # mirror image at the other border
    np.testing.assert_allclose(out[3:5], [2.25, 2.75])


def test_constant_images_stay_constant():
    image = torch.full((1, 3, 32, 40), 0.3, dtype=torch.float64)
    np.testing.assert_allclose(bicubic_downscale(image).numpy(), 0.3)
    np.testing.assert_allclose(bicubic_upscale(image).numpy(), 0.3)


def test_set5_bicubic_baseline_matches_the_published_number():
    """The whole benchmark protocol (modcrop, MATLAB bicubic, Y channel, 4-px border) reproduces
    the published bicubic Set5 x4 PSNR of 28.43 dB; with an identity "model" this is a protocol
    check, so it runs the bicubic branch of evaluate_images only."""
    images = [(p.name, read_image(p).data) for p in image_files([shared_data("val", "Set5")])]
    from napari_srgan.training.degradations import modcrop
    from napari_srgan.training.evaluation import _quality, bicubic_baseline, make_lr

    scores = []
    for _, hr in images:
        hr = modcrop(hr)
        scores.append(_quality(bicubic_baseline(make_lr(hr, Bicubic())), hr).psnr)
    assert np.mean(scores) == pytest.approx(28.43, abs=0.01)


def test_crappifier_is_seeded_and_noisier_with_fewer_photons():
    hr = torch.full((4, 1, 64, 64), 0.5, dtype=torch.float64)
    noisy = Crappifier(blur_sigma=(1, 1), photons=(20, 20), read_noise=(0, 0))
    clean = Crappifier(blur_sigma=(1, 1), photons=(5000, 5000), read_noise=(0, 0))
    first = noisy(hr, torch.Generator().manual_seed(1))
    again = noisy(hr, torch.Generator().manual_seed(1))
    assert first.shape == (4, 1, 16, 16)
    torch.testing.assert_close(first, again)
    assert first.std() > 3 * clean(hr, torch.Generator().manual_seed(1)).std()
    assert abs(float(first.mean()) - 0.5) < 0.02  # shot noise is unbiased


def test_degradation_descriptions_round_trip():
    crappifier = Crappifier(blur_sigma=(1.0, 2.0))
    assert degradation_from_dict(crappifier.describe()) == crappifier
    assert degradation_from_dict({"kind": "bicubic"}) == Bicubic()
    with pytest.raises(ValueError, match="unknown degradation"):
        degradation_from_dict({"kind": "jpeg"})
    with pytest.raises(ValueError, match="range"):
        Crappifier(photons=(10, 1))


def test_evaluate_images_scores_a_model(rgb_model):
    hr = (np.indices((32, 32)).sum(axis=0) % 16 * 16).astype(np.uint8)
    scores = evaluate_images(rgb_model, [("ramp", np.stack([hr] * 3, -1))])
    assert np.isfinite(scores[0].model.psnr) and scores[0].bicubic.psnr > 10


def test_mixture_is_seeded_and_mixes_clean_blurred_and_noisy_samples():
    hr = torch.rand(64, 1, 32, 32)
    mixture = Mixture()
    lr = mixture(hr, torch.Generator().manual_seed(3))
    assert lr.shape == (64, 1, 8, 8)
    assert torch.equal(lr, mixture(hr, torch.Generator().manual_seed(3)))
    assert not torch.equal(lr, mixture(hr, torch.Generator().manual_seed(4)))
    clean = bicubic_downscale(hr)
    error = (lr - clean).flatten(1).abs().amax(dim=1)
    exact = int((error < 1e-6).sum())
    # About (1 - 0.5) * (1 - 0.6) = 20% of 64 samples are plain bicubic LR, the rest are not.
    assert 4 <= exact <= 24
    assert (error > 0.05).sum() >= 20  # noisy ones


def test_mixture_extremes_are_bicubic_blur_only_and_always_noisy():
    hr = torch.rand(8, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    none = Mixture(blur_probability=0, noise_probability=0)
    assert torch.allclose(none(hr, generator), bicubic_downscale(hr))
    blur_only = Mixture(blur_probability=1, blur_sigma=(1.0, 1.0), noise_probability=0)
    expected = bicubic_downscale(batched_blur(hr, torch.ones(8)))
    assert torch.allclose(blur_only(hr, generator), expected, atol=1e-6)
    always = Mixture(blur_probability=0, noise_probability=1, photons=(30, 30), read_noise=(0, 0))
    noise = always(torch.full((8, 1, 64, 64), 0.5), generator) - 0.5
    # Shot noise at 30 photons: sigma = sqrt(0.5 * 30) / 30.
    assert float(noise.std()) == pytest.approx((0.5 * 30) ** 0.5 / 30, rel=0.1)


def test_batched_blur_matches_per_sample_gaussian_blur():
    from torchvision.transforms.functional import gaussian_blur

    images = torch.rand(3, 2, 20, 24)
    result = batched_blur(images, torch.tensor([0.0, 0.8, 1.0]))
    assert torch.equal(result[0], images[0])
    assert torch.allclose(result[2], gaussian_blur(images[2], [7, 7], [1.0, 1.0]), atol=1e-6)
    assert torch.allclose(result[1], gaussian_blur(images[1], [7, 7], [0.8, 0.8]), atol=1e-6)


def test_mixture_description_round_trips_and_bad_ranges_are_refused():
    mixture = Mixture(blur_probability=0.3, photons=(20.0, 200.0))
    assert degradation_from_dict(mixture.describe()) == mixture
    with pytest.raises(ValueError, match="noise_probability"):
        Mixture(noise_probability=1.5)
    with pytest.raises(ValueError, match="read_noise"):
        Mixture(read_noise=(0.1, 0.0))


def test_train_command_line_builds_the_mixture():
    from napari_srgan.cli import CommandError, _degradation, build_parser

    def parse(*options):
        return build_parser().parse_args(["train", "--hr", "x.png", "--out", "m", *options])

    assert _degradation(parse("--degradation", "mixture", "--photons", "20", "200")) == Mixture(
        photons=(20.0, 200.0)
    )
    assert _degradation(parse("--degradation", "crappifier")) == Crappifier()
    assert _degradation(parse()) == Bicubic()
    with pytest.raises(CommandError, match="noise_probability"):
        _degradation(parse("--degradation", "mixture", "--noise-probability", "2"))
