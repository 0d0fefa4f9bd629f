"""Where the checkout's own folders are: the committed worlds, concept sets, reports and goldens."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root (bench/core/paths.py -> ../../..)
