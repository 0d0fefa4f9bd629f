"""Judges: the benchmark's eyes. One small interface; every result records the judge's id."""

from bench.api.judge import Judge

__all__ = ["Judge"]
