"""Community super-resolution models (ESRGAN/Real-ESRGAN, SwinIR, HAT, SPAN, DAT...) via spandrel.

spandrel (MIT, the loader behind chaiNNer and ComfyUI) recognises an architecture and its
hyper-parameters from a state dict alone. We never let it open files itself: its ``.pth`` path
unpickles with a hand-made allow list and its ``.pt`` path runs TorchScript. Instead we read the
tensors ourselves, with safetensors or ``torch.load(weights_only=True)``, which refuses any
pickle that would import or call anything, and hand spandrel only the dictionary of tensors.

``napari-srgan models add`` converts such a file into a ``.safetensors`` file with a model card
and the architecture id in its metadata, so it reloads without the original file and without
spandrel having to guess again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.overrides import TorchFunctionMode

from napari_srgan.messages import first_line, printable, shown, with_type
from napari_srgan.models.files import (
    FORMAT_KEY,
    ModelFileError,
    check_fits_memory,
    load_weights_only,
    refuse_nonfinite,
    write_safetensors,
)
from napari_srgan.models.halo import measure_tiling
from napari_srgan.models.interface import ModelCard, NetworkSpec, SRModel, beyond_card_limits

#: File types spandrel models come in.
COMMUNITY_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
#: The ``FORMAT_KEY`` value of a converted community model (native files have "1").
CONVERTED_FORMAT = "spandrel-1"
#: Licences of the architectures' reference code, for the ones users meet most. Weights carry
#: their own licence, set by whoever published them.
ARCHITECTURE_LICENSES = {
    "ESRGAN": "Apache-2.0",
    "Compact": "BSD-3-Clause",
    "SwinIR": "Apache-2.0",
    "Swin2SR": "Apache-2.0",
    "HAT": "Apache-2.0",
    "DAT": "Apache-2.0",
    "SPAN": "Apache-2.0",
    "OmniSR": "Apache-2.0",
    "RealCUGAN": "MIT",
}
#: The widest reach, in input pixels, that :func:`dependency_radius` probes for.
PROBE_LIMIT = 64
#: Purposes the engine can serve: an image in, the same image larger (or restored) out.
SERVED_PURPOSES = ("SR", "Restoration")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth/.pt/.ckpt/.safetensors`` file, without running any code.

    Pickled files go through ``torch.load(weights_only=True)``: a pickle that names any
    callable other than torch's tensor rebuilders is refused before anything is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {shown(path)}")
    if path.suffix.lower() not in COMMUNITY_SUFFIXES:
        raise ModelFileError(
            f"{shown(path.name)}: unknown model file type {path.suffix!r}; use "
            f"{', '.join(COMMUNITY_SUFFIXES)} or a bioimage.io package (.zip or folder)"
        )
    check_fits_memory(path)
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelFileError(
                f"{shown(path.name)} is not a readable .safetensors file ({error})"
            ) from None
    if _is_torchscript(path):
        raise ModelFileError(
            f"{shown(path.name)} is a TorchScript program, not a weights file; napari-srgan runs "
            "TorchScript only from a bioimage.io package"
        )
    try:
        loaded = load_weights_only(path)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        reason = f": it names {found.group(1)}" if found else ""
        raise ModelFileError(
            f"{shown(path.name)} was refused: it is a pickle that would run code or build objects, "
            f"not plain weights{reason}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ModelFileError(
            f"{shown(path.name)} is not a readable PyTorch weights file ({error})"
        ) from None
    if not isinstance(loaded, dict):
        raise ModelFileError(
            f"{shown(path.name)} holds a {type(loaded).__name__}, not a state dict of named tensors"
        )
    unnamed = next((key for key, _ in _entries(loaded) if not isinstance(key, str)), None)
    if unnamed is not None:
        raise ModelFileError(
            f"{shown(path.name)} holds an entry keyed {unnamed!r:.40}, not a state dict of named "
            "tensors"
        )
    return loaded


def _entries(values: dict) -> Iterator[tuple[object, object]]:
    """The (key, value) pairs of a state dict and of the dicts nested in it (``params_ema``),
    each dict once: a pickle can put a dict inside itself, or share one dict under ten keys
    thirty levels deep (10^30 paths in 5 kB)."""
    seen: set[int] = set()
    stack = [values]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for key, value in current.items():
            yield key, value
            if isinstance(value, dict):
                stack.append(value)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with a ``code/`` folder (plain torch.save zips have none);
    a broken zip is not, and is refused when it is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _spandrel():
    """spandrel, with spandrel-extra-arches' architectures added when that extra is installed."""
    import spandrel

    try:
        import spandrel_extra_arches
    except ImportError:
        return spandrel
    if not getattr(_spandrel, "extra_installed", False):
        spandrel_extra_arches.install(ignore_duplicates=True)
        _spandrel.extra_installed = True
    return spandrel


def architecture_license(descriptor) -> str:
    """The licence of the architecture code, marked when it is not permissive."""
    arch_id = str(descriptor.architecture.id)
    if type(descriptor.model).__module__.startswith("spandrel_extra_arches"):
        return f"see {arch_id}'s licence (spandrel-extra-arches: non-commercial or copyleft)"
    return ARCHITECTURE_LICENSES.get(arch_id, "permissive (spandrel: MIT, Apache-2.0 or BSD)")


def size_multiple(descriptor) -> int:
    """What input sides must be a multiple of: spandrel's requirement and, for window-attention
    models (SwinIR, HAT, DAT), the attention window, so tile origins line up with the windows
    of a whole-image pass."""
    multiple = descriptor.size_requirements.multiple_of
    model = descriptor.model
    window = getattr(model, "window_size", None)
    split = getattr(model, "split_size", None)
    for value in [window] if isinstance(window, int) else []:
        multiple = math.lcm(multiple, value)
    if isinstance(split, (list, tuple)):
        multiple = math.lcm(multiple, *(int(v) for v in split))
    return multiple


class SpandrelNetwork(nn.Module):
    """A spandrel model as the engine expects it: ``(b, c, h, w)`` in [0, 1] to
    ``(b, c, s*h, s*w)``, padded to the architecture's size requirements and cropped back."""

    def __init__(self, descriptor):
        super().__init__()
        self.model = descriptor.model
        self.scale = descriptor.scale
        self.architecture = str(descriptor.architecture.id)
        self.channels = (descriptor.input_channels, descriptor.output_channels)
        self.requirements = descriptor.size_requirements
        self.call = getattr(descriptor, "_call_fn", None) or (lambda model, x: model(x))

    def training_spec(self) -> NetworkSpec:
        """Geometry and identity for training: the architecture id and a digest of its tensor
        shapes, which fix the hyper-parameters spandrel detected."""
        shapes = [[name, list(t.shape)] for name, t in self.model.state_dict().items()]
        layout = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
        identity = {
            "architecture": self.architecture,
            "scale": self.scale,
            "in_channels": self.channels[0],
            "out_channels": self.channels[1],
            "layout": layout,
        }
        return NetworkSpec(self.scale, *self.channels, identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spandrel.__helpers.size_req import pad_tensor

        height, width = x.shape[-2:]
        padded, x = pad_tensor(x, self.requirements)
        # Some architectures (RCAN) scale their input in place: never let them touch the caller's.
        y = self.call(self.model, x if padded else x.clone())
        return y[..., : height * self.scale, : width * self.scale]


def dependency_radius(
    network: nn.Module, in_channels: int, scale: int, *, multiple: int = 1, limit: int = PROBE_LIMIT
) -> int | None:
    """How far, in input pixels, the outputs of a ``multiple``-wide block of input pixels reach.

    The gradient of those outputs with respect to a random input is non-zero exactly on the
    input pixels they depend on (random weights and inputs leave no accidental zeros), so this is
    the architecture's receptive field, whatever the architecture. Probes grow from 8 px until
    the reach fits; ``None`` when it exceeds ``limit`` (attention over the whole image, or a very
    deep network: the measured halo then decides).
    """
    reach = 8
    while True:
        radius = _probe(network, in_channels, scale, multiple, reach)
        if radius is not None or reach >= limit:
            return radius
        reach = min(2 * reach, limit)


def _probe(
    network: nn.Module, in_channels: int, scale: int, multiple: int, reach: int
) -> int | None:
    size = math.ceil((2 * (reach + multiple) + multiple) / multiple) * multiple
    start = (size // 2) // multiple * multiple
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, in_channels, size, size, generator=generator, requires_grad=True)
    was_training = network.training
    network.eval()
    try:
        with torch.enable_grad():
            y = network(x)
            block = slice(start * scale, (start + multiple) * scale)
            y[..., block, block].float().pow(2).sum().backward()
    finally:
        network.train(was_training)
    rows, cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1)) > 0, as_tuple=True)
    if rows.numel() == 0:
        return 0
    low = min(int(rows.min()), int(cols.min()))
    high = max(int(rows.max()), int(cols.max()))
    if low == 0 or high == size - 1:
        return None
    return max(start - low, high - (start + multiple - 1))


#: Receptive fields by architecture and tensor shapes (they do not depend on the weights'
#: values), so reloading a model in the same process (CLI, dask workers) probes once.
_RECEPTIVE_FIELDS: dict[tuple, int | None] = {}


def _receptive_field(network: SpandrelNetwork, descriptor, multiple: int) -> int | None:
    key = (
        str(descriptor.architecture.id),
        tuple((name, tuple(t.shape)) for name, t in network.model.state_dict().items()),
    )
    if key not in _RECEPTIVE_FIELDS:
        _RECEPTIVE_FIELDS[key] = dependency_radius(
            network, descriptor.input_channels, descriptor.scale, multiple=multiple
        )
    return _RECEPTIVE_FIELDS[key]


class NetworkTooLarge(Exception):
    """Building stopped: the network outgrew what the file's weights can fill."""

    def __init__(self, claim: str) -> None:
        super().__init__(claim)
        #: What the build asked for, e.g. "400.0 MB at torch.zeros".
        self.claim = claim


class BuildBudget(TorchFunctionMode):
    """Stops spandrel building a network larger than the file's weights.

    spandrel reads hyper-parameters from tensor names and shapes (the highest block index, the
    width of the first layer, the attention window) and builds the network before loading the
    weights into it, so a few kB naming block 100000, or a first layer 20000 wide, would
    allocate gigabytes (and let the system kill the process) before the weights are found not
    to fit. The loading is strict (every parameter must be in the file), so a network that
    loads holds no more numbers than the file: the tensors created while building are
    counted, and past a few times the file's weights (or their number), the build stops.

    Each call is first run on the meta device (shapes, no memory), so a call that would
    allocate and fill past the budget in one step (``torch.zeros(huge)``, a broadcast
    subtraction of window coordinates) is refused before it runs, not after it has filled
    the memory. A whole build on the meta device cannot replace this: most attention
    architectures call ``.item()`` while building, which needs values.
    """

    def __init__(self, state_dict: dict) -> None:
        super().__init__()
        tensors = [t for _, t in _entries(state_dict) if isinstance(t, torch.Tensor)]
        # The data the file holds, not the shapes it claims: a pickled tensor may be a view
        # with stride 0 that claims 10^10 numbers over one, or a meta tensor that holds none.
        # (Sparse tensors have no storage, and no network's parameter is one.)
        storages = {
            t.untyped_storage().data_ptr(): t
            for t in tensors
            if t.layout is torch.strided and t.device.type == "cpu"
        }
        #: Bytes of the file's weights as the network holds them (at least float32).
        self.weights = sum(
            t.untyped_storage().nbytes() * max(1, 4 // t.element_size()) for t in storages.values()
        )
        self.max_bytes = 4 * self.weights + 64 * 2**20
        self.max_count = 2 * len(tensors) + 1000
        self.storages: set[int] = set()
        self.allocated = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        planned = _planned_bytes(func, args, kwargs)
        if planned is not None and self.allocated + planned > self.max_bytes:
            raise NetworkTooLarge(f"{_size(self.allocated + planned)} at {_name(func)}")
        result = func(*args, **kwargs)
        if isinstance(result, torch.Tensor) and result.layout is torch.strided:
            storage = result.untyped_storage()
            if storage.data_ptr() not in self.storages:
                self.storages.add(storage.data_ptr())
                self.allocated += storage.nbytes()
                if self.allocated > self.max_bytes:
                    raise NetworkTooLarge(f"{_size(self.allocated)} at {_name(func)}")
                if len(self.storages) > self.max_count:
                    raise NetworkTooLarge(f"more than {self.max_count} tensors")
        return result


def _planned_bytes(func, args: tuple, kwargs: dict) -> int | None:
    """Bytes of the new tensors ``func(*args, **kwargs)`` would return, found by the same call
    on meta stand-ins (shapes only, nothing allocated), or None where it cannot run there (a
    value read out, a data-dependent shape): such a call is counted once it has run.

    Views and in-place results hold no new memory, except what an in-place call (``out=``,
    ``resize_``) grows its tensor by. Attribute reads and writes and in-place calls
    (``.shape``, ``uniform_``, ``nn.init.trunc_normal_``, ``x[i] = v``) are most of a build's
    calls, allocate nothing and some are slow on the meta device, so they are not run twice;
    nor are torch's private helpers that take no tensor (``_set_grad_enabled``).
    """
    name = getattr(func, "__name__", "")
    if name in ("__get__", "__set__", "__setitem__") or (
        name.endswith("_") and not name.startswith("_") and name not in ("resize_", "resize_as_")
    ):
        return 0
    before: dict[int, int] = {}  # id of a stand-in: its bytes before the call

    def stand_in(value):
        if isinstance(value, torch.Tensor):
            # the same strides: .contiguous() of a stride-0 view copies, of a dense tensor not
            meta = torch.empty_strided(
                value.shape, value.stride(), dtype=value.dtype, device="meta"
            )
            before[id(meta)] = meta.untyped_storage().nbytes()
            return meta
        if type(value) in (list, tuple, torch.Size):
            return type(value)(stand_in(item) for item in value)
        return value

    try:
        meta_args = stand_in(args)
        meta_kwargs = {key: stand_in(value) for key, value in kwargs.items()}
        if not before and name.startswith("_"):
            return 0
        if not before or "device" in meta_kwargs:  # a factory: torch.zeros(size), new_zeros...
            meta_kwargs["device"] = "meta"
        result = func(*meta_args, **meta_kwargs)
        outputs = result if isinstance(result, (list, tuple)) else [result]
        planned = 0
        for out in outputs:
            if not isinstance(out, torch.Tensor) or out.device.type != "meta":
                continue
            size = out.untyped_storage().nbytes()
            if id(out) in before:
                planned += max(0, size - before[id(out)])
            elif not out._is_view():
                planned += size
        return planned
    except Exception:  # not computable on the meta device: counted once it has run
        return None


def _name(func) -> str:
    """``torch.zeros``, ``Tensor.sub``: where a build asked for too much."""
    owner = getattr(func, "__objclass__", None)
    if isinstance(owner, type) and issubclass(owner, torch._C.TensorBase):
        return f"Tensor.{func.__name__}"
    return f"{getattr(func, '__module__', None) or 'torch'}.{getattr(func, '__name__', func)}"


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


def _reason(error: Exception) -> str:
    """An error in one line; torch's "Error(s) in loading state_dict for X:" with the first
    problem it lists (a name and two shapes), rather than the heading alone."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return printable(f"{lines[0]} {lines[1]}")
    return with_type(error) if isinstance(error, (KeyError, IndexError)) else first_line(error)


def community_model(
    state_dict: dict[str, torch.Tensor],
    *,
    name: str,
    source: str,
    path: Path | None = None,
    architecture: str | None = None,
    card: ModelCard | None = None,
) -> SRModel:
    """Build the network spandrel recognises in ``state_dict``, with a card describing it.

    ``architecture`` skips detection (converted files store the id); ``card`` is a stored card
    whose facts are checked against the network.
    """
    spandrel = _spandrel()
    label = path.name if path is not None else name
    support = None if architecture is None else spandrel.MAIN_REGISTRY.get(architecture)
    if architecture is not None and support is None:
        raise ModelFileError(
            f"{label}: architecture {architecture!r} is not available; it may need "
            "the optional spandrel-extra-arches package (pip install "
            "'napari-srgan[extra-arches]', non-commercial licences)"
        )
    budget = BuildBudget(state_dict)
    try:
        # spandrel's warnings (zero-sized layers...) would print lines before the one result.
        with budget, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if support is None:
                descriptor = spandrel.ModelLoader().load_from_state_dict(state_dict)
            else:
                canonical = spandrel.canonicalize_state_dict(state_dict)
                descriptor = support.architecture.load(canonical)
    except spandrel.UnsupportedModelError:
        raise ModelFileError(
            f"{label}: unknown architecture: spandrel {spandrel.__version__} recognises none of "
            f"its {len(state_dict)} tensors (first: {next(iter(state_dict), 'none')!r})"
        ) from None
    except NetworkTooLarge as error:
        raise ModelFileError(
            f"{label}: its tensor names and shapes describe a network larger than its "
            f"{_size(budget.weights)} of weights (building it asked for {error.claim}); "
            "refused before building it"
        ) from None
    except Exception as error:  # spandrel reads hostile tensors: any failure is a misfit
        raise ModelFileError(
            f"{label}: the weights do not fit their architecture ({_reason(error)})"
        ) from None
    purpose = getattr(descriptor, "purpose", "Inpainting")
    if purpose not in SERVED_PURPOSES:
        raise ModelFileError(
            f"{label}: a {descriptor.architecture.id} {purpose} model; napari-srgan runs "
            "super-resolution and restoration models only"
        )
    if descriptor.input_channels != descriptor.output_channels:
        raise ModelFileError(
            f"{label}: {descriptor.input_channels} input but {descriptor.output_channels} "
            "output channels; napari-srgan needs the same number in and out"
        )
    network = SpandrelNetwork(descriptor).eval()
    refuse_nonfinite(label, network.model.state_dict())
    multiple = size_multiple(descriptor)
    facts = {
        "scale": descriptor.scale,
        "in_channels": descriptor.input_channels,
        "out_channels": descriptor.output_channels,
        "architecture": str(descriptor.architecture.id),
        "size_multiple": multiple,
    }
    # Checked before the receptive-field probe runs the network (at scale 4096: a 24 GB output).
    problem = beyond_card_limits(facts)
    if problem:
        raise ModelFileError(f"{label}: {problem}")
    if card is None:
        card = ModelCard(
            name,
            description=f"{descriptor.architecture.name} ({', '.join(descriptor.tags)}) "
            "loaded with spandrel",
            intended_use=f"{descriptor.scale}x {purpose} of "
            f"{'RGB' if descriptor.input_channels == 3 else 'grey'} images, as trained by "
            "its authors",
            degradation="unknown",
            source=source,
            license=architecture_license(descriptor) + " (architecture code); weights: as "
            "published by their authors",
            supports_half=bool(descriptor.supports_half),
            theoretical_halo=_receptive_field(network, descriptor, multiple),
            **facts,
        )
    for field_name, value in facts.items():
        if getattr(card, field_name) != value:
            raise ModelFileError(
                f"{label}: the model card says {field_name} {getattr(card, field_name)}, "
                f"but the network has {value}"
            )
    return SRModel(network, card, path)


def load_community_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> SRModel:
    """A ``.pth/.pt/.ckpt/.safetensors`` community model, its architecture detected by spandrel.

    A model of unbounded reach (attention, global pooling) has its tiling checked on first load
    and the result cached by file hash, as ``models add`` does: whether its tiles are exact at
    the measured halo or must be blended."""
    path = Path(path)
    model = community_model(
        read_state_dict(path), name=path.stem, source=f"spandrel: {path.name}", path=path
    )
    if model.card.theoretical_halo is None:
        measure_tiling(model, cache_for=path)
    model.network.to(device)
    return model


def save_converted(
    model: SRModel, path: str | os.PathLike, *, half: bool = False, overwrite: bool = False
) -> Path:
    """Write a spandrel model as ``.safetensors`` with its card and architecture id (atomic);
    ``half`` stores fp16 weights (upcast again on load)."""
    if not isinstance(model.network, SpandrelNetwork):
        raise ModelFileError(f"{model.card.name} is not a spandrel model")
    tensors = {
        name: (t.detach().half() if half and t.is_floating_point() else t.detach())
        .cpu()
        .contiguous()
        for name, t in model.network.model.state_dict().items()
    }
    metadata = {
        FORMAT_KEY: CONVERTED_FORMAT,
        "spandrel_architecture": model.card.architecture,
        "model_card": model.card.to_json(),
    }
    return write_safetensors(path, tensors, metadata, overwrite=overwrite)


def read_converted_card(path: Path, metadata: dict[str, str]) -> ModelCard:
    try:
        return ModelCard.from_json(metadata["model_card"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(
            f"{shown(path)}: broken model card in a converted model ({error})"
        ) from None


def load_converted(
    path: Path, metadata: dict[str, str], device: str | torch.device = "cpu"
) -> SRModel:
    """A model written by :func:`save_converted`: the stored architecture, no detection."""
    card = read_converted_card(path, metadata)
    state_dict = {
        name: t.float() if t.is_floating_point() else t for name, t in read_state_dict(path).items()
    }
    model = community_model(
        state_dict,
        name=card.name,
        source=card.source,
        path=path,
        architecture=metadata.get("spandrel_architecture", card.architecture),
        card=card,
    )
    model.network.to(device)
    return model


def describe(model: SRModel) -> str:
    """One line: what was detected, for the CLI and the widget."""
    card = model.card
    halo = "unbounded" if card.theoretical_halo is None else f"{card.theoretical_halo} px"
    return (
        f"{card.architecture} {card.scale}x, {card.in_channels}->{card.out_channels} channels, "
        f"receptive field {halo}, size multiple {card.size_multiple}, licence {card.license}"
    )
