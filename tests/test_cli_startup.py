"""The CLI answers at once: --help, --version and `models` import no torch, numpy or napari."""

import json
import struct
import subprocess
import sys

import pytest
from safetensors import safe_open

from napari_srgan.models.headers import ModelFileError, safetensors_metadata

PROBE = """
import sys
from napari_srgan.cli import main
for argv in (["--help"], ["--version"], ["upscale", "--help"], ["train", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
status = main(["models"])
heavy = [m for m in ("torch", "numpy", "napari", "qtpy", "dask", "tifffile") if m in sys.modules]
print("STATUS", status, "HEAVY", heavy)
"""


def test_help_version_and_models_import_nothing_heavy(tiny_model_file):
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "STATUS 0 HEAVY []" in result.stdout
    assert "napari-srgan 0." in result.stdout  # --version answered
    assert "--blur-sigma LOW HIGH" in result.stdout and "(default (0.5, 1.5)" in result.stdout


def test_models_lists_defaults_channels_degradation_and_use(tiny_model_file, user_models):
    (user_models / "broken.safetensors").write_bytes(b"junk")
    result = subprocess.run(
        [sys.executable, "-m", "napari_srgan", "models"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "name", "architecture", "scale", "ch", "degradation", "source", "licence", "for"
    ]  # fmt: skip
    rows = {line.split()[1] if line[0] in "*+" else line.split()[0]: line for line in lines[1:]}
    assert rows["srresnet-rgb-x4"].startswith("*")
    assert rows["srresnet-rgb-x4"].split()[2:8] == [
        "srresnet", "x4", "3", "bicubic", "bundled", "BSD-3-Clause"
    ]  # fmt: skip
    assert "RGB photos" in rows["srresnet-rgb-x4"]
    assert rows["srresnet-em-grey-x4"].startswith("+")
    assert rows["srresnet-em-grey-x4"].split()[2:6] == ["srresnet", "x4", "1", "mixture"]
    assert "microscopy" in rows["srresnet-em-grey-x4"]
    user = rows["tiny-rgb"].split()
    assert user[:6] == ["tiny-rgb", "srresnet", "x4", "3", "bicubic", "user"]
    assert rows["tiny-rgb"].endswith("(untrained)")
    assert "broken: unreadable:" in result.stdout
    assert str(user_models) in result.stdout


def test_header_reader_agrees_with_safetensors(tiny_model_file):
    with safe_open(str(tiny_model_file), framework="np") as handle:
        expected = handle.metadata()
    assert safetensors_metadata(tiny_model_file) == expected


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x01\x02",
        struct.pack("<Q", 10**9) + b"{}",
        struct.pack("<Q", 5) + b"[1,2]",
        struct.pack("<Q", 4) + b"\xff\xfe{}",
        struct.pack("<Q", 27) + json.dumps({"__metadata__": [1, 2, 3]}).encode(),
    ],
)
def test_header_reader_refuses_broken_files(tmp_path, content):
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=r"m\.safetensors"):
        safetensors_metadata(path)
