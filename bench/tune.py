"""Choosing hyper-parameters on **dev** concepts, so the test leaderboard is not tuned on itself.

``python -m bench tune --method fuchi --grid lr=1e-5,1e-4,1e-3`` runs each grid point over dev
concepts, ranks them by the composite H, and records the winner in the track's ``tuned.json``;
``bench run`` then uses that config for the method and the report says so.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from bench.concepts import load_concept_set
from bench.errors import ConfigError
from bench.io import write_json
from bench.labels import read_tuned, tuned_file
from bench.method import build_method
from bench.metric_registry import metrics
from bench.protocol import EvalProtocol
from bench.report import load_cells, overall_table
from bench.runner import Bench, Track, run_bench


def tuned_path(track: Track) -> Path:
    """``reports/tuned/<concept set name>.json``: one file per concept set (track)."""
    return tuned_file(load_concept_set(track.concept_set).name)


def load_tuned(track: Track) -> dict[str, dict[str, Any]]:
    """``{method spec: config overrides}`` chosen on dev concepts (empty when never tuned)."""
    return read_tuned(tuned_path(track))


def parse_grid(pairs: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid {pair!r}: use key=v1,v2,...")
        grid[key] = [json.loads(v) if v.strip()[0] in "-0123456789.[{tf" else v for v in values.split(",")]
    return grid


def tune(track: Track, method: str, grid: dict[str, list[Any]], concepts: list[str] | None, out: Path,
         protocol: EvalProtocol) -> dict[str, Any]:
    cs = load_concept_set(track.concept_set)
    concepts = concepts or cs.names("dev")
    if any(cs.get(c).split != "dev" for c in concepts):
        raise ConfigError("tuning uses dev concepts only; the test split is for the leaderboard")
    keys = list(grid)
    points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
    for p in points:
        build_method(method, p)  # validate every point before any work
    scores = []
    for p in points:
        cells = run_bench(Bench(track=track, methods=[method], concepts=concepts, protocol=protocol,
                                method_overrides={method: p}), out)
        measured = load_cells(out, only=cells)  # diverged cells carry no numbers
        if not measured:
            scores.append({"overrides": p, "H": float("nan"), "UA": float("nan"), "retain": float("nan")})
            continue
        row = overall_table(measured).iloc[0]
        scores.append({"overrides": p, "H": float(row["H"]), "UA": float(row["UA"]),
                       "retain": float((row["IRA"] + row["CRA"] + row["NNA"]) / 3)})
    sign = 1.0 if metrics()["composite"].higher_is_better else -1.0  # the direction the registry declares
    best = max(scores, key=lambda s: (sign * s["H"] if s["H"] == s["H"] else -float("inf")))
    path = tuned_path(track)
    data = json.loads(path.read_text()) if path.is_file() else {"methods": {}}
    data["methods"][method] = {"overrides": best["overrides"], "chosen_by": "max composite H on dev concepts",
                               "dev_concepts": concepts, "seeds": list(protocol.seeds), "grid": scores}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    return data["methods"][method]
