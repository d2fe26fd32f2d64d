"""Out-of-core scaling: memory against image size, tiling overhead, dask schedulers.

    python benchmarks/scale.py [--sizes 512 1024 2048 4096] [--skip-cluster]

1. zarr -> OME-Zarr of grey uint16 images of growing size, each in a fresh process (peak RSS is
   its own), with a small generator (16 features x 2 blocks: the default one would take hours on
   4096^2 on a CPU) and 128-pixel tiles: peak memory should not grow with the image.
2. Tiled against untiled time for an image that fits, with the default architecture, next to the
   GFLOP/s of one large 3x3 convolution measured in the same run.
3. The same lazy dask result computed by the threaded scheduler and by a dask.distributed
   LocalCluster of 2 single-threaded worker processes.
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

from inference import tiling_table
from napari_srgan.models.files import save_model
from napari_srgan.models.interface import ModelCard
from napari_srgan.models.normalization import NormalizationSpec
from napari_srgan.models.srresnet import Generator, GeneratorConfig

ZARR_WORKER = r"""
import json, resource, sys, time
import numpy as np, zarr
from napari_srgan.engine.file_upscale import UpscaleSettings, upscale_file
from napari_srgan.models.files import load_model
size, folder, model = int(sys.argv[1]), sys.argv[2], sys.argv[3]
source = zarr.open_array(folder + "/in.zarr", mode="w", shape=(size, size), dtype="u2",
                         chunks=(512, 512))
for y in range(0, size, 512):
    source[y:y + 512] = np.random.default_rng(y).integers(0, 4000, (min(512, size - y), size))
started = time.perf_counter()
upscale_file(folder + "/in.zarr", folder + "/out.zarr", load_model(model),
             settings=UpscaleSettings(tile=128, device="cpu"))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds,
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


def memory_table(sizes: list[int], model: Path, folder: Path) -> None:
    print("1. zarr -> OME-Zarr, grey uint16, 16x2 generator, 128 px tiles, one process each")
    print("| input | output | output size | time (s) | input MP/s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        work = folder / str(size)
        work.mkdir()
        result = run_json(ZARR_WORKER, size, work, model)
        output_mb = (4 * size) ** 2 * 2 / 2**20
        print(
            f"| {size}^2 | {4 * size}^2 | {output_mb:,.0f} MB | {result['seconds']:.1f} "
            f"| {size**2 / 1e6 / result['seconds']:.2f} | {result['peak_mb']:.0f} |",
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
        f"\n3. Lazy dask result, {size}^2 grey uint16, 256 px blocks, 16x2 generator "
        f"(max difference between schedulers: {same})"
    )
    print("| scheduler | time (s) | input MP/s |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {size**2 / 1e6 / seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--tiling-size", type=int, default=384)
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 192, 128])
    parser.add_argument("--cluster-size", type=int, default=1024)
    parser.add_argument("--skip-cluster", action="store_true")
    args = parser.parse_args()
    print(f"CPU, {os.cpu_count()} cores, torch {torch.__version__}\n")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        model = small_model(folder)
        memory_table(args.sizes, model, folder)
        print(f"\n2. Tiled against untiled, {args.tiling_size}^2 grey (an image that fits)")
        tiling_table(args.tiling_size, args.tiles, repeat=1, channels=1)
        if not args.skip_cluster:
            scheduler_table(model, args.cluster_size)


if __name__ == "__main__":
    main()
