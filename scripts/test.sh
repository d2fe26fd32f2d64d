#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian/Ubuntu machine (system packages for a
# virtual X display and software OpenGL, the venv with test extras), then run the test suite
# headlessly: pytest-xvfb starts Xvfb itself. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libgl1 libglx-mesa0 libgl1-mesa-dri libegl1
  libfontconfig1 libdbus-1-3 libglib2.0-0 libx11-xcb1 libxkbcommon0 libxkbcommon-x11-0
  libxcb-cursor0 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0
  libxcb-xkb1)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
bash scripts/setup.sh testing
run_dir="$(pwd)/.ci-work"
mkdir -p "$run_dir/runtime" "$run_dir/config" "$run_dir/cache"
chmod 700 "$run_dir/runtime"
export XDG_RUNTIME_DIR="$run_dir/runtime" XDG_CONFIG_HOME="$run_dir/config" XDG_CACHE_HOME="$run_dir/cache"
export QT_API=pyqt6 PYTEST_QT_API=pyqt6
unset QT_QPA_PLATFORM  # offscreen breaks napari's OpenGL canvas; Xvfb is used instead
.venv/bin/python -m pytest "$@"
