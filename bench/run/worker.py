"""What runs cells in one process: the grid a job belongs to (``Grid``), one cell to measure (``CellJob``), and
``CellWorker``, which holds the pipeline, judges and few-shot images its cells reuse."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.api.attack import build_attack
from bench.api.judge import Judge
from bench.api.method import build_method
from bench.core.concepts import Concept, load_concept_set
from bench.core.protocol import EvalProtocol
from bench.core.records import (
    RunSpec,
    cell_dir,
    cell_status,
    is_complete,
)
from bench.model.generation import ReferenceCache
from bench.model.pipeline import load_pipeline
from bench.run.cell import CellRun, plan_rows, reference_attacks, reference_images, run_cell
from bench.run.plan import Bench, Track, few_shot_images, load_judge
from bench.world.manifest import shipped_references

REFERENCE_LOG = "reference_timing.jsonl"  # one line per concept whose references a reference task computed


@dataclass(frozen=True)
class Grid:
    """What any process needs, besides a ``CellWorker``, to run a grid's cells: the grid, the run
    folder, the model's fingerprint and each concept's prompt truncations (picklable)."""

    bench: Bench
    out: Path
    model_sha: str
    cuts: dict[str, list[dict]]


@dataclass(frozen=True)
class CellJob:
    """One cell to measure: its spec (whose hash names its folder), method spec and concept."""

    spec: RunSpec
    method: str
    concept: str


class CellWorker:
    """One process's means to run cells of grids on a track: the pipeline (loaded once, reloaded
    after a diverged cell), the judges, the concept set and the few-shot images, reused by every
    cell it runs. The local executor has one; on Ray, each actor holds one."""

    def __init__(self, track: Track, judges: tuple[Judge, Judge | None] | None = None) -> None:
        self.track = track
        self.cs = load_concept_set(track.concept_set)
        if judges is None:
            judges = (load_judge(track, self.cs),
                      load_judge(track, self.cs, track.second_judge) if track.second_judge else None)
        self.judge, self.second = judges
        self.pipe: Any = None
        # the world's verified reference pack (only where the run verifies the world: grid._check_worlds)
        self.pack = shipped_references(track.model) if track.shipped_references and track.verify_world else None
        self._images: dict[tuple, list[Image.Image] | None] = {}

    def pipeline(self) -> Any:
        if self.pipe is None:
            self.pipe = load_pipeline(self.track.model, device=self.track.device, dtype=self.track.dtype)
        return self.pipe

    def _few_shot(self, concept: Concept, p: EvalProtocol, held_out: bool) -> list[Image.Image] | None:
        key = (concept.name, p.few_shot_images, p.attack_image_seed if held_out else p.few_shot_seed, held_out)
        if key not in self._images:
            self._images[key] = few_shot_images(self.track, concept, p, self.pipeline(), held_out=held_out)[0]
        return self._images[key]

    def cell_run(self, grid: Grid, job: CellJob, progress: bool = False) -> CellRun:
        bench, p = grid.bench, grid.bench.protocol
        concept = self.cs.get(job.concept)
        method = build_method(job.method, bench.method_overrides.get(job.method))
        attacks = {name: build_attack(name, bench.attack_overrides.get(name)) for name in bench.attacks}
        cuts = grid.cuts[job.concept]
        return CellRun(self.pipeline(), self.cs, job.spec, method, concept, self._few_shot(concept, p, False),
                       self.judge, ReferenceCache(grid.out / "reference", grid.model_sha, self.track.sampler, self.pack),
                       self.track.sampler, p, grid.out, attacks,
                       self._few_shot(concept, p, True) if attacks else None,
                       {"prompt_truncations": cuts} if cuts else None, self.second, progress)

    def reference(self, grid: Grid, job: CellJob) -> None:
        """The original model's images and attacks for the job's concept, into the reference cache
        (what every cell of the concept reuses); the same calls, in the same batches, as a cell's.
        What it computed (images, each attack's seconds) is appended to ``REFERENCE_LOG`` in the run
        folder, where ``bench plan --calibrate`` reads the original model's costs."""
        import time

        from bench.core.io import append_jsonl

        run = self.cell_run(grid, job)
        t0 = time.perf_counter()
        reference_images(run, plan_rows(run), None)
        images_seconds = time.perf_counter() - t0
        seconds: dict[str, float] = {}
        reference_attacks(run, seconds)
        if run.cache.generated or seconds:
            append_jsonl(grid.out / REFERENCE_LOG, {"concept": job.concept, "images": run.cache.generated,
                                                    "images_seconds": images_seconds, "attack_seconds": seconds,
                                                    "threads": torch.get_num_threads()})

    def run(self, grid: Grid, job: CellJob, progress: bool = False) -> str | None:
        """Measure one cell into the run folder; None, or why the cell failed (recorded as such).
        A cell already complete (a retried task whose first try finished) is not measured again."""
        folder = cell_dir(grid.out, job.spec)
        if is_complete(folder):
            return None
        folder = run_cell(self.cell_run(grid, job, progress))
        metrics = json.loads((folder / "metrics.json").read_text())
        if cell_status(metrics) == "ok":
            return None
        self.pipe = None  # a diverged erase may have left weights behind: the next cell reloads the model
        return str(metrics["reason"])
