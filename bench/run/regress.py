"""Regression checks: a quick configuration run from scratch, compared with committed goldens.

``python -m bench regress`` exits non-zero naming every (method, concept, metric) that moved
beyond its tolerance; ``--update`` rewrites the goldens (``make goldens``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from bench.api.method import leaderboard_specs
from bench.core.errors import ConfigError
from bench.core.io import write_json
from bench.core.paths import ROOT
from bench.core.protocol import EvalProtocol
from bench.metrics.registry import lookup
from bench.report.cells import load_cells
from bench.run.grid import run_bench
from bench.run.plan import Bench, Track

GOLDENS = ROOT / "reports" / "goldens" / "regress.json"
QUICK_CONCEPTS = ["circle", "striped"]
QUICK_PROTOCOL = EvalProtocol(seeds=(0, 1, 2, 3))
# One image of the smallest group (8 target images) may flip across machines; more is a change.
TOLERANCES = {"ua": 0.13, "ua_synonyms": 0.13, "retain_in_domain": 0.1, "retain_cross_domain": 0.1,
              "near_neighbours": 0.13, "kid_retain": 0.05, "reject_rate": 0.05, "trainable_params": 0,
              "storage_bytes": 0, "selective_alignment": 0.13}


def quick_bench(methods: list[str] | None = None, overrides: dict[str, dict[str, Any]] | None = None,
                concepts: list[str] | None = None) -> Bench:
    """The leaderboard's configs (dev-tuned where tuned) within each method's ``quick`` step budget,
    on two test concepts (or ``concepts``, a subset of them) and four seeds."""
    from bench.api.method import get_method
    from bench.run.tune import load_tuned

    track = Track()
    tuned = load_tuned(track)
    methods = methods or leaderboard_specs()
    configs = {m: {**get_method(m.partition("@")[0]).quick, **tuned.get(m, {})} for m in methods}
    for m, o in (overrides or {}).items():
        configs.setdefault(m, {}).update(o)
    return Bench(track=track, methods=methods, concepts=concepts or QUICK_CONCEPTS, protocol=QUICK_PROTOCOL,
                 method_overrides=configs)


def measured(cells: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{"method/concept": {metric: value}}`` for the compared metrics."""
    out = {}
    for c in cells:
        m = c["metrics"]
        row = {}
        for key in TOLERANCES:
            v = m.get(key)
            row[key] = v["value"] if isinstance(v, dict) and "value" in v else (v["mean"] if isinstance(v, dict) else v)
        out[f"{c['spec']['method']}/{c['spec']['concept']}"] = row
    return out


def compare(goldens: dict[str, Any], got: dict[str, dict[str, float]]) -> list[str]:
    """Human-readable lines for every metric outside its tolerance (empty: all good)."""
    problems = []
    for cell, values in sorted(got.items()):
        if cell not in goldens["cells"]:
            problems.append(f"{cell}: no golden (run `make goldens` after an intended change)")
            continue
        gold = goldens["cells"][cell]
        for key, tol in goldens["tolerances"].items():
            a, b = gold.get(key), values.get(key)
            if a is None and b is None:
                continue
            if a is None or b is None or abs(float(a) - float(b)) > tol:
                method, concept = cell.split("/", 1)
                problems.append(f"method {method} moved{_how(key, a, b)} on {key} for concept {concept}: "
                                f"golden {a}, now {b} (tolerance {tol})")
    return problems


def _how(key: str, old: Any, new: Any) -> str:
    """" worse" / " better" by the metric's declared direction ("" when it has none or a value is missing)."""
    found = lookup(key)
    worse = None if found is None or old is None or new is None else found[0].worse(float(old), float(new))
    return "" if worse is None else (" worse" if worse else " better")


def run_regress(update: bool = False, methods: list[str] | None = None,
                overrides: dict[str, dict[str, Any]] | None = None, goldens_path: Path = GOLDENS,
                progress: bool = True, concepts: list[str] | None = None) -> list[str]:
    if update and concepts:
        raise ConfigError("goldens are written on every quick concept; --update takes no concept subset")
    bench = quick_bench(methods, overrides, concepts)
    with tempfile.TemporaryDirectory(prefix="erasebench-regress-") as tmp:
        cells = run_bench(bench, Path(tmp), progress=progress)
        got = measured(load_cells(Path(tmp), only=cells, include_failed=True))  # a diverged cell is a regression
    if update:
        goldens_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(goldens_path, {"protocol": {"concepts": QUICK_CONCEPTS, **QUICK_PROTOCOL.to_dict()},
                                  "tolerances": TOLERANCES, "cells": got})
        return []
    if not goldens_path.is_file():
        return [f"no goldens at {goldens_path}: run `make goldens`"]
    return compare(json.loads(goldens_path.read_text()), got)
