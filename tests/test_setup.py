"""The README's first command leaves a venv in which `napari` starts with the plugin.

CI builds its venv with scripts/setup.sh, and the Qt binding comes only from there (the
`testing` extra names none), so this test fails if the set-up stops installing one.
"""

import os
import subprocess
import sys
from pathlib import Path

CHECK = """
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication
import napari


def check():
    docks = sorted(napari.current_viewer().window.dock_widgets)
    if "Upscale 4x (napari-srgan)" in docks:
        print("DOCKED", docks, flush=True)
        QApplication.quit()  # repeated until the event loop runs, and ends it


timer = QTimer()
timer.timeout.connect(check)
timer.start(200)
"""


def test_setup_installs_a_qt_binding():
    setup = (Path(__file__).parents[1] / "scripts" / "setup.sh").read_text()
    assert 'extras="pyqt6' in setup  # the pyqt6 extra, on every run
    testing = (Path(__file__).parents[1] / "pyproject.toml").read_text().split("testing = [")[1]
    assert "PyQt6" not in testing.split("]")[0]  # so the test below sees setup.sh's binding


def test_the_napari_command_starts_with_the_plugin_docked(tmp_path):
    """Runs the venv's own `napari` launcher (as a user does), under the Xvfb display."""
    napari = Path(sys.executable).with_name("napari")
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"application:\n  startup_script: {script}\n")
    result = subprocess.run(
        [str(napari), "--with", "napari-srgan", "Upscale 4x"],
        env={**os.environ, "NAPARI_CONFIG": str(settings)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DOCKED" in result.stdout and "Upscale 4x (napari-srgan)" in result.stdout
