"""``napari-srgan``: upscale, train and evaluate from a terminal or a headless server.

Every command calls the same core functions as the napari widgets. Bad input ends with a
one-line message on stderr and exit status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_srgan import __version__


class CommandError(Exception):
    """A user error to report in one line."""


def _add_upscale(commands) -> None:
    parser = commands.add_parser(
        "upscale", help="upscale an image 4x", description="Upscale an image file 4x."
    )
    parser.add_argument("input", type=Path, help="PNG, JPEG, BMP, TIFF image or .zarr store")
    parser.add_argument(
        "output",
        type=Path,
        help="output: .tif (pixel size and provenance), .png, .jpg, or .zarr (OME-Zarr, "
        "streamed: for images larger than memory)",
    )
    parser.add_argument(
        "--model", default=None, help="model name or .safetensors path (default: bundled)"
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile size in input pixels (default: from free memory)",
    )
    parser.add_argument("--batch", type=int, default=1, help="tiles per batch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
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
        default=None,
        help="compute with dask: threads, processes, synchronous, or a dask.distributed "
        "address (tcp://host:8786); needs a .zarr output",
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
    parser.add_argument("--lr", nargs="+", help="paired LR images (1/4 size, same order as --hr)")
    parser.add_argument(
        "--out",
        required=True,
        help="model name (saved in the user model folder) or .safetensors path",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--base",
        default=None,
        help="model to fine-tune (default: the bundled one for the data's channels)",
    )
    start.add_argument("--from-scratch", action="store_true", help="train a new generator")
    parser.add_argument("--channels", type=int, default=64, help="new generator: features")
    parser.add_argument("--blocks", type=int, default=16, help="new generator: residual blocks")
    parser.add_argument("--grey-model", action="store_true", help="new generator: 1 channel")
    parser.add_argument("--no-batch-norm", action="store_true", help="new generator: no batch norm")
    parser.add_argument(
        "--input-skip", action="store_true", help="new generator: add bicubic input"
    )
    parser.add_argument(
        "--residual-scale", type=float, default=1.0, help="new generator: block output scale"
    )
    parser.add_argument("--normalization", choices=["dtype", "percentile"], default=None)
    parser.add_argument("--steps", type=int, default=1000, help="content (pixel loss) steps")
    parser.add_argument("--adversarial-steps", type=int, default=0, help="SRGAN steps after that")
    parser.add_argument("--patch", type=int, default=96, help="HR patch size")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--adversarial-learning-rate", type=float, default=1e-4)
    parser.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    parser.add_argument("--pixel-loss", choices=["l1", "mse"], default="l1")
    parser.add_argument("--relativistic", action="store_true", help="relativistic average GAN loss")
    parser.add_argument(
        "--degradation",
        choices=["bicubic", "crappifier", "mixture"],
        default="bicubic",
        help="how LR is made from HR; mixture: clean, blurred and noisy LR mixed per patch",
    )
    from napari_srgan.training.degradations import Crappifier, Mixture

    crappifier, mixture = Crappifier(), Mixture()
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
            f"patch draws from (default {getattr(crappifier, attribute)} / "
            f"{getattr(mixture, attribute)})",
        )
    for name in ("blur", "noise"):
        parser.add_argument(
            f"--{name}-probability",
            type=float,
            default=getattr(mixture, f"{name}_probability"),
            help=f"mixture: share of patches that get {name}",
        )
    parser.add_argument(
        "--val", nargs="+", help="validation images (default: hold out part of the first HR image)"
    )
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument(
        "--val-crop", type=int, default=256, help="centre crop of validation images (0: whole)"
    )
    parser.add_argument("--validate-every", type=int, default=100)
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint file (default: beside the model)"
    )
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint if it exists"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-download", action="store_true", help="never download VGG19 weights")
    parser.add_argument("--description", default="", help="text for the model card")
    parser.add_argument("--half", action="store_true", help="save fp16 weights (half the size)")


def _add_evaluate(commands) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="PSNR/SSIM of models against bicubic",
        description="Benchmark protocol: modcrop, bicubic x4 LR, Y-channel PSNR/SSIM, 4-pixel border.",
    )
    parser.add_argument("--model", nargs="+", default=[None], help="model names or paths")
    parser.add_argument("--hr", nargs="+", required=True, help="HR image files or folders")
    parser.add_argument("--degradation", choices=["bicubic", "crappifier"], default="bicubic")
    parser.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-srgan", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-srgan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_upscale(commands)
    _add_train(commands)
    _add_evaluate(commands)
    commands.add_parser("models", help="list bundled and user models")
    sample = commands.add_parser("sample", help="write a low-resolution sample image")
    sample.add_argument("name", help="astronaut, cell or ihc")
    sample.add_argument("output", type=Path, help="output image (.png or .tif)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from napari_srgan.engine.tiling import Cancelled
    from napari_srgan.engine.upscale import InvalidImageError
    from napari_srgan.models.files import ModelFileError

    try:
        handler = {
            "upscale": upscale_command,
            "train": train_command,
            "evaluate": evaluate_command,
            "models": models_command,
            "sample": sample_command,
        }[args.command]
        handler(args)
    except (CommandError, ModelFileError, InvalidImageError, ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"napari-srgan: error: {message}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print("napari-srgan: interrupted", file=sys.stderr)
        return 130
    return 0


def _load(name):
    from napari_srgan.models.files import load_model
    from napari_srgan.models.registry import resolve_model

    return load_model(resolve_model(name))


def _warn_if_untrained(model) -> None:
    if not model.card.trained:
        print(f"napari-srgan: warning: model {model.card.name!r} is untrained", file=sys.stderr)


def upscale_command(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from napari_srgan.engine.devices import choose_device
    from napari_srgan.engine.file_upscale import UpscaleSettings, check_output, upscale_file

    check_output(args.output)  # before the (slow) model load
    choose_device(args.device)
    model = _load(args.model)
    settings = UpscaleSettings(
        tile=args.tile,
        batch_size=args.batch,
        device=args.device,
        precision=args.precision,
        scheduler=args.scheduler,
        ensemble=args.ensemble,
    )
    bar = tqdm(total=None, unit="tile", desc=args.input.name, file=sys.stderr, delay=3600)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    def start() -> None:  # input and settings are valid: say so, show the bar
        _warn_if_untrained(model)
        bar.delay = 0

    with bar:
        result = upscale_file(
            args.input,
            args.output,
            model,
            rgb=args.rgb,
            settings=settings,
            progress=progress,
            before_work=start,
        )
    (height, width), (out_height, out_width) = result.input_shape, result.output_shape
    print(
        f"{args.input} {height}x{width} -> {args.output} {out_height}x{out_width} "
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


def train_command(args: argparse.Namespace) -> None:
    from tqdm import tqdm

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
        validation=[(f.data, f.rgb) for _, f in _read_all(args.val)] if args.val else (),
        validation_fraction=args.val_fraction,
        validation_crop=args.val_crop or None,
        checkpoint=checkpoint,
        resume=args.resume,
        description=args.description,
        skip_small=True,
        half=args.half,
    )
    bar = tqdm(total=config.total_steps, unit="step", file=sys.stderr)

    def on_event(event) -> None:
        if isinstance(event, StepReport):
            bar.n = event.step
            bar.set_postfix({k: f"{v:.4g}" for k, v in event.losses.items()}, refresh=True)
        elif isinstance(event, ValidationReport):
            bar.write(
                f"step {event.step}: PSNR {event.psnr:.2f} dB SSIM {event.ssim:.4f} "
                f"(bicubic {event.bicubic_psnr:.2f} dB / {event.bicubic_ssim:.4f})"
            )
        elif isinstance(event, Notice):
            bar.write(f"note: {event.message}")
        elif isinstance(event, CheckpointSaved):
            bar.set_description(f"checkpoint @{event.step}")

    with bar:
        outcome = run_training(job, on_event=on_event)
    print(
        f"saved {outcome.model_path} after {outcome.steps} steps; checkpoint {outcome.checkpoint}"
    )


def evaluate_command(args: argparse.Namespace) -> None:
    from napari_srgan.training.degradations import Bicubic, Crappifier
    from napari_srgan.training.evaluation import evaluate_images, mean_quality

    images = [(path.name, f.data) for path, f in _read_all(args.hr)]
    degradation = Crappifier() if args.degradation == "crappifier" else Bicubic()
    rows = []
    bicubic = None
    for name in args.model:
        model = _load(name)
        _warn_if_untrained(model)
        scores = evaluate_images(model, images, degradation=degradation, device=args.device)
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
    write_image(args.output, image, rgb=image.ndim == 3)
    print(f"wrote {args.output} {image.shape[0]}x{image.shape[1]}: {description}")


def models_command(args: argparse.Namespace) -> None:
    from napari_srgan.models.files import ModelFileError, read_metadata
    from napari_srgan.models.registry import available_models

    for name, path in available_models().items():
        try:
            config, card = read_metadata(path)
            state = "" if card.trained else " (untrained)"
            print(f"{name:<28} {config.in_channels}ch {card.degradation:<10} {path}{state}")
        except ModelFileError as error:
            print(f"{name:<28} unreadable: {error}")
