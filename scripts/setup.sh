#!/usr/bin/env bash
# Create .venv (if missing) and install napari-srgan into it, with optional extras ("testing").
# torch is pinned first: this release installs from local files on the project's machines;
# elsewhere pip downloads it like any other package.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
