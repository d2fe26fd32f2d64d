"""BioImage Model Zoo (bioimage.io) packages: export our models, import scaled-image models.

Export writes a spec 0.5 package that deepImageJ, ilastik, QuPath and ``bioimageio.core`` run:
state-dict weights with the architecture source, TorchScript weights, axes whose output size is
the input size times the scale (declared as a scaled reference to the input, with the halo),
percentile normalisation, test tensors, a cover, a README, citation, licence and authors.

Import opens a package (``.zip`` or folder) whose output is a scaled image of its input and runs
it through our engine (tiled, streamed, dask). TorchScript runs no Python. A state dict with an
architecture file would import and run that file, so it is used only with ``trust_code=True``.
Whatever the package declares that the engine cannot honour is refused in one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn

from napari_srgan.io.atomic_files import (
    atomic_write,
    build_folder,
    check_writable,
    disk_full_is_one_line,
    refuse_existing,
)
from napari_srgan.messages import brief, first_line, shown
from napari_srgan.models.files import ModelFileError
from napari_srgan.models.interface import ModelCard, SRModel, beyond_card_limits
from napari_srgan.models.lineage import training_stages
from napari_srgan.models.normalization import NormalizationSpec

#: The paper every exported model builds on.
LEDIG_2017 = "Ledig et al. 2017, Photo-Realistic Single Image Super-Resolution Using a GAN"
LEDIG_DOI = "10.1109/CVPR.2017.19"
#: Pre/postprocessing the import understands (anything else is refused by name).
SUPPORTED_PREPROCESSING = ("scale_range", "ensure_dtype", "clip")
SUPPORTED_POSTPROCESSING = ("ensure_dtype", "clip")
ARCHITECTURE_FILE = "srresnet_architecture.py"
ARCHITECTURE_CALLABLE = "build_generator"
#: Side of the exported test input: it must exceed twice the halo.
TEST_SIDE = 96
#: The largest description (rdf.yaml) read: real ones are a few kB; YAML parses at about
#: 100 kB/s, so a 300 MB one (300 kB zipped) would hang the program for an hour.
MAX_DESCRIPTION_BYTES = 2**20
DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml", "model.yaml")
#: The most YAML values a description may expand to through its aliases (``*name``, which
#: repeat what ``&name`` marked): no more than its size limit allows without aliases. Ten
#: nested aliases of nine make a 1 kB "billion laughs" of 4 billion values.
MAX_DESCRIPTION_VALUES = MAX_DESCRIPTION_BYTES


class BioimageioError(ModelFileError):
    """A bioimage.io package is malformed or declares something napari-srgan cannot run."""


def _offline() -> None:
    """bioimageio.spec may fetch remote files while validating; everything we read is local."""
    from bioimageio.spec._internal._settings import settings

    settings.perform_io_checks = False


# ---------------------------------------------------------------------------------------- export


def _export_normalization(card: ModelCard) -> tuple[float, float]:
    spec = card.normalization
    return (spec.low, spec.high) if spec.mode == "percentile" else (0.0, 100.0)


def _architecture_source() -> str:
    """The generator's own module (torch only) plus a keyword-argument constructor."""
    from napari_srgan.models import srresnet

    source = Path(srresnet.__file__).read_text()
    return (
        source
        + "\n\ndef build_generator(**config) -> Generator:\n"
        + '    """bioimage.io entry point: the generator from its configuration."""\n'
        + "    return Generator(GeneratorConfig(**config))\n"
    )


def _test_input(model: SRModel, side: int) -> np.ndarray:
    """A natural test image (a bundled sample crop) as ``(1, c, side, side)`` float32."""
    from skimage import data as samples

    image = samples.astronaut() if model.in_channels == 3 else samples.camera()
    image = image[100 : 100 + side, 150 : 150 + side].astype(np.float32)
    image = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    return image[None]


def _predict_unit(network: nn.Module, raw: np.ndarray, low: float, high: float) -> np.ndarray:
    """What the package's pipeline computes: percentile scaling, the network, clip to [0, 1]."""
    lo, hi = np.percentile(raw, [low, high])
    unit = (raw - lo) / (hi - lo + 1e-6)
    with torch.inference_mode():
        out = network(torch.from_numpy(unit.astype(np.float32)))
    return out.clamp(0, 1).numpy()


def _readme(model: SRModel) -> str:
    card = model.card
    return f"""# {card.name}

{card.description or "A super-resolution generator trained with napari-srgan."}

- Architecture: SRResNet/SRGAN generator ({LEDIG_2017}), {card.scale}x,
  {card.in_channels} channel(s) in and out.
- Intended use: {card.intended_use or "as trained; see the training record below"}.
- Degradation the model was trained for: {card.degradation}. Results on other degradations
  (other blur, noise or compression) are not guaranteed and may contain hallucinated detail.
- Limits: super-resolution invents plausible detail; never measure structures smaller than the
  input's pixel size on its output. The halo ({card.halo} input pixels) must be read around each
  tile for seamless tiling.
- Input normalisation: percentiles {_export_normalization(card)} of the whole image map to 0 and 1
  (napari-srgan itself uses one range for a whole image or stack).
- Training: {_training_summary(card.training)}
- Metrics: {card.metrics or "not recorded"}

Exported by napari-srgan; runs in napari-srgan, bioimageio.core, deepImageJ, ilastik and QuPath.
{_training_record(card.training)}"""


def _training_summary(record: dict) -> str:
    """The training lineage as Markdown: one line per stage, most recent first."""
    stages, dropped = training_stages(record)
    if not stages:
        return "not recorded"
    lines = [f"{len(stages)} stage(s), most recent first (the full record is below):"]
    lines += [f"  {number}. {_stage_line(stage)}" for number, stage in enumerate(stages, 1)]
    if dropped:
        lines.append(f"  ({dropped} older stage(s) were not kept in the model card)")
    return "\n".join(lines)


def _stage_line(stage: dict) -> str:
    """One training stage in words (a foreign card's record may hold anything: brief text)."""
    config = stage.get("config") if isinstance(stage.get("config"), dict) else {}
    degradation = stage.get("degradation")
    if isinstance(degradation, dict):
        degradation = degradation.get("kind")
    data, images = stage.get("data"), "?"
    if isinstance(data, list):  # every image described
        images = len(data)
    elif isinstance(data, dict):  # a summary of many
        images = data.get("images", "?")
    facts = [
        f"{stage.get('steps', '?')} steps from {stage.get('base_model', '?')}",
        f"{degradation or '?'} degradation",
        f"{config.get('pixel_loss', '?')} pixel loss",
        f"{config.get('adversarial_steps', 0)} adversarial steps",
        f"{images} training image(s)",
        f"on {stage.get('machine', '?')}",
    ]
    return brief(", ".join(map(str, facts)))


def _training_record(record: dict) -> str:
    """The card's training record, whole, as JSON (empty without one)."""
    if not record:
        return ""
    return f"\n## Training record\n\n```json\n{json.dumps(record, indent=1, sort_keys=True)}\n```\n"


def export_bioimageio(
    model: SRModel, output: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write ``model`` (a native SRResNet model) as a bioimage.io spec 0.5 ``.zip`` package;
    an existing ``output`` is replaced only with ``overwrite`` (and a symlink is replaced,
    never written through)."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromFileDescr,
        Author,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        ClipDescr,
        ClipKwargs,
        Doi,
        FileDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        LicenseId,
        ModelDescr,
        OutputTensorDescr,
        ParameterizedSize,
        PytorchStateDictWeightsDescr,
        ScaleRangeDescr,
        ScaleRangeKwargs,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxisWithHalo,
        TensorId,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    from napari_srgan import __version__
    from napari_srgan.models.srresnet import Generator

    _offline()
    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise BioimageioError(f"{shown(output)}: a bioimage.io package is written as a .zip file")
    refuse_existing(output, overwrite=overwrite)  # before the (slow) export
    folder = next(p for p in output.absolute().parents if os.path.lexists(p))
    if not folder.is_dir():  # mkdir would fail only after the export, with "File exists"
        raise BioimageioError(f"{shown(output)}: {shown(folder)} is a file, not a folder")
    check_writable(folder)
    network = model.network
    if not isinstance(network, Generator):
        raise BioimageioError(
            f"{model.card.name} is a {model.card.architecture} model from {model.card.source}; "
            "only napari-srgan's own SRResNet models can be exported"
        )
    card, scale, halo = model.card, model.scale, model.card.halo
    try:  # before the (slow) export: the zoo accepts SPDX identifiers only
        license_id = LicenseId(card.license or "BSD-3-Clause")
    except ValueError:
        raise BioimageioError(
            f"{card.name}: its licence {card.license[:40]!r} is not an SPDX licence identifier "
            "(such as BSD-3-Clause or CC-BY-4.0), which bioimage.io requires"
        ) from None
    side = max(TEST_SIDE, 2 * halo + 16)
    low, high = _export_normalization(card)
    network = network.float().cpu().eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    # The package is built beside the output (a killed export's parts are removed by the next
    # export to it); a full disk while building is one line, as while writing the output.
    with disk_full_is_one_line(output), build_folder(output) as root:
        with open(root / "weights.pt", "wb") as stream:  # by name, torch hides the errno
            torch.save(network.state_dict(), stream)
        (root / ARCHITECTURE_FILE).write_text(_architecture_source())
        # torch marks tracing and saving TorchScript deprecated; the zoo needs it
        with warnings.catch_warnings(), open(root / "weights_torchscript.pt", "wb") as stream:
            warnings.simplefilter("ignore")
            scripted = torch.jit.trace(network, torch.rand(1, model.in_channels, 24, 24))
            torch.jit.save(scripted, stream)
        test_input = _test_input(model, side)
        np.save(root / "test_input.npy", test_input)
        np.save(root / "test_output.npy", _predict_unit(network, test_input, low, high))
        _cover(root / "cover.png", test_input, np.load(root / "test_output.npy"))
        (root / "README.md").write_text(_readme(model))
        channel_names = ["r", "g", "b"] if model.in_channels == 3 else ["grey"]
        input_id = TensorId("input")
        inputs = InputTensorDescr(
            id=input_id,
            description="low-resolution image",
            axes=[
                BatchAxis(),
                ChannelAxis(channel_names=[Identifier(n) for n in channel_names]),
                SpaceInputAxis(
                    id=AxisId("y"),
                    size=ParameterizedSize(min=2 * halo + 8, step=model.card.size_multiple),
                ),
                SpaceInputAxis(
                    id=AxisId("x"),
                    size=ParameterizedSize(min=2 * halo + 8, step=model.card.size_multiple),
                ),
            ],
            test_tensor=FileDescr(source=root / "test_input.npy"),
            data=IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[
                ScaleRangeDescr(
                    kwargs=ScaleRangeKwargs(
                        axes=[AxisId("channel"), AxisId("y"), AxisId("x")],
                        min_percentile=low,
                        max_percentile=high,
                    )
                )
            ],
        )
        outputs = OutputTensorDescr(
            id=TensorId("output"),
            description=f"{scale}x super-resolved image in [0, 1]",
            axes=[
                BatchAxis(),
                ChannelAxis(channel_names=[Identifier(n) for n in channel_names]),
                *(
                    SpaceOutputAxisWithHalo(
                        id=AxisId(a),
                        size=SizeReference(tensor_id=input_id, axis_id=AxisId(a)),
                        scale=1 / scale,
                        halo=halo * scale,
                    )
                    for a in ("y", "x")
                ),
            ],
            test_tensor=FileDescr(source=root / "test_output.npy"),
            data=IntervalOrRatioDataDescr(type="float32"),
            postprocessing=[ClipDescr(kwargs=ClipKwargs(min=0.0, max=1.0))],
        )
        pytorch_version = Version(torch.__version__.split("+")[0])
        state_dict = PytorchStateDictWeightsDescr(
            source=root / "weights.pt",
            architecture=ArchitectureFromFileDescr(
                source=root / ARCHITECTURE_FILE,
                callable=Identifier(ARCHITECTURE_CALLABLE),
                kwargs=network.config.to_dict(),
            ),
            pytorch_version=pytorch_version,
        )
        torchscript = TorchscriptWeightsDescr(
            source=root / "weights_torchscript.pt",
            pytorch_version=pytorch_version,
            parent="pytorch_state_dict",
        )
        description = ModelDescr(
            name=_zoo_name(card.name),
            description=(card.description or f"{scale}x super-resolution (SRResNet)")[:1024],
            authors=[Author(name="napari-srgan contributors")],
            cite=[CiteEntry(text=LEDIG_2017, doi=Doi(LEDIG_DOI))],
            license=license_id,
            documentation=FileDescr(source=root / "README.md"),
            covers=[FileDescr(source=root / "cover.png")],
            tags=["super-resolution", "srgan", "srresnet", "napari-srgan", f"{scale}x"],
            inputs=[inputs],
            outputs=[outputs],
            weights=WeightsDescr(pytorch_state_dict=state_dict, torchscript=torchscript),
            version=Version(__version__),
        )
        package = Path(save_bioimageio_package(description, output_path=root / "package.zip"))
        return atomic_write(output, lambda temp: os.replace(package, temp), overwrite=overwrite)


def _zoo_name(name: str) -> str:
    """The model's name as bioimage.io takes it: letters, digits, spaces and ``_+-()`` only (a
    name with a dot, such as "em-v1.2", was refused by the zoo's validation after the export's
    work)."""
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "-", f"napari-srgan {name}").replace("_", "-")[:128]


def _cover(path: Path, test_input: np.ndarray, test_output: np.ndarray) -> None:
    """Input (nearest-neighbour enlarged) beside the output: what the model does, at a glance."""
    from PIL import Image

    scale = test_output.shape[-1] // test_input.shape[-1]
    low, high = np.percentile(test_input, [0.0, 100.0])
    left = np.clip((test_input[0] - low) / (high - low + 1e-6), 0, 1)
    left = left.repeat(scale, axis=-2).repeat(scale, axis=-1)
    both = np.concatenate([left, test_output[0]], axis=-1)
    pixels = (np.moveaxis(both, 0, -1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


# ---------------------------------------------------------------------------------------- import


def _check_package_sizes(path: Path) -> None:
    """Refuse, before reading anything, a package whose description file is larger than any
    real one (YAML parsing of 300 MB takes an hour) or a zip entry that unpacks to more than
    the free memory (its weights are read whole: a zip bomb). A zip's declared sizes bound
    what it decompresses."""
    if path.is_dir():
        names = [p.name for p in path.iterdir() if _is_description(p.name)]
        sizes = {name: _own_file(path, name).stat().st_size for name in names}
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                entries = archive.infolist()
        except (zipfile.BadZipFile, OSError) as error:
            raise BioimageioError(
                f"{shown(path.name)}: not a readable .zip file ({error})"
            ) from None
        free = psutil.virtual_memory().available
        for entry in entries:
            if entry.file_size > free:
                raise BioimageioError(
                    f"{shown(path.name)}: its {shown(entry.filename)} unpacks to {entry.file_size / 1e9:.1f} "
                    f"GB, more than the {free / 1e9:.1f} GB of free memory"
                )
        sizes = {e.filename: e.file_size for e in entries if _is_description(e.filename)}
    for name, size in sizes.items():
        if size > MAX_DESCRIPTION_BYTES:
            raise BioimageioError(
                f"{shown(path.name)}: its {shown(name)} is {size / 2**20:.0f} MiB; a bioimage.io description "
                f"over {MAX_DESCRIPTION_BYTES // 2**20} MiB is refused"
            )


def _check_aliases(path: Path) -> None:
    """Refuse a description whose YAML aliases expand it past :data:`MAX_DESCRIPTION_VALUES`
    (bioimageio.spec expands them while validating: 5 GB and minutes for a 1 kB file), counted
    on the parsed node graph, where an alias is one shared node."""
    from ruyaml import YAML  # bioimageio.spec's own parser

    if path.is_dir():
        texts = {p.name: p.read_bytes() for p in path.iterdir() if _is_description(p.name)}
    else:
        with zipfile.ZipFile(path) as archive:
            texts = {n: archive.read(n) for n in archive.namelist() if _is_description(n)}
    for name, text in texts.items():
        try:
            values = _expanded_size(YAML(typ="safe").compose(text), {})
        except Exception:  # malformed YAML: bioimageio.spec reports it in its own words
            continue
        if values > MAX_DESCRIPTION_VALUES:
            raise BioimageioError(
                f"{shown(path.name)}: its {shown(name)} expands through YAML aliases to "
                f"{values:.3g} values; a description over {MAX_DESCRIPTION_VALUES:,} is refused"
            )


def _expanded_size(node, sizes: dict[int, int]) -> int:
    """The number of YAML values ``node`` stands for with every alias written out (``sizes``
    memoises shared nodes; a node that contains itself counts once)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1
    value = node.value
    if isinstance(value, list):
        items = [part for item in value for part in (item if isinstance(item, tuple) else [item])]
        sizes[id(node)] = 1 + sum(_expanded_size(item, sizes) for item in items)
    return sizes[id(node)]


def _own_file(package: Path, name: str) -> Path:
    """The file ``name`` of a folder package, refused unless it is a regular file inside the
    folder that fits into the free memory (it is read whole): a link out of the folder would
    read another of the user's files, a link to /dev/zero reads until memory runs out, a pipe
    blocks for ever. A missing file is left to the reader to report."""
    target = (package / name).resolve()
    if not target.is_relative_to(package.resolve()):
        raise BioimageioError(
            f"{shown(package.name)}: its {shown(name)} links outside the package; a package may "
            "only use its own files"
        )
    if target.exists() and not target.is_file():
        raise BioimageioError(
            f"{shown(package.name)}: its {shown(name)} is not a regular file (a pipe, socket or "
            "device)"
        )
    free = psutil.virtual_memory().available
    if target.is_file() and target.stat().st_size > free:
        raise BioimageioError(
            f"{shown(package.name)}: its {shown(name)} is {target.stat().st_size / 1e9:.1f} GB, "
            f"more than the {free / 1e9:.1f} GB of free memory"
        )
    return target


def _is_description(name: str) -> bool:
    name = name.rsplit("/", 1)[-1].lower()
    return name in DESCRIPTION_NAMES or name.endswith((".rdf.yaml", ".bioimageio.yaml"))


def _describe(path: Path):
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    _offline()
    try:
        description = load_description(path, format_version="latest", perform_io_checks=False)
    except Exception as error:
        raise BioimageioError(
            f"{shown(path.name)}: not a readable bioimage.io package ({first_line(error)})"
        ) from None
    if isinstance(description, InvalidDescr):
        problems = (
            [
                f"{'.'.join(str(part) for part in detail.loc)}: {detail.msg}"
                for detail in description.validation_summary.details[0].errors[:1]
            ]
            if description.validation_summary.details
            else []
        )
        raise BioimageioError(
            f"{shown(path.name)}: invalid bioimage.io package ({problems[0] if problems else 'see bioimageio validate'})"
        )
    if not isinstance(description, ModelDescr):
        raise BioimageioError(f"{shown(path.name)}: a bioimage.io {description.type}, not a model")
    return description


def _spatial_scale(description, path: Path) -> tuple[int, int, int, int]:
    """(scale, channels, input halo, size multiple) of a 2D image-to-image model; refuses
    anything else in one line."""
    from bioimageio.spec.model.v0_5 import (
        BatchAxis,
        ChannelAxis,
        ParameterizedSize,
        SizeReference,
        SpaceInputAxis,
    )

    if len(description.inputs) != 1 or len(description.outputs) != 1:
        raise BioimageioError(
            f"{shown(path.name)}: {len(description.inputs)} inputs and {len(description.outputs)} "
            "outputs; napari-srgan runs models with one image in and one image out"
        )
    source, target = description.inputs[0], description.outputs[0]
    in_axes = {str(a.id): a for a in source.axes}
    out_axes = {str(a.id): a for a in target.axes}
    kinds = [type(a).__name__ for a in source.axes]
    expected = ["BatchAxis", "ChannelAxis", "SpaceInputAxis", "SpaceInputAxis"]
    if kinds != expected or list(in_axes)[2:] != ["y", "x"]:
        raise BioimageioError(
            f"{shown(path.name)}: input axes {[str(a.id) for a in source.axes]}; napari-srgan needs "
            "batch, channel, y, x"
        )
    if [str(a.id) for a in target.axes] != ["batch", "channel", "y", "x"] or not isinstance(
        target.axes[0], BatchAxis
    ):
        raise BioimageioError(
            f"{shown(path.name)}: output axes {[str(a.id) for a in target.axes]}; napari-srgan needs "
            "batch, channel, y, x"
        )
    channels = in_axes["channel"]
    out_channels = out_axes["channel"]
    assert isinstance(channels, ChannelAxis)
    if not isinstance(out_channels, ChannelAxis) or out_channels.size != channels.size:
        raise BioimageioError(f"{shown(path.name)}: the output has other channels than the input")
    scales, halos, multiples = [], [], []
    for axis_id in ("y", "x"):
        axis_in, axis_out = in_axes[axis_id], out_axes[axis_id]
        assert isinstance(axis_in, SpaceInputAxis)
        size = axis_out.size
        if not (
            isinstance(size, SizeReference)
            and str(size.tensor_id) == str(source.id)
            and str(size.axis_id) == axis_id
            and size.offset == 0
        ):
            raise BioimageioError(
                f"{shown(path.name)}: output axis {axis_id} is not a scaled reference to input axis "
                f"{axis_id}, so its output is not a scaled image of its input"
            )
        ratio = axis_in.scale / axis_out.scale
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
            raise BioimageioError(
                f"{shown(path.name)}: output axis {axis_id} is {ratio:g} times its input; napari-srgan "
                "needs a whole-number upscaling factor"
            )
        scale = round(ratio)
        scales.append(scale)
        halos.append(math.ceil(getattr(axis_out, "halo", 0) / scale))
        multiples.append(axis_in.size.step if isinstance(axis_in.size, ParameterizedSize) else 0)
    if scales[0] != scales[1]:
        raise BioimageioError(f"{shown(path.name)}: different scales along y and x ({scales})")
    if 0 in multiples:
        raise BioimageioError(
            f"{shown(path.name)}: a fixed input size; napari-srgan tiles images and needs a "
            "parameterised (min + n * step) input size"
        )
    facts = {
        "scale": scales[0],
        "in_channels": int(channels.size),
        "theoretical_halo": max(halos),
        "size_multiple": math.lcm(*multiples),
    }
    problem = beyond_card_limits(facts)
    if problem:
        raise BioimageioError(f"{shown(path.name)}: {problem}")
    return tuple(facts.values())


def _normalization(description, path: Path) -> NormalizationSpec:
    from bioimageio.spec.model.v0_5 import ScaleRangeDescr

    source, target = description.inputs[0], description.outputs[0]
    spec = NormalizationSpec("percentile", 0.0, 100.0)
    for step in source.preprocessing:
        if step.id not in SUPPORTED_PREPROCESSING:
            raise BioimageioError(
                f"{shown(path.name)}: preprocessing {step.id!r} is not supported (supported: "
                f"{', '.join(SUPPORTED_PREPROCESSING)})"
            )
        if isinstance(step, ScaleRangeDescr):
            kwargs = step.kwargs
            axes = {str(a) for a in (kwargs.axes or ["channel", "y", "x"])}
            if not {"y", "x"} <= axes or (
                "channel" not in axes and len(source.axes) > 1 and source.axes[1].size > 1
            ):
                raise BioimageioError(
                    f"{shown(path.name)}: scale_range over axes {sorted(axes)} is not supported; "
                    "napari-srgan normalises all channels of an image together"
                )
            spec = NormalizationSpec("percentile", kwargs.min_percentile, kwargs.max_percentile)
    for step in target.postprocessing:
        if step.id not in SUPPORTED_POSTPROCESSING:
            raise BioimageioError(
                f"{shown(path.name)}: postprocessing {step.id!r} is not supported (supported: "
                f"{', '.join(SUPPORTED_POSTPROCESSING)})"
            )
    return spec


def _network(description, path: Path, trust_code: bool, device) -> tuple[nn.Module, str]:
    """TorchScript when the package has it (no Python runs); else the state dict with the
    package's architecture file, which is imported and run only with ``trust_code``."""

    weights = description.weights
    used = weights.torchscript or weights.pytorch_state_dict  # the entry loaded below
    sources = [getattr(used, "source", None)]
    sources.append(getattr(getattr(used, "architecture", None), "source", None))
    for source in filter(None, sources):
        if re.match(r"[a-z][a-z0-9+.-]+:", str(source).lower()):  # https:, and file: too
            raise BioimageioError(
                f"{shown(path.name)}: its weights or code are at {shown(str(source))}; napari-srgan never "
                "downloads at run time: put the file into the package"
            )
        if Path(str(source)).is_absolute() or ".." in Path(str(source)).parts:
            raise BioimageioError(
                f"{shown(path.name)}: its weights or code file {shown(str(source))} is outside the package; "
                "a package may only use its own files"
            )
        if path.is_dir():
            _own_file(path, str(source))
    if weights.torchscript is not None:
        data = io.BytesIO(_read_checked(path, weights.torchscript))
        try:
            # torch marks TorchScript deprecated; zoo packages use it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(data, map_location=device), "torchscript"
        except Exception as error:
            raise BioimageioError(
                f"{shown(path.name)}: cannot load its TorchScript weights ({first_line(error)})"
            ) from None
    if weights.pytorch_state_dict is not None:
        if not trust_code:
            raise BioimageioError(
                f"{shown(path.name)}: its weights need the package's Python architecture code to run; "
                "rerun with --trust-code (or trust_code=True) if you trust its authors"
            )
        from bioimageio.core.backends.pytorch_backend import load_torch_model

        _read_checked(path, weights.pytorch_state_dict)
        _read_checked(path, weights.pytorch_state_dict.architecture)
        try:
            network = load_torch_model(weights.pytorch_state_dict, devices=[str(device)])
        except Exception as error:
            raise BioimageioError(
                f"{shown(path.name)}: cannot build its PyTorch model ({first_line(error)})"
            ) from None
        return network, "pytorch_state_dict"
    formats = [
        name
        for name in (
            "onnx",
            "keras_hdf5",
            "keras_v3",
            "tensorflow_saved_model_bundle",
            "tensorflow_js",
        )
        if getattr(weights, name, None) is not None
    ]
    raise BioimageioError(
        f"{shown(path.name)}: no TorchScript or PyTorch weights (it has {', '.join(formats) or 'none'}); "
        "napari-srgan runs PyTorch models only"
    )


def _read_checked(package: Path, described) -> bytes:
    """The bytes of a package's file, refused unless they match the SHA-256 its description
    declares for them: a damaged or altered file is never run."""
    from bioimageio.spec.utils import download

    name = shown(Path(str(described.source)).name)
    try:
        data = download(described.source).read()
    except FileNotFoundError:
        raise BioimageioError(f"{shown(package.name)}: missing file {name}") from None
    declared = getattr(described, "sha256", None)
    if declared is not None and hashlib.sha256(data).hexdigest() != str(declared):
        raise BioimageioError(
            f"{shown(package.name)}: its {name} does not match the SHA-256 its description "
            "declares; the file is damaged or was altered"
        )
    return data


class ClippedNetwork(nn.Module):
    """The package's network followed by its declared [0, 1] clip."""

    def __init__(self, network: nn.Module, clip: bool):
        super().__init__()
        self.network, self.clip = network, clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.network(x)
        return y.clamp(0, 1) if self.clip else y


def load_bioimageio(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, trust_code: bool = False
) -> SRModel:
    """A bioimage.io package (zip or folder) whose output is a scaled image of its input."""
    path = Path(path)
    if not path.exists():
        raise BioimageioError(f"model package not found: {shown(path)}")
    if path.is_dir() and not any((path / n).is_file() for n in ("rdf.yaml", "bioimageio.yaml")):
        raise BioimageioError(f"{shown(path)}: a folder without rdf.yaml or bioimageio.yaml")
    _check_package_sizes(path)
    _check_aliases(path)
    description = _describe(path)
    scale, channels, halo, multiple = _spatial_scale(description, path)
    normalization = _normalization(description, path)
    network, weights = _network(description, path, trust_code, device)
    clip = any(step.id == "clip" for step in description.outputs[0].postprocessing)
    license_id = str(description.license) if description.license else "unknown"
    card = ModelCard(
        str(description.name),
        description=str(description.description),
        scale=scale,
        in_channels=channels,
        out_channels=channels,
        normalization=normalization,
        degradation="unknown",
        intended_use="as documented in the package",
        architecture=f"bioimage.io {weights}",
        source=f"bioimage.io: {path.name}",
        license=license_id,
        theoretical_halo=halo,
        size_multiple=multiple,
        supports_half=False,
    )
    return SRModel(ClippedNetwork(network, clip).to(device).eval(), card, path)
