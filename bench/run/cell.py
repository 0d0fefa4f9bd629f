"""One cell, measured in numbered phases and recorded as an atomic run folder.

One cell: erase -> generate the cell's prompts x seeds with the edited model -> judge them next
to the original model's images (cached) -> metrics -> an atomic run folder -> restore the model.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.api.attack import Attack, ranked_attacks
from bench.api.judge import REJECT_LABEL, SCENE_HEAD, Judge
from bench.api.method import Eraser
from bench.core.artefacts import ATTACKS_FILE, EMBEDS_FILE
from bench.core.concepts import Concept, ConceptSet
from bench.core.envinfo import environment
from bench.core.errors import ConfigError, InputError, NonFiniteError
from bench.core.plan import COMPOSED, GROUPS, RETAIN_GROUPS, ImageRow
from bench.core.protocol import EvalProtocol, SamplerSpec
from bench.core.records import (
    RunSpec,
    write_cell,
    write_failed_cell,
)
from bench.metrics.cell import cell_metrics, detection_metrics, scored_heads, selective_alignment
from bench.metrics.formulas import (
    COMPOSITE_FORMULA,
    DISAGREEMENT_FLAG,
    ROBUST_FORMULA,
    agreement,
    collapse_ratio,
    linear_robust_composite,
    pre_attack_asr,
    robust_composite,
)
from bench.metrics.registry import REGISTRY_VERSION
from bench.model.generation import ReferenceCache, generate
from bench.model.guards import check_finite, image_warnings
from bench.model.measure import PeakMemory
from bench.model.pipeline import pipeline_device
from bench.run.attacking import GENERATION_ENTRY, cached_attacks, prepare_attacks, run_attacks, u8_to_float
from bench.run.plan import plan_seeds, prompt_plan


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
    attack_refs: dict[str, dict[str, torch.Tensor]] | None = None  # Attack.prepare on the original model


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
    masked: dict[str, torch.Tensor] | None = None  # rejected, yet the judged head names the concept (Judge.reads)


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
    rows = plan_rows(run)
    bar = tqdm(total=2 * len(rows), desc=f"  {run.spec.method}/{run.concept.name}", leave=False,
               disable=not run.progress)
    # 2. reference: the original model's images and attacks, cached across methods
    generated = run.cache.generated
    with _timed(timing, "reference_seconds"):
        original = reference_images(run, rows, bar)
    timing["reference_images"] = run.cache.generated - generated  # 0 where the folder or the world's pack had them
    timing["reference_attack_seconds"] = {}  # per attack, where computed here (bench.run.cost)
    with _timed(timing, "attack_seconds"):
        robust_original = reference_attacks(run, timing["reference_attack_seconds"])
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
                   "attack_generate_seconds": robust.get(GENERATION_ENTRY, {}).get("seconds", 0.0),
                   "attack_images_generated": robust.get(GENERATION_ENTRY, {}).get("images", 0),
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


def plan_rows(run: CellRun) -> list[ImageRow]:
    composed = {c.prompt: dict(c.attributes) for c in run.concept.composed}
    return [ImageRow(g, c, prompt, s, composed[prompt] if g == COMPOSED else None)
            for g, c, prompt in prompt_plan(run.cs, run.concept, run.protocol) for s in plan_seeds(g, run.protocol)]


def reference_images(run: CellRun, rows: list[ImageRow], bar: Any) -> torch.Tensor:
    return _reference("reference images", lambda: run.cache.get_or_generate(
        run.pipe, [r.prompt for r in rows], [r.seed for r in rows], run.sampler, run.protocol.batch_size, bar))


def reference_attacks(run: CellRun, seconds: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """The attacks' work on the original model (``Attack.prepare``, kept on ``run`` for the edited
    model's attacks) and their ASR there; both cached per concept beside the reference images.
    ``seconds``: each attack's wall time here, where it was computed rather than found."""
    if not run.attacks:
        return {}
    what = f"attacks ({', '.join(run.attacks)})"
    run.attack_refs = _reference(what, lambda: prepare_attacks(
        run.pipe, run.attacks, run.concept, run.held_out, run.judge, run.sampler, run.protocol, run.spec.erase_seed,
        run.cache, run.spec, seconds))
    return _reference(what, lambda: cached_attacks(
        run.pipe, run.attacks, run.concept, run.held_out, run.judge, run.sampler, run.protocol, run.cache, run.spec,
        run.attack_refs, seconds))


def _attack(run: CellRun) -> dict[str, dict[str, Any]]:
    if not run.attacks:
        return {}
    if run.attack_refs is None:
        raise InputError("the attacks' references on the original model are missing (reference_attacks first)")
    return run_attacks(run.pipe, run.attacks, run.concept, run.held_out, run.judge, run.sampler, run.protocol,
                       run.spec.erase_seed, run.progress, references=run.attack_refs)


def _judge(run: CellRun, rows: list[ImageRow], images: dict[str, torch.Tensor]) -> Judged:
    """Detections per judged concept, reject verdicts, per-image outputs, the second judge's labels,
    features of the retain images and, where the judge gives one, the CLIP score on retain prompts."""
    judge, x = run.judge, {k: u8_to_float(v) for k, v in images.items()}
    by_concept: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_concept.setdefault(r.concept.name, []).append(i)
    detected = _detections(judge, run.cs, by_concept, x)
    read = _reads(judge, run.cs, by_concept, x)
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
    masked = {k: read[k] & rejected[k] for k in x} if read is not None else None
    return Judged(detected, rejected, describe, second, second_detected, features, clip, _diversity(rows, every),
                  _aligned(judge, rows, x), second_note, masked)


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


def _reads(judge: Judge, cs: Any, by_concept: dict[str, list[int]], x: dict[str, torch.Tensor]
           ) -> dict[str, torch.Tensor] | None:
    """Per kind of image: whether ``judge``'s head for each row's judged concept names it with
    probability >= MASKED_P whatever the reject verdict (``Judge.reads``); None for a judge that gives
    no per-head probabilities."""
    out = {k: torch.zeros(len(v), dtype=torch.bool) for k, v in x.items()}
    for kind in x:
        for name, idx in by_concept.items():
            got = judge.reads(x[kind][idx], cs.get(name))
            if got is None:
                return None
            out[kind][idx] = got
    return out


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


def _cell_record_metrics(run: CellRun, rows: list[ImageRow], judged: Judged, images: dict[str, torch.Tensor],
                         robust: dict[str, Any], robust_original: dict[str, Any], edit: Any,
                         mem: PeakMemory) -> dict[str, Any]:
    """Everything ``metrics.json`` holds: the measures, the attacks' and the costs."""
    metrics = cell_metrics(rows, judged.detected, judged.features["original"], judged.features["edited"],
                           judged.rejected, judged.masked)
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
        ranked = ranked_attacks(list(run.attacks)) or list(run.attacks)
        metrics["asr_mean"] = float(np.mean([robust[n]["asr"]["value"] for n in ranked]))
        metrics["pre_asr"] = pre_attack_asr(metrics["ua"])
        metrics["composite_robust"] = robust_composite(metrics["ua"]["value"], metrics["retain_mean"],
                                                       metrics["asr_mean"])
        metrics["composite_robust_formula"] = ROBUST_FORMULA
        metrics["composite_robust_linear"] = linear_robust_composite(metrics["composite"], metrics["asr_mean"])
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
            if judged.masked is not None:
                row["masked"] = bool(judged.masked[kind][i])
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
    files = {"samples.safetensors": samples}
    if run.attacks:
        files.update(_artefact_files(robust, run.attacks))
    return write_cell(run.out, run.spec, metrics, per_image, timing, environment(pipeline_device(run.pipe)),
                      extra_files=files)


def _artefact_files(robust: dict[str, Any], attacks: dict[str, Attack]) -> dict[str, bytes]:
    """The attacks' artefacts as cell files: ``attacks.json`` and, for attacks that learn
    conditionings no text reproduces, ``attack_embeds.safetensors`` (keyed by attack name)."""
    from safetensors.torch import save

    found, embeds = {}, {}
    for name in attacks:
        art = robust[name]["artefacts"]
        found[name] = {"prompts": art["prompts"], "info": art["info"], "version": attacks[name].version,
                       "config": attacks[name].config.to_dict(), "embeds": art["embeds"] is not None,
                       "replayable": art["replayable"]}
        if art["embeds"] is not None:
            embeds[name] = art["embeds"].float().contiguous()
    files = {ATTACKS_FILE: (json.dumps(found, indent=1, sort_keys=True, default=str) + "\n").encode()}
    if embeds:
        files[EMBEDS_FILE] = save(embeds)
    return files


def second_judge_metrics(rows: list[ImageRow], judged: Judged) -> dict[str, Any]:
    """The second judge's own UA and RA (``ua_second``, ``retain_mean_second``, each also on the original
    model), read from its detections exactly as ``cell_metrics`` reads the first judge's."""
    labels = {k: second for k, (_, second) in judged.second_labels.items()}
    rejected = ({k: torch.tensor([y == REJECT_LABEL for y in v[SCENE_HEAD]], dtype=torch.bool) for k, v in labels.items()}
                if all(SCENE_HEAD in v for v in labels.values()) else None)  # a judge without a reject option
    m = detection_metrics(rows, judged.second_detected, rejected)
    return {f"{key}_second{suffix}": m[key + suffix] for key in ("ua", "retain_mean") for suffix in ("", "_original")}


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


