import pytest
import torch

from conftest import tiny_generator
from napari_srgan.models.srresnet import (
    SCALE,
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    parameter_count,
)


def test_default_generator_is_the_papers_size():
    generator = Generator(GeneratorConfig())
    # SRResNet of Ledig et al.: 16 blocks x 64 features, about 1.55M parameters.
    assert 1.5e6 < parameter_count(generator) < 1.6e6


@pytest.mark.parametrize("channels", [1, 3])
def test_generator_upscales_4x(channels):
    generator = tiny_generator(channels)
    out = generator(torch.rand(2, channels, 13, 7))
    assert out.shape == (2, channels, 13 * SCALE, 7 * SCALE)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_receptive_radius_bounds_the_influence_of_a_pixel(batch_norm):
    """Changing one input pixel changes outputs only within the stated radius, and it does
    reach almost that far (so the tile overlap is neither too small nor wasteful)."""
    generator = tiny_generator(3, batch_norm=batch_norm, residual_blocks=2)
    radius = generator.config.receptive_radius
    image = torch.rand(1, 3, 64, 64)
    changed = image.clone()
    changed[0, :, 32, 32] += 1.0
    with torch.no_grad():
        difference = (generator(changed) - generator(image)).abs().amax(dim=(0, 1))
    rows = torch.nonzero(difference.amax(dim=1) > 0).flatten()
    centre = 32 * SCALE + (SCALE - 1) / 2
    reach = max(centre - rows.min().item(), rows.max().item() - centre) / SCALE
    assert reach <= radius
    assert reach >= radius - 1


def test_input_skip_starts_as_bicubic():
    generator = tiny_generator(3, batch_norm=False, input_skip=True)
    image = torch.rand(1, 3, 10, 10)
    expected = torch.nn.functional.interpolate(image, scale_factor=4, mode="bicubic")
    assert torch.allclose(generator(image), expected, atol=1e-6)


@pytest.mark.parametrize("size", [96, 64, 128])
def test_discriminator_gives_one_logit_per_patch(size):
    discriminator = Discriminator(DiscriminatorConfig(in_channels=3, channels=8, dense_features=16))
    assert discriminator(torch.rand(3, 3, size, size)).shape == (3,)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="channels"):
        GeneratorConfig(channels=0)
    with pytest.raises(ValueError, match="input_skip"):
        GeneratorConfig(in_channels=1, out_channels=3, input_skip=True)
    with pytest.raises(ValueError, match="unknown generator settings"):
        GeneratorConfig.from_dict({"channels": 8, "wings": 2})
