"""The default strengths of the synthetic degradations as plain numbers, so the CLI can show
them in ``--help`` without importing torch (the classes in
:mod:`napari_srgan.training.degradations` take their defaults from here).

Ranges are (low, high): ``blur_sigma`` in HR pixels, ``photons`` at intensity 1 (fewer photons,
more shot noise), ``read_noise`` a Gaussian sigma on the [0, 1] scale.
"""

CRAPPIFIER = {"blur_sigma": (0.5, 1.5), "photons": (100.0, 1000.0), "read_noise": (0.0, 0.02)}
MIXTURE = {
    "blur_probability": 0.5,
    "blur_sigma": (0.3, 1.5),
    "noise_probability": 0.6,
    "photons": (10.0, 1000.0),
    "read_noise": (0.0, 0.1),
}
