"""Two ConceptWorlds side by side for the same methods: which world should the benchmark default to?

``python -m bench.world compare --side 2.1=datasets/conceptworld@runs --side 3=datasets/conceptworld3@runs/conceptworld3``
reads, per side, a built world and a runs root holding the folders the ordinary commands wrote on it
(``bench tune --world W --out ROOT/tune``, ``bench run --world W --out ROOT/bench``, ``bench sweep
--world W --out ROOT/sweep``) plus the world's dev-tuned configs (``reports/tuned/<concept set>.json``),
and measures one thing itself: how far each method's edit moves the **text encoder** (``Edit.relative_change``)
on the dev concepts, at the dev-tuned point and at the smallest rung of the tuning ladder that erases
the concept. Per method and side it reports:

1. the dev-tuned operating point and its dev H / UA / retain (``bench tune``);
2. test concepts at that point: UA, mean retain, H (hierarchical intervals), selective alignment and
   collapse (``diversity_target``) (``bench run``);
3. the strength sweep on test concepts: the area under the UA-retain frontier (``bench sweep``);
4. the relative text-encoder weight change: median over dev concepts at the tuned point, and the
   median over dev concepts of the smallest change that erases (UA >= ``ERASED``) on the ladder.
"""

from __future__ import annotations

import functools
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import InputError

FOUNDING = ("fuchi", "lora_eraser", "full_finetune")
ERASED = 0.5  # a concept counts as erased when the judge misses it in at least half of its target images


@dataclass(frozen=True)
class Side:
    """One column group of the comparison: a built world and the runs root measured on it."""

    label: str
    world: Path
    runs: Path

    @classmethod
    def parse(cls, text: str) -> Side:
        label, eq, rest = text.partition("=")
        world, at, runs = rest.partition("@")
        if not (eq and at and label and world and runs):
            raise InputError(f"--side {text!r}: use LABEL=WORLD_DIR@RUNS_ROOT (e.g. 3=datasets/conceptworld3@runs/w3)")
        return cls(label, Path(world), Path(runs))


@functools.lru_cache(maxsize=8)
def _run_cells(runs: Path) -> tuple[dict[str, Any], ...]:
    from bench.report.cells import load_cells

    return tuple(load_cells(runs)) if runs.is_dir() else ()


@functools.lru_cache(maxsize=8)
def _fronts(runs: Path) -> pd.DataFrame:
    from bench.report.curves import curve_tables

    return curve_tables(runs)[1] if runs.is_dir() else pd.DataFrame()


def dev_point(track: Any, method: str) -> dict[str, Any]:
    """The dev-tuned overrides of ``method`` on ``track`` and the dev numbers ``bench tune`` recorded for them."""
    from bench.run.tune import tuned_path

    path = tuned_path(track)
    entry = json.loads(path.read_text())["methods"].get(method) if path.is_file() else None
    if entry is None:
        raise InputError(f"{method} was never tuned on {track.concept_set} ({path}): run bench tune --world first")
    chosen = next(row for row in entry["grid"]  # a row holds the searched keys; the entry adds the fixed ones
                  if all(entry["overrides"].get(k) == v for k, v in row["overrides"].items()))
    return {"overrides": entry["overrides"], "dev_concepts": entry["dev_concepts"], "seeds": entry["seeds"],
            "ladder": entry["grid"],
            "H": chosen["H"], "UA": chosen["UA"], "retain": chosen["retain"]}


def test_point(runs: Path, method: str) -> dict[str, Any]:
    """Pooled test numbers of ``method``'s cells in ``runs`` (a ``bench run`` folder)."""
    from bench.metrics.registry import display
    from bench.report.pooling import overall_table

    cells = [c for c in _run_cells(runs) if c["spec"]["method"] == method]
    if not cells:
        return {}
    row = overall_table(cells).iloc[0]
    out = {"concepts": int(row["concepts"])}
    for key in ("ua", "retain_mean", "composite", "selective_alignment", "diversity_target"):
        name = display(key)
        out[key] = float(row[name]) if name in row else float("nan")
        out[key + "_ci"] = row.get(name + " CI", "")
    return out


def sweep_area(runs: Path, method: str) -> dict[str, Any]:
    """The frontier area of ``method``'s sweep in ``runs`` (a ``bench sweep`` folder) with its interval."""
    front = _fronts(runs)
    if not len(front) or method not in set(front["method"]):
        return {}
    row = front[front["method"] == method].iloc[0]
    return {"area": float(row["frontier_area"]), "ci": (float(row["frontier_area_ci_low"]),
                                                        float(row["frontier_area_ci_high"])), "points": int(row["points"])}


def ladder_ua(runs: Path, method: str, knob: str, seeds: list[int]) -> dict[tuple[float, str], float]:
    """UA per (knob value, dev concept) from the cells ``bench tune`` wrote into ``runs`` (a tune folder
    may hold older protocols too: only cells on ``seeds`` under the newest metrics version count)."""
    from bench.core.records import cell_status, scan_cells

    if not runs.is_dir():
        return {}
    cells = [c for c in scan_cells(runs) if c["spec"]["method"] == method and list(c["spec"]["eval_seeds"]) == seeds
             and knob in c["spec"]["method_config"] and cell_status(c["metrics"]) == "ok"]
    newest = max((str(c["spec"]["metrics_version"]) for c in cells), default=None, key=lambda v: int(v))
    return {(float(c["spec"]["method_config"][knob]), c["spec"]["concept"]): float(c["metrics"]["ua"]["value"])
            for c in cells if str(c["spec"]["metrics_version"]) == newest}


def weight_changes(track: Any, method: str, points: list[tuple[dict[str, Any], str]]) -> list[dict[str, Any]]:
    """Erase each (overrides, concept) point once, as a benchmark cell does (its few-shot images and
    erase seed), and record how far the text encoder moved; the model is restored after each."""
    from bench.api.method import build_method
    from bench.core.concepts import load_concept_set
    from bench.core.protocol import EvalProtocol
    from bench.model.pipeline import load_pipeline
    from bench.run.plan import few_shot_images

    protocol = EvalProtocol()
    pipe = load_pipeline(track.model, device="cpu", dtype="float32")
    cs = load_concept_set(track.concept_set)
    out = []
    for overrides, name in points:
        concept = cs.get(name)
        images, _ = few_shot_images(track, concept, protocol)
        edit = build_method(method, overrides).erase(pipe, concept, images, seed=protocol.erase_seed)
        try:
            out.append({"overrides": overrides, "concept": name, **edit.relative_change("text_encoder")})
        finally:
            edit.restore()
    return out


def compare_side(side: Side, method: str, progress: bool = True) -> dict[str, Any]:
    """Every number of one (side, method) entry of the comparison."""
    from bench.api.method import get_method
    from bench.run.plan import world_track

    track = world_track(side.world)
    dev = dev_point(track, method)
    knob = get_method(method.partition("@")[0]).knob().field
    ua = ladder_ua(side.runs / "tune", method, knob, list(dev["seeds"]))
    concepts = list(dev["dev_concepts"])
    rungs = sorted({float(r["overrides"][knob]) for r in dev["ladder"]})
    smallest = {}
    for name in concepts:  # the weakest rung at which the concept is erased (None: no rung erases it)
        erasing = [v for v in rungs if ua.get((v, name), 0.0) >= ERASED]
        smallest[name] = erasing[0] if erasing else None
    points = [(dev["overrides"], name) for name in concepts]
    points += [({**dev["overrides"], knob: v}, name) for name, v in smallest.items() if v is not None]
    if progress:
        print(f"[{side.label}] {method}: {len(points)} erasures for the text encoder's weight change", flush=True)
    changes = weight_changes(track, method, points)
    at_tuned = [c["pooled"] for c in changes[: len(concepts)]]
    erasing = [c["pooled"] for c in changes[len(concepts):]]
    from bench.core.records import model_fingerprint

    return {"side": side.label, "method": method, "world": str(side.world), "model": model_fingerprint(track.model),
            "knob": knob, "dev": {k: v for k, v in dev.items() if k != "ladder"},
            "test": test_point(side.runs / "bench", method), "sweep": sweep_area(side.runs / "sweep", method),
            "te_change_tuned": {"median": statistics.median(at_tuned), "min": min(at_tuned), "max": max(at_tuned),
                                "max_matrix": max(c["max"] for c in changes[: len(concepts)])},
            "te_change_erasing": {"median": statistics.median(erasing) if erasing else None,
                                  "erased": f"{len(erasing)}/{len(concepts)}"},
            "per_concept": changes, "smallest_erasing": smallest}


def kept_results(path: Path) -> list[dict[str, Any]]:
    """The entries an earlier ``compare --out`` wrote to ``path`` (none if it does not exist)."""
    if not path.is_file():
        return []
    try:
        kept = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not a comparison's JSON ({err.__class__.__name__}): move it away or drop --merge") from None
    if not isinstance(kept, list) or not all(isinstance(r, dict) and {"method", "side"} <= r.keys() for r in kept):
        raise InputError(f"{path} is not a comparison's JSON (a list of entries with a method and a side)")
    return kept


def merge_results(kept: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``kept`` entries (an earlier ``compare --out``'s) with ``new`` ones, one per (method, side), a new
    entry replacing its kept one; ordered by method (the founding ones first) and side. A comparison is
    measured a method or a side at a time this way, each part landing as it finishes. Entries of one
    side label measured on two different models are refused: they would not be one world."""
    merged = {(r["method"], r["side"]): r for r in [*kept, *new]}
    models: dict[str, set[str]] = {}
    for r in merged.values():
        models.setdefault(r["side"], set()).add(r.get("model", "unrecorded"))
    mixed = sorted(label for label, fingerprints in models.items() if len(fingerprints) > 1)
    if mixed:
        raise InputError(f"side {mixed[0]!r} was measured on more than one model: measure its methods again on "
                         "one world (or give the other world another label)")
    rank = {m: k for k, m in enumerate(FOUNDING)}
    return [merged[key] for key in sorted(merged, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1]))]


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "—"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _erasing(entry: dict[str, Any]) -> str:
    median = entry["median"]
    return f"{'—' if median is None else format(median, '.2e')}; {entry['erased']}"


def table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (method, side): the numbers of the module docstring."""
    rows = []
    for r in results:
        t, s = r["test"], r["sweep"]
        rows.append({
            "method": r["method"], "world": r["side"],
            "dev-tuned point": f"{r['knob']}={r['dev']['overrides'].get(r['knob'])}",
            "dev H / UA / retain": f"{r['dev']['H']:.3f} / {r['dev']['UA']:.3f} / {r['dev']['retain']:.3f}",
            "test UA": f"{fmt(t.get('ua'))} {t.get('ua_ci', '')}".strip() if t else "—",
            "test retain": f"{fmt(t.get('retain_mean'))} {t.get('retain_mean_ci', '')}".strip() if t else "—",
            "test H": f"{fmt(t.get('composite'))} {t.get('composite_ci', '')}".strip() if t else "—",
            "selective alignment": fmt(t.get("selective_alignment")) if t else "—",
            "collapse (div target)": fmt(t.get("diversity_target")) if t else "—",
            "frontier area": (f"{s['area']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]" if s else "—"),
            "TE change at tuned (median, range)": (f"{r['te_change_tuned']['median']:.2e} "
                                                   f"({r['te_change_tuned']['min']:.1e}-{r['te_change_tuned']['max']:.1e})"),
            "smallest erasing TE change (median; erased)": _erasing(r["te_change_erasing"]),
        })
    return pd.DataFrame(rows)
