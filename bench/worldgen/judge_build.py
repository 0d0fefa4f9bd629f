"""Train ConceptWorld's two judges: the CNN (the judge) and the ViT (its second opinion).

``python -m bench.world judge --world DIR`` retrains both from a seed against a built world's VAE
(minutes; the world model is untouched). ``make world`` runs the same code as its judge stage.
Training data, per judge (each from its own seed): ``n_judge`` rendered scenes, a share of them
with jittered textures, a ``judge_holes`` share with holes in their textures (``Scene.holes``) and
a ``judge_large`` share of shapes drawn larger than the world draws them;
optionally ``judge_unclear`` scenes with faint or blended textures (labelled ``none`` on the
style head, ``unclear.py``); ``judge_negatives`` synthetic non-scenes, which carry a
label on the reject head only. Half of all images pass through the VAE (encode -> decode), as
generated images do.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

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
from bench.world.render import CENTRE, HEADS, WORLD2, Scene, Vocabulary, jitter_texture, to_tensor, vocabulary
from bench.world.unclear import render_unclear
from bench.worldgen.config import WorldConfig
from bench.worldgen.negatives import render_negatives

FIRST, SECOND = "judge", "judge_vit"  # folder names inside a world
HOLES = (0.5, 1.0)  # how much of a holed scene's dark texture is left unpainted (Scene.holes)
# a large scene's outer radius, as a fraction of the image (the world draws render.SCALE); its centre
# is pulled in so that the shape stays inside the frame
LARGE = (0.40, 0.46)
TRAINING_FILE = "judge_training.json"  # what `python -m bench.world judge` measured while retraining
_SEED_OFFSET = {FIRST: 1, SECOND: 5}  # render seeds: cfg.seed + offset (2: held-out scenes, 3: held-out negatives)


@dataclasses.dataclass(frozen=True)
class Drawn:
    """Shares of the judges' training scenes drawn as a generator draws them; every label is kept."""

    jitter: float = 0.0  # texture off the world's values (render.jitter_texture)
    holes: float = 0.0  # part of the texture's dark parts left unpainted (Scene.holes, HOLES)
    large: float = 0.0  # the shape larger than the world draws it (LARGE)

    @classmethod
    def of(cls, cfg: WorldConfig) -> Drawn:
        return cls(jitter=cfg.judge_jitter, holes=cfg.judge_holes, large=cfg.judge_large)

    def apply(self, scenes: list[Scene], seed: int) -> list[Scene]:
        """``scenes`` with these shares drawn as a generator draws them: jittered textures, holed
        textures, large shapes, each from its own generator (``seed`` + a fixed offset), so that one
        share leaves the others' draws as they were; a share of 0 leaves every scene as it was."""
        jrng = np.random.default_rng(seed + 7919)
        scenes = [jitter_texture(s, jrng) if jrng.random() < self.jitter else s for s in scenes]
        hrng = np.random.default_rng(seed + 6571)
        scenes = [replace(s, holes=float(hrng.uniform(*HOLES))) if hrng.random() < self.holes else s for s in scenes]
        lrng = np.random.default_rng(seed + 4409)
        return [large_share(s, lrng) if lrng.random() < self.large else s for s in scenes]


def large_share(scene: Scene, rng: np.random.Generator) -> Scene:
    scale = float(rng.uniform(*LARGE))
    pull = min(1.0, (0.5 - scale) / (CENTRE[1] - 0.5))  # the world's centres: render.CENTRE
    return replace(scene, scale=scale, cx=0.5 + (scene.cx - 0.5) * pull, cy=0.5 + (scene.cy - 0.5) * pull)


def judge_set(seed: int, n: int, n_negatives: int, character_prob: float, drawn: Drawn = Drawn(), vae=None,
              vocab: Vocabulary = WORLD2, n_unclear: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Float images in [0, 1] of ``vocab``'s scenes (``drawn``'s shares with jittered textures, holed
    textures and large shapes, each from its own generator so that one share leaves the others' draws
    as they were), ``n_unclear`` scenes with an unclear texture (``unclear.py``: the style label is the
    style head's ``none`` class) and ``n_negatives`` non-scenes; labels per head (attributes
    ``IGNORE`` on non-scenes)."""
    from bench.worldgen.data import render_scenes, sample_scenes, vae_roundtrip

    scenes = drawn.apply(sample_scenes(seed, n, character_prob, vocab), seed)
    pos = to_tensor(render_scenes(scenes, "render judge scenes"))
    unclear, unclear_labels, _ = render_unclear(seed + 15_485_863, n_unclear, vocab, drawn.jitter)
    neg = to_tensor(render_negatives(seed + 104_729, n_negatives, vocab=vocab)[0])
    labels = {h: torch.tensor([s.labels()[h] for s in scenes] + [u[h] for u in unclear_labels]
                              + [IGNORE] * n_negatives) for h in HEADS}
    labels[REJECT_HEAD] = torch.tensor([0] * (n + n_unclear) + [1] * n_negatives)
    images = torch.cat([pos, to_tensor(unclear), neg])
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
    sets = {"scenes": (to_tensor(images), labels),
            "negatives": (to_tensor(neg), {REJECT_HEAD: torch.ones(len(neg), dtype=torch.long)})}
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
                                   cfg.character_prob, Drawn.of(cfg), vae, vocabulary(cfg.vocab), cfg.judge_unclear)
        steps, batch, lr = ((cfg.judge_steps, cfg.judge_batch, cfg.judge_lr) if which == FIRST
                            else (cfg.vit_steps, cfg.vit_batch, cfg.vit_lr))
        judge = train_judge(net, images, labels, steps, batch, lr, cfg.seed, desc=which,
                            heads=judge_heads(vocabulary(cfg.vocab), cfg.judge_unclear > 0))
        judge.save(out / which)
        judge = WorldJudge.load(out / which)
        row: dict = {"seconds": round(time.time() - t0, 1), "id": judge.id}
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
    keys = [f.name for f in dataclasses.fields(cfg) if f.name.startswith(("judge_", "vit_", "n_judge"))]
    record = {"judge_version": JUDGE_VERSION, "config": {k: getattr(cfg, k) for k in ["seed", *keys]},
              "vae": "the world's model/vae (stored in fp16, loaded as fp32)", **info}
    (out / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
