"""The original model's references a world ships: computed once, packed, listed in its MANIFEST.

Every run on a world needs the original model's images for each concept's prompts and seeds, and
each attack's work on the original model (its ``prepare`` and its ASR there). They are the same for
every user, so ``python -m bench.world reference`` computes them once, with the calls a run makes
(``CellWorker.reference``, one concept at a time), and packs them into the world
(``bench.world.manifest.REFERENCE_PACK``, a ``ReferencePack``). Runs read them from there, keyed by
everything they depend on; a run with another protocol, sampler, judge or attack computes its own.
``--no-shipped-references`` computes every one, with the same numbers (tests/test_reference_pack.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.api.judge import Judge
from bench.core.errors import InputError
from bench.core.records import model_fingerprint
from bench.model.generation import ReferencePack
from bench.run.grid import run_bench
from bench.run.plan import Bench, world_track
from bench.run.worker import CellJob, CellWorker, Grid
from bench.world.manifest import REFERENCE_PACK, add_to_manifest


class ReferenceOnly:
    """An executor that computes each concept's references (once, with its first job's spec) and no cell."""

    name = "reference"

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, grid: Grid, jobs: list[CellJob], progress: bool = True,
            judges: tuple[Judge, Judge | None] | None = None) -> None:
        worker = CellWorker(grid.bench.track, judges)
        first: dict[str, CellJob] = {}
        for job in jobs:
            first.setdefault(job.concept, job)
        for concept, job in first.items():
            t0 = time.perf_counter()
            worker.reference(grid, job)
            self.seconds[concept] = time.perf_counter() - t0
            if progress:
                print(f"  {concept}: {self.seconds[concept]:.1f} s", flush=True)

    def close(self) -> None:
        pass


def compute_references(world: Path, work: Path, attacks: tuple[str, ...], concepts: list[str] | None = None,
                       progress: bool = True, executor: str = "local", threads: int = 1) -> float:
    """The world's default run (its test concepts, the default protocol) with ``attacks``: every concept's
    references into ``work/reference``, read from nothing shipped, with torch at ``threads`` threads per
    process (1: what Ray's workers use on a 2-core machine, so the pack holds the images they would
    compute); on ``ray``, the concepts spread over its workers. Returns the wall seconds."""
    import torch

    from bench.run.executors import RayExecutor

    track = replace(world_track(world), shipped_references=False)
    bench = Bench(track=track, methods=["fuchi"], concepts=concepts, attacks=attacks)
    t0 = time.perf_counter()
    if executor == "ray":
        ray = RayExecutor(threads=threads)
        ray.references_only = True
        try:
            run_bench(bench, work, progress=progress, executor=ray)
        finally:
            ray.close()
    else:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            run_bench(bench, work, progress=progress, executor=ReferenceOnly())
        finally:
            torch.set_num_threads(before)
    return time.perf_counter() - t0


def check_run_model(world: Path, runs: Path) -> str:
    """The run folder's cells were measured on the world's model (its sha256); what they were, in words
    (cells, and the torch threads they ran at: images differ in rounding between thread counts)."""
    want = model_fingerprint(world / "model")
    specs = sorted(runs.glob("cells/*/run_spec.json"))
    if not specs:
        raise InputError(f"{runs} holds no cells (cells/*/run_spec.json)")
    threads = set()
    for path in specs:
        got = json.loads(path.read_text()).get("model_sha256")
        if got != want:
            raise InputError(f"{path.parent.name} in {runs} was measured on another model (sha256 {str(got)[:12]}, "
                             f"{world / 'model'} is {want[:12]}): its references are not this world's")
        env = path.parent / "environment.json"
        if env.is_file():
            threads.add(json.loads(env.read_text()).get("cpu_threads"))
    return f"{len(specs)} cells on {world / 'model'}, torch at {sorted(threads, key=str)} thread(s)"


MAX_ENTRY_BYTES = 256 * 1024  # an attack's reference larger than this per concept is computed by the runs


def pack_references(world: Path, folder: Path, keep: bool = True, max_entry_bytes: int = MAX_ENTRY_BYTES
                    ) -> dict[str, Any]:
    """Pack ``folder`` (a run's ``reference/``) into the world's pack, with what the pack held before
    unless ``keep`` is False; an attack reference over ``max_entry_bytes`` is left out (the pack is
    committed with the world: P4D's 300 reference predictions would be three quarters of it, and cost
    a run about 20 s per concept). The MANIFEST lists the new file. Returns counts and size."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a reference folder")
    out = world / REFERENCE_PACK
    old = ReferencePack(out) if keep and out.is_file() else None
    counts = ReferencePack.write(folder, out, keep=old, max_entry_bytes=max_entry_bytes)
    add_to_manifest(world, REFERENCE_PACK)
    return {**counts, "bytes": out.stat().st_size, "path": str(out)}
