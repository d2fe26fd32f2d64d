"""Out-of-core scaling: memory against image size, dask schedulers.

    python benchmarks/scale.py [--sizes 512 1024 2048 4096] [--skip-cluster]

1. zarr -> OME-Zarr of RGB uint8 images of growing size, each in a fresh process (peak RSS is
   its own), with the DEFAULT model and the default settings (auto tile from the default memory
   budget, fp32, CPU): peak memory should stay flat and within the budget over the baseline
   (the interpreter with torch, zarr and the model loaded, measured in the same process).
2. The same lazy dask result computed by the threaded scheduler and by a dask.distributed
   LocalCluster of 2 single-threaded worker processes (small generator: a scheduler test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_srgan.models.files import save_model
from napari_srgan.models.interface import ModelCard
from napari_srgan.models.normalization import NormalizationSpec
from napari_srgan.models.srresnet import Generator, GeneratorConfig

ZARR_WORKER = r"""
import json, resource, sys, time
import numpy as np, psutil, torch, zarr
from napari_srgan.engine.devices import auto_tile_size, memory_budget
from napari_srgan.engine.file_upscale import UpscaleSettings, upscale_file
from napari_srgan.models.files import load_model
from napari_srgan.models.registry import DEFAULT_MODEL, resolve_model
size, folder = int(sys.argv[1]), sys.argv[2]
source = zarr.open_array(folder + "/in.zarr", mode="w", shape=(size, size, 3), dtype="u1",
                         chunks=(512, 512, 3))
for y in range(0, size, 512):  # written in strips: the input never sits in memory whole
    source[y:y + 512] = np.random.default_rng(y).integers(0, 256, (min(512, size - y), size, 3))
model = load_model(resolve_model(DEFAULT_MODEL))
baseline = psutil.Process().memory_info().rss / 2**20
budget = memory_budget(torch.device("cpu"))
tile = auto_tile_size(model, torch.device("cpu"), memory_limit=budget)
started = time.perf_counter()
upscale_file(folder + "/in.zarr", folder + "/out.zarr", model, settings=UpscaleSettings())
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "baseline_mb": baseline, "budget_mb": budget / 2**20,
                  "tile": tile, "halo": model.card.halo,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def small_model(folder: Path) -> Path:
    torch.manual_seed(0)
    generator = Generator(
        GeneratorConfig(
            in_channels=1,
            out_channels=1,
            channels=16,
            residual_blocks=2,
            batch_norm=False,
            input_skip=True,
        )
    )
    card = ModelCard(
        "benchmark-16x2", trained=False, normalization=NormalizationSpec("percentile", 0.1, 99.9)
    )
    return save_model(folder / "small.safetensors", generator.eval(), card)


def run_json(code: str, *args) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_table(sizes: list[int], folder: Path) -> None:
    print("1. zarr -> OME-Zarr, RGB uint8, default model and settings, one process each")
    print(
        "| input | output | output size | auto tile (kept / halo) | budget (MB) | time (s) "
        "| baseline RSS (MB) | peak RSS (MB) | peak - baseline (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        work = folder / str(size)
        work.mkdir()
        r = run_json(ZARR_WORKER, size, work)
        output_mb = (4 * size) ** 2 * 3 / 2**20
        print(
            f"| {size}^2 | {4 * size}^2 | {output_mb:,.0f} MB | {r['tile']} / {r['halo']} "
            f"| {r['budget_mb']:.0f} | {r['seconds']:.0f} | {r['baseline_mb']:.0f} "
            f"| {r['peak_mb']:.0f} | {r['peak_mb'] - r['baseline_mb']:.0f} |",
            flush=True,
        )


def scheduler_table(model: Path, size: int) -> None:
    import dask
    import dask.array as da
    import distributed

    from napari_srgan.engine.lazy import upscale_lazy

    image = np.random.default_rng(0).integers(0, 4000, (size, size)).astype(np.uint16)
    lazy = upscale_lazy(da.from_array(image, chunks=(256, 256)), model, tile=128, block=256)
    rows = []
    with dask.config.set(scheduler="threads", num_workers=2):
        started = time.perf_counter()
        threaded = lazy.compute()
        rows.append(("threads (2)", time.perf_counter() - started))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        # Warm up (workers import torch, load the model) on a graph of its own: recomputing a
        # piece of `lazy` would resubmit its keys with a different task spec.
        warm_up = da.from_array(image[:256, :256], chunks=(256, 256))
        client.compute(upscale_lazy(warm_up, model, tile=128, block=256)).result()
        started = time.perf_counter()
        clustered = client.compute(lazy).result()
        rows.append(("LocalCluster (2 processes x 1 thread)", time.perf_counter() - started))
    same = int(np.abs(threaded.astype(int) - clustered.astype(int)).max())
    print(
        f"\n2. Lazy dask result, {size}^2 grey uint16, 256 px blocks, 16x2 generator "
        f"(max difference between schedulers: {same})"
    )
    print("| scheduler | time (s) | input MP/s |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {size**2 / 1e6 / seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--cluster-size", type=int, default=1024)
    parser.add_argument("--skip-cluster", action="store_true")
    args = parser.parse_args()
    print(f"CPU, {os.cpu_count()} cores, torch {torch.__version__}\n")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        memory_table(args.sizes, folder)
        if not args.skip_cluster:
            scheduler_table(small_model(folder), args.cluster_size)


if __name__ == "__main__":
    main()
