"""The core stays importable without Qt or napari (CLI, servers, dask workers)."""

import pkgutil
import subprocess
import sys

import napari_srgan

CORE = sorted(
    info.name
    for info in pkgutil.walk_packages(napari_srgan.__path__, "napari_srgan.")
    # __main__ runs the CLI when imported; plugin is the napari layer
    if info.name.split(".")[1] not in ("plugin", "__main__")
)


def test_core_modules_import_no_qt_and_no_napari():
    code = (
        "import sys\n"
        f"for name in {CORE!r}:\n"
        "    __import__(name)\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy')]\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    assert len(CORE) > 10
