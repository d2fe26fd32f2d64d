"""Keep torch from loading triton into a process whose OpenGL driver already loaded LLVM.

Mesa's OpenGL drivers (llvmpipe, radeonsi...) load ``libLLVM`` when napari creates its canvas.
triton bundles its own LLVM, and loading it afterwards crashes the process inside LLVM's static
initialisers. torch imports triton lazily (``torch._dynamo``, pulled in by ``torch.optim.Adam``),
so a plugin that trains inside napari would take the viewer down. triton is only needed for
``torch.compile``, which this package does not use: when LLVM is already mapped and triton is not
yet loaded, we make ``import triton`` fail cleanly, which torch treats as "triton not installed".
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)
_MAPS = Path("/proc/self/maps")


def llvm_loaded() -> bool:
    """Whether a shared LLVM library is mapped into this process (Linux only)."""
    try:
        return "libLLVM" in _MAPS.read_text()
    except OSError:
        return False


class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError(
            "triton is disabled in this process by napari-srgan: OpenGL already loaded LLVM, "
            "and loading triton's LLVM on top of it would crash"
        )


class TritonBlocker(importlib.abc.MetaPathFinder):
    """Finds ``triton`` (so ``importlib.util.find_spec`` keeps working) but refuses to load it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "triton" or fullname.startswith("triton."):
            return importlib.machinery.ModuleSpec(fullname, _Refuse())
        return None


def guard_triton() -> bool:
    """Block triton if loading it now would crash; True when the block is (or was) installed.

    Cheap and idempotent: the core calls it before any torch code that may import triton.
    """
    if any(isinstance(finder, TritonBlocker) for finder in sys.meta_path):
        return True
    if "triton" in sys.modules or not llvm_loaded():
        return False
    sys.meta_path.insert(0, TritonBlocker())
    log.info("napari-srgan: triton disabled, OpenGL's LLVM is already loaded in this process")
    return True
