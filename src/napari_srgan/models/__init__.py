"""Super-resolution networks, their weight files and the registry of installed models."""
