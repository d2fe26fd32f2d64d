"""napari-srgan: 4x super-resolution with an SRGAN generator, for napari and the command line.

The package root and every module outside ``napari_srgan.plugin`` import neither Qt nor napari.
"""

__version__ = "0.1.0"
