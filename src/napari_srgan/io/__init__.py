"""Files in and out: images with pixel size and provenance, OME-Zarr, atomic writes."""
