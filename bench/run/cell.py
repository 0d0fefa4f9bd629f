"""Expand a benchmark into (method, concept) cells, skip complete ones, run and record the rest.

One cell: erase -> generate the cell's prompts x seeds with the edited model -> judge them next
to the original model's images (cached) -> metrics -> an atomic run folder -> restore the model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from bench.api.attack import Attack, build_attack
from bench.api.judge import REJECT_LABEL, SCENE_HEAD, Judge
from bench.api.method import Eraser, build_method
from bench.core.concepts import Concept, ConceptSet, load_concept_set
from bench.core.envinfo import environment
from bench.core.errors import ConfigError, InputError, NonFiniteError
from bench.core.io import ensure_writable_dir
from bench.core.paths import ROOT  # noqa: E402
from bench.core.protocol import WORLD_SAMPLER, EvalProtocol, SamplerSpec
from bench.core.records import (
    RunSpec,
    cell_dir,
    cell_status,
    clean_partial,
    is_complete,
    model_fingerprint,
    require_verified,
    write_cell,
    write_failed_cell,
)
from bench.metrics.formulas import (
    COMPOSITE_FORMULA,
    DISAGREEMENT_FLAG,
    METRICS_VERSION,
    ROBUST_FORMULA,
    agreement,
    collapse_ratio,
    composite,
    kid,
    robust_composite,
    summary,
)
from bench.metrics.registry import REGISTRY_VERSION
from bench.model.generation import ReferenceCache, generate
from bench.model.guards import check_finite, image_warnings
from bench.model.measure import PeakMemory
from bench.model.pipeline import load_pipeline, model_source, pipeline_device
from bench.worldgen.config import DEFAULT_PRESET, PRESET_FOLDERS

# the default track's world: ConceptWorld 3 (world_track names its parts; world 2.1 is --world
# datasets/conceptworld)
WORLD = ROOT / PRESET_FOLDERS[DEFAULT_PRESET][0]
GROUPS = ("target", "synonym", "in_domain", "cross_domain", "near_neighbour")
RETAIN_GROUPS = {"in_domain": "retain_in_domain", "cross_domain": "retain_cross_domain",
                 "near_neighbour": "near_neighbours"}
_RENDER_KEY = {"object": "shape", "colour": "colour", "style": "style", "character": "character"}


@dataclass(frozen=True)
class Track:
    """What a leaderboard is measured on: model, concept set, judge, sampler, few-shot images.

    ``judge``: a ConceptWorld judge folder; ``imagenet`` / ``imagenet-restricted`` (offline
    EfficientNet-Lite0); ``resnet50[-restricted]`` (weights in ``judge_weights``); or ``clip``
    (``clip_model`` + ``clip_checkpoint``). ``second_judge``: another judge, in the same forms,
    built differently: both judge every image and each cell records their agreement per head.
    ``images``: ``render`` (the ConceptWorld renderer), ``generate`` (the original model, recorded
    seeds) or a folder ROOT holding ROOT/<concept>/.
    """

    model: str = str(WORLD / "model")
    concept_set: str = str(WORLD / "concepts.yaml")
    judge: str = str(WORLD / "judge")
    second_judge: str | None = str(WORLD / "clip")  # a second opinion (None: none): world 3's world CLIP
    sampler: SamplerSpec = WORLD_SAMPLER
    images: str = "render"
    judge_weights: str | None = None
    clip_model: str | None = None
    clip_checkpoint: str | None = None
    device: str = "auto"
    dtype: str = "auto"


def world_track(folder: str | Path) -> Track:
    """The track of a built ConceptWorld folder (``make world`` output: ``model/``, ``concepts.yaml``,
    ``judge/`` and a second opinion: from judge 2.2 ``judge_vit/``, or, in a world 3 built without it
    (``WorldConfig.second_judge``), the world CLIP ``clip/``); world 3 is the default (``WORLD``)."""
    folder = Path(folder)
    missing = [n for n in ("model", "concepts.yaml", "judge") if not (folder / n).exists()]
    if missing:
        raise InputError(f"{folder} is not a built ConceptWorld (missing {', '.join(missing)}); "
                         "make world [WORLD=3] builds one")
    second = next((folder / n for n in ("judge_vit", "clip") if (folder / n).is_dir()), None)
    return Track(model=str(folder / "model"), concept_set=str(folder / "concepts.yaml"), judge=str(folder / "judge"),
                 second_judge=str(second) if second is not None else None)


SD_CONCEPT_SETS = {"imagenette": "datasets/sd/imagenette.yaml", "styles": "datasets/sd/styles.yaml",
                   "characters": "datasets/sd/characters.yaml"}


def sd_track(model: str, concepts: str = "imagenette", judge: str | None = None, **kw: Any) -> Track:
    """Stable Diffusion defaults: SD sampler, Imagenette + ImageNet judge (objects) or CLIP (others)."""
    from bench.core.protocol import SD_SAMPLER

    root = ROOT
    path = SD_CONCEPT_SETS.get(concepts, concepts)
    path = str(root / path) if not Path(path).is_absolute() and (root / path).exists() else path
    judge = judge or ("imagenet" if concepts == "imagenette" else "clip")
    kw.setdefault("second_judge", None)
    return Track(model=model, concept_set=path, judge=judge, sampler=SD_SAMPLER, images="generate", **kw)


@dataclass
class Bench:
    track: Track
    methods: list[str]
    concepts: list[str] | None = None  # None: the concept set's test split
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    attacks: tuple[str, ...] = ()  # robustness attacks run against every erased model
    attack_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    truncate_prompts: bool = False  # record prompts cut at the tokenizer's limit instead of refusing them


COMPOSED = "composed"  # the group of composed target prompts (selective alignment), outside GROUPS


def prompt_plan(cs: ConceptSet, concept: Concept, p: EvalProtocol) -> list[tuple[str, Concept, str]]:
    """(group, concept the judge looks for, prompt) for every prompt a cell generates; composed
    prompts last (their images use the first ``p.composed_seeds`` seeds)."""
    plan = [("target", concept, t) for t in concept.prompts()[: p.target_prompts]]
    for syn in concept.synonyms:
        plan += [("synonym", concept, t) for t in concept.prompts(syn)[: p.synonym_prompts]]
    for group, key in RETAIN_GROUPS.items():
        for name in getattr(concept, key):
            other = cs.get(name)
            plan += [(group, other, t) for t in other.prompts()[: p.retain_prompts]]
    plan += [(COMPOSED, concept, comp.prompt) for comp in concept.composed[: p.composed_prompts]]
    return plan


def plan_seeds(group: str, p: EvalProtocol) -> tuple[int, ...]:
    """The evaluation seeds a prompt of ``group`` is generated with."""
    return tuple(p.seeds[: p.composed_seeds]) if group == COMPOSED else tuple(p.seeds)


def few_shot_images(track: Track, concept: Concept, p: EvalProtocol, pipe: Any = None, held_out: bool = False
                    ) -> tuple[list[Image.Image] | None, dict[str, Any]]:
    """The few images a method learns from (None until ``pipe`` is given, for ``generate``),
    and a record of where they came from (part of the run spec).

    ``held_out``: a disjoint set for attacks (another seed; a folder's images after the first
    ``few_shot_images``), so an attack never sees what the erasure used.
    """
    if held_out:
        p = replace(p, few_shot_seed=p.attack_image_seed)
    if track.images == "render":
        from bench.world.render import render_batch

        head, label = concept.extra.get("head"), concept.extra.get("label")
        if head not in _RENDER_KEY:
            raise InputError(f"concept {concept.name!r} has no renderer attribute (extra.head)")
        arr, _ = render_batch(p.few_shot_seed, p.few_shot_images, vocab=_world_vocabulary(track.concept_set),
                              **{_RENDER_KEY[head]: label})
        return [Image.fromarray(a) for a in arr], {"source": "rendered", "n": p.few_shot_images,
                                                  "seed": p.few_shot_seed}
    if track.images == "generate":
        seeds = [p.few_shot_seed + i for i in range(p.few_shot_images)]
        prompts = [concept.prompts()[i % len(concept.templates)] for i in range(p.few_shot_images)]
        desc = {"source": "generated by the original model", "n": len(seeds), "seeds": seeds, "prompts": prompts}
        if pipe is None:
            return None, desc
        images = generate(pipe, prompts, seeds, track.sampler, p.batch_size)
        return [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images], desc
    from bench.core.images import load_images

    folder = Path(track.images) / concept.name
    notes: list[str] = []
    every = load_images(folder, notes)
    images = every[p.few_shot_images :] if held_out else every[: p.few_shot_images]
    if held_out and not images:
        raise InputError(f"{folder} has {len(every)} images, all used for erasure; attacks need more (held out)")
    return images, {"source": "folder", "folder": str(folder.resolve()), "n": len(images),
                    "first": p.few_shot_images if held_out else 0, **({"notes": notes} if notes else {})}


@functools.lru_cache(maxsize=8)
def _world_vocabulary(concept_set: str) -> Any:
    """The ConceptWorld vocabulary whose scenes illustrate ``concept_set`` (world 3's concept set has its
    own name; every other set renders world 2's scenes, as always)."""
    from bench.world.captions import CONCEPT_SET_NAMES
    from bench.world.render import vocabulary

    name = load_concept_set(concept_set).name
    return vocabulary(next((v for v, n in CONCEPT_SET_NAMES.items() if n == name), "2"))


def load_judge(track: Track, cs: ConceptSet, spec: str | None = None) -> Judge:
    """The track's judge, or the judge ``spec`` names (see ``Track``; ``bench.api.judge.judge_registry``)."""
    from bench.api.judge import build_judge

    return build_judge(spec or track.judge, track, cs)


def cell_spec(bench: Bench, cs: ConceptSet, method: Eraser, method_spec: str, concept: Concept,
              model_sha: str, judge: Judge, images: dict[str, Any], attacks: dict[str, Attack],
              second: Judge | None = None) -> RunSpec:
    p = bench.core.protocol
    return RunSpec(
        model=bench.track.model, model_sha256=model_sha, method=method_spec,
        method_config=method.config.to_dict(), method_version=method.version, concept_set=cs.id,
        concept_set_sha256=cs.sha256, concept=concept.name, erase_seed=p.erase_seed, eval_seeds=p.seeds,
        sampler=bench.track.sampler.to_dict(), judge=judge.ref, metrics_version=METRICS_VERSION,
        second_judge=second.ref if second is not None else None,
        images=images, protocol=p.to_dict(), dtype=bench.track.dtype,
        attacks={name: {"version": a.version, "config": a.config.to_dict()} for name, a in attacks.items()},
    )


def _u8_to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(255.0)


def plan_bench(bench: Bench) -> list[dict[str, Any]]:
    """The exact grid a run would execute (methods x concepts, prompts, images), loading no model."""
    cs = load_concept_set(bench.track.concept_set)
    p = bench.core.protocol
    grid = []
    for spec in bench.methods:
        method = build_method(spec, bench.method_overrides.get(spec))
        for name in bench.core.concepts or cs.names("test"):
            concept = cs.get(name)
            plan = prompt_plan(cs, concept, p)
            grid.append({"method": spec, "config": method.config.to_dict(), "concept": name, "type": concept.type,
                         "prompts": len(plan), "images": sum(len(plan_seeds(g, p)) for g, _, _ in plan),
                         "groups": {g: sum(1 for x in plan if x[0] == g) for g in (*GROUPS, COMPOSED)}})
    return grid


def run_bench(bench: Bench, out: Path, progress: bool = True, executor: Any = None) -> list[Path]:
    """Run every missing cell of ``bench`` into ``out``; returns the cell folders (all complete).

    One driver per run folder (a lock); existing cells are verified against their checksums first.
    ``executor``: where the cells run (``bench.run.executors``; default: this process, one pipeline).
    """
    from bench.core.lock import run_lock
    from bench.model.prompts import cell_prompts, check_prompts, load_tokenizer
    from bench.run.executors import LocalExecutor

    track, p = bench.track, bench.core.protocol
    # validate everything before any work: a bad input fails fast and writes nothing
    cs = load_concept_set(track.concept_set)
    names = bench.core.concepts or cs.names("test")
    concepts = [cs.get(n) for n in names]
    methods = [(spec, build_method(spec, bench.method_overrides.get(spec))) for spec in bench.methods]
    attacks = {name: build_attack(name, bench.attack_overrides.get(name)) for name in bench.attacks}
    model_source(track.model)
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
        cells = [(cell_spec(bench, cs, method, spec, c, model_sha, judge, images[c.name], attacks, second), spec, c)
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
                       self.judge, ReferenceCache(grid.out / "reference", grid.model_sha, self.track.sampler),
                       self.track.sampler, p, grid.out, attacks,
                       self._few_shot(concept, p, True) if attacks else None,
                       {"prompt_truncations": cuts} if cuts else None, self.second, progress)

    def reference(self, grid: Grid, job: CellJob) -> None:
        """The original model's images and attacks for the job's concept, into the reference cache
        (what every cell of the concept reuses); the same calls, in the same batches, as a cell's."""
        run = self.cell_run(grid, job)
        _reference_images(run, _plan_rows(run), None)
        _reference_attacks(run)

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


class ImageRow(NamedTuple):
    """One image a cell generates: its prompt group, the concept the judge looks for, prompt, seed
    and, for a composed prompt, the other attributes it names."""

    group: str
    concept: Concept
    prompt: str
    seed: int
    attributes: dict[str, str] | None = None


@dataclass
class CellRun:
    """What one cell is measured with: the grid's shared pieces and the cell's own inputs."""

    pipe: Any
    cs: ConceptSet
    spec: RunSpec
    method: Eraser
    concept: Concept
    images: list[Image.Image]  # the few-shot images the erasure learns from
    judge: Judge
    cache: ReferenceCache
    sampler: SamplerSpec
    protocol: EvalProtocol
    out: Path
    attacks: dict[str, Attack] = field(default_factory=dict)
    held_out: list[Image.Image] | None = None  # images for attacks, never the erasure's
    notes: dict[str, Any] | None = None  # extra facts recorded with the metrics (prompt truncations)
    second: Judge | None = None
    progress: bool = True


@dataclass
class Judged:
    """The judges' verdicts on a cell's images ("edited" and "original" each)."""

    detected: dict[str, torch.Tensor]
    rejected: dict[str, torch.Tensor]
    describe: dict[str, list[dict[str, Any]]]
    second_labels: dict[str, tuple[dict[str, list[str]], dict[str, list[str]]]]
    second_detected: dict[str, torch.Tensor]  # the second judge's detections (empty without them)
    features: dict[str, torch.Tensor]  # retain images, for KID
    clip: dict[str, float]
    diversity: dict[str, float | None]  # per prompt group: seed diversity, edited over original
    aligned: dict[str, torch.Tensor] | None = None  # composed rows: the judge sees every other attribute
    second_note: str = ""  # why the second judge's detections are missing, where they are


def run_cell(run: CellRun) -> Path:
    """Measure one cell and write its folder. NaN/Inf at any stage (erase loss, edited weights,
    latents, decoded images, judge outputs) makes it a *diverged* cell: recorded with its reason and
    stage, shown in the report, counted in no mean."""
    t_cell = time.perf_counter()
    try:
        return _measure_cell(run)
    except NonFiniteError as e:
        err = e.named(run.spec.method, run.concept.name)
        info = {"metrics_registry": REGISTRY_VERSION, "concept_type": run.concept.type, "split": run.concept.split,
                **(run.notes or {})}
        return write_failed_cell(run.out, run.spec, "diverged", e.stage, str(err), info,
                                 {"cell_seconds": time.perf_counter() - t_cell}, environment(pipeline_device(run.pipe)))


def _reference(what: str, make: Any) -> Any:
    """The original model's images or attack: non-finite there is a broken model, not a method's failure."""
    try:
        return make()
    except NonFiniteError as e:
        raise InputError(f"the original model produces {e} in its {what}; no method can be measured on it") from None


def _measure_cell(run: CellRun) -> Path:
    """plan -> reference -> erase -> generate -> attacks -> judge -> metrics -> record."""
    from tqdm.auto import tqdm

    t_cell, timing = time.perf_counter(), {}
    # 1. plan: every (group, judged concept, prompt, seed) the cell generates
    rows = _plan_rows(run)
    bar = tqdm(total=2 * len(rows), desc=f"  {run.spec.method}/{run.concept.name}", leave=False,
               disable=not run.progress)
    # 2. reference: the original model's images and attacks, cached across methods
    with _timed(timing, "reference_seconds"):
        original = _reference_images(run, rows, bar)
    with _timed(timing, "attack_seconds"):
        robust_original = _reference_attacks(run)
    # 3. erase, 4. generate and 5. attack with the edited model, then put the model back
    with PeakMemory(pipeline_device(run.pipe)) as mem:
        edit = run.method.erase(run.pipe, run.concept, run.images, seed=run.spec.erase_seed)
    try:
        check_finite(edit.tensors, "edited weights")
        with _timed(timing, "generate_seconds"):
            edited = generate(run.pipe, [r.prompt for r in rows], [r.seed for r in rows], run.sampler,
                              run.protocol.batch_size, bar)
        with _timed(timing, "attack_seconds"):
            robust = _attack(run)
    finally:
        edit.restore()
    bar.close()
    # 6. judge every image of both models
    with _timed(timing, "judge_seconds"):
        judged = _judge(run, rows, {"edited": edited, "original": original})
    # 7. metrics
    metrics = _cell_record_metrics(run, rows, judged, {"edited": edited, "original": original}, robust,
                                   robust_original, edit, mem)
    # 8. record: an atomic run folder
    timing.update({"erase_seconds": edit.seconds, "images_generated": len(rows),
                   "attack_generate_seconds": robust.get(_GENERATION, {}).get("seconds", 0.0),
                   "attack_images_generated": robust.get(_GENERATION, {}).get("images", 0),
                   "cell_seconds": time.perf_counter() - t_cell})
    return _record(run, rows, judged, {"edited": edited, "original": original}, robust, metrics, timing)


@contextlib.contextmanager
def _timed(timing: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall time to ``timing[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - t0


def _plan_rows(run: CellRun) -> list[ImageRow]:
    composed = {c.prompt: dict(c.attributes) for c in run.concept.composed}
    return [ImageRow(g, c, prompt, s, composed[prompt] if g == COMPOSED else None)
            for g, c, prompt in prompt_plan(run.cs, run.concept, run.protocol) for s in plan_seeds(g, run.protocol)]


def _reference_images(run: CellRun, rows: list[ImageRow], bar: Any) -> torch.Tensor:
    return _reference("reference images", lambda: run.cache.get_or_generate(
        run.pipe, [r.prompt for r in rows], [r.seed for r in rows], run.sampler, run.protocol.batch_size, bar))


def _reference_attacks(run: CellRun) -> dict[str, dict[str, Any]]:
    if not run.attacks:
        return {}
    return _reference(f"attacks ({', '.join(run.attacks)})", lambda: cached_attacks(
        run.pipe, run.attacks, run.concept, run.held_out, run.judge, run.sampler, run.protocol, run.cache, run.spec))


def _attack(run: CellRun) -> dict[str, dict[str, Any]]:
    if not run.attacks:
        return {}
    return run_attacks(run.pipe, run.attacks, run.concept, run.held_out, run.judge, run.sampler, run.protocol,
                       run.spec.erase_seed, run.progress)


def _judge(run: CellRun, rows: list[ImageRow], images: dict[str, torch.Tensor]) -> Judged:
    """Detections per judged concept, reject verdicts, per-image outputs, the second judge's labels,
    features of the retain images and, where the judge gives one, the CLIP score on retain prompts."""
    judge, x = run.judge, {k: _u8_to_float(v) for k, v in images.items()}
    by_concept: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_concept.setdefault(r.concept.name, []).append(i)
    detected = _detections(judge, run.cs, by_concept, x)
    second_detected, second_note = _second_detections(run, by_concept, x)
    describe = {k: judge.describe(v) for k, v in x.items()}
    labels = {k: judge.labels(v) for k, v in x.items()}
    rejected = {k: torch.tensor([y == REJECT_LABEL for y in v[SCENE_HEAD]], dtype=torch.bool)
                for k, v in labels.items()}
    second = {k: (labels[k], run.second.labels(v)) for k, v in x.items()} if run.second is not None else {}
    every = {k: judge.features(v) for k, v in x.items()}  # once per image: KID and collapse slice it
    check_finite(every, "judge features")
    retain_idx = [i for i, r in enumerate(rows) if r.group in RETAIN_GROUPS]
    features = {k: v[retain_idx] if retain_idx else torch.zeros(0, 1) for k, v in every.items()}
    clip = {}
    if retain_idx:
        retain_prompts = [rows[i].prompt for i in retain_idx]
        for kind, suffix in (("edited", ""), ("original", "_original")):
            score = judge.clip_score(x[kind][retain_idx], retain_prompts)
            if score is not None:
                clip["clip_score_retain" + suffix] = float(score.mean())
    check_finite(clip, "judge CLIP score")
    return Judged(detected, rejected, describe, second, second_detected, features, clip, _diversity(rows, every),
                  _aligned(judge, rows, x), second_note)


def _second_detections(run: CellRun, by_concept: dict[str, list[int]], x: dict[str, torch.Tensor]
                       ) -> tuple[dict[str, torch.Tensor], str]:
    """The second judge's detections, or none and why: a judge that cannot judge a concept of the cell
    (an ImageNet judge and a style) still labels the images, so the agreement is measured, but its UA
    and RA are not (``second_judge_note`` says so in the cell's metrics)."""
    if run.second is None:
        return {}, ""
    try:
        return _detections(run.second, run.cs, by_concept, x), ""
    except ConfigError as e:
        return {}, f"no UA or RA by the second judge: {e}"


def _detections(judge: Judge, cs: Any, by_concept: dict[str, list[int]], x: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    """Per kind of image (edited, original): whether ``judge`` sees each row's judged concept."""
    detected = {k: torch.zeros(len(v), dtype=torch.bool) for k, v in x.items()}
    for kind in x:
        for name, idx in by_concept.items():
            detected[kind][idx] = judge.detect(x[kind][idx], cs.get(name))
    return detected


def _aligned(judge: Judge, rows: list[ImageRow], x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Selective alignment per composed row (edited and original); None without composed rows or
    when the judge cannot check attributes."""
    idx = [i for i, r in enumerate(rows) if r.group == COMPOSED]
    if not idx:
        return None
    out = {}
    for kind, images in x.items():
        seen = judge.sees(images[idx], [rows[i].attributes for i in idx])
        if seen is None:
            return None
        out[kind] = seen
    return out


def _diversity(rows: list[ImageRow], features: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """Collapse per prompt group: the seed diversity of the edited images over the original's."""
    out: dict[str, float | None] = {}
    for group in GROUPS:
        idx = [i for i, r in enumerate(rows) if r.group == group]
        if idx:
            out[group] = collapse_ratio(features["edited"][idx], features["original"][idx],
                                        [rows[i].prompt for i in idx])
    return out


def scored_heads(rows: list[ImageRow]) -> dict[str, list[bool]]:
    """Per attribute head, which of the cell's images some number reads it on (``AGREEMENT_DEFINITION``):
    the head of the concept the image is judged for and, on a composed prompt, the heads it names. The
    reject verdict (``SCENE_HEAD``) is read on every image, so it is left out here (counted everywhere)."""
    used = [{r.concept.extra.get("head", r.concept.type), *(r.attributes or {})} for r in rows]
    return {h: [h in u for u in used] for h in sorted(set().union(*used))} if rows else {}


def _cell_record_metrics(run: CellRun, rows: list[ImageRow], judged: Judged, images: dict[str, torch.Tensor],
                         robust: dict[str, Any], robust_original: dict[str, Any], edit: Any,
                         mem: PeakMemory) -> dict[str, Any]:
    """Everything ``metrics.json`` holds: the measures, the attacks' and the costs."""
    metrics = cell_metrics(rows, judged.detected, judged.features["original"], judged.features["edited"],
                           judged.rejected)
    metrics.update(judged.clip)
    metrics.update({f"diversity_{g}": v for g, v in judged.diversity.items()})
    metrics.update(selective_alignment(rows, judged.aligned))
    metrics["image_warnings"] = image_warnings(rows, images)
    metrics.update(run.notes or {})
    scored = scored_heads(rows)
    for kind, suffix in (("edited", ""), ("original", "_original")):
        if kind in judged.second_labels:
            metrics["judge_agreement" + suffix] = agreement(*judged.second_labels[kind], scored=scored)
    if judged.second_labels:
        metrics["second_judge"] = run.second.ref
        if judged.second_detected:
            metrics.update(second_judge_metrics(rows, judged))
        else:
            metrics["second_judge_note"] = judged.second_note
        metrics["judges_disagree"] = bool(1 - metrics["judge_agreement"]["min"] > DISAGREEMENT_FLAG)
    metrics["reject_definition"] = run.judge.reject_definition
    for name in run.attacks:
        metrics[f"asr_{name}"] = robust[name]["asr"]
        metrics[f"asr_{name}_original"] = robust_original[name]["asr"]
        metrics[f"attack_seconds_{name}"] = robust[name]["seconds"]
    if run.attacks:
        metrics["asr_mean"] = float(np.mean([robust[n]["asr"]["value"] for n in run.attacks]))
        metrics["composite_robust"] = robust_composite(metrics["composite"], metrics["asr_mean"])
        metrics["composite_robust_formula"] = ROBUST_FORMULA
    metrics.update({"metrics_registry": REGISTRY_VERSION, "concept_type": run.concept.type, "split": run.concept.split,
                    "seconds_per_concept": edit.seconds, "peak_memory_mb": mem.peak_mb,
                    "peak_memory_added_mb": mem.peak_mb - mem.base_mb, "peak_memory_kind": mem.kind,
                    "trainable_params": edit.trainable_params, "storage_bytes": edit.storage_bytes,
                    "edited_parameters": len(edit.param_names), "composite_formula": COMPOSITE_FORMULA})
    return metrics


def _record(run: CellRun, rows: list[ImageRow], judged: Judged, images: dict[str, torch.Tensor],
            robust: dict[str, Any], metrics: dict[str, Any], timing: dict[str, Any]) -> Path:
    """Per-image records, sample images and the cell folder (written atomically)."""
    composed_pos = {i: k for k, i in enumerate(i for i, r in enumerate(rows) if r.group == COMPOSED)}
    per_image = []
    for i, r in enumerate(rows):
        for kind in ("original", "edited"):
            row = {"model": kind, "group": r.group, "judged_concept": r.concept.name, "prompt": r.prompt,
                   "seed": r.seed, "detected": bool(judged.detected[kind][i]),
                   "rejected": bool(judged.rejected[kind][i]), "judge": judged.describe[kind][i]}
            if kind in judged.second_labels:
                row["second_judge"] = {h: v[i] for h, v in judged.second_labels[kind][1].items()}
                if judged.second_detected:
                    row["second_detected"] = bool(judged.second_detected[kind][i])
            if r.group == COMPOSED:
                row["attributes"] = r.attributes
                if judged.aligned is not None:
                    row["aligned"] = bool(judged.aligned[kind][composed_pos[i]])
            per_image.append(row)
    p = run.protocol
    target = [i for i, r in enumerate(rows) if r.group == "target"][: min(8, len(p.seeds) * p.target_prompts)]
    drill = _drill_rows(rows, len(target))
    extra = {f"attack_{n}": robust[n]["images"][:8] for n in run.attacks}
    for group, idx in drill.items():
        extra[f"original_{group}"], extra[f"edited_{group}"] = images["original"][idx], images["edited"][idx]
    samples = _samples_bytes(images["original"][target], images["edited"][target], extra,
                             {"target": target, **drill})
    for name in run.attacks:
        for i, (prompt, seed, hit) in enumerate(robust[name]["rows"]):
            per_image.append({"model": "edited", "group": f"attack:{name}", "judged_concept": run.concept.name,
                              "prompt": prompt, "seed": seed, "detected": hit, "judge": {}, "index": i})
    return write_cell(run.out, run.spec, metrics, per_image, timing, environment(pipeline_device(run.pipe)),
                      extra_files={"samples.safetensors": samples})


def selective_alignment(rows: list[ImageRow], aligned: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """``selective_alignment`` (+ ``_original``): the share of composed-prompt images in which the judge
    sees every other named attribute, with its seed bootstrap; None (an empty column, never 0) when the
    concept has no composed prompts or the judge cannot check attributes."""
    if aligned is None:
        has = any(r.group == COMPOSED for r in rows)
        return {"selective_alignment": None, "selective_alignment_original": None,
                "selective_alignment_note": "the judge cannot check named attributes" if has
                else "the concept set declares no composed prompts for this concept"}
    seeds = np.array([r.seed for r in rows if r.group == COMPOSED])
    return {"selective_alignment": summary(aligned["edited"].numpy(), seeds),
            "selective_alignment_original": summary(aligned["original"].numpy(), seeds)}


def second_judge_metrics(rows: list[ImageRow], judged: Judged) -> dict[str, Any]:
    """The second judge's own UA and RA (``ua_second``, ``retain_mean_second``, each also on the original
    model), read from its detections exactly as ``cell_metrics`` reads the first judge's."""
    labels = {k: second for k, (_, second) in judged.second_labels.items()}
    rejected = ({k: torch.tensor([y == REJECT_LABEL for y in v[SCENE_HEAD]], dtype=torch.bool) for k, v in labels.items()}
                if all(SCENE_HEAD in v for v in labels.values()) else None)  # a judge without a reject option
    m = detection_metrics(rows, judged.second_detected, rejected)
    return {f"{key}_second{suffix}": m[key + suffix] for key in ("ua", "retain_mean") for suffix in ("", "_original")}


def cell_metrics(rows: list[ImageRow], det: dict[str, torch.Tensor], f_orig: torch.Tensor,
                 f_edit: torch.Tensor, rejected: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """UA (target, synonyms), retain accuracies, reject rates, KID — each for the edited and the
    original model. ``det`` must already be false on rejected images (``Judge.detect`` is): a
    rejected image is "not seen" for UA and a miss for retain."""
    m = detection_metrics(rows, det, rejected)
    m["kid_retain"] = kid(f_orig, f_edit)
    n, dim = len(f_orig), f_orig.shape[1] if f_orig.ndim == 2 else 0
    m["fid_retain"] = None  # FID needs more samples than feature dimensions for a stable covariance
    m["fid_note"] = f"not computed: {n} retain images <= {dim} feature dimensions" if n <= dim else ""
    if n > dim > 0:
        m["fid_retain"] = _fid(f_orig, f_edit)
    return m


def detection_metrics(rows: list[ImageRow], det: dict[str, torch.Tensor],
                      rejected: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """What one judge's detections give, for the edited and the original model: UA (target, synonyms),
    the retain accuracies, RA, H and, given ``rejected``, the reject rates (``cell_metrics``)."""
    m: dict[str, Any] = {}
    groups = np.array([r.group for r in rows])
    seeds = np.array([r.seed for r in rows])
    for kind, suffix in (("edited", ""), ("original", "_original")):
        d = det[kind].numpy()
        if rejected is not None:
            r = rejected[kind].numpy()
            if (d & r).any():
                raise ValueError("a judge detected a concept in an image it rejected")
            m["reject_rate" + suffix] = summary(r, seeds)
            m["reject_rate_target" + suffix] = summary(r[groups == "target"], seeds[groups == "target"])
        for g, key in (("target", "ua"), ("synonym", "ua_synonyms")):
            sel = groups == g
            m[key + suffix] = summary(~d[sel], seeds[sel]) if sel.any() else None
        for g, key in RETAIN_GROUPS.items():
            sel = groups == g
            m[key + suffix] = summary(d[sel], seeds[sel]) if sel.any() else None
        retain = [m[k + suffix]["value"] for k in RETAIN_GROUPS.values() if m[k + suffix] is not None]
        m["retain_mean" + suffix] = float(np.mean(retain)) if retain else float("nan")
        m["composite" + suffix] = composite(m["ua" + suffix]["value"], retain)
    return m


def _fid(a: torch.Tensor, b: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    from bench.metrics.formulas import _Identity

    fid = FrechetInceptionDistance(feature=_Identity(a.shape[1]))
    fid.update(a.double(), real=True)
    fid.update(b.double(), real=False)
    return float(fid.compute())


def _drill_rows(rows: list[ImageRow], n: int) -> dict[str, list[int]]:
    """Rows whose images a report shows beside the target's: up to ``n`` of the first near-neighbour
    concept and of the first in-domain retain concept (the damage that decides a method)."""
    out = {}
    for group in ("near_neighbour", "in_domain"):
        idx = [i for i, r in enumerate(rows) if r.group == group]
        first = [i for i in idx if rows[i].concept.name == rows[idx[0]].concept.name][:n] if idx else []
        if first:
            out[group] = first
    return out


def _samples_bytes(original: torch.Tensor, edited: torch.Tensor, extra: dict[str, torch.Tensor] | None = None,
                   rows: dict[str, list[int]] | None = None) -> bytes:
    """The sample images; ``rows`` (metadata ``rows``, JSON) names, per shown group, the indices of
    their rows in the cell's plan (``per_image.jsonl`` holds rows 2i original, 2i+1 edited)."""
    from safetensors.torch import save

    tensors = {"original": original.contiguous(), "edited": edited.contiguous()}
    tensors.update({k: v.contiguous() for k, v in (extra or {}).items()})
    return save(tensors, metadata={"rows": json.dumps(rows)} if rows else None)


# -- robustness ----------------------------------------------------------------------------------
def attack_seeds(p: EvalProtocol) -> tuple[int, ...]:
    """The evaluation seeds attack images are generated with: the first ``p.attack_seeds``."""
    return tuple(p.seeds[: p.attack_seeds])


def run_attacks(pipe: Any, attacks: dict[str, Attack], concept: Concept, held_out: list[Image.Image] | None,
                judge: Judge, sampler: SamplerSpec, p: EvalProtocol, seed: int, progress: bool = False
                ) -> dict[str, dict[str, Any]]:
    """Run ``attacks`` on the pipeline as it is now; ASR = share of an attack's images showing the concept.

    1. each attack optimises its conditionings (its own work, timed as its ``seconds``);
    2. the images of every attack are generated together, in full batches of the protocol's batch
       size, on the attack seeds (text prompts are encoded once, like learned ones);
    3. the judge looks for the concept; each attack gets its own ASR, interval and images.
    """
    if held_out is None:
        raise InputError("attacks need held-out concept images")
    if not attacks:
        return {}
    from tqdm.auto import tqdm

    outcomes = {}
    with tqdm(total=len(attacks), desc=f"  attacks on {concept.name}", leave=False, disable=not progress) as bar:
        for name, a in attacks.items():
            bar.set_postfix_str(name)
            outcomes[name] = a.attack(pipe, concept, held_out, seed)
            bar.update()
    seeds_a = attack_seeds(p)
    prompts, seeds, embeds, spans = _attack_rows(pipe, outcomes, seeds_a)
    t0 = time.perf_counter()
    images = generate(pipe, prompts, seeds, sampler, p.batch_size, prompt_embeds=embeds)
    gen_seconds = time.perf_counter() - t0
    hits = judge.detect(_u8_to_float(images), concept)
    out = {}
    for name, (a, b) in spans.items():
        out[name] = {"asr": summary(hits[a:b].numpy(), np.array(seeds[a:b])), "seconds": outcomes[name].seconds,
                     "images": images[a:b],
                     "rows": [(q, s, bool(h)) for q, s, h in zip(prompts[a:b], seeds[a:b], hits[a:b].tolist(),
                                                                 strict=True)]}
    out[_GENERATION] = {"seconds": gen_seconds, "images": len(prompts)}
    return out


_GENERATION = "_generation"  # run_attacks' entry for the shared generation of every attack's images


def _attack_rows(pipe: Any, outcomes: dict[str, Any], seeds_a: tuple[int, ...]
                 ) -> tuple[list[str], list[int], torch.Tensor, dict[str, tuple[int, int]]]:
    """Every attack's (prompt, seed) rows in one list, their conditionings, and each attack's slice."""
    from bench.model.training import encode_prompts

    prompts: list[str] = []
    seeds: list[int] = []
    embeds = []
    spans = {}
    for name, o in outcomes.items():
        e = o.prompt_embeds
        if e is None:  # text prompts: the hidden states the pipeline would compute for them
            with torch.no_grad():
                e = encode_prompts(pipe, o.prompts).cpu()
        start = len(prompts)
        prompts += [q for q in o.prompts for _ in seeds_a]
        seeds += [s for _ in o.prompts for s in seeds_a]
        embeds.append(e.float().repeat_interleave(len(seeds_a), dim=0))
        spans[name] = (start, len(prompts))
    return prompts, seeds, torch.cat(embeds), spans


def run_attack(pipe: Any, attack: Attack, concept: Concept, held_out: list[Image.Image] | None, judge: Judge,
               sampler: SamplerSpec, p: EvalProtocol, seed: int) -> dict[str, Any]:
    """One attack alone (``run_attacks`` with one entry)."""
    res = run_attacks(pipe, {attack.name: attack}, concept, held_out, judge, sampler, p, seed)
    return {**res[attack.name], "generate_seconds": res[_GENERATION]["seconds"]}


def cached_attacks(pipe: Any, attacks: dict[str, Attack], concept: Concept, held_out: list[Image.Image] | None,
                   judge: Judge, sampler: SamplerSpec, p: EvalProtocol, cache: ReferenceCache,
                   spec: RunSpec) -> dict[str, dict[str, Any]]:
    """The attacks on the original model (the sanity reference; a null edit is bit-identical to it),
    computed once per concept and cached beside the reference images; the missing ones run together."""
    from bench.core.io import write_json
    from bench.core.records import sha256_json

    paths = {}
    for name, a in attacks.items():
        key = sha256_json({"model": spec.model_sha256, "concept": concept.name, "attack": a.name,
                           "version": a.version, "config": a.config.to_dict(), "seed": spec.erase_seed,
                           "sampler": sampler.to_dict(), "seeds": list(attack_seeds(p)), "judge": judge.ref,
                           "images": spec.images, "protocol": spec.protocol})
        paths[name] = cache.folder / "attacks" / f"{key[:24]}.json"
    out = {name: json.loads(path.read_text()) for name, path in paths.items() if path.is_file()}
    missing = {name: a for name, a in attacks.items() if name not in out}
    if missing:
        res = run_attacks(pipe, missing, concept, held_out, judge, sampler, p, spec.erase_seed)
        for name in missing:
            out[name] = {"asr": res[name]["asr"], "seconds": res[name]["seconds"]}
            paths[name].parent.mkdir(parents=True, exist_ok=True)
            write_json(paths[name], out[name])
    return {name: out[name] for name in attacks}
