"""An audit by eye of the reject option: per method, a grid of random edited images the judge rejected.

    python -m bench.devtools.audit --runs RUNS_DIR --out OUT_DIR [--judge JUDGE_FOLDER] [--n 32] [--seed 0] [--methods a,b]

Gathers every edited image a run folder stores (``samples.safetensors`` of each cell under
``RUNS_DIR/cells``: the target's and the drill-down groups', never the original model's or an
attack's) with its row of ``per_image.jsonl``. Without ``--judge`` the verdicts are the recorded
ones (``rejected``, and the ``judge`` labels); with ``--judge`` a ConceptWorld CNN judge folder
(``datasets/conceptworld3/judge``) judges the stored pixels again, to audit a new judge on the same
images (stored images are uint8: a verdict near a boundary may differ from the recorded one).

Per method (the leaderboard's label, ``esd@x[tuned]``), draws ``--n`` of its rejected edited images
at random (``numpy.random.default_rng(seed)`` per method, from the candidates in sorted order) into
``OUT/<method>.png``: 8 columns, each image 4x nearest-neighbour, numbered 0..n-1 in its corner.
``OUT/<method>.csv`` has a row per number: cell, concept, prompt group, prompt, seed, each judge head's
label and probability, and an empty ``by_eye`` column where the auditor writes one of
``non_scene`` (clearly no valid scene: a right rejection), ``valid_with_concept`` (a valid scene
showing the erased concept), ``valid_without_concept`` (a valid scene without it) or ``ambiguous``.
Counting them tells how much of a method's reject rate is real non-scenes and how much the reject
head hides (kept or lost) concepts. ``OUT/summary.json`` holds, per method, the stored edited images,
how many were rejected and their share, and the judge used; one line per method is printed.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HEADS = ("object", "colour", "style", "character", "scene")  # CSV column order; other heads follow, sorted
BY_EYE = ("non_scene", "valid_with_concept", "valid_without_concept", "ambiguous")
CELL_FILES = ("run_spec.json", "per_image.jsonl", "samples.safetensors")
COLUMNS, SCALE, GAP = 8, 4, 2
BACKGROUND, NUMBER_BOX, NUMBER_INK = (24, 24, 24), (0, 0, 0), (255, 230, 0)


@dataclass
class Shot:
    """One stored edited image with its plan row and the verdict the audit uses."""

    cell: str
    plan_row: int
    method: str
    judge: str
    row: dict[str, Any]
    pixels: np.ndarray  # uint8 3 x H x W
    rejected: bool = False
    labels: dict[str, Any] = field(default_factory=dict)  # head -> {"label", "p"}


# -- reading cells -------------------------------------------------------------------------------


def cell_folders(runs: Path) -> list[Path]:
    """The cell folders under ``runs/cells`` that hold a spec, per-image rows and samples."""
    from bench.core.errors import InputError, shown

    cells = Path(runs) / "cells"
    if not cells.is_dir():
        raise InputError(f"no run folder at {shown(runs)} (no cells/ inside)")
    found = [d for d in sorted(cells.iterdir())
             if ".tmp-" not in d.name and all((d / f).is_file() for f in CELL_FILES)]
    if not found:
        raise InputError(f"no cells with stored samples in {shown(cells)}")
    return found


@functools.cache
def _tuned(concept_set: str) -> dict[str, Any]:
    from bench.report.labels import tuned_for_spec

    return tuned_for_spec({"concept_set": concept_set})


def method_label(spec: dict[str, Any]) -> str:
    """The leaderboard's label of a cell's method (variant and tuned/default/config hash included)."""
    from bench.report.labels import cell_label

    return cell_label(spec, _tuned(str(spec["concept_set"])))


def _plan(folder: Path) -> list[dict[str, Any]]:
    """The cell's per-image rows of its plan (attack rows left out): row 2i original, 2i+1 edited."""
    lines = (folder / "per_image.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if not r["group"].startswith("attack:")]


def _shown_rows(meta: dict[str, str] | None, plan: list[dict[str, Any]], n_target: int) -> dict[str, list[int]]:
    """Per shown group, the plan rows of the stored images (metadata ``rows``; a cell without it stored
    the first target rows only)."""
    rows = json.loads((meta or {}).get("rows", "null"))
    if rows:
        return rows
    return {"target": [i for i in range(len(plan) // 2) if plan[2 * i]["group"] == "target"][:n_target]}


def stored_edited(folder: Path) -> list[tuple[int, dict[str, Any], np.ndarray]]:
    """(plan row, its edited per-image row, uint8 3 x H x W image) of every edited image a cell stores."""
    from safetensors import safe_open

    from bench.core.errors import InputError

    plan = _plan(folder)
    out = []
    with safe_open(str(folder / "samples.safetensors"), "np") as f:
        keys = set(f.keys())
        n_target = len(f.get_tensor("edited")) if "edited" in keys else 0
        for group, idx in _shown_rows(f.metadata(), plan, n_target).items():
            key = "edited" if group == "target" else f"edited_{group}"
            if key not in keys:
                continue
            images = f.get_tensor(key)
            if len(images) != len(idx) or max(idx, default=-1) >= len(plan) // 2:
                raise InputError(f"cell {folder.name}: {key} holds {len(images)} images for plan rows {idx} "
                                 f"({len(plan) // 2} plan rows recorded)")
            out.extend((i, plan[2 * i + 1], img) for i, img in zip(idx, images, strict=True))
    return out


def _rejudge(judge: Any, images: list[np.ndarray]) -> tuple[list[bool], list[dict[str, Any]]]:
    """``judge``'s reject verdicts and per-head labels on stored uint8 images (as floats in [0, 1])."""
    import torch

    x = torch.from_numpy(np.stack(images)).float() / 255
    return [bool(v) for v in judge.reject(x).tolist()], judge.describe(x)


def cell_shots(folder: Path, label: str, judge: Any = None) -> list[Shot]:
    """A cell's stored edited images with their verdicts: recorded ones, or ``judge``'s on the pixels."""
    spec = json.loads((folder / "run_spec.json").read_text())
    shots = [Shot(folder.name, i, label, str(spec.get("judge", "")), row, img, bool(row.get("rejected")),
                  row.get("judge") or {}) for i, row, img in stored_edited(folder)]
    if judge is not None and shots:
        rejected, labels = _rejudge(judge, [s.pixels for s in shots])
        for s, r, lab in zip(shots, rejected, labels, strict=True):
            s.rejected, s.labels, s.judge = r, lab, judge.ref
    return shots


def gather(runs: Path, judge: Any = None, methods: list[str] | None = None) -> dict[str, list[Shot]]:
    """Per method label (sorted), every stored edited image of its cells; ``methods`` keeps the cells whose
    label or recorded method is named."""
    from bench.core.errors import InputError

    by_method: dict[str, list[Shot]] = {}
    for folder in cell_folders(runs):
        spec = json.loads((folder / "run_spec.json").read_text())
        label = method_label(spec)
        if methods and label not in methods and spec["method"] not in methods:
            continue
        by_method.setdefault(label, []).extend(cell_shots(folder, label, judge))
    if not by_method:
        raise InputError(f"no cells of method(s) {', '.join(methods or [])} under {runs}")
    return dict(sorted(by_method.items()))


# -- drawing and writing -------------------------------------------------------------------------


def pick(shots: list[Shot], n: int, seed: int) -> list[Shot]:
    """Up to ``n`` rejected shots drawn at random without replacement, from candidates in sorted order."""
    candidates = sorted((s for s in shots if s.rejected), key=lambda s: (s.cell, s.plan_row))
    chosen = np.random.default_rng(seed).choice(len(candidates), size=min(n, len(candidates)), replace=False)
    return [candidates[i] for i in chosen]


def grid_size(count: int, height: int = 32, width: int = 32) -> tuple[int, int]:
    """(width, height) in pixels of the grid of ``count`` images of ``height`` x ``width``."""
    cols, rows = min(COLUMNS, count), -(-count // COLUMNS)
    return GAP + cols * (width * SCALE + GAP), GAP + rows * (height * SCALE + GAP)


def draw_grid(images: list[np.ndarray]) -> Any:
    """The numbered grid (a PIL image) of uint8 3 x H x W images, on a dark background."""
    from PIL import Image, ImageDraw

    h, w = images[0].shape[1:]
    canvas = Image.new("RGB", grid_size(len(images), h, w), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for k, img in enumerate(images):
        x = GAP + (k % COLUMNS) * (w * SCALE + GAP)
        y = GAP + (k // COLUMNS) * (h * SCALE + GAP)
        tile = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
        canvas.paste(tile.resize((w * SCALE, h * SCALE), Image.Resampling.NEAREST), (x, y))
        left, top, right, bottom = draw.textbbox((x + 2, y + 1), str(k))
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=NUMBER_BOX)
        draw.text((x + 2, y + 1), str(k), fill=NUMBER_INK)
    return canvas


def _heads(shots: list[Shot]) -> list[str]:
    found = {h for s in shots for h in s.labels}
    return [h for h in HEADS if h in found or not found] + sorted(found - set(HEADS))


def _head_text(value: dict[str, Any] | None) -> str:
    return f"{value['label']} {float(value['p']):.2f}" if value else ""


def write_csv(path: Path, shots: list[Shot]) -> None:
    """A row per drawn image (its grid number first), heads as ``label p``, and an empty ``by_eye``."""
    heads = _heads(shots)
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["index", "cell", "concept", "group", "prompt", "seed", *heads, "by_eye"])
        for k, s in enumerate(shots):
            out.writerow([k, s.cell, s.row["judged_concept"], s.row["group"], s.row["prompt"], s.row["seed"],
                          *(_head_text(s.labels.get(h)) for h in heads), ""])


def file_name(label: str) -> str:
    """A method label as a file name (characters other than word ones and ``@.+-[]`` become ``_``)."""
    return re.sub(r"[^\w@.+\[\]-]", "_", label)


def audit_method(label: str, shots: list[Shot], out: Path, n: int, seed: int) -> dict[str, Any]:
    """One method's grid and CSV; its summary entry."""
    drawn = pick(shots, n, seed)
    grid = out / f"{file_name(label)}.png"
    if drawn:
        draw_grid([s.pixels for s in drawn]).save(grid)
    write_csv(out / f"{file_name(label)}.csv", drawn)
    rejected = sum(s.rejected for s in shots)
    return {"stored_edited": len(shots), "rejected": rejected,
            "share_rejected": rejected / len(shots) if shots else None, "drawn": len(drawn),
            "judge": ", ".join(sorted({s.judge for s in shots})), "grid": str(grid) if drawn else None,
            "csv": str(out / f"{file_name(label)}.csv")}


def audit(runs: Path, out: Path, judge: Any = None, n: int = 32, seed: int = 0,
          methods: list[str] | None = None) -> dict[str, Any]:
    """Grids, CSVs and ``summary.json`` of every method under ``runs`` into ``out``; the summary."""
    from bench.core.errors import ConfigError
    from bench.core.io import write_json

    if n < 0:
        raise ConfigError(f"--n must be 0 or more, got {n}")
    by_method = gather(Path(runs), judge, methods)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_method = {label: audit_method(label, shots, out, n, seed) for label, shots in by_method.items()}
    judges = sorted({m["judge"] for m in per_method.values()})
    summary = {"runs": str(runs), "judge": "; ".join(judges), "rejudged": judge is not None, "seed": seed, "n": n,
               "by_eye": list(BY_EYE), "methods": per_method}
    write_json(out / "summary.json", summary)
    return summary


def _line(label: str, m: dict[str, Any]) -> str:
    share = f"{m['share_rejected']:.1%}" if m["share_rejected"] is not None else "-"
    return (f"{label}: {m['stored_edited']} stored edited images, {m['rejected']} rejected ({share}) -> "
            f"{m['grid'] or 'no grid (none rejected)'}")


def main(argv: list[str] | None = None) -> int:
    from bench.core.errors import BenchError

    ap = argparse.ArgumentParser(prog="python -m bench.devtools.audit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", required=True, help="a run folder (holds cells/)")
    ap.add_argument("--out", required=True, help="folder for the grids, CSVs and summary.json")
    ap.add_argument("--judge", default=None, help="a ConceptWorld CNN judge folder to judge the pixels again")
    ap.add_argument("--n", type=int, default=32, help="images drawn per method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=None, help="comma-separated method labels or recorded methods")
    args = ap.parse_args(argv)
    try:
        judge = None
        if args.judge:
            from bench.judges.world import WorldConceptJudge

            judge = WorldConceptJudge(args.judge)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        summary = audit(Path(args.runs), Path(args.out), judge, args.n, args.seed, methods)
    except BenchError as e:
        print("error: " + str(e).replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
        return 2
    for label, m in summary["methods"].items():
        print(_line(label, m))
    print(f"summary: {Path(args.out) / 'summary.json'} (judge {summary['judge']}, seed {args.seed}, n {args.n})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
