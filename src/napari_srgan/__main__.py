"""``python -m napari_srgan`` runs the command-line interface (same as ``napari-srgan``)."""

import sys

from .cli import main

sys.exit(main())
