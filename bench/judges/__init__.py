"""Judges: the benchmark's eyes. One small interface; every result records the judge's id."""

from bench.judges.base import Judge

__all__ = ["Judge"]
