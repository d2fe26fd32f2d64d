"""The napari side: widgets, reader, writer and sample data, adapting layers to the core.

Importing this package installs the triton guard (see :mod:`napari_srgan.engine.torch_safety`):
napari imports plugin modules lazily, usually after its OpenGL canvas exists.
"""

from napari_srgan.engine.torch_safety import guard_triton

guard_triton()
