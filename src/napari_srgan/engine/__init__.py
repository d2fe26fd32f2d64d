"""The upscaling engine: exact tiling, devices, normalisation to the model's range, dask."""
