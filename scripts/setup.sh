#!/usr/bin/env bash
# Create .venv (if missing) and install napari-srgan into it with a Qt binding (PyQt6), so
# .venv/bin/napari starts with the plugin, plus optional extras ("testing").
# torch is pinned first, and so are the other model sources (spandrel, bioimage.io): this
# release installs from local files on the project's machines; elsewhere pip downloads them.
# The package's own dependencies name no Qt binding, as napari plugins should not.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="pyqt6${1:+,$1}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" \
  "spandrel==0.4.2" "bioimageio.core==0.11.0"
.venv/bin/python -m pip install --quiet -e ".[$extras]"
