"""cmhash: a reproducible, orchestrated pipeline for CLIP-based cross-modal hashing."""

__version__ = "0.1.0"
