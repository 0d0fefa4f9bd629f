"""erasebench: a benchmark and evaluation suite for concept erasure in text-to-image diffusion models."""

__version__ = "0.1.0"
