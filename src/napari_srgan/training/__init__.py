"""Training and evaluation: patches, degradations, losses, the loop, benchmarks."""
