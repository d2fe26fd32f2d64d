"""Training speed: the old CPU patch sampler next to the device-side sampler, in one run.

    python benchmarks/training.py [--device auto|cpu|cuda] [--steps 10] [--batches 20]
                                  [--batch 16] [--patch 96] [--set5-steps N]

The default recipe: the shipped architecture (16 blocks x 64, no BN, bicubic input skip, MSE),
batch 16 of 96x96 HR patches from T91 + BSD200 (../shared/data/train), bicubic LR. For each
pipeline it reports how many batches per second the sampler alone makes, and training steps per
second with that sampler; the last row trains on one fixed batch, the network-bound ceiling a
pipeline can approach. On a CUDA GPU the last column is the share of time the GPU was running a
kernel while the steps were timed (NVML's utilisation, sampled every 20 ms). ``--set5-steps N``
also trains N steps from scratch with the new sampler and scores Set5.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch

from _common import load_set, photo_training_images
from napari_srgan.engine.devices import choose_device
from napari_srgan.models.files import native_model
from napari_srgan.models.interface import ModelCard
from napari_srgan.models.normalization import NormalizationSpec
from napari_srgan.models.srresnet import Generator, GeneratorConfig
from napari_srgan.training.degradations import Mixture
from napari_srgan.training.device_sampler import DeviceSampler
from napari_srgan.training.evaluation import evaluate_images, mean_quality
from napari_srgan.training.job import machine_description
from napari_srgan.training.patches import PatchSampler
from napari_srgan.training.trainer import Trainer, TrainingConfig

ARCHITECTURE = GeneratorConfig(batch_norm=False, input_skip=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FixedBatch:
    """One batch over and over: training speed without any sampling cost."""

    def __init__(self, sampler, size: int) -> None:
        self.lr, self.hr = sampler.batch(size)

    def batch(self, size: int):
        return self.lr, self.hr

    def state_dict(self) -> dict:
        return {}


class GpuBusy:
    """Mean NVML utilisation (share of time a kernel ran) while the ``with`` block runs."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples, self.running = device, [], False

    def __enter__(self) -> GpuBusy:
        if self.device.type == "cuda":
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:  # no NVML (pynvml) on this machine: reported as n/a
                return
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        if self.running:
            self.running = False
            self.thread.join()

    def describe(self) -> str:
        return f"{sum(self.samples) / len(self.samples):.0f}%" if self.samples else "n/a"


def batches_per_second(sampler, device: torch.device, count: int, size: int) -> float:
    sampler.batch(size)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for _ in range(count):
        lr, hr = sampler.batch(size)
        lr.to(device), hr.to(device)  # what the trainer does with a CPU batch
    synchronize(device)
    return count / (time.perf_counter() - started)


def steps_per_second(
    sampler, device: torch.device, steps: int, size: int, patch: int
) -> tuple[float, str]:
    """Training steps per second, and how busy the GPU was meanwhile."""
    torch.manual_seed(0)
    config = TrainingConfig(
        patch_size=patch, batch_size=size, pretrain_steps=3, pixel_loss="mse", device=str(device)
    )
    trainer = Trainer(Generator(ARCHITECTURE), sampler, config)
    trainer.run()  # warm-up: kernels chosen, memory allocated
    config.pretrain_steps += steps
    synchronize(device)
    with GpuBusy(device) as busy:
        started = time.perf_counter()
        trainer.run()
        synchronize(device)
        seconds = time.perf_counter() - started
    return steps / seconds, busy.describe()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per row")
    parser.add_argument("--batches", type=int, default=20, help="timed sampler batches per row")
    parser.add_argument("--batch", type=int, default=16, help="patches per step")
    parser.add_argument("--patch", type=int, default=96, help="HR patch side (pixels)")
    parser.add_argument("--set5-steps", type=int, default=0)
    args = parser.parse_args()
    size, patch = args.batch, args.patch
    device = choose_device(args.device)
    images = photo_training_images()
    options = {
        "patch_size": patch,
        "channels": 3,
        "normalization": NormalizationSpec(),
        "seed": 0,
        "skip_small": True,
    }
    started = time.perf_counter()
    old = PatchSampler(images, **options)
    old_load = time.perf_counter() - started
    started = time.perf_counter()
    new = DeviceSampler(images, device=device, **options)
    synchronize(device)
    new_load = time.perf_counter() - started
    mixed = DeviceSampler(images, device=device, degradation=Mixture(), **options)
    rows = [
        ("old: PatchSampler (numpy, 1 CPU thread)", old),
        (f"new: DeviceSampler on {device.type}", new),
        (f"new: DeviceSampler on {device.type}, mixture degradation", mixed),
    ]
    print(
        f"{machine_description(device)}, {torch.get_num_threads()} torch threads; batch {size} "
        f"of {patch}x{patch} HR from {len(old.images)} T91 + BSD200 images; set-up: old "
        f"{old_load:.1f} s (intensity ranges), new {new_load:.1f} s (also loads "
        f"{new.hr.numel() * 4 / 1e6:.0f} MB onto the device)"
    )
    print("| pipeline | sampler batches/s | training steps/s | HR px/s | GPU busy |")
    print("|---|---|---|---|---|")
    for name, sampler in rows:
        rate = batches_per_second(sampler, device, args.batches, size)
        steps, busy = steps_per_second(sampler, device, args.steps, size, patch)
        print(f"| {name} | {rate:.1f} | {steps:.3f} | {steps * size * patch**2:,.0f} | {busy} |")
    ceiling, busy = steps_per_second(FixedBatch(new, size), device, args.steps, size, patch)
    print(
        f"| network only (one fixed batch: the ceiling) | - | {ceiling:.3f} "
        f"| {ceiling * size * patch**2:,.0f} | {busy} |"
    )
    if args.set5_steps:
        set5(new, device, args.set5_steps)


def set5(sampler: DeviceSampler, device: torch.device, steps: int) -> None:
    torch.manual_seed(0)
    config = TrainingConfig(pretrain_steps=steps, pixel_loss="mse", device=str(device))
    trainer = Trainer(Generator(ARCHITECTURE), sampler, config)
    started = time.perf_counter()
    trainer.run()
    seconds = (time.perf_counter() - started) / steps
    model = native_model(trainer.model.eval(), ModelCard("benchmark"))
    quality, bicubic = mean_quality(evaluate_images(model, load_set("Set5"), device=str(device)))
    print(
        f"\n{steps} steps from scratch ({seconds:.2f} s/step, {os.cpu_count()} CPU cores): Set5 "
        f"PSNR-Y {quality.psnr:.2f} dB / SSIM {quality.ssim:.4f} (bicubic {bicubic.psnr:.2f} dB)"
    )


if __name__ == "__main__":
    main()
