import json
import tracemalloc

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save, save_file

from conftest import tiny_model
from napari_srgan.engine.upscale import upscale
from napari_srgan.models.files import (
    ModelFileError,
    load_model,
    read_metadata,
    save_model,
    write_safetensors,
)
from napari_srgan.models.registry import available_models, resolve_model
from napari_srgan.models.srresnet import Generator, GeneratorConfig


@pytest.mark.parametrize("half", [False, True])
def test_round_trip_keeps_weights_config_and_card(tmp_path, half, rng):
    model = tiny_model(3)
    model.card.metrics = {"Set5": {"psnr_y": 30.1}}
    path = save_model(tmp_path / "m.safetensors", model.network, model.card, half=half)
    loaded = load_model(path, measure=False)  # the card as stored (no halo measured on load)
    assert loaded.network.config == model.network.config
    assert loaded.card == model.card
    image = rng.integers(0, 255, (12, 12, 3)).astype(np.uint8)
    difference = np.abs(upscale(image, loaded).astype(int) - upscale(image, model).astype(int))
    assert difference.max() <= (2 if half else 0)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "absent.safetensors")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\x00\x10garbage" * 10)
    with pytest.raises(ModelFileError, match=r"not a readable \.safetensors file"):
        load_model(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="not a napari-srgan model"):
        load_model(path)


def test_weights_that_do_not_fit_the_stated_architecture(tmp_path):
    """A file whose metadata claims 16 features but holds 8-feature weights names the problem."""
    model = tiny_model(3)
    path = save_model(tmp_path / "m.safetensors", model.network, model.card)
    wide = Generator(GeneratorConfig(channels=16, residual_blocks=1))
    tensors = {k: v.contiguous() for k, v in model.network.state_dict().items()}
    save_file(
        tensors,
        str(tmp_path / "bad.safetensors"),
        metadata={
            "napari_srgan_format": "1",
            "generator_config": json.dumps(wide.config.to_dict()),
            "model_card": model.card.to_json(),
        },
    )
    with pytest.raises(ModelFileError, match=r"head.0.weight has shape \(8, 3, 9, 9\)"):
        load_model(tmp_path / "bad.safetensors")
    assert load_model(path).network.config.channels == 8


def test_registry_lists_user_models_and_resolves_names(tiny_model_file):
    models = available_models()
    assert models["tiny-rgb"] == tiny_model_file
    assert resolve_model("tiny-rgb") == tiny_model_file
    assert resolve_model(str(tiny_model_file)) == tiny_model_file
    with pytest.raises(ModelFileError, match="no model named 'nope'"):
        resolve_model("nope")
    config, card = read_metadata(tiny_model_file)
    assert not card.trained and config.channels == 8


def test_an_unknown_model_lists_the_installed_ones_escaped(user_models):
    # a file name with a newline in the model folder split the one-line message
    (user_models / "evil\n\x1b[31m.safetensors").write_bytes(b"")
    with pytest.raises(ModelFileError) as refused:
        resolve_model("nope")
    assert str(refused.value).endswith(", evil\\n\\x1b[31m"), refused.value


def _parts(data: bytes) -> tuple[dict, bytes]:
    """A .safetensors file's header (parsed) and data section."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def test_a_written_file_is_laid_out_as_safetensors_writes_it(tmp_path):
    """The streamed writer puts every dtype, shape, offset and byte where safetensors' own
    writer does (widest elements first), so any safetensors reader reads it back."""
    tensors = {
        "weight": torch.randn(3, 4),
        "half": torch.randn(5).half(),
        "brain": torch.randn(7).bfloat16(),
        "count": torch.tensor(3),
        "empty": torch.zeros(0, 3),
        "mask": torch.tensor([True, False, True]),
        "index": torch.arange(5),
        "bytes": torch.arange(3, dtype=torch.uint8),
        "größe": torch.ones(2, dtype=torch.float64),
    }
    metadata = {"napari_srgan_format": "1", "note": "µm"}
    path = write_safetensors(tmp_path / "m.safetensors", tensors, metadata, overwrite=False)
    header, data = _parts(path.read_bytes())
    expected_header, expected_data = _parts(save(tensors, metadata=metadata))
    assert header == expected_header
    assert data == expected_data
    back = load_file(path)
    assert back.keys() == tensors.keys()
    assert all(back[k].dtype == t.dtype and torch.equal(back[k], t) for k, t in tensors.items())


def test_writing_a_model_makes_no_copy_of_its_weights(tmp_path):
    """The file is streamed from the tensors' memory: safetensors' ``save`` built the whole file
    as one bytes object first, a second copy of the model (hundreds of MB for a community
    model) held while writing."""
    tensors = {f"layer{i}": torch.randn(1024, 1024) for i in range(2)}  # 8 MiB
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    tracemalloc.start()
    try:
        write_safetensors(tmp_path / "m.safetensors", tensors, {"k": "v"}, overwrite=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (tmp_path / "m.safetensors").stat().st_size > size
    assert peak < size / 16
