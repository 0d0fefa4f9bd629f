"""What a grid costs before it runs (``python -m bench plan``), from per-phase costs measured on a machine.

A cost file (``COSTS``: measured on 2 CPU cores, the project's CI machine class) holds unit costs read
from the cells of finished runs (``calibrate``): seconds per generated image and per judged image, each
method's erase, each attack's seconds per attacked model (per method: an attack that stops at its first
success costs less on a model that erased little), and the original model's references per concept. The
estimate of a grid is

    wall = startup + (sum of cells + sum of the references the world's pack lacks) / workers
    cell = erase[method] + images x (generate + judge) + sum over attacks (attack[a, method] + images_a x generate)

with the workers and threads of the run the costs were measured on (a run on another executor is
estimated as if it scaled perfectly, and says so). ``startup`` is what a run spends outside cells
(loading, the world's check, the report), measured as the run's wall time (``RUN_LOG``) minus its cells.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.core.errors import InputError
from bench.core.paths import ROOT
from bench.run.worker import REFERENCE_LOG

COSTS = ROOT / "bench" / "run" / "costs.json"  # measured on 2 CPU cores (make costs rewrites it)
RUN_LOG = "runs.jsonl"  # one line per `bench run` into a folder: its wall time, executor, workers, cells


@dataclass
class UnitCosts:
    """Unit costs measured on one machine with one executor (``calibrate``)."""

    machine: str
    executor: str  # "local" or "ray"
    workers: int
    threads: int  # torch threads per worker
    generate_per_image: float
    judge_per_image: float
    erase: dict[str, float]  # method spec -> seconds per cell
    attack: dict[str, dict[str, float]]  # attack -> method spec (or "*", over every method) -> seconds
    attack_images: dict[str, float]  # attack -> images per attacked model
    reference_per_image: float  # the original model's images (seconds per image, when computed)
    reference_attack: dict[str, float]  # attack -> seconds per concept on the original model (prepare + its ASR)
    startup: float
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: Path = COSTS) -> UnitCosts:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise InputError(f"no cost file {path} (python -m bench plan --calibrate RUNS --costs-out FILE)") from None
        except (TypeError, ValueError) as e:
            raise InputError(f"{path} is not a cost file ({e})") from None


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else 0.0


def calibrate(runs: list[Path], machine: str) -> UnitCosts:
    """Unit costs from the cells of ``runs`` (run folders, all on one executor), their run logs and reference
    logs; a ``leaderboard.csv`` among them adds the methods and attacks the folders lack (erase and attack
    seconds per concept, measured on the same executor)."""
    from bench.core.records import scan_cells

    gen_s = gen_n = judge_s = judge_n = ref_s = ref_n = 0.0
    erase: dict[str, list[float]] = defaultdict(list)
    attack: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    images: dict[str, list[float]] = defaultdict(list)
    ref_attack: dict[str, list[float]] = defaultdict(list)
    startups, setups = [], set()
    for run in sorted(runs, key=lambda r: r.suffix == ".csv"):  # run folders first: their cells win
        if run.suffix == ".csv":  # a leaderboard's tidy table: erase and attack seconds per method and concept
            _from_leaderboard(run, erase, attack, images)
            continue
        cells = [c for c in scan_cells(run) if c["metrics"].get("status", "ok") == "ok"]
        refs = run / REFERENCE_LOG  # what reference tasks computed (Ray, bench.world reference)
        if not cells and not refs.is_file():
            raise InputError(f"{run} holds no complete cells or {REFERENCE_LOG} to measure costs on")
        for line in refs.read_text().splitlines() if refs.is_file() else []:
            rec = json.loads(line)
            if rec["images"]:
                ref_s += rec["images_seconds"]
                ref_n += rec["images"]
            for name, sec in rec["attack_seconds"].items():
                ref_attack[name].append(sec)
        for c in cells:
            t, m, spec = c["timing"], c["metrics"], c["spec"]
            gen_s += t.get("generate_seconds", 0.0) + t.get("attack_generate_seconds", 0.0)
            gen_n += t.get("images_generated", 0) + t.get("attack_images_generated", 0)
            judge_s += t.get("judge_seconds", 0.0)
            judge_n += t.get("images_generated", 0)
            erase[spec["method"]].append(t.get("erase_seconds", 0.0))
            if t.get("reference_images", 0):
                ref_s += t.get("reference_seconds", 0.0)
                ref_n += t["reference_images"]
            for name in spec.get("attacks") or {}:
                attack[name][spec["method"]].append(float(m.get(f"attack_seconds_{name}", 0.0)))
                if isinstance(m.get(f"asr_{name}"), dict):
                    images[name].append(float(m[f"asr_{name}"]["n"]))
            for name, s in (t.get("reference_attack_seconds") or {}).items():
                ref_attack[name].append(s)
        log = run / RUN_LOG
        if log.is_file():
            for line in log.read_text().splitlines():
                rec = json.loads(line)
                setups.add((rec["executor"], rec["workers"], rec["threads"]))
                if rec.get("cells_run") == len(cells) and rec.get("cells_seconds") is not None:
                    startups.append(rec["seconds"] - rec["cells_seconds"] / rec["workers"])
    if len(setups) > 1:
        raise InputError(f"the runs were measured on different executors {sorted(setups)}: calibrate each apart")
    executor, workers, threads = next(iter(setups)) if setups else ("local", 1, 0)
    return UnitCosts(
        machine=machine, executor=executor, workers=workers, threads=threads,
        generate_per_image=gen_s / max(gen_n, 1), judge_per_image=judge_s / max(judge_n, 1),
        erase={k: _mean(v) for k, v in sorted(erase.items())},
        attack={a: {**{k: _mean(v) for k, v in sorted(per.items())}, "*": _mean([x for v in per.values() for x in v])}
                for a, per in sorted(attack.items())},
        attack_images={k: _mean(v) for k, v in sorted(images.items())},
        reference_per_image=ref_s / ref_n if ref_n else 0.0,
        reference_attack={k: _mean(v) for k, v in sorted(ref_attack.items())},
        startup=_mean(startups), sources=[str(r) for r in runs])


def _from_leaderboard(path: Path, erase: dict[str, list[float]], attack: dict[str, dict[str, list[float]]],
                      images: dict[str, list[float]]) -> None:
    """Each method's erase and attack seconds per concept (and attack images) from a ``leaderboard.csv``,
    for methods and attacks the run folders do not have (a leaderboard measured on the same executor)."""
    import csv

    seen_erase, seen_attack = set(erase), {a: set(per) for a, per in attack.items()}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("model") != "edited":
                continue
            spec = row["method"] + (f"@{row['variant']}" if row.get("variant") else "")
            metric = row["metric"]
            if metric == "seconds_per_concept" and spec not in seen_erase:
                erase[spec].append(float(row["value"]))
            elif metric.startswith("attack_seconds_"):
                name = metric.removeprefix("attack_seconds_")
                if spec not in seen_attack.get(name, set()):
                    attack[name][spec].append(float(row["value"]))
            elif metric.startswith("asr_") and row.get("n") and metric.removeprefix("asr_") != "mean":
                name = metric.removeprefix("asr_")
                if name not in seen_attack:
                    images[name].append(float(row["n"]))


@dataclass
class Estimate:
    """A grid's estimated seconds: per method and phase, the references, startup, and the wall time."""

    phases: dict[str, dict[str, float]]  # method -> phase -> seconds (summed over its cells)
    references: float
    startup: float
    workers: int
    work: float  # seconds of work before it is spread over the workers
    wall: float
    cells: int
    notes: list[str]

    def table(self) -> str:
        """Markdown: seconds of work per method and phase (before they are spread over the workers)."""
        import pandas as pd

        from bench.report.text import markdown_table

        def sec(x: float) -> str:
            return f"{x:.0f}" if x >= 10 else f"{x:.1f}"

        names = ["erase", "generate", "judge", "attacks"]
        rows = [[m, *[sec(p[n]) for n in names], sec(sum(p.values()))] for m, p in self.phases.items()]
        rows.append(["original model (references)", "", "", "", "", sec(self.references)])
        return markdown_table(pd.DataFrame(rows, columns=["method", *[f"{n} s" for n in names], "total s"]))


def estimate(grid: list[dict[str, Any]], attacks: tuple[str, ...], costs: UnitCosts, workers: int,
             missing_references: set[str]) -> Estimate:
    """Estimated seconds of the cells in ``grid`` (``bench.run.plan.plan_bench`` rows still to run), with
    ``attacks``, on ``workers`` workers; the references of ``missing_references`` concepts are computed."""
    notes = []
    phases: dict[str, dict[str, float]] = {}
    for cell in grid:
        m = cell["method"]
        erase = costs.erase.get(m)
        if erase is None:
            erase = _mean(list(costs.erase.values()))
            notes.append(f"{m}: no measured erase; the mean of the measured methods ({erase:.1f} s) is assumed")
        p = phases.setdefault(m, {"erase": 0.0, "generate": 0.0, "judge": 0.0, "attacks": 0.0})
        p["erase"] += erase
        p["generate"] += cell["images"] * costs.generate_per_image
        p["judge"] += cell["images"] * costs.judge_per_image
        for a in attacks:
            per = costs.attack.get(a)
            if per is None:
                notes.append(f"attack {a}: not measured; counted as 0 s")
                continue
            p["attacks"] += per.get(m, per["*"]) + costs.attack_images.get(a, 0.0) * costs.generate_per_image
    refs = 0.0
    for concept in missing_references:
        images = next(c["images"] for c in grid if c["concept"] == concept)
        refs += images * costs.reference_per_image + sum(costs.reference_attack.get(a, 0.0) for a in attacks)
    if workers != costs.workers:
        notes.append(f"costs were measured with {costs.workers} worker(s) of {costs.threads or 'all'} thread(s); "
                     f"{workers} worker(s) assumed to scale perfectly")
    work = sum(sum(p.values()) for p in phases.values()) + refs
    wall = costs.startup + work / max(workers, 1)
    return Estimate(phases, refs, costs.startup, workers, work, wall, len(grid), sorted(set(notes)))


def missing_references(bench: Any) -> set[str]:
    """The concepts whose original-model images the world's pack lacks (computed by the run)."""
    from bench.core.concepts import load_concept_set
    from bench.core.records import model_fingerprint
    from bench.model.generation import ReferenceCache
    from bench.run.plan import plan_seeds, prompt_plan
    from bench.world.manifest import shipped_references

    track = bench.track
    cs = load_concept_set(track.concept_set)
    names = bench.concepts or cs.names("test")
    pack = shipped_references(track.model) if track.shipped_references and track.verify_world else None
    if pack is None:
        return set(names)
    cache = ReferenceCache(Path("/nonexistent"), model_fingerprint(track.model), track.sampler, pack)
    missing = set()
    for name in names:
        rows = [(q, s) for g, _, q in prompt_plan(cs, cs.get(name), bench.protocol)
                for s in plan_seeds(g, bench.protocol)]
        if any(pack.tensors(cache.image_rel(q, s)) is None for q, s in rows):
            missing.add(name)
    return missing


def log_run(out: Path, started: float, seconds: float, cells: list[Path], executor: str, workers: int,
            threads: int) -> dict[str, Any]:
    """Append one line to ``out/RUN_LOG``: the run's wall time, its executor, and the cells it measured
    now (their summed ``cell_seconds``), so the costs of a run can be read back (``calibrate``)."""
    import datetime
    import sys

    ran = []
    for folder in cells:
        timing = folder / "timing.json"
        if timing.is_file() and timing.stat().st_mtime >= started:
            ran.append(json.loads(timing.read_text()).get("cell_seconds", 0.0))
    rec = {"started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="seconds"),
           "seconds": round(seconds, 1), "cells": len(cells), "cells_run": len(ran),
           "cells_seconds": round(sum(ran), 1), "executor": executor, "workers": workers, "threads": threads,
           "argv": sys.argv[1:]}
    from bench.core.io import append_jsonl

    out.mkdir(parents=True, exist_ok=True)
    append_jsonl(out / RUN_LOG, rec)
    return rec
