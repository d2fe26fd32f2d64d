#!/usr/bin/env bash
# The main job on a fresh machine: install, then upscale a bundled sample 4x with the bundled
# default model (offline, no configuration). Writes demo/astronaut-lr.png and
# demo/astronaut-x4.ome.tif (OME-TIFF with its scale and provenance), replacing its own earlier
# results so it can be rerun (other outputs are never replaced without --overwrite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p demo
.venv/bin/napari-srgan sample astronaut demo/astronaut-lr.png --overwrite
.venv/bin/napari-srgan upscale demo/astronaut-lr.png demo/astronaut-x4.ome.tif --overwrite
