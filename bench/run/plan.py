"""What a benchmark is: the track (model, concept set, judges, sampler, few-shot images), the methods and
concepts, each cell's prompts and seeds, its run spec, and the grid a run would execute (``plan_bench``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from bench.api.attack import Attack
from bench.api.judge import Judge
from bench.api.method import Eraser, build_method
from bench.api.sources import image_source
from bench.core.concepts import Concept, ConceptSet, load_concept_set
from bench.core.errors import InputError, shown
from bench.core.paths import ROOT
from bench.core.plan import COMPOSED, GROUPS, RETAIN_GROUPS
from bench.core.protocol import WORLD_SAMPLER, EvalProtocol, SamplerSpec
from bench.core.records import RunSpec
from bench.metrics.formulas import METRICS_VERSION
from bench.world.presets import DEFAULT_SECOND_JUDGE, DEFAULT_WORLD

# The robustness attacks a run gets without --attacks, and with --attacks all (docs/robustness.md). The
# default: the attacks whose work on the erased model is seconds (the paraphrases, Ring-A-Bell, whose search
# runs once on the original model and ships with the world, and the noised-start probe), so make bench fits
# its 10 minutes on 2 cores. all adds the white-box optimisations on every erased model (UnlearnDiffAtk and
# P4D on their declared CPU-world budgets, NAME@world: 35-45 s each per erased model on 2 cores), textual
# inversion and the soft-prefix upper bound: what the leaderboard runs. On SD weights name the published
# budgets (NAME alone).
ALL_ATTACKS = ("paraphrase", "unlearndiffatk@world", "ringabell@world", "noised_start", "p4d@world", "inversion",
               "soft_prefix")
_ON_EVERY_ERASED_MODEL = {"unlearndiffatk@world", "p4d@world", "inversion", "soft_prefix"}  # all only
DEFAULT_ATTACKS = tuple(a for a in ALL_ATTACKS if a not in _ON_EVERY_ERASED_MODEL)

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

    model: str = str(DEFAULT_WORLD / "model")
    concept_set: str = str(DEFAULT_WORLD / "concepts.yaml")
    judge: str = str(DEFAULT_WORLD / "judge")
    second_judge: str | None = str(DEFAULT_SECOND_JUDGE)  # a second opinion (None: none): world 3's world CLIP
    sampler: SamplerSpec = WORLD_SAMPLER
    images: str = "render"
    judge_weights: str | None = None
    clip_model: str | None = None
    clip_checkpoint: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    # check a built world's files against its MANIFEST.json before the first cell (--no-verify-world: off)
    verify_world: bool = True
    # read the original model's references from the world's verified pack where it has them (numbers are
    # the same either way: tests/test_reference_pack.py); --no-shipped-references computes every one
    shipped_references: bool = True


def world_track(folder: str | Path) -> Track:
    """The track of a built ConceptWorld folder (``make world`` output: ``model/``, ``concepts.yaml``,
    ``judge/`` and a second opinion: from judge 2.2 ``judge_vit/``, or, in a world 3 built without it
    (``WorldConfig.second_judge``), the world CLIP ``clip/``); world 3 is the default (``DEFAULT_WORLD``)."""
    folder = Path(folder)
    name = shown(folder)
    try:
        missing = [n for n in ("model", "concepts.yaml", "judge") if not (folder / n).exists()]
    except OSError as e:  # a name too long for the file system
        raise InputError(f"cannot read the world folder {name}: {e.strerror or e}") from None
    if missing:
        raise InputError(f"{name} is not a built ConceptWorld (missing {', '.join(missing)}); "
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
    return image_source(track.images)(track, concept, p, pipe, held_out)


def load_judge(track: Track, cs: ConceptSet, spec: str | None = None) -> Judge:
    """The track's judge, or the judge ``spec`` names (see ``Track``; ``bench.api.judge.judge_registry``)."""
    from bench.api.judge import build_judge

    return build_judge(spec or track.judge, track, cs)


def cell_spec(bench: Bench, cs: ConceptSet, method: Eraser, method_spec: str, concept: Concept,
              model_sha: str, judge: Judge, images: dict[str, Any], attacks: dict[str, Attack],
              second: Judge | None = None) -> RunSpec:
    p = bench.protocol
    return RunSpec(
        model=bench.track.model, model_sha256=model_sha, method=method_spec,
        method_config=method.config.to_dict(), method_version=method.version, concept_set=cs.id,
        concept_set_sha256=cs.sha256, concept=concept.name, erase_seed=p.erase_seed, eval_seeds=p.seeds,
        sampler=bench.track.sampler.to_dict(), judge=judge.ref, metrics_version=METRICS_VERSION,
        second_judge=second.ref if second is not None else None,
        images=images, protocol=p.to_dict(), dtype=bench.track.dtype,
        attacks={name: {"version": a.version, "config": a.config.to_dict()} for name, a in attacks.items()},
    )


def plan_bench(bench: Bench) -> list[dict[str, Any]]:
    """The exact grid a run would execute (methods x concepts, prompts, images), loading no model."""
    cs = load_concept_set(bench.track.concept_set)
    p = bench.protocol
    grid = []
    for spec in bench.methods:
        method = build_method(spec, bench.method_overrides.get(spec))
        for name in bench.concepts or cs.names("test"):
            concept = cs.get(name)
            plan = prompt_plan(cs, concept, p)
            grid.append({"method": spec, "config": method.config.to_dict(), "concept": name, "type": concept.type,
                         "prompts": len(plan), "images": sum(len(plan_seeds(g, p)) for g, _, _ in plan),
                         "groups": {g: sum(1 for x in plan if x[0] == g) for g in (*GROUPS, COMPOSED)}})
    return grid
