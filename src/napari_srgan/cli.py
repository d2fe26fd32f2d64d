"""``napari-srgan``: upscale, train and evaluate from a terminal or a headless server.

Every command calls the same core functions as the napari widgets. Bad input ends with a
one-line message on stderr and exit status 2; nothing is written. SIGTERM, SIGHUP and Ctrl-C
stop a command cleanly: unfinished outputs are removed, one line says what was kept, and the
exit status is 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from napari_srgan import __version__
from napari_srgan.messages import first_line, shown
from napari_srgan.training import degradation_defaults

#: Output formats of a batch (kept here so building the parser imports no engine).
BATCH_FORMATS = ("ome.tif", "tif", "png", "jpg", "zarr")


class CommandError(Exception):
    """A user error to report in one line."""


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP, SIGINT) raised in the main thread, so that every
    writer's cleanup runs (a signal's default action ends the process at once and leaves its
    temporary files beside the output). A KeyboardInterrupt: ``except Exception`` in libraries
    does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: The signals that stop a command cleanly (SIGHUP: the terminal closed; not on Windows).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name)
)


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """Turn the first stop signal into :class:`Stopped`; further ones are ignored while the
    writers clean up (SIGKILL still ends the process). The previous handlers come back after
    (``main`` also runs inside other programs and tests). Only the main thread can do this."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame) -> None:
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the usage is in ``--help``)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


# argparse ``type=`` checks: a bad value is an argparse error (exit 2) before anything runs.
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, not {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def open_fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), not {text}")
    return value


def device_name(text: str) -> str:
    if not re.fullmatch(r"(auto|cpu|cuda|mps)(:\d+)?", text.lower()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        )
    return text


def scheduler_name(text: str) -> str:
    from napari_srgan.engine.schedulers import parse_scheduler

    try:
        return parse_scheduler(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


for _check in (positive_int, non_negative_int, positive_float, open_fraction):
    _check.__name__ = "number"  # argparse names the type in "invalid <type> value: ..."


def _add_upscale(commands) -> None:
    parser = commands.add_parser(
        "upscale",
        help="upscale images 4x (one file, several, or folders)",
        description="Upscale an image file 4x, or many: several inputs or a folder go to an "
        "output folder as <stem>_x<scale>.<format>. A file that fails is reported and the others "
        "go on; the exit status is 2 if any failed.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="PNG, JPEG, BMP, WebP, TIFF image or .zarr store, or a folder of them",
    )
    parser.add_argument(
        "output",
        type=Path,
        metavar="OUTPUT",
        help="one input: the output file, .tif (pixel size and provenance), .png, .jpg, or .zarr "
        "(OME-Zarr, streamed: for images larger than memory), or an existing folder; several "
        "inputs or a folder: the output folder (made if missing)",
    )
    parser.add_argument(
        "--format",
        choices=BATCH_FORMATS,
        default="ome.tif",
        help="format of results written into a folder, named <stem>_x<scale>.<format> "
        "(default: ome.tif, OME-TIFF with pixel size and provenance, which napari opens with "
        "this plugin's reader)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model name (see 'napari-srgan models') or a model file: .safetensors, a "
        ".pth/.pt/.ckpt state dict of a spandrel architecture (ESRGAN, SwinIR, HAT, SPAN...) or a "
        "bioimage.io package (.zip or folder) (default: the bundled RGB model for colour images, "
        "the grey one for grey images)",
    )
    _add_trust_code(parser)
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="kept tile size in input pixels (default: the largest that fits in --memory-limit)",
    )
    parser.add_argument(
        "--memory-limit",
        default=None,
        help="memory for activations and tile buffers, e.g. 2GB or 512MB (default: the smaller "
        "of 25%% of free memory and 2 GB on the CPU, half the free memory of a GPU)",
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="overlap tiles by the theoretical receptive field (bit-for-bit as untiled up to "
        "float rounding) instead of the model's measured halo (within 1e-4)",
    )
    parser.add_argument("--batch", type=positive_int, default=1, help="tiles per batch")
    parser.add_argument(
        "--device", type=device_name, default="auto", help="auto, cpu, cuda[:N] or mps"
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16", "auto"],
        default="fp32",
        help="autocast precision; auto: fp16 on CUDA, bf16 on CPUs with native bf16 (about 2x faster), else fp32",
    )
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="average the 8 flips and rotations (self-ensemble): slightly better, 8x the time",
    )
    parser.add_argument(
        "--scheduler",
        type=scheduler_name,
        default=None,
        help="compute with dask: threads, processes, synchronous, or a dask.distributed "
        "address (tcp://host:8786 or tls://host:8786); needs a .zarr output. Use a scheduler "
        "on a trusted network only: dask's protocol trusts its peer",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--skip-space-check",
        action="store_true",
        help="write even when the disk reports too little free space for the output (some "
        "network shares, FUSE mounts and quota-managed or thin-provisioned storage report it "
        "wrongly); a disk that really fills up still fails cleanly, with no partial output",
    )
    colour = parser.add_mutually_exclusive_group()
    colour.add_argument(
        "--rgb", dest="rgb", action="store_true", default=None, help="last axis is colour"
    )
    colour.add_argument("--grey", dest="rgb", action="store_false", help="no colour axis")


def _add_train(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train or fine-tune a model",
        description="Train a generator on HR images (files or folders); LR is synthesised or paired.",
    )
    parser.add_argument("--hr", nargs="+", required=True, help="HR image files or folders")
    parser.add_argument(
        "--lr",
        nargs="+",
        help="paired LR images, same order as --hr: 1/scale of the HR size, or the HR's size (the "
        "same pixel grid: downsampled for a 4x network, used as they are by a --scale 1 one)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="model name (saved in the user model folder) or .safetensors path",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--base",
        default=None,
        help="model to fine-tune: a name, a native file or a community (spandrel) .pth/"
        ".safetensors, which stays its architecture (default: the bundled one for the data's "
        "channels)",
    )
    start.add_argument("--from-scratch", action="store_true", help="train a new generator")
    parser.add_argument("--channels", type=positive_int, default=64, help="new generator: features")
    parser.add_argument(
        "--blocks", type=non_negative_int, default=16, help="new generator: residual blocks"
    )
    parser.add_argument(
        "--scale",
        type=int,
        choices=[1, 2, 3, 4, 8],
        default=4,
        help="new generator: factor (1: a restoration model, e.g. low -> high SNR pairs)",
    )
    parser.add_argument("--grey-model", action="store_true", help="new generator: 1 channel")
    parser.add_argument("--no-batch-norm", action="store_true", help="new generator: no batch norm")
    parser.add_argument(
        "--input-skip", action="store_true", help="new generator: add bicubic input"
    )
    parser.add_argument(
        "--residual-scale",
        type=positive_float,
        default=1.0,
        help="new generator: block output scale",
    )
    parser.add_argument("--normalization", choices=["dtype", "percentile"], default=None)
    parser.add_argument(
        "--steps", type=non_negative_int, default=1000, help="content (pixel loss) steps"
    )
    parser.add_argument(
        "--adversarial-steps", type=non_negative_int, default=0, help="SRGAN steps after that"
    )
    parser.add_argument("--patch", type=positive_int, default=96, help="HR patch size")
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--learning-rate", type=positive_float, default=2e-4)
    parser.add_argument("--adversarial-learning-rate", type=positive_float, default=1e-4)
    parser.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    parser.add_argument("--pixel-loss", choices=["l1", "mse"], default="l1")
    parser.add_argument("--relativistic", action="store_true", help="relativistic average GAN loss")
    parser.add_argument(
        "--degradation",
        choices=["bicubic", "crappifier", "mixture"],
        default="bicubic",
        help="how LR is made from HR; mixture: clean, blurred and noisy LR mixed per patch",
    )
    crappifier, mixture = degradation_defaults.CRAPPIFIER, degradation_defaults.MIXTURE
    for name, unit in [
        ("blur-sigma", "HR pixels"),
        ("photons", "photons at intensity 1"),
        ("read-noise", "sigma on the 0-1 scale"),
    ]:
        attribute = name.replace("-", "_")
        parser.add_argument(
            f"--{name}",
            type=float,
            nargs=2,
            metavar=("LOW", "HIGH"),
            default=None,
            help=f"crappifier/mixture: range of the {attribute.replace('_', ' ')} ({unit}) each "
            f"patch draws from (default {crappifier[attribute]} / "
            f"{mixture[attribute]})",
        )
    for name in ("blur", "noise"):
        parser.add_argument(
            f"--{name}-probability",
            type=float,
            default=mixture[f"{name}_probability"],
            help=f"mixture: share of patches that get {name}",
        )
    parser.add_argument(
        "--val", nargs="+", help="validation images (default: hold out part of the first HR image)"
    )
    parser.add_argument("--val-fraction", type=open_fraction, default=0.1)
    parser.add_argument(
        "--val-crop",
        type=non_negative_int,
        default=256,
        help="crop of validation images, at least 16 pixels (0: whole images)",
    )
    parser.add_argument("--validate-every", type=positive_int, default=100)
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint file (default: beside the model)"
    )
    parser.add_argument("--checkpoint-every", type=positive_int, default=100)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint if it exists"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--device", type=device_name, default="auto")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing model and checkpoint (without --resume)",
    )
    parser.add_argument("--no-download", action="store_true", help="never download VGG19 weights")
    parser.add_argument("--description", default="", help="text for the model card")
    parser.add_argument("--half", action="store_true", help="save fp16 weights (half the size)")
    parser.add_argument(
        "--time-limit",
        type=positive_float,
        metavar="MINUTES",
        help="stop after this many minutes of training and save the model of the last step "
        "(e.g. inside a cluster job's limit); --resume continues later",
    )


def _add_evaluate(commands) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="PSNR/SSIM of models against bicubic",
        description="Benchmark protocol: modcrop, bicubic x4 LR, Y-channel PSNR/SSIM, 4-pixel border.",
    )
    parser.add_argument(
        "--model",
        nargs="+",
        default=[None],
        help="model names or paths (default: the bundled model for the images' colour)",
    )
    parser.add_argument("--hr", nargs="+", required=True, help="HR image files or folders")
    parser.add_argument("--degradation", choices=["bicubic", "crappifier"], default="bicubic")
    parser.add_argument("--device", type=device_name, default="auto")


def _add_models(commands) -> None:
    parser = commands.add_parser(
        "models",
        help="list installed models, or add a model file",
        description="List the bundled and your own models (no ACTION: list them).",
    )
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    actions.add_parser("list", help="list installed models (the default)")
    add = actions.add_parser(
        "add",
        help="add a community model file (.pth/.pt/.ckpt/.safetensors) to your models",
        description="Detect the architecture with spandrel, convert the weights to .safetensors "
        "with a model card (architecture, scale, channels, licence, receptive field) and save "
        "them in your model folder, so the model is listed by name and reloads without the "
        "original file.",
    )
    add.add_argument("path", type=Path, help="model file")
    add.add_argument("--name", default=None, help="model name (default: the file name)")


def _add_trust_code(parser) -> None:
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a bioimage.io package's Python architecture file to run (only for packages "
        "from authors you trust; TorchScript packages need no such permission)",
    )


def _add_export_bmz(commands) -> None:
    parser = commands.add_parser(
        "export-bmz",
        help="export a model as a bioimage.io (BioImage Model Zoo) package",
        description="Write a bioimage.io spec 0.5 .zip package (state dict + TorchScript "
        "weights, test tensors, cover, README) that bioimageio.core, deepImageJ, ilastik and "
        "QuPath run.",
    )
    parser.add_argument("model", help="model name or .safetensors path")
    parser.add_argument("output", type=Path, help="output .zip")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="napari-srgan", description=__doc__.splitlines()[0].replace("``", "")
    )
    parser.add_argument("--version", action="version", version=f"napari-srgan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_upscale(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_models(commands)
    _add_export_bmz(commands)
    sample = commands.add_parser("sample", help="write a low-resolution sample image")
    sample.add_argument("name", help="astronaut, cell or ihc")
    sample.add_argument("output", type=Path, help="output image (.png or .tif)")
    sample.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.kept = ""  # what a stopped command keeps, set by the commands as results are finished
    with _stop_signals_raise():
        try:
            return _run(args)
        except Stopped as stop:  # the writers removed their temporary files on the way out
            kept = f"; {args.kept}" if args.kept else ""
            print(
                f"napari-srgan: stopped by {stop}: no unfinished output was left{kept}",
                file=sys.stderr,
            )
            return 128 + stop.signum


def _run(args: argparse.Namespace) -> int:
    try:
        handler = {
            "upscale": upscale_command,
            "train": train_command,
            "evaluate": evaluate_command,
            "models": models_command,
            "export-bmz": export_bmz_command,
            "sample": sample_command,
        }[args.command]
        return handler(args) or 0
    except (CommandError, ValueError, OSError) as error:  # ModelFileError is a ValueError
        print(f"napari-srgan: error: {first_line(error)}", file=sys.stderr)
        return 2
    except MemoryError as error:  # training says which batch did not fit
        reason = first_line(error) if str(error).strip() else "not enough memory for this image"
        print(f"napari-srgan: error: {reason}", file=sys.stderr)
        return 2


def _load(name, trust_code: bool = False):
    from napari_srgan.models.registry import load_model

    return load_model(name, trust_code=trust_code)


def _warn_if_untrained(model) -> None:
    if not model.card.trained:
        print(f"napari-srgan: warning: model {model.card.name!r} is untrained", file=sys.stderr)


BYTE_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}


def parse_bytes(text: str) -> int:
    """``2GB``, ``512 MB``, ``1.5gb`` or a plain number of bytes (units are binary: 1 GB = 2^30)."""
    number = text.strip().lower()
    unit = number.lstrip("0123456789.").strip().replace("ib", "b")
    value = number[: len(number) - len(number.lstrip("0123456789."))]
    try:
        size = float(value) * BYTE_UNITS[unit]
    except (KeyError, ValueError):
        raise CommandError(f"--memory-limit {text!r} is not a size like 2GB or 512MB") from None
    if size < 1 << 20:
        raise CommandError(f"--memory-limit {text!r} is too small: give at least 1MB")
    return int(size)


def upscale_command(args: argparse.Namespace) -> int:
    from napari_srgan.engine.devices import choose_device
    from napari_srgan.engine.file_upscale import (
        INPUT_SUFFIXES,
        UpscaleSettings,
        batch_output,
        check_output,
        input_is_rgb,
    )
    from napari_srgan.io.atomic_files import (
        check_writable,
        refuse_output_inside,
        refuse_same_file,
    )
    from napari_srgan.models.registry import default_model

    sources, folder = _upscale_plan(args.inputs, args.output)
    if folder is None:
        refuse_same_file(sources[0], args.output)
        check_output(args.output, overwrite=args.overwrite)  # before the (slow) model load
    else:
        if folder.exists() and not folder.is_dir():
            raise CommandError(f"{shown(folder)} is a file; several inputs need an output folder")
        if not folder.exists() and folder.suffix.lower() in INPUT_SUFFIXES:  # not a folder name
            raise CommandError(
                f"{shown(folder)} names a file, but several inputs (or a folder) need an output "
                "folder; give one input, or a folder name"
            )
        if args.scheduler is not None and args.format != "zarr":
            raise CommandError("computing with a dask scheduler needs --format zarr")
        for source in sources:  # before the folder is made
            refuse_output_inside(source, folder)
        check_writable(folder if folder.is_dir() else folder.parent)
    choose_device(args.device)
    settings = UpscaleSettings(
        tile=args.tile,
        memory_limit=None if args.memory_limit is None else parse_bytes(args.memory_limit),
        exact=args.exact,
        batch_size=args.batch,
        device=args.device,
        precision=args.precision,
        scheduler=args.scheduler,
        ensemble=args.ensemble,
        skip_space_check=args.skip_space_check,
    )
    loaded: dict[str, object] = {}

    def model_for(source: Path):
        """The named model, else the bundled one that fits the data (grey or RGB)."""
        rgb = args.rgb
        if args.model is None and rgb is None:
            rgb = input_is_rgb(source)
        name = args.model or default_model(rgb)
        if name not in loaded:
            loaded[name] = _load(name, args.trust_code)
        return loaded[name]

    if args.model is not None:
        model_for(sources[0])  # a wrong model name stops the run before any file
    if folder is None:
        _upscale_one(
            sources[0], args.output, model_for(sources[0]), args.rgb, settings, [], args.overwrite
        )
        return 0
    folder.mkdir(exist_ok=True)
    failed: list[Path] = []
    warned: list = []
    for index, source in enumerate(sources, 1):
        label = f"[{index}/{len(sources)}] {shown(source.name)}"
        try:
            model = model_for(source)
            output = batch_output(source, folder, model.scale, f".{args.format}")
            _upscale_one(
                source, output, model, args.rgb, settings, warned, args.overwrite, label=label
            )
            args.kept = f"{index - len(failed)} of {len(sources)} results are in {shown(folder)}"
        except (ValueError, OSError) as error:
            failed.append(source)
            print(f"napari-srgan: error: {shown(source)}: {first_line(error)}", file=sys.stderr)
    done = len(sources) - len(failed)
    print(f"upscaled {done} of {len(sources)} files into {shown(folder)}", end="")
    print(f"; {len(failed)} failed: {', '.join(shown(p.name) for p in failed)}" if failed else "")
    return 2 if failed else 0


def _upscale_plan(inputs: list[Path], output: Path) -> tuple[list[Path], Path | None]:
    """The input files, and the output folder (None: one input to the output file)."""
    from napari_srgan.engine.file_upscale import folder_inputs, input_stem
    from napari_srgan.io.zarr_files import is_zarr

    def is_folder(path: Path) -> bool:
        return path.is_dir() and not is_zarr(path)

    output_is_folder = is_folder(output) or not output.suffix
    if len(inputs) == 1 and not is_folder(inputs[0]) and not output_is_folder:
        return inputs, None
    sources: list[Path] = []
    for path in inputs:
        sources += folder_inputs(path) if is_folder(path) else [path]
    sources = _without_earlier_results(sources, output)
    stems: dict[str, Path] = {}
    for source in sources:
        stem = input_stem(source)
        if stem in stems:
            raise CommandError(
                f"{shown(stems[stem])} and {shown(source)} would both be written as "
                f"{stem}_x<scale>; upscale them into separate folders"
            )
        stems[stem] = source
    return sources, output


def _without_earlier_results(sources: list[Path], folder: Path) -> list[Path]:
    """Leave out files in the output folder named as the result of another input
    (``cells_x4.ome.tif`` beside ``cells.png``): a rerun into the input folder upscaled the last
    run's results again (16x the pixels, then 64x...) and, with --overwrite, replaced an input
    of the same run."""
    from napari_srgan.engine.file_upscale import input_stem

    stems = {input_stem(source) for source in sources}
    kept = []
    for source in sources:
        result_of = re.fullmatch(r"(.+)_x\d+", input_stem(source))
        if result_of and result_of[1] in stems and source.parent.resolve() == folder.resolve():
            print(f"skipping {shown(source)}: the result of {result_of[1]} from an earlier run")
            continue
        kept.append(source)
    return kept


def _upscale_one(
    source: Path, output: Path, model, rgb, settings, warned: list, overwrite: bool, label: str = ""
) -> None:
    """One file, with its progress; ``warned`` holds the models whose "untrained" and "tiles
    are blended" warnings were given (once per run, not once per file)."""
    from napari_srgan.engine.file_upscale import upscale_file
    from napari_srgan.engine.upscale import blending_notice
    from napari_srgan.io.disk_space import NotEnoughSpaceError
    from napari_srgan.terminal import Progress

    with Progress(label or shown(source.name), "tile") as progress:

        def start() -> None:  # input and settings are valid: warn once, show the progress
            if model not in warned:
                _warn_if_untrained(model)
                notice = blending_notice(model.card, settings.exact)
                if notice is not None and settings.scheduler is None:  # dask logs its own line
                    print(f"napari-srgan: warning: {notice}", file=sys.stderr)
                warned.append(model)
            progress.start()

        try:
            result = upscale_file(
                source,
                output,
                model,
                rgb=rgb,
                settings=settings,
                progress=progress.update,
                before_work=start,
                overwrite=overwrite,
            )
        except NotEnoughSpaceError as error:  # found before any work: say how to go on anyway
            raise NotEnoughSpaceError(
                f"{error} (pass --skip-space-check if the disk reports its free space wrongly)"
            ) from None
    (height, width), (out_height, out_width) = result.input_shape, result.output_shape
    print(
        f"{shown(source)} {height}x{width} -> {shown(output)} {out_height}x{out_width} "
        f"with {model.card.name}"
    )


def _read_all(paths) -> list:
    from napari_srgan.io.images import read_image
    from napari_srgan.training.evaluation import image_files

    return [(path, read_image(path)) for path in image_files(paths)]


def _degradation(args: argparse.Namespace):
    """The degradation the train options describe (ranges left out keep their defaults)."""
    from napari_srgan.training.degradations import Bicubic, Crappifier, Mixture

    ranges = {
        name: tuple(getattr(args, name))
        for name in ("blur_sigma", "photons", "read_noise")
        if getattr(args, name) is not None
    }
    # options the chosen degradation would ignore: the user meant another one
    ignored = [f"--{name.replace('_', '-')}" for name in ranges if args.degradation == "bicubic"]
    ignored += [
        f"--{name}-probability"
        for name in ("blur", "noise")
        if args.degradation != "mixture"
        and getattr(args, f"{name}_probability")
        != degradation_defaults.MIXTURE[f"{name}_probability"]
    ]
    if ignored:
        wanted = "mixture" if ignored[-1].endswith("probability") else "crappifier or mixture"
        raise CommandError(
            f"{', '.join(ignored)}: not used by --degradation {args.degradation}; choose "
            f"--degradation {wanted}"
        )
    try:
        if args.degradation == "crappifier":
            return Crappifier(**ranges)
        if args.degradation == "mixture":
            return Mixture(
                blur_probability=args.blur_probability,
                noise_probability=args.noise_probability,
                **ranges,
            )
    except ValueError as error:
        raise CommandError(str(error)) from None
    return Bicubic()


def _refuse_writing_over_inputs(files: list, output: Path, checkpoint: Path) -> None:
    """The model and checkpoint may never replace a training image, even with --overwrite."""
    from napari_srgan.io.atomic_files import refuse_same_file

    for path, _ in files:
        for written in (output, Path(checkpoint)):
            refuse_same_file(path, written)


def train_command(args: argparse.Namespace) -> None:
    from napari_srgan.models.normalization import NormalizationSpec
    from napari_srgan.models.registry import DEFAULT_GREY_MODEL, DEFAULT_MODEL
    from napari_srgan.models.srresnet import GeneratorConfig
    from napari_srgan.training.job import TrainingJob, run_training, user_model_path
    from napari_srgan.training.patches import TrainingImage
    from napari_srgan.training.trainer import (
        CheckpointSaved,
        Notice,
        StepReport,
        TrainingConfig,
        ValidationReport,
    )

    hr_files = _read_all(args.hr)
    lr_files = _read_all(args.lr) if args.lr else []
    if lr_files and len(lr_files) != len(hr_files):
        raise CommandError(f"{len(hr_files)} HR images but {len(lr_files)} LR images")
    images = [
        TrainingImage(
            hr.data, lr=lr_files[i][1].data if lr_files else None, rgb=hr.rgb, name=path.name
        )
        for i, (path, hr) in enumerate(hr_files)
    ]
    output = (
        Path(args.out)
        if args.out.endswith(".safetensors") or "/" in args.out
        else user_model_path(args.out)
    )
    checkpoint = args.checkpoint or output.with_suffix(".ckpt")
    validation_files = _read_all(args.val) if args.val else []
    _refuse_writing_over_inputs([*hr_files, *lr_files, *validation_files], output, checkpoint)
    base, generator_config = None, None
    if args.from_scratch:
        channels = 1 if args.grey_model else 3
        generator_config = GeneratorConfig(
            in_channels=channels,
            out_channels=channels,
            channels=args.channels,
            residual_blocks=args.blocks,
            batch_norm=not args.no_batch_norm,
            residual_scale=args.residual_scale,
            input_skip=args.input_skip,
            scale=args.scale,
        )
    else:
        base = args.base or (DEFAULT_MODEL if hr_files[0][1].rgb else DEFAULT_GREY_MODEL)
    config = TrainingConfig(
        patch_size=args.patch,
        batch_size=args.batch,
        pretrain_steps=args.steps,
        adversarial_steps=args.adversarial_steps,
        learning_rate=args.learning_rate,
        adversarial_learning_rate=args.adversarial_learning_rate,
        schedule=args.schedule,
        pixel_loss=args.pixel_loss,
        relativistic=args.relativistic,
        seed=args.seed,
        validate_every=args.validate_every,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        allow_download=not args.no_download,
    )
    job = TrainingJob(
        images=images,
        output=output,
        config=config,
        base_model=base,
        generator_config=generator_config,
        normalization=NormalizationSpec(args.normalization)
        if args.normalization == "dtype"
        else NormalizationSpec("percentile", 0.1, 99.9)
        if args.normalization
        else None,
        degradation=_degradation(args),
        validation=[(f.data, f.rgb) for _, f in validation_files],
        validation_fraction=args.val_fraction,
        validation_crop=args.val_crop or None,
        checkpoint=checkpoint,
        resume=args.resume,
        description=args.description,
        skip_small=True,
        half=args.half,
        overwrite=args.overwrite,
    )
    from napari_srgan.terminal import Progress

    bar = Progress("training", "step", interval=30.0)

    def on_event(event) -> None:
        if isinstance(event, StepReport):
            losses = " ".join(f"{k}={v:.4g}" for k, v in event.losses.items())
            bar.update(event.step, config.total_steps, note=losses)
        elif isinstance(event, ValidationReport):
            bar.write(
                f"step {event.step}: PSNR {event.psnr:.2f} dB SSIM {event.ssim:.4f} "
                f"(bicubic {event.bicubic_psnr:.2f} dB / {event.bicubic_ssim:.4f})"
            )
        elif isinstance(event, Notice):
            bar.write(f"note: {event.message}")
        elif isinstance(event, CheckpointSaved):
            bar.note = f"checkpoint @{event.step}"
            args.kept = f"{shown(event.path)} holds step {event.step}; --resume continues from it"

    deadline = time.monotonic() + 60 * args.time_limit if args.time_limit else math.inf
    with bar:  # shows from the first step on: a refused job prints only its error
        try:
            outcome = run_training(
                job, on_event=on_event, should_stop=lambda: time.monotonic() > deadline
            )
        except OSError as error:  # a full disk at the model: the work is in the checkpoint
            if not args.kept:
                raise
            raise OSError(f"{first_line(error)}; {args.kept}") from None
    if not outcome.finished:
        print(
            f"stopped at the {args.time_limit:g}-minute time limit after {outcome.steps} of "
            f"{config.total_steps} steps; the same command with --resume continues"
        )
    print(
        f"saved {shown(outcome.model_path)} after {outcome.steps} steps; "
        f"checkpoint {shown(outcome.checkpoint)}"
    )


def evaluate_command(args: argparse.Namespace) -> None:
    from napari_srgan.terminal import Progress
    from napari_srgan.training.degradations import Bicubic, Crappifier
    from napari_srgan.training.evaluation import (
        check_benchmark_images,
        evaluate_images,
        mean_quality,
    )

    images = [(path.name, f.data) for path, f in _read_all(args.hr)]
    check_benchmark_images(images)  # before loading models: a bad image is the only line
    degradation = Crappifier() if args.degradation == "crappifier" else Bicubic()
    rows = []
    bicubic = None
    from napari_srgan.models.registry import default_model

    for name in args.model:
        model = _load(name or default_model(images[0][1].ndim == 3))
        _warn_if_untrained(model)
        with Progress(f"evaluating {model.card.name}", "image") as progress:
            progress.update(0, len(images))
            scores = evaluate_images(
                model,
                images,
                degradation=degradation,
                device=args.device,
                progress=progress.update,
            )
        quality, bicubic = mean_quality(scores)
        rows.append((model.card.name, quality))
    print(f"{len(images)} images, {args.degradation} x4, PSNR/SSIM on Y (RGB) or grey, 4-px border")
    print(f"| {'method':<24} | PSNR (dB) | SSIM   |")
    print(f"|{'-' * 26}|-----------|--------|")
    for label, quality in [("bicubic", bicubic), *rows]:
        print(f"| {label:<24} | {quality.psnr:9.2f} | {quality.ssim:.4f} |")


def sample_command(args: argparse.Namespace) -> None:
    from napari_srgan.io.images import write_image
    from napari_srgan.samples import low_resolution_sample

    image, description = low_resolution_sample(args.name)
    write_image(args.output, image, rgb=image.ndim == 3, overwrite=args.overwrite)
    print(f"wrote {shown(args.output)} {image.shape[0]}x{image.shape[1]}: {description}")


def export_bmz_command(args: argparse.Namespace) -> None:
    from napari_srgan.models.bioimageio import export_bioimageio

    model = _load(args.model)
    path = export_bioimageio(model, args.output, overwrite=args.overwrite)
    print(f"wrote {shown(path)}: bioimage.io package of {model.card.name}")


def models_add_command(args: argparse.Namespace) -> None:
    from napari_srgan.models.halo import TOLERANCE
    from napari_srgan.models.registry import add_model, read_card

    path = add_model(args.path, args.name)
    card = read_card(path)
    reach = "unbounded" if card.theoretical_halo is None else f"{card.theoretical_halo} px"
    tiling = card.metrics.get("tiling", {})
    print(
        f"added {card.name}: {card.architecture} x{card.scale}, {card.in_channels} channel(s), "
        f"receptive field {reach}, measured halo {card.measured_halo} px, licence "
        f"{card.license} -> {shown(path)}"
    )
    if not tiling.get("exact", True):
        print(
            f"napari-srgan: warning: {card.name} is not exact when tiled: seam error "
            f"{tiling['seam_error']:.2g} at {card.measured_halo} px overlap (tolerance "
            f"{TOLERANCE:g}); its overlapping tiles will be blended (no seams, small "
            "differences from a whole-image pass)",
            file=sys.stderr,
        )


def models_command(args: argparse.Namespace) -> None:
    """List the installed models: torch-free (headers only), so it answers at once."""
    if args.models_action == "add":
        models_add_command(args)
        return
    from napari_srgan.models.headers import summarize
    from napari_srgan.models.registry import (
        BUNDLED_USES,
        DEFAULT_GREY_MODEL,
        DEFAULT_MODEL,
        available_models,
        bundled_model_dir,
        user_model_dir,
    )

    bundled = bundled_model_dir()
    marks = {DEFAULT_MODEL: "*", DEFAULT_GREY_MODEL: "+"}
    header = ("", "name", "architecture", "scale", "ch", "degradation", "source", "licence")
    rows, problems = [], []
    for name, path in available_models().items():
        location = "bundled" if path.parent == bundled else "user"
        fallback = BUNDLED_USES.get(name, "") if location == "bundled" else ""
        model = summarize(name, path, location=location, use_fallback=fallback)
        if model.problem:
            problems.append(f"  {shown(name)}: unreadable: {model.problem}")
            continue
        use = model.intended_use + ("" if model.trained else " (untrained)")
        scale = f"x{model.scale}" if model.scale else "?"
        channels = str(model.channels) if model.channels else "?"
        cells = (model.architecture, scale, channels, model.degradation, model.source)
        rows.append((marks.get(name, ""), shown(name), *cells, model.license, use))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [(*header, "for"), *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    for line in problems:
        print(line)
    print("* default for RGB data, + default for grey data (when --model is not given)")
    print(f"bundled models: {bundled}")
    print(f"your models: {user_model_dir()} (set NAPARI_SRGAN_MODEL_DIR to move them)")
