"""Trade-off sweeps: each method's strength knob stepped over its range on the test concepts (attacks off),
into a run folder with a ``sweep.json`` manifest that ``bench.report.curves`` reads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.core.errors import ConfigError
from bench.core.io import ensure_writable_dir, write_json
from bench.report.curves import MANIFEST, read_manifest
from bench.run.plan import Bench

DEFAULT_POINTS = 5


def parse_ranges(texts: list[str] | None) -> dict[str, tuple[float, float]]:
    """``METHOD=LO:HI`` strings (``bench sweep --range``) as {method spec: (low, high)}."""
    ranges = {}
    for text in texts or []:
        spec, eq, span = text.rpartition("=")
        lo, colon, hi = span.partition(":")
        try:
            if not (spec and eq and colon):
                raise ValueError
            ranges[spec] = (float(lo), float(hi))
        except ValueError:
            raise ConfigError(f"bad --range {text!r}: want METHOD=LOW:HIGH, e.g. fuchi=1e-4:1e-2") from None
    return ranges


def sweep_plan(bench: Bench, points: int, knob: str | None = None,
               ranges: dict[str, tuple[float, float]] | None = None) -> dict[str, tuple[str, list[Any]]]:
    """Per method spec: the swept field and its values (validated, so a bad point fails before any work).
    Each knob sweeps its range on the track's concept set (``Knob.on``: world 3 declares its own);
    ``ranges`` replaces it (another model's transition lies elsewhere)."""
    from bench.api.method import build_method, get_method
    from bench.core.concepts import load_concept_set

    concept_set = load_concept_set(bench.track.concept_set).name
    ranges = ranges or {}
    if stray := sorted(set(ranges) - set(bench.methods)):
        raise ConfigError(f"--range names {stray}, which this sweep does not run (methods: {list(bench.methods)})")
    plan = {}
    for spec in bench.methods:
        k = get_method(spec.partition("@")[0]).knob(knob).on(concept_set)
        if spec in ranges:
            k = replace(k, low=ranges[spec][0], high=ranges[spec][1])  # Knob checks 0 < low < high
        values = k.sweep(points)
        for v in values:
            build_method(spec, {**bench.method_overrides.get(spec, {}), k.field: v})
        plan[spec] = (k.field, values)
    return plan


def run_sweep(bench: Bench, out: Path, points: int = DEFAULT_POINTS, knob: str | None = None,
              progress: bool = True, executor: Any = None,
              ranges: dict[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """Run every sweep point of every method (resumable: complete cells are reused) and record the
    manifest after each point, so an interrupted sweep keeps what it measured."""
    from bench.run.grid import run_bench

    if bench.attacks and progress:
        print(f"sweep with attacks {list(bench.attacks)}: every point pays for them")
    plan = sweep_plan(bench, points, knob, ranges)
    out = ensure_writable_dir(out)
    manifest = read_manifest(out) or {"methods": {}}
    for spec, (field, values) in plan.items():
        base = {k: v for k, v in bench.method_overrides.get(spec, {}).items() if k != field}
        entry = {"knob": field, "base": base, "points": []}
        for i, v in enumerate(values):
            if progress:
                print(f"sweep {spec}: {field}={v} ({i + 1}/{len(values)})")
            cells = run_bench(replace(bench, methods=[spec], method_overrides={spec: {**base, field: v}}), out,
                              progress=progress, executor=executor)
            entry["points"].append({"value": v, "cells": [c.name for c in cells]})
            manifest["methods"][spec] = entry
            write_json(out / MANIFEST, manifest)
    return manifest
