"""Attack artefacts: the prompts every attack found, gathered from a run's cells into one file that
another model can replay (``--attacks replay:FILE``).

One row per found prompt: method (label), concept, attack, the prompt's text, its token ids (discrete
attacks), whether the text replays the attack (False for learned vectors that no text reproduces, and
for non-text probes), the hits among its images on this run's attack seeds, and the cell it came
from. A run's learned vectors stay in each cell's ``attack_embeds.safetensors``; the row names it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from bench.core.artefacts import ATTACKS_FILE, EMBEDS_FILE, FIELDS, csv_cell
from bench.core.errors import InputError


def gather(runs: Path) -> list[dict[str, Any]]:
    """Every found prompt of every complete cell under ``runs``, in the order of cells and attacks."""
    from bench.report.cells import load_cells

    return cell_rows(load_cells(Path(runs)))


def cell_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every found prompt of loaded ``cells`` (``bench.report.cells.load_cells``)."""
    rows = []
    for c in cells:
        folder = Path(c["folder"])
        path = folder / ATTACKS_FILE
        if not path.is_file():
            continue
        found = json.loads(path.read_text())
        hits: dict[tuple[str, str], list[bool]] = {}
        for r in c["per_image"]:
            if r["group"].startswith("attack:"):
                hits.setdefault((r["group"][7:], r["prompt"]), []).append(bool(r["detected"]))
        for attack, entry in found.items():
            for p in entry["prompts"]:
                h = hits.get((attack, p["text"]), [])
                rows.append({"method": c["label"], "concept": c["spec"]["concept"], "attack": attack,
                             "prompt": p["text"], "token_ids": p.get("token_ids"),
                             "replayable": bool(entry["replayable"]), "hits": sum(h), "images": len(h),
                             "embeds_file": str(folder / EMBEDS_FILE) if entry["embeds"] else "",
                             "cell": folder.name})
    return rows


def write_per_method(rows: list[dict[str, Any]], folder: Path) -> dict[str, str]:
    """One CSV of found prompts per method under ``folder`` (stale ones removed): method -> file name."""
    from bench.report.text import file_stem

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.csv"):
        stale.unlink()
    out = {}
    for method in sorted({r["method"] for r in rows}):
        name = f"{file_stem(method)}.csv"
        write_export([r for r in rows if r["method"] == method], folder / name)
        out[method] = name
    return out


def write_export(rows: list[dict[str, Any]], out: Path) -> Path:
    """``rows`` as JSONL (``.jsonl``) or CSV (``.csv``; token ids as JSON text)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".jsonl":
        out.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    elif out.suffix == ".csv":
        with open(out, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            for r in rows:  # text a spreadsheet would run as a formula gets a leading ' (read_export drops it)
                w.writerow({k: csv_cell(v) for k, v in r.items()}
                           | {"token_ids": json.dumps(r["token_ids"]) if r["token_ids"] is not None else ""})
    else:
        raise InputError(f"--out {out}: name a .jsonl or .csv file")
    return out
