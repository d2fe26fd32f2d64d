"""``python -m napari_srgan`` runs the command-line interface (same as ``napari-srgan``)."""

import sys

from napari_srgan.cli import main

sys.exit(main())
