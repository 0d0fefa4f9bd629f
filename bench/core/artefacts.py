"""Attack artefacts as files: the names a cell stores them under, and an export's rows read back.

A cell keeps what its attacks found in ``ATTACKS_FILE`` (and learned vectors in ``EMBEDS_FILE``);
``python -m bench attacks export`` gathers them into one JSONL or CSV file (``bench.report.artefacts``),
which ``read_export`` reads back for ``--attacks replay:FILE``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from bench.core.errors import InputError

ATTACKS_FILE = "attacks.json"  # every attack's found prompts (text, token ids) and facts
EMBEDS_FILE = "attack_embeds.safetensors"  # learned conditionings, one N x 77 x D tensor per attack
FIELDS = ("method", "concept", "attack", "prompt", "token_ids", "replayable", "hits", "images", "embeds_file",
          "cell")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting so as a formula


def csv_cell(value: Any) -> Any:
    """A string a spreadsheet will not run as a formula (leading ``'``); other values unchanged.
    Quoting of commas, quotes and newlines is the CSV writer's job."""
    if isinstance(value, str) and value[:1] in FORMULA_START:
        return "'" + value
    return value


def _uncell(value: str | None) -> str | None:
    """``csv_cell`` undone: the leading ' it put before formula-like text."""
    if isinstance(value, str) and len(value) > 1 and value[0] == "'" and csv_cell(value[1:]) == value:
        return value[1:]
    return value


def read_export(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an export (JSONL or CSV), checked for the fields replay needs."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"attack export {path} not found (write one with `python -m bench attacks export`)")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = [{k: _uncell(v) for k, v in r.items()} | {"replayable": r.get("replayable") in ("True", "true", "1")}
                    for r in csv.DictReader(f)]
    else:
        raise InputError(f"attack export {path}: expected a .jsonl or .csv file")
    for i, r in enumerate(rows):
        missing = [k for k in ("method", "concept", "attack", "prompt", "replayable") if k not in r]
        if missing:
            raise InputError(f"attack export {path}, row {i + 1}: missing {', '.join(missing)}")
    return rows
