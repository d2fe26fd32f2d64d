"""Hostile model files: what users and attackers hand to ``--model``, ``models add``, the
bioimage.io import and the Upscale widget's model list.

Each attack ends in one line (CLI: exit 2, no traceback) before any large allocation, and
nothing of the user's changes. Files are crafted from tiny random-weight models.
"""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import tifffile
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.overrides import TorchFunctionMode

from napari_srgan.cli import main
from test_community_models import community_file


@pytest.fixture
def image(tmp_path) -> Path:
    """A small RGB input."""
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 256, (20, 20, 3), np.uint8))
    return path


def upscale_with(capsys, image: Path, model: Path) -> str:
    """The one error line of upscaling ``image`` with ``model``; no output may appear."""
    output = image.with_name("out.tif")
    line = run_cli(capsys, "upscale", image, output, "--model", model)
    assert not output.exists()
    return line


def run_cli(capsys, *argv: str) -> str:
    """Run the CLI, require exit 2 with one stderr line, and return that line."""
    assert main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@contextmanager
def allocations() -> Iterator[list[int]]:
    """Bytes of the tensor storages torch creates inside the block (meta tensors hold none)."""

    class Count(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.device.type != "meta":
                storage = out.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total[0] += storage.nbytes()
            return out

    seen: set[int] = set()
    total = [0]
    with Count():
        yield total


def rewrite_header(source: Path, target: Path, change, *, replace=(b"", b"")) -> Path:
    """``source`` with its safetensors header (JSON) changed by ``change(header)``, then
    ``replace``'s first bytes by its second in the header's text."""
    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    change(header)
    text = json.dumps(header).encode().replace(*replace)
    target.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])
    return target


def with_metadata(source: Path, target: Path, **entries: str) -> Path:
    return rewrite_header(source, target, lambda h: h["__metadata__"].update(entries))


def with_config(source: Path, target: Path, **changes) -> Path:
    """``source`` with its generator config changed (and the card's network facts dropped,
    so only the weights can contradict the config)."""

    def change(header: dict) -> None:
        metadata = header["__metadata__"]
        config = json.loads(metadata["generator_config"]) | changes
        card = json.loads(metadata["model_card"])
        for fact in ("scale", "in_channels", "out_channels", "theoretical_halo"):
            card.pop(fact, None)
        metadata["generator_config"] = json.dumps(config)
        metadata["model_card"] = json.dumps(card)

    return rewrite_header(source, target, change)


# ------------------------------------------------------------------------ native .safetensors


def test_a_config_claiming_a_huge_network_is_refused_before_it_is_built(
    tiny_model_file, tmp_path, capsys, image
):
    """1024 features x 4 blocks is 300 MB of weights (x 256 blocks: 19 GB) the 40 kB file
    does not have: the shapes are compared before any layer is allocated."""
    model = with_config(
        tiny_model_file, tmp_path / "huge.safetensors", channels=1024, residual_blocks=4
    )
    with allocations() as allocated:
        line = upscale_with(capsys, image, model)
    assert "weights do not fit the architecture" in line and "huge.safetensors" in line
    assert allocated[0] < 10e6


@pytest.mark.parametrize(
    ("setting", "value"),
    [("scale", 4.0), ("scale", True), ("batch_norm", "false")],
)
def test_a_config_value_of_the_wrong_type_is_one_line(
    tiny_model_file, tmp_path, capsys, image, setting, value
):
    """4.0 and True compare equal to 4 and 1: they passed the scale check, then a float scale
    broke slicing in the halo measurement with a traceback."""
    model = with_config(tiny_model_file, tmp_path / "typed.safetensors", **{setting: value})
    line = upscale_with(capsys, image, model)
    assert "broken model metadata" in line and f"GeneratorConfig.{setting}" in line


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("entry", ["model_card", "generator_config", "header"])
def test_json_nested_too_deeply_is_one_line_in_upscale_and_models(
    tiny_model_file, user_models, capsys, image, entry
):
    """200 kB of brackets made Python's JSON parser raise RecursionError: a traceback from
    ``upscale``, ``models`` and the Upscale widget's card lookup."""
    from napari_srgan.models.registry import ModelFileError, read_card

    model = user_models / "deep.safetensors"
    if entry == "header":
        deep = (b'"DEEP"', DEEP.encode())
        rewrite_header(tiny_model_file, model, lambda h: h.update(deep="DEEP"), replace=deep)
    else:
        with_metadata(tiny_model_file, model, **{entry: DEEP})
    assert "JSON nested too deeply" in upscale_with(capsys, image, model)
    with pytest.raises(ModelFileError, match="nested too deeply"):
        read_card("deep")
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert "deep: unreadable:" in listed and "nested too deeply" in listed


def with_tensors(source: Path, target: Path, change) -> Path:
    """``source`` (a .safetensors file) with its tensors changed by ``change(name, tensor)``."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: change(name, handle.get_tensor(name)) for name in handle.keys()}  # noqa: SIM118
    save_file(tensors, str(target), metadata=metadata)
    return target


@pytest.mark.parametrize(
    "weights",
    ["fp8", "fp8 nan", "float64 beyond float32", "community nan"],
)
def test_weights_of_unusual_types_or_values_load_or_are_refused_in_one_line(
    tiny_model_file, tmp_path, capsys, image, weights
):
    """fp8 weights broke the NaN check (no isfinite for fp8: a traceback); a float64 weight
    beyond float32's range passed it and became infinite on load; a community model with NaN
    weights ran and wrote an image of garbage."""
    fp8 = torch.float8_e4m3fn
    changes = {
        "fp8": lambda name, t: t.to(fp8),
        "fp8 nan": lambda name, t: t.fill_(float("nan")).to(fp8) if name == "tail.bias" else t,
        "float64 beyond float32": lambda name, t: (
            t.double().fill_(1e300) if name == "tail.bias" else t
        ),
    }
    if weights == "community nan":
        state = torch.load(community_file(tmp_path, "esrgan-x4"), weights_only=True)
        state["model.0.weight"][0, 0, 0, 0] = float("nan")
        model = tmp_path / "nan.pth"
        torch.save(state, model)
    else:
        model = with_tensors(tiny_model_file, tmp_path / "w.safetensors", changes[weights])
    if weights == "fp8":
        assert main(["upscale", str(image), str(tmp_path / "o.tif"), "--model", str(model)]) == 0
        return
    line = upscale_with(capsys, image, model)
    assert "weights contain NaN or infinite values" in line and model.name in line


# ------------------------------------------------------------------ community (spandrel) files


def test_a_community_file_naming_a_huge_block_index_is_refused_before_it_is_built(
    tmp_path, user_models, capsys
):
    """spandrel counts ESRGAN's blocks by the highest index among the tensor names: one extra
    tensor named block 400 made it build 400 blocks (360 MB; block 100000: 90 GB) before
    finding the weights missing. The build now stops once it outgrows the file's weights."""
    from safetensors.torch import load_file

    state = load_file(str(community_file(tmp_path, "esrgan-x4", ".safetensors")))
    state["model.1.sub.400.RDB1.conv1.0.weight"] = state["model.1.sub.0.RDB1.conv1.0.weight"] + 0
    model = tmp_path / "deep.safetensors"
    save_file(state, str(model))
    with allocations() as allocated:
        line = run_cli(capsys, "models", "add", model)
    assert "deep.safetensors: its tensor names and shapes describe a network larger" in line
    assert allocated[0] < 100e6
    assert list(user_models.iterdir()) == []


def deflated(source: Path, target: Path) -> Path:
    """``source`` (a torch.save zip) with its entries deflated, as torch reads them too."""
    with zipfile.ZipFile(source) as plain, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for entry in plain.infolist():
            z.writestr(entry.filename, plain.read(entry.filename))
    return target


def test_a_pickle_zip_unpacking_to_more_than_the_free_memory_is_refused_before_reading(
    tmp_path, image, capsys, monkeypatch
):
    """torch inflates deflated entries whole: 16 kB of zip unpacked to 16 MB (20 MB of zip:
    20 GB). Here the machine has 10 MB free."""
    plain = tmp_path / "plain.pth"
    torch.save({"model.0.weight": torch.zeros(4_000_000)}, plain)
    bomb = deflated(plain, tmp_path / "bomb.pth")
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=10_000_000))
    line = upscale_with(capsys, image, bomb)
    assert "bomb.pth is not a readable PyTorch weights file" in line
    assert "unpacks to 0.0 GB, more than the 0.0 GB of free memory" in line


@pytest.mark.parametrize("damage", ["broken central directory", "sparse tensor"])
def test_a_damaged_pickle_zip_is_one_line(tmp_path, image, capsys, damage):
    """A zip whose central directory is broken made the TorchScript check raise BadZipFile (a
    traceback); a sparse tensor printed torch's validation warning before the error."""
    state = torch.load(community_file(tmp_path, "esrgan-x4"), weights_only=True)
    model = tmp_path / "damaged.pth"
    if damage == "sparse tensor":
        state["model.0.weight"] = state["model.0.weight"].to_sparse()
        torch.save(state, model)
    else:
        torch.save(state, model)
        data = model.read_bytes()
        at = data.rfind(b"PK\x01\x02")
        model.write_bytes(data[:at] + b"XX" + data[at + 2 :])
    with warnings.catch_warnings(record=True) as warned:  # each would print lines to stderr
        warnings.simplefilter("always")
        assert "damaged.pth" in upscale_with(capsys, image, model)
    assert [str(w.message) for w in warned] == []


@pytest.mark.parametrize("change", ["integer key", "zero-sized layer", "scalar weight"])
def test_a_state_dict_spandrel_chokes_on_is_one_line(tmp_path, image, capsys, change):
    """An integer key made spandrel's detection raise AttributeError and a 0-d last weight an
    IndexError (tracebacks); a layer of width 0 printed torch's init warning first."""
    state = torch.load(community_file(tmp_path, "esrgan-x4"), weights_only=True)
    if change == "integer key":
        state = {1: state.pop("model.0.bias"), **state}
    elif change == "zero-sized layer":
        state["model.0.weight"] = torch.zeros(0, 3, 3, 3)
    else:
        state["model.10.weight"] = torch.tensor(1.0)
    model = tmp_path / "odd.pth"
    torch.save(state, model)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        assert "odd.pth" in upscale_with(capsys, image, model)
    assert [str(w.message) for w in warned] == []


# ------------------------------------------------------------------- bioimage.io packages


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The tiny RGB model exported once as a bioimage.io package (a .zip), under a name with
    a dot (which the zoo's names may not have)."""
    pytest.importorskip("bioimageio.core")
    from conftest import tiny_model
    from napari_srgan.models.bioimageio import export_bioimageio

    model = tiny_model(3)
    model.card.name = "tiny-v1.2"
    with warnings.catch_warnings(record=True) as warned:  # those Python prints by default
        warnings.simplefilter("always")
        for hidden in (ResourceWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.simplefilter("ignore", hidden)
        package = export_bioimageio(model, tmp_path_factory.mktemp("bmz") / "tiny.zip")
    assert [str(w.message) for w in warned] == []
    return package


def package_like(exported: Path, target: Path, *, rdf=lambda text: text, folder=False) -> Path:
    """A copy of the exported package (a .zip, or unpacked into a folder) with its rdf.yaml
    changed by ``rdf(text)``."""
    with zipfile.ZipFile(exported) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["rdf.yaml"] = rdf(members["rdf.yaml"].decode()).encode()
    if folder:
        for name, data in members.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(data)
        return target
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def test_a_yaml_alias_bomb_is_refused_before_bioimageio_expands_it(
    exported, tmp_path, image, capsys
):
    """Aliases nested 7 deep, 9 each: 600 bytes that bioimageio.spec expanded to 4.8 million
    values (10 s, 130 MB; 10 deep: 4 billion, minutes and then all the memory)."""
    laughs = (
        "a0: &a0 ["
        + ", ".join(["lol"] * 9)
        + "]\n"
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 7))
    )
    bomb = package_like(
        exported, tmp_path / "bomb.zip", rdf=lambda t: t.replace("---\n", "---\n" + laughs, 1)
    )
    line = upscale_with(capsys, image, bomb)
    assert "bomb.zip: its rdf.yaml expands through YAML aliases to 6.05e+06 values" in line


@pytest.mark.parametrize(
    ("file", "kind", "message"),
    [
        ("weights_torchscript.pt", "link to /dev/zero", "links outside the package"),
        ("weights_torchscript.pt", "link outside", "links outside the package"),
        ("weights_torchscript.pt", "pipe", "is not a regular file"),
        ("bioimageio.yaml", "pipe", "is not a regular file"),
    ],
)
def test_a_folder_package_uses_only_its_own_regular_files(
    exported, tmp_path, image, capsys, file, kind, message
):
    """Weights linked to /dev/zero were read until memory ran out; a pipe blocked the import
    for ever; a link out of the folder loaded another file of the user's as the weights."""
    package = package_like(exported, tmp_path / "pkg", folder=True)
    target = package / file
    target.unlink(missing_ok=True)
    if kind == "pipe":
        os.mkfifo(target)
    elif kind == "link outside":
        (tmp_path / "elsewhere.pt").write_bytes((package / "weights.pt").read_bytes())
        target.symlink_to(tmp_path / "elsewhere.pt")
    else:
        target.symlink_to("/dev/zero")
    line = upscale_with(capsys, image, package)
    assert f"pkg: its {file} {message}" in line


def test_a_weights_file_url_is_refused_like_a_download(exported, tmp_path, image, capsys):
    """``file:///...`` became a relative path nobody could read: a NoneType message."""
    url = package_like(
        exported,
        tmp_path / "url.zip",
        rdf=lambda t: t.replace("source: weights_torchscript.pt", "source: file:///etc/passwd"),
    )
    assert "its weights or code are at file:/etc/passwd" in upscale_with(capsys, image, url)


def test_weights_that_do_not_match_their_declared_sha256_never_run(
    exported, tmp_path, image, capsys
):
    """The TorchScript weights were read without their SHA-256: a package whose weights were
    swapped or damaged after it was described ran them."""

    def declare_other_hash(text: str) -> str:
        at = text.index("source: weights_torchscript.pt")
        declared = text[at:].split("sha256: ", 1)[1][:64]
        return text.replace(declared, "ab" * 32)

    altered = package_like(exported, tmp_path / "altered.zip", rdf=declare_other_hash)
    line = upscale_with(capsys, image, altered)
    assert "altered.zip: its weights_torchscript.pt does not match the SHA-256" in line


def test_the_models_list_prints_no_control_characters_from_a_generator_config(
    tiny_model_file, user_models, capsys
):
    """A config's scale and channels went into ``napari-srgan models`` as they were: a string
    scale with an escape sequence drove the terminal, a line break split the list."""
    with_config(
        tiny_model_file, user_models / "odd.safetensors", scale="4\x1b[2J\nx", in_channels=[3]
    )
    assert main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if " odd " in line)
    assert row.isprintable() and " ? " in row


@pytest.mark.parametrize(
    "name", ["a\x1bb", "user:srresnet-rgb-x4", " ", "x" * 201, "a*b"], ids=repr
)
def test_models_add_refuses_an_unusable_name_before_converting(
    tmp_path, user_models, capsys, monkeypatch, name
):
    """An escape character, ``user:`` (the mark of a user model shadowing a bundled one), a
    blank or a name too long for a file system were accepted (the last failing only after the
    conversion, naming the whole path)."""
    import napari_srgan.models.registry as registry

    def never(*args, **kwargs):
        raise AssertionError("converted before the name was checked")

    monkeypatch.setattr(registry, "load_model", never)
    line = run_cli(
        capsys, "models", "add", community_file(tmp_path, "compact-grey-x4"), "--name", name
    )
    assert "is not a usable model name" in line and line.isprintable()
    assert list(user_models.iterdir()) == []


@pytest.mark.parametrize("claim", ["stride-0 view", "meta tensor"])
def test_a_pickled_tensor_claiming_many_numbers_does_not_raise_the_build_budget(
    tmp_path, image, capsys, claim
):
    """A stride-0 view claims 10^10 numbers over one stored, a meta tensor over none: counted
    by its shape, either let a 1 MB file build a network of any width (600 here, 108 MB;
    20000: 14 GB)."""
    state = torch.load(community_file(tmp_path, "esrgan-x4"), weights_only=True)
    if claim == "meta tensor":
        state["junk"] = torch.zeros(10**10, device="meta")
    else:
        state["junk"] = torch.zeros(1).expand(10**10)
    state["model.0.weight"] = torch.zeros(1).expand(600, 3, 3, 3)
    model = tmp_path / "views.pth"
    torch.save(state, model)
    with allocations() as allocated:
        line = upscale_with(capsys, image, model)
    assert "views.pth: its tensor names and shapes describe a network larger" in line
    assert allocated[0] < 100e6


@pytest.mark.parametrize(
    ("claim", "call"),
    [("image size", "torch.zeros"), ("attention window", "Tensor.sub")],
)
def test_a_build_step_that_allocates_and_fills_past_the_budget_is_refused_before_it_runs(
    tmp_path, image, capsys, claim, call
):
    """SwinIR's image size is read from a mask's length and its attention window from an
    index's: a 1.6 MB file claiming an image 10000 px wide made the build fill
    ``torch.zeros((1, 10000, 10000, 1))`` (400 MB; 40000 px: 6.4 GB) and one claiming a
    window of 60 subtract two 3600-long coordinate grids (207 MB; 250: 62 GB), before the
    budget saw either: the budget counted tensors once they had been made and filled. Each
    call is now sized on the meta device first: none of them runs."""
    state = torch.load(community_file(tmp_path, "swinir-x2"), weights_only=True)
    if claim == "image size":  # img_size = sqrt(masks) * window: sqrt(6.25e6) * 4 = 10000
        state["layers.0.residual_group.blocks.1.attn_mask"] = torch.zeros(1).expand(
            6_250_000, 16, 16
        )
    else:  # window = sqrt(index length) = 60
        index = torch.zeros(1, dtype=torch.int64).expand(3600, 3600)
        state["layers.0.residual_group.blocks.0.attn.relative_position_index"] = index
    model = tmp_path / "claims.pth"
    torch.save(state, model)
    assert model.stat().st_size < 2e6
    with allocations() as allocated:
        line = upscale_with(capsys, image, model)
    assert allocated[0] < 100e6
    assert "claims.pth: its tensor names and shapes describe a network larger" in line
    assert f"MB at {call})" in line


FACTORY_CALLS = {
    "zeros": lambda n: torch.zeros(n),
    "zeros size=": lambda n: torch.zeros(size=(n,)),
    "ones float64": lambda n: torch.ones(n, dtype=torch.float64),
    "full": lambda n: torch.full((n,), 2.0),
    "rand": lambda n: torch.rand(n),
    "randn generator": lambda n: torch.randn(n, generator=torch.Generator()),
    "arange": lambda n: torch.arange(0, n, 1.0),
    "eye": lambda n: torch.eye(math.isqrt(n)),
    "new_zeros": lambda n: torch.ones(2).new_zeros(n),
    "zeros_like of a stride-0 view": lambda n: torch.zeros_like(torch.zeros(1).expand(n)),
    "out=": lambda n: torch.zeros(n, out=torch.empty(0)),
    "resize_": lambda n: torch.empty(0).resize_(n).fill_(1),
    "contiguous stride-0 view": lambda n: torch.zeros(1).expand(n).contiguous(),
}


@pytest.mark.parametrize("call", list(FACTORY_CALLS))
def test_the_build_budget_sizes_every_factory_call_before_it_runs(call):
    """Factories that allocate and fill in one call, in every form of their arguments, are
    refused before they run; nothing over the budget is made."""
    from napari_srgan.models.community import BuildBudget, NetworkTooLarge

    budget = BuildBudget({})
    with allocations() as allocated, pytest.raises(NetworkTooLarge) as refused, budget:
        FACTORY_CALLS[call](50_000_000)  # 200 MB of float32, over the 67 MB budget
    assert allocated[0] < 1e6
    assert refused.value.claim.startswith(("200.0 MB", "400.0 MB"))


def test_a_package_input_step_the_engine_cannot_pad_to_is_refused(
    exported, tmp_path, image, capsys
):
    """The input size step is what the engine pads every image to a multiple of: a step of a
    million tried to allocate a 2.7 TiB image (two steps of 20011 and 20021: 4 * 10^8)."""
    steps = package_like(
        exported, tmp_path / "steps.zip", rdf=lambda t: t.replace("step: 1\n", "step: 1000000\n")
    )
    line = upscale_with(capsys, image, steps)
    assert "steps.zip: its size multiple is 1000000; napari-srgan runs models with 1..4096" in line


def test_a_community_model_beyond_the_card_bounds_is_refused_before_it_runs(
    tmp_path, image, capsys
):
    """spandrel reads ESRGAN's scale from its number of layers: a 790 kB file of scale 4096
    made the receptive-field probe allocate 24 GB (then a traceback); scale 32 here."""
    from spandrel.architectures.ESRGAN import ESRGAN

    network = ESRGAN(in_nc=3, out_nc=3, num_filters=4, num_blocks=1, scale=32)
    model = tmp_path / "x32.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(model))
    line = upscale_with(capsys, image, model)
    assert "x32.safetensors: its scale is 32; napari-srgan runs models with 1..16" in line


@pytest.mark.parametrize("source", ["native", "community"])
def test_a_weights_file_larger_than_the_free_memory_is_refused_before_reading(
    tiny_model_file, tmp_path, image, capsys, monkeypatch, source
):
    """Weights were read whole whatever their size: a sparse 19 GB file (1024 features x 256
    blocks, no disk space, a small download when zipped) was read until the system killed
    the process. Here the machine has 10 kB free."""
    model = tiny_model_file
    if source == "community":
        model = community_file(tmp_path, "esrgan-x4", ".safetensors")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=10_000))
    line = upscale_with(capsys, image, model)
    assert f"{model.name} is 0.0 GB, more than the 0.0 GB of free memory" in line


def test_export_takes_any_model_name_and_refuses_a_licence_the_zoo_does_not(
    exported, tiny_model_file, tmp_path, capsys
):
    """A model named "tiny-v1.2" failed the zoo's name check after all the export's work
    ("1 validation error for ModelDescr"); a licence that is not an SPDX identifier did too,
    in a 10 kB line listing every licence."""
    with zipfile.ZipFile(exported) as archive:
        assert "name: napari-srgan tiny-v1-2\n" in archive.read("rdf.yaml").decode()

    def licence(header: dict) -> None:
        card = json.loads(header["__metadata__"]["model_card"]) | {"license": "proprietary"}
        header["__metadata__"]["model_card"] = json.dumps(card)

    model = rewrite_header(tiny_model_file, tmp_path / "closed.safetensors", licence)
    line = run_cli(capsys, "export-bmz", model, tmp_path / "closed.zip")
    assert "its licence 'proprietary' is not an SPDX licence identifier" in line
    assert not (tmp_path / "closed.zip").exists()


def test_models_add_refuses_a_name_taken_by_a_dangling_link_before_converting(
    tmp_path, user_models, capsys
):
    """A dangling link in the model folder passed the 'exists already' check, then the
    conversion's atomic write refused it, suggesting an --overwrite that 'models add' lacks."""
    (user_models / "taken.safetensors").symlink_to(tmp_path / "gone")
    model = community_file(tmp_path, "compact-grey-x4")
    line = run_cli(capsys, "models", "add", model, "--name", "taken")
    assert "a model named 'taken' exists already; choose another --name" in line
    assert (user_models / "taken.safetensors").is_symlink()


def test_export_into_a_path_under_a_file_is_refused_before_the_work(
    tiny_model_file, tmp_path, capsys
):
    """The output's folder was made only after the export's work, failing with "[Errno 17]
    File exists: '.../a-file'"."""
    (tmp_path / "a-file").write_text("mine")
    line = run_cli(capsys, "export-bmz", tiny_model_file, tmp_path / "a-file" / "sub" / "x.zip")
    assert line.endswith("a-file is a file, not a folder")
    assert (tmp_path / "a-file").read_text() == "mine"


@pytest.mark.parametrize("nesting", ["dict inside itself", "one dict shared 30 deep"])
def test_a_pickle_of_self_referencing_or_shared_dicts_is_one_line(tmp_path, image, capsys, nesting):
    """The state dict's nested dicts were walked path by path: a dict inside itself was a
    RecursionError (a traceback), and one dict shared under ten keys thirty levels deep (5 kB)
    is 10^30 paths: the walk never ended."""
    state: dict = {"model.0.weight": torch.zeros(1)}
    if nesting == "dict inside itself":
        state["self"] = state
    else:
        for _ in range(30):
            state = {f"k{i}": state for i in range(10)}
    model = tmp_path / "nested.pth"
    torch.save(state, model)
    assert "nested.pth: unknown architecture" in upscale_with(capsys, image, model)
