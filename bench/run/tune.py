"""Choosing hyper-parameters on **dev** concepts, so the test leaderboard is not tuned on itself.

``python -m bench tune --method fuchi`` walks the method's strength knob (``Eraser.strength``) in
log steps of at most 2x over dev concepts (``--grid lr=...`` gives explicit values instead), ranks
the points by the composite H, and records every point and the winner in the track's
``reports/tuned/<concept set>.json``; ``bench run`` then uses that config and the report says so.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.api.method import build_method, get_method
from bench.core.concepts import load_concept_set
from bench.core.errors import ConfigError
from bench.core.io import write_json
from bench.core.protocol import EvalProtocol
from bench.metrics.registry import metrics
from bench.report.cells import load_cells
from bench.report.labels import read_tuned, tuned_file
from bench.report.pooling import overall_table
from bench.run.grid import run_bench
from bench.run.plan import Bench, Track


def tuned_path(track: Track) -> Path:
    """``reports/tuned/<concept set name>.json``: one file per concept set (track)."""
    return tuned_file(load_concept_set(track.concept_set).name)


def load_tuned(track: Track) -> dict[str, dict[str, Any]]:
    """``{method spec: config overrides}`` chosen on dev concepts (empty when never tuned)."""
    return read_tuned(tuned_path(track))


@dataclass(frozen=True)
class TuneSpec:
    """What to search: an explicit ``grid``, or else the method's strength ``knob`` (None: its first)
    walked as a log ladder with steps of at most ``ratio``, extended by up to ``extend`` rungs past
    whichever end holds the best point (a ladder's edge is not an optimum)."""

    grid: dict[str, list[Any]] | None = None
    knob: str | None = None
    ratio: float = 2.0
    extend: int = 3
    fixed: dict[str, Any] = field(default_factory=dict)  # overrides held at one value throughout

    def __post_init__(self) -> None:
        if self.grid is None and not 1 < self.ratio <= 2:
            raise ConfigError(f"tuning steps must be finer than decades: ratio in (1, 2], got {self.ratio}")


def tune(track: Track, method: str, concepts: list[str] | None, out: Path, protocol: EvalProtocol,
         spec: TuneSpec | None = None, executor: Any = None, record: Path | None = None) -> dict[str, Any]:
    """Score every point on dev concepts by composite H, record all of them and the winner in ``record``
    (default: the track's committed ``tuned_path``, which ``bench run`` reads; the CLI writes there only
    with ``--save-tuned``). ``executor``: where each point's cells run (``bench.run.executors``)."""
    spec = spec or TuneSpec()
    cs = load_concept_set(track.concept_set)
    concepts = concepts or cs.names("dev")
    if any(cs.get(c).split != "dev" for c in concepts):
        raise ConfigError("tuning uses dev concepts only; the test split is for the leaderboard")
    sign = 1.0 if metrics()["composite"].higher_is_better else -1.0  # the direction the registry declares

    def score(point: dict[str, Any]) -> dict[str, Any]:
        cells = run_bench(Bench(track=track, methods=[method], concepts=concepts, protocol=protocol,
                                method_overrides={method: {**spec.fixed, **point}}), out, executor=executor)
        measured = load_cells(out, only=cells)  # diverged cells carry no numbers
        if not measured:
            return {"overrides": point, "H": float("nan"), "UA": float("nan"), "retain": float("nan")}
        row = overall_table(measured).iloc[0]
        return {"overrides": point, "H": float(row["H"]), "UA": float(row["UA"]),
                "retain": float((row["IRA"] + row["CRA"] + row["NNA"]) / 3),
                "judge": ", ".join(sorted({str(c["spec"].get("judge")) for c in measured}))}

    def key(s: dict[str, Any]) -> float:
        return sign * s["H"] if s["H"] == s["H"] else -float("inf")

    if spec.grid is not None:
        keys = list(spec.grid)
        points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(spec.grid[k] for k in keys))]
        for p in points:
            build_method(method, {**spec.fixed, **p})  # validate every point before any work
        scores = [score(p) for p in points]
        how = "max composite H over the given grid on dev concepts"
    else:
        scores, how = choice_ladders(method, spec, score, key, cs.name)
    best = max(scores, key=key)
    path = record or tuned_path(track)
    data = json.loads(path.read_text()) if path.is_file() else {"methods": {}}
    data["methods"][method] = {"overrides": {**spec.fixed, **best["overrides"]}, "chosen_by": how,
                               "judge": best.get("judge"),  # which judge scored the points
                               "dev_concepts": concepts, "seeds": list(protocol.seeds), "grid": scores}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    return data["methods"][method]


def choice_ladders(method: str, spec: TuneSpec, score: Any, key: Any,
                    concept_set: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """One ladder per combination of the method's ``tune_choices`` (those ``spec.fixed`` leaves open);
    each point's overrides name its choices, so the record says which ladder it belongs to."""
    choices = {f: v for f, v in get_method(method.partition("@")[0]).tune_choices.items() if f not in spec.fixed}
    if not choices:
        return ladder_search(method, spec, score, key, concept_set)
    scores: list[dict[str, Any]] = []
    combos = [dict(zip(choices, c, strict=True)) for c in itertools.product(*choices.values())]
    for combo in combos:
        fixed = {**spec.fixed, **combo}
        ladder, how = ladder_search(method, replace(spec, fixed=fixed), lambda p, c=combo: score({**c, **p}), key,
                                     concept_set)
        scores += ladder
    named = "; ".join(f"{f} in ({', '.join(json.dumps(v) for v in vs)})" for f, vs in choices.items())
    return scores, f"{how}; one ladder for each {named}"


def ladder_search(method: str, spec: TuneSpec, score: Any, key: Any,
                   concept_set: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """The knob's ladder (its range on ``concept_set``: ``Knob.on``), then rungs past an end while the
    best point sits on that end."""
    knob = get_method(method.partition("@")[0]).knob(spec.knob).on(concept_set)
    values = knob.ladder(spec.ratio)
    for v in values:
        build_method(method, {**spec.fixed, knob.field: v})  # validate every rung before any work
    scores = [score({knob.field: v}) for v in values]
    for _ in range(spec.extend):
        ordered = sorted(scores, key=lambda s: s["overrides"][knob.field])
        best = max(ordered, key=key)
        end = 0 if best is ordered[0] else (-1 if best is ordered[-1] else None)
        if end is None:
            break
        edge = ordered[end]["overrides"][knob.field]
        nxt = knob.step(edge, spec.ratio, -1 if end == 0 else 1)
        if nxt == edge or any(s["overrides"][knob.field] == nxt for s in scores):
            break
        try:
            build_method(method, {**spec.fixed, knob.field: nxt})
        except ConfigError:
            break  # the ladder ran out of valid values
        scores.append(score({knob.field: nxt}))
    scores.sort(key=lambda s: s["overrides"][knob.field])
    return scores, (f"max composite H on dev concepts over {knob.field} in log steps of <= {spec.ratio:g}x "
                    f"({knob.low:g}..{knob.high:g}, extended past an end that held the best)")
