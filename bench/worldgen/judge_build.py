"""Train ConceptWorld's two judges: the CNN (the judge) and the ViT (its second opinion).

``python -m bench.world judge --world DIR`` retrains both from a seed against a built world's VAE
(minutes; the world model is untouched). ``make world`` runs the same code as its judge stage.
Training data, per judge (each from its own seed): ``n_judge`` rendered scenes, a share of them
with jittered textures, a ``judge_holes`` share with holes in their textures (``Scene.holes``) and
a ``judge_large`` share of shapes drawn larger than the world draws them, a ``judge_off_default``
share of the character scenes drawn with another style or colour than the character's own;
``judge_degraded`` degraded but valid scenes (``degraded.py``, every label kept);
optionally ``judge_unclear`` scenes with faint or blended textures (labelled ``none`` on the
style head, ``unclear.py``); ``judge_negatives`` synthetic non-scenes, which carry a
label on the reject head only. Half of all images pass through the VAE (encode -> decode), as
generated images do.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.world.judge import (
    DEFAULT_REJECT_THRESHOLD as JUDGE_DEFAULT_THRESHOLD,
)
from bench.world.judge import (
    IGNORE,
    JUDGE_VERSION,
    REJECT_HEAD,
    JudgeNet,
    ViTJudgeNet,
    WorldJudge,
    accuracy,
    judge_heads,
    train_judge,
)
from bench.world.render import (
    CENTRE,
    HEADS,
    NONE_CHARACTER,
    WORLD2,
    Scene,
    Vocabulary,
    jitter_texture,
    to_tensor,
    vocabulary,
)
from bench.world.unclear import render_unclear
from bench.worldgen.config import WorldConfig
from bench.worldgen.degraded import render_degraded
from bench.worldgen.negatives import KINDS as NEGATIVE_KINDS
from bench.worldgen.negatives import render_negatives

FIRST, SECOND = "judge", "judge_vit"  # folder names inside a world
HOLES = (0.5, 1.0)  # how much of a holed scene's dark texture is left unpainted (Scene.holes)
# a large scene's outer radius, as a fraction of the image (the world draws render.SCALE); its centre
# is pulled in so that the shape stays inside the frame
LARGE = (0.40, 0.46)
TRAINING_FILE = "judge_training.json"  # what `python -m bench.world judge` measured while retraining
# the judges' non-scenes: every kind, and the two nearest a valid scene (shapes fused into one blob, a shape
# cut off by the frame) twice as often. Trained on equal shares beside the degraded scenes, judge 2.4 rejected
# 78 % of fresh fused shapes and 93 % of fresh cut-off ones (every other kind 100 %)
TRAIN_NEGATIVE_KINDS = (*NEGATIVE_KINDS, "fused", "cutoff")
_SEED_OFFSET = {FIRST: 1, SECOND: 5}  # render seeds: cfg.seed + offset (2: held-out scenes, 3: held-out negatives)


@dataclasses.dataclass(frozen=True)
class Drawn:
    """Shares of the judges' training scenes drawn as a generator draws them; every label is kept."""

    jitter: float = 0.0  # texture off the world's values (render.jitter_texture)
    holes: float = 0.0  # part of the texture's dark parts left unpainted (Scene.holes, HOLES)
    large: float = 0.0  # the shape larger than the world draws it (LARGE)
    off_default: float = 0.0  # a character drawn with another style or colour than its own (off_default)

    @classmethod
    def of(cls, cfg: WorldConfig) -> Drawn:
        return cls(jitter=cfg.judge_jitter, holes=cfg.judge_holes, large=cfg.judge_large,
                   off_default=cfg.judge_off_default)

    def apply(self, scenes: list[Scene], seed: int, vocab: Vocabulary = WORLD2) -> list[Scene]:
        """``scenes`` with these shares drawn as a generator draws them: jittered textures, holed
        textures, large shapes, characters in another style or colour (of ``vocab``), each from its own generator (``seed`` + a fixed offset), so that one
        share leaves the others' draws as they were; a share of 0 leaves every scene as it was."""
        jrng = np.random.default_rng(seed + 7919)
        scenes = [jitter_texture(s, jrng) if jrng.random() < self.jitter else s for s in scenes]
        hrng = np.random.default_rng(seed + 6571)
        scenes = [replace(s, holes=float(hrng.uniform(*HOLES))) if hrng.random() < self.holes else s for s in scenes]
        lrng = np.random.default_rng(seed + 4409)
        scenes = [large_share(s, lrng) if lrng.random() < self.large else s for s in scenes]
        orng = np.random.default_rng(seed + 3271)
        return [off_default(s, orng, vocab) if s.character != NONE_CHARACTER and orng.random() < self.off_default
                else s for s in scenes]


def off_default(scene: Scene, rng: np.random.Generator, vocab: Vocabulary) -> Scene:
    """A character scene with another style (a third of the time), another colour (a third) or both:
    the character stays (its shape and mark), and the style and colour heads learn to read what is drawn."""
    k = int(rng.integers(0, 3))
    style = str(rng.choice([v for v in vocab.styles if v != scene.style])) if k != 1 else scene.style
    colour = str(rng.choice([v for v in vocab.colours if v != scene.colour])) if k != 0 else scene.colour
    return replace(scene, style=style, colour=colour)


def large_share(scene: Scene, rng: np.random.Generator) -> Scene:
    scale = float(rng.uniform(*LARGE))
    pull = min(1.0, (0.5 - scale) / (CENTRE[1] - 0.5))  # the world's centres: render.CENTRE
    return replace(scene, scale=scale, cx=0.5 + (scene.cx - 0.5) * pull, cy=0.5 + (scene.cy - 0.5) * pull)


def judge_set(seed: int, n: int, n_negatives: int, character_prob: float, drawn: Drawn = Drawn(), vae=None,
              vocab: Vocabulary = WORLD2, n_unclear: int = 0, n_degraded: int = 0
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Float images in [0, 1] of ``vocab``'s scenes (``drawn``'s shares with jittered textures, holed
    textures and large shapes, each from its own generator so that one share leaves the others' draws
    as they were), ``n_unclear`` scenes with an unclear texture (``unclear.py``: the style label is the
    style head's ``none`` class), ``n_degraded`` degraded but valid scenes (``degraded.py``, every
    label kept) and ``n_negatives`` non-scenes; labels per head (attributes ``IGNORE`` on non-scenes)."""
    from bench.worldgen.data import render_scenes, sample_scenes, vae_roundtrip

    scenes = drawn.apply(sample_scenes(seed, n, character_prob, vocab), seed, vocab)
    pos = to_tensor(render_scenes(scenes, "render judge scenes"))
    unclear, unclear_labels, _ = render_unclear(seed + 15_485_863, n_unclear, vocab, drawn.jitter)
    # the VAE kind is left to the pass below (every other image through the VAE)
    degraded, degraded_scenes, _ = render_degraded(seed + 32_452_843, n_degraded, vocab, None,
                                                   character_prob=character_prob)
    neg = to_tensor(render_negatives(seed + 104_729, n_negatives, TRAIN_NEGATIVE_KINDS, vocab)[0])
    labels = {h: torch.tensor([s.labels()[h] for s in scenes] + [u[h] for u in unclear_labels]
                              + [s.labels()[h] for s in degraded_scenes] + [IGNORE] * n_negatives) for h in HEADS}
    labels[REJECT_HEAD] = torch.tensor([0] * (n + n_unclear + n_degraded) + [1] * n_negatives)
    images = torch.cat([pos, to_tensor(unclear), degraded, neg])
    if vae is not None:  # every other image through the VAE
        images[1::2] = vae_roundtrip(vae, images[1::2])
    return images, labels


def heldout_sets(cfg: WorldConfig, n: int = 2000) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Fresh scenes (world textures, no jitter), fresh non-scenes and (for judges that learn them)
    fresh unclear scenes, from seeds no judge trained on."""
    from bench.worldgen.data import render_set

    vocab = vocabulary(cfg.vocab)
    images, scenes = render_set(cfg.seed + 2, n, cfg.character_prob, "render held-out", vocab=vocab)
    labels = {h: torch.tensor([s.labels()[h] for s in scenes]) for h in HEADS}
    labels[REJECT_HEAD] = torch.zeros(n, dtype=torch.long)
    neg, _ = render_negatives(cfg.seed + 3, n // 2, vocab=vocab)
    degraded, degraded_scenes, _ = render_degraded(cfg.seed + 6, n // 2, vocab, None, character_prob=cfg.character_prob)
    degraded_labels = {h: torch.tensor([s.labels()[h] for s in degraded_scenes]) for h in HEADS}
    degraded_labels[REJECT_HEAD] = torch.zeros(len(degraded_scenes), dtype=torch.long)
    sets = {"scenes": (to_tensor(images), labels),
            "negatives": (to_tensor(neg), {REJECT_HEAD: torch.ones(len(neg), dtype=torch.long)}),
            "degraded": (degraded, degraded_labels)}
    if cfg.judge_unclear > 0:
        unclear, rows, _ = render_unclear(cfg.seed + 4, n // 2, vocab, jitter=0.0)
        unclear_labels = {h: torch.tensor([r[h] for r in rows]) for h in HEADS}
        unclear_labels[REJECT_HEAD] = torch.zeros(len(rows), dtype=torch.long)
        sets["unclear"] = (to_tensor(unclear), unclear_labels)
    return sets


def _net(which: str, cfg: WorldConfig) -> torch.nn.Module:
    heads = {h: len(v) for h, v in judge_heads(vocabulary(cfg.vocab), cfg.judge_unclear > 0).items()}
    if which == FIRST:
        return JudgeNet(cfg.judge_channels, heads)
    return ViTJudgeNet({"hidden_size": cfg.vit_hidden, "num_hidden_layers": cfg.vit_layers,
                        "num_attention_heads": cfg.vit_heads, "intermediate_size": 2 * cfg.vit_hidden,
                        "patch_size": cfg.vit_patch}, heads)


def judges_of(cfg: WorldConfig) -> tuple[str, ...]:
    """The judge folders a world of ``cfg`` trains: the CNN's, and the ViT's unless the world CLIP is
    the second opinion (``WorldConfig.second_judge``)."""
    return (FIRST, SECOND) if cfg.second_judge == "vit" else (FIRST,)


REJECT_THRESHOLD_RANGE = (0.02, 0.98)  # a calibrated threshold is clipped into this range


def calibrate_reject(judge: WorldJudge, valid: torch.Tensor, budget: float, floor: float = 0.0) -> WorldJudge:
    """``judge`` with its reject threshold set where it rejects a ``budget`` share of ``valid`` (valid
    scenes of seeds it never trained on): the ``1 - budget`` quantile of their probability of "none",
    raised to ``floor`` at least, clipped into ``REJECT_THRESHOLD_RANGE``. A false-reject budget, as a
    reject option is calibrated; what it does on non-scenes is measured, not chosen."""
    none = judge.classes[REJECT_HEAD].index("none")
    p = judge.probs(valid)[REJECT_HEAD][:, none].double()
    t = max(float(torch.quantile(p, 1 - budget)) if len(p) else JUDGE_DEFAULT_THRESHOLD, floor)
    return judge.with_threshold(round(min(max(t, REJECT_THRESHOLD_RANGE[0]), REJECT_THRESHOLD_RANGE[1]), 4))


CALIBRATION_SEED0 = 10_000  # the model's calibration images: seeds no gate (0-63) or bench cell reads


def calibrate_on_model(cfg: WorldConfig, judges: Path, model_dir: Path, concepts: Path) -> dict:
    """Second calibration step, once the world's model exists: each judge in ``judges`` (a folder holding
    ``judge/`` and maybe ``judge_vit/``) keeps its threshold, raised where needed so that it rejects at
    most ``cfg.judge_reject_budget_generated`` of the model's own images of every concept's plain prompt
    (``cfg.judge_calibration_seeds`` seeds from ``CALIBRATION_SEED0``). Rendered degradations do not
    cover how the model draws (lumpy outlines, soft textures); its own images are valid scenes by
    construction (the gate ``judge_reject_rate_on_generated`` measures them on other seeds). Saves the
    judges; returns each one's thresholds."""
    from bench.core.concepts import load_concept_set
    from bench.worldgen.sampling import generate, load_pipeline

    if cfg.judge_reject_budget_generated <= 0 or cfg.judge_calibration_seeds <= 0:
        return {}
    pipe = load_pipeline(model_dir)
    seeds = list(range(CALIBRATION_SEED0, CALIBRATION_SEED0 + cfg.judge_calibration_seeds))
    images = torch.cat([generate(pipe, c.prompts()[0], seeds) for c in load_concept_set(concepts).concepts])
    out = {}
    for which in judges_of(cfg):
        judge = WorldJudge.load(judges / which)
        tuned = calibrate_reject(judge, images, cfg.judge_reject_budget_generated, floor=judge.reject_threshold)
        tuned.save(judges / which)
        out[which] = {"images": len(images), "threshold_degraded": judge.reject_threshold,
                      "threshold": tuned.reject_threshold, "id": tuned.id}
    return out


NON_SCENE_CALIBRATION_SEED = 31_337  # the non-scenes the threshold is raised on: no gate (987_656) or test (424_244) draws it


def raise_to_non_scene_recall(judge: WorldJudge, non_scenes: list[tuple[torch.Tensor, float]]) -> WorldJudge:
    """``judge`` with its reject threshold raised to the highest value at which it still rejects, in each
    ``(images, recall)`` set of non-scenes, at least that ``recall`` share of them; never lowered (the
    false-reject budgets set before still hold), clipped into ``REJECT_THRESHOLD_RANGE``. The reject
    option's job is to catch non-scenes: spending exactly its miss budget on them rejects as few valid
    scenes as that budget allows, the odd ones edited models draw among them."""
    return judge.with_threshold(_non_scene_threshold([(_p_none(judge, x), r) for x, r in non_scenes],
                                                     judge.reject_threshold))


def _p_none(judge: WorldJudge, images: torch.Tensor) -> torch.Tensor:
    return judge.probs(images)[REJECT_HEAD][:, judge.classes[REJECT_HEAD].index("none")].double()


def _non_scene_threshold(p_sets: list[tuple[torch.Tensor, float]], floor: float) -> float:
    """The threshold ``raise_to_non_scene_recall`` sets, from each set's probabilities of "none"."""
    bound = REJECT_THRESHOLD_RANGE[1]
    for p, recall in p_sets:
        if not 0 < recall <= 1:
            raise ValueError(f"a non-scene recall must be in (0, 1], got {recall!r}")
        p = p.sort().values
        if not len(p):
            continue
        # rejecting "p > t" keeps at least ceil(recall * n) images when t is below the k-th largest p
        k = int(np.ceil(recall * len(p) - 1e-9))
        kth = float(p[len(p) - k]) if k > 0 else 1.0
        bound = min(bound, math.floor(kth * 10_000 - 1e-6) / 10_000)  # 4 decimals, strictly below it
    t = min(max(bound, floor), REJECT_THRESHOLD_RANGE[1])
    return round(max(t, REJECT_THRESHOLD_RANGE[0]), 4)


def non_scene_sets(cfg: WorldConfig, vae) -> list[tuple[torch.Tensor, float]]:
    """The held-out synthetic non-scenes of ``NON_SCENE_CALIBRATION_SEED`` with the recall each must keep:
    as drawn (``judge_non_scene_recall``) and, with a VAE, their round trips (``judge_non_scene_recall_vae``)."""
    from bench.worldgen.data import vae_roundtrip

    neg = to_tensor(render_negatives(NON_SCENE_CALIBRATION_SEED, cfg.judge_non_scene_images,
                                     vocab=vocabulary(cfg.vocab))[0])
    sets = [(neg, cfg.judge_non_scene_recall)]
    if vae is not None and cfg.judge_non_scene_recall_vae > 0:
        with torch.no_grad():
            sets.append((vae_roundtrip(vae, neg), cfg.judge_non_scene_recall_vae))
    return sets


def calibrate_on_non_scenes(cfg: WorldConfig, judges: Path, vae) -> dict:
    """Last calibration step: each judge in ``judges`` has its threshold raised as far as the non-scene
    budget allows (``raise_to_non_scene_recall``), and is saved. Returns each one's thresholds."""
    if cfg.judge_non_scene_recall <= 0 or cfg.judge_non_scene_images <= 0:
        return {}
    sets = non_scene_sets(cfg, vae)
    out = {}
    for which in judges_of(cfg):
        judge = WorldJudge.load(judges / which)
        p_sets = [(_p_none(judge, x), r) for x, r in sets]
        tuned = judge.with_threshold(_non_scene_threshold(p_sets, judge.reject_threshold))
        tuned.save(judges / which)
        rejected = {name: float((p > tuned.reject_threshold).double().mean())
                    for name, (p, _) in zip(("non_scenes", "non_scenes_vae")[:len(sets)], p_sets, strict=True)}
        out[which] = {"non_scene_images": len(sets[0][0]), "seed": NON_SCENE_CALIBRATION_SEED,
                      "recall": cfg.judge_non_scene_recall, "recall_vae": cfg.judge_non_scene_recall_vae,
                      "threshold_before": judge.reject_threshold, "threshold": tuned.reject_threshold,
                      "rejected": rejected, "id": tuned.id}
    return out


def recalibrate_judges(world: Path, cfg: WorldConfig) -> dict:
    """The non-scene step alone on a built world's judges (their weights untouched), recorded in its
    judge training record (``TRAINING_FILE``) under ``calibration_on_non_scenes``."""
    from diffusers import AutoencoderKL

    from bench.core.errors import InputError

    if cfg.judge_non_scene_recall <= 0 or cfg.judge_non_scene_images <= 0:
        raise InputError("the non-scene step is off (judge_non_scene_recall 0, the default): give "
                         "--set judge_non_scene_recall=R (and judge_non_scene_recall_vae) to raise the threshold")
    if not (world / "model" / "vae").is_dir():
        raise InputError(f"{world} holds no built world (expected model/vae/)")
    vae = AutoencoderKL.from_pretrained(world / "model" / "vae").eval()
    cal = calibrate_on_non_scenes(cfg, world, vae)
    path = world / TRAINING_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["calibration_on_non_scenes"] = cal
    record.setdefault("config", {}).update({k: getattr(cfg, k) for k in (
        "judge_non_scene_recall", "judge_non_scene_recall_vae", "judge_non_scene_images")})
    for which, c in cal.items():
        if isinstance(record.get(which), dict):
            record[which].update(id=c["id"], reject_threshold=c["threshold"])
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def build_judges(cfg: WorldConfig, vae, out: Path) -> dict:
    """Train the judges into ``out/judge`` and (``cfg.second_judge`` "vit") ``out/judge_vit``; held-out
    accuracy per head."""
    from bench.worldgen.data import vae_roundtrip

    info: dict = {}
    held = heldout_sets(cfg, 2000 if cfg.n_judge >= 2000 else 64)
    for which in judges_of(cfg):
        t0 = time.time()
        torch.manual_seed(cfg.seed + _SEED_OFFSET[which])
        net = _net(which, cfg)
        images, labels = judge_set(cfg.seed + _SEED_OFFSET[which], cfg.n_judge, cfg.judge_negatives,
                                   cfg.character_prob, Drawn.of(cfg), vae, vocabulary(cfg.vocab), cfg.judge_unclear,
                                   cfg.judge_degraded)
        steps, batch, lr = ((cfg.judge_steps, cfg.judge_batch, cfg.judge_lr) if which == FIRST
                            else (cfg.vit_steps, cfg.vit_batch, cfg.vit_lr))
        judge = train_judge(net, images, labels, steps, batch, lr, cfg.seed, desc=which,
                            heads=judge_heads(vocabulary(cfg.vocab), cfg.judge_unclear > 0))
        if cfg.judge_reject_budget > 0:
            valid = held["degraded"][0]
            if vae is not None:
                valid = torch.cat([valid, vae_roundtrip(vae, valid)])
            judge = calibrate_reject(judge, valid, cfg.judge_reject_budget)
        judge.save(out / which)
        judge = WorldJudge.load(out / which)
        row: dict = {"seconds": round(time.time() - t0, 1), "id": judge.id, "reject_threshold": judge.reject_threshold}
        for name, (x, y) in held.items():
            row[name] = accuracy(judge, x, y)
            row[name + "_vae"] = accuracy(judge, vae_roundtrip(vae, x), y) if vae is not None else None
        info[which] = row
    return info


def retrain_judges(world: Path, cfg: WorldConfig, out: Path | None = None) -> dict:
    """Retrain both judges of the built world in ``world`` against its VAE, into ``out`` (default: the world)."""
    from diffusers import AutoencoderKL

    from bench.core.errors import InputError

    if not (world / "model" / "vae").is_dir():
        raise InputError(f"{world} holds no built world (expected model/vae/)")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    vae = AutoencoderKL.from_pretrained(world / "model" / "vae").eval()
    out = out or world
    info = build_judges(cfg, vae, out)
    info["calibration_on_model"] = calibrate_on_model(cfg, out, world / "model", world / "concepts.yaml")
    info["calibration_on_non_scenes"] = calibrate_on_non_scenes(cfg, out, vae)
    for step in ("calibration_on_model", "calibration_on_non_scenes"):  # the held-out rows above read the first threshold
        for which, cal in info[step].items():
            info[which].update(id=cal["id"], reject_threshold=cal["threshold"])
    keys = [f.name for f in dataclasses.fields(cfg) if f.name.startswith(("judge_", "vit_", "n_judge"))]
    record = {"judge_version": JUDGE_VERSION, "config": {k: getattr(cfg, k) for k in ["seed", *keys]},
              "vae": "the world's model/vae (stored in fp16, loaded as fp32)", **info}
    (out / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
