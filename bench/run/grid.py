"""Run a benchmark grid: validate every input, skip complete cells, hand the rest to an executor."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.api.attack import build_attack
from bench.api.method import build_method
from bench.core.concepts import load_concept_set
from bench.core.io import ensure_writable_dir
from bench.core.records import (
    cell_dir,
    clean_partial,
    is_complete,
    model_fingerprint,
    require_verified,
)
from bench.model.pipeline import model_source
from bench.run.plan import Bench, Track, cell_spec, few_shot_images, load_judge, prompt_plan
from bench.run.worker import CellJob, Grid
from bench.world.manifest import SKIPPED, VERIFIED, verify_worlds, world_of


def _check_worlds(track: Track) -> str | None:
    """Verify the built worlds the track's model and judges lie in (``bench.world.manifest``); what a cell's
    spec records: verified, skipped (``--no-verify-world``), or None when no folder lies in a world."""
    folders = (track.model, track.judge, track.second_judge)
    if not track.verify_world:
        return SKIPPED if any(world_of(f) for f in folders if f) else None
    return VERIFIED if verify_worlds(folders) else None


def run_bench(bench: Bench, out: Path, progress: bool = True, executor: Any = None) -> list[Path]:
    """Run every missing cell of ``bench`` into ``out``; returns the cell folders (all complete).

    One driver per run folder (a lock); existing cells are verified against their checksums first.
    ``executor``: where the cells run (``bench.run.executors``; default: this process, one pipeline).
    """
    from bench.core.lock import run_lock
    from bench.model.prompts import cell_prompts, check_prompts, load_tokenizer
    from bench.run.executors import LocalExecutor

    track, p = bench.track, bench.protocol
    # validate everything before any work: a bad input fails fast and writes nothing
    cs = load_concept_set(track.concept_set)
    names = bench.concepts or cs.names("test")
    concepts = [cs.get(n) for n in names]
    methods = [(spec, build_method(spec, bench.method_overrides.get(spec))) for spec in bench.methods]
    attacks = {name: build_attack(name, bench.attack_overrides.get(name)) for name in bench.attacks}
    model_source(track.model)
    world_check = _check_worlds(track)
    judge = load_judge(track, cs)
    second = load_judge(track, cs, track.second_judge) if track.second_judge else None
    images = {c.name: few_shot_images(track, c, p)[1] for c in concepts}
    tokenizer = load_tokenizer(track.model)
    cuts = {c.name: check_prompts(tokenizer, cell_prompts(prompt_plan(cs, c, p), c, attacks), bench.truncate_prompts)
            for c in concepts}
    ensure_writable_dir(out)
    executor = executor or LocalExecutor()
    with run_lock(out):
        removed = clean_partial(out)
        require_verified(out)
        model_sha = model_fingerprint(track.model)
        cells = [(replace(cell_spec(bench, cs, method, spec, c, model_sha, judge, images[c.name], attacks, second),
                          world_check=world_check), spec, c)
                 for spec, method in methods for c in concepts]
        todo = [CellJob(s, m, c.name) for s, m, c in cells if not is_complete(cell_dir(out, s))]
        if progress:
            stale = [d for d in removed if d.parent.name == "cells" and ".tmp-" not in d.name]
            print(f"{len(cells)} cells ({len(cells) - len(todo)} already complete) -> {out}"
                  + (f"; {len(stale)} unverifiable older cell(s) removed, recomputed" if stale else ""))
        if todo:
            executor.run(Grid(bench, out, model_sha, cuts), todo, progress, judges=(judge, second))
        clean_partial(out)  # what a worker killed mid-cell left behind (its cell was redone)
    return [cell_dir(out, s) for s, _, _ in cells]
