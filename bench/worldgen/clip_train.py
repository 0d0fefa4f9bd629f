"""World CLIP: a ``transformers`` ``CLIPModel`` pretrained on rendered scenes.

The first stage of ConceptWorld 3, where the text encoder is shaped like Stable Diffusion's: a
CLIP-style text tower (real CLIP tokenizer, >= 6 layers, width >= 128) trained against a small
vision tower on 32x32 renders with CLIP's symmetric contrastive loss; the UNet is then trained
against the *frozen* text tower, as SD's was against OpenAI's CLIP.

- **LiT's recipe** (``pretrain_image_tower``): the image tower first learns the renderer's labels
  (a linear head per attribute, discarded), then both towers train contrastively. From random
  towers the image tower barely learns shapes from captions in a CPU budget (object zero-shot
  19-38 % after 500-1500 steps), and the text tower, trained against it, gives "circle", "square"
  and "hexagon" nearly the same states; the UNet reading them frozen then cannot tell them apart.
- **Captions** (``clip_caption``) vary more than the diffusion captions: every trained template
  and extra wordings, synonyms, attributes left out, adjectives in either order, and
  post-modified forms ("a star that is red and striped", "a red star with stripes").
- **True captions are not negatives**: "a star" describes a red and a blue star alike, so in each
  row of the similarity matrix the columns whose caption equals the row's own, or (``mask_true``)
  is true of its image, are left out of the softmax, in both directions (``contrastive_loss``,
  ``also_true``).
- **Pictures of nothing** (``ClipConfig.negatives``): synthetic non-scenes, captioned by kind
  ("a blank image", "an image of random noise", ...; ``NOTHING_CAPTIONS``), so that the judge can
  reject zero-shot as the SD track's CLIP judge does: a reject prompt outscores every scene prompt.
- **Resumable and deterministic**: everything random in a step comes from (seed, step); checkpoints
  (``image_ckpt.pt``, ``clip_ckpt.pt``, tensors only, ``weights_only`` load) every ``ckpt_every`` steps.
- ``zero_shot`` measures per-attribute zero-shot accuracy on renders: the prompt of each label
  of a head, argmax over the labels.
- A shipped world keeps one copy of the text tower (``ship_world_clip``; ``bench.world.clip.load_world_clip`` reads it).

``python -m bench.world clip --vocab 3 --work DIR [--set KEY=VALUE]`` trains it alone and prints
the zero-shot table (measure before building the rest of world 3 on it).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from bench.world.captions import (
    CHARACTER_PARAPHRASES,
    CHARACTER_TEMPLATES,
    COLOUR_SYNONYMS,
    NOUN,
    OBJECT_SYNONYMS,
    PARAPHRASE_TEMPLATES,
    STYLE_SYNONYMS,
    TEMPLATES,
    describe,
    word_or_synonym,
)
from bench.world.clip import (
    IMAGE_TOWER,
    CaptionTokens,
    image_embeddings,
    normalise,
    text_embeddings,
    zero_shot,
)
from bench.world.render import NONE_CHARACTER, WORLD2, Scene, Vocabulary
from bench.worldgen.config import ClipConfig

# wordings beyond the diffusion captions' (CLIP saw the web's variety; the UNet's captions stay as they are)
EXTRA_TEMPLATES = ("{}", "a rendering of a {}", "a small {}", "a {} in the middle", "an icon of a {}")


# a character's caption names its colour too this often. A character's own caption alone never ties
# its image to a colour word: measured, the world CLIP then read the colour of 52 % of character
# renders right (100 % of plain scenes), as quaddle was "pink" and blimsy "blue"
CHARACTER_COLOUR_PROB = 0.3


STYLE_PHRASES = {"solid": "in a plain fill", "striped": "with stripes", "dotted": "with dots",
                 "checkered": "with a checker pattern", "halved": "in two halves",
                 "gradient": "fading from light to dark"}


# captions of the non-scenes (``ClipConfig.negatives``), per kind of ``bench.worldgen.negatives``, the SD
# track's CLIP judge's four reject prompts (``bench.judges.clip.REJECT_PROMPTS``) among them: the world
# CLIP judge rejects with those four, as that judge does (``bench.judges.world.WorldClipJudge``)
NOTHING_CAPTIONS = {
    "blank": ("a blank image", "an empty frame", "a picture of nothing"),
    "wash": ("a plain colour background", "a blotchy colour wash", "a blank image"),
    "gradient": ("a colour gradient", "a plain colour background", "a picture of nothing"),
    "noise": ("an image of random noise", "static noise", "a picture of nothing"),
    "blur": ("a blurry image of nothing", "a blur", "a picture of nothing"),
    "cutoff": ("a shape mostly out of the picture", "a sliver at the edge", "a picture of nothing"),
    "shattered": ("a scrambled picture", "broken shards", "a picture of nothing"),
    "fused": ("a blob of overlapping shapes", "shapes melted together", "a picture of nothing"),
}


NOTHING = {"scene": "nothing"}  # what every non-scene's caption states (``also_true``)


class NonScenes(NamedTuple):
    """The world CLIP's training non-scenes: images (M x 3 x 32 x 32 in [0, 1]) and the kind of each."""

    images: torch.Tensor
    kinds: list[str]


def make_clip(cfg: ClipConfig) -> Any:
    """A randomly initialised ``CLIPModel``: the text tower on the real CLIP vocabulary (77 tokens)."""
    from transformers import CLIPConfig, CLIPModel

    from bench.model.tokenizer import MAX_LENGTH, VOCAB_SIZE, build_clip_tokenizer

    tok = build_clip_tokenizer()
    torch.manual_seed(cfg.seed)
    config = CLIPConfig(
        text_config={"vocab_size": VOCAB_SIZE, "hidden_size": cfg.text_hidden, "intermediate_size": cfg.text_ff,
                     "num_hidden_layers": cfg.text_layers, "num_attention_heads": cfg.text_heads,
                     "max_position_embeddings": MAX_LENGTH, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": cfg.vision_hidden, "intermediate_size": cfg.vision_ff,
                       "num_hidden_layers": cfg.vision_layers, "num_attention_heads": cfg.vision_heads,
                       "image_size": 32, "patch_size": cfg.patch, "num_channels": 3},
        projection_dim=cfg.projection, logit_scale_init_value=cfg.logit_scale_init)
    return CLIPModel(config)


def clip_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One contrastive-training caption of ``scene`` (never empty: CLIP has no unconditional case)."""
    return described(scene, rng)[0]


def described(scene: Scene, rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """``clip_caption``'s caption and what it states: the judge-head names it commits to (a
    character caption names the character only; an attribute left out is not stated)."""
    if scene.character != NONE_CHARACTER:
        if rng.random() < CHARACTER_COLOUR_PROB:  # "a picture of a green quaddle"
            colour = word_or_synonym(rng, scene.colour, COLOUR_SYNONYMS)
            templates = (*TEMPLATES, *PARAPHRASE_TEMPLATES, *EXTRA_TEMPLATES)
            return (templates[rng.integers(len(templates))].format(f"{colour} {scene.character}"),
                    {"character": scene.character, "colour": scene.colour})
        templates = (*CHARACTER_TEMPLATES, *CHARACTER_PARAPHRASES)
        return templates[rng.integers(len(templates))].format(scene.character), {"character": scene.character}
    keep = {"object": rng.random() < 0.8, "colour": rng.random() < 0.65, "style": rng.random() < 0.65}
    if not any(keep.values()):
        keep[("object", "colour", "style")[rng.integers(3)]] = True
    shape = word_or_synonym(rng, scene.shape, OBJECT_SYNONYMS) if keep["object"] else None
    colour = word_or_synonym(rng, scene.colour, COLOUR_SYNONYMS) if keep["colour"] else None
    style = word_or_synonym(rng, scene.style, STYLE_SYNONYMS) if keep["style"] else None
    form = rng.integers(3)
    if form == 0 or not (colour or style):  # "a striped red star", adjectives in either order
        order = ("style", "colour") if rng.random() < 0.5 else ("colour", "style")
        phrase = describe(shape, colour, style, adjective_order=order)
    elif form == 1:  # "a star that is red and striped"
        adjectives = [w for w in (colour, style) if w]
        if len(adjectives) == 2 and rng.random() < 0.5:
            adjectives.reverse()
        phrase = f"{shape or NOUN} that is {' and '.join(adjectives)}"
    else:  # "a red star with stripes" (the style as a phrase when kept under its own name)
        head = describe(shape, colour, None)
        phrase = f"{head} {STYLE_PHRASES[scene.style]}" if keep["style"] and style == scene.style else \
            describe(shape, colour, style)
    templates = (*TEMPLATES, *PARAPHRASE_TEMPLATES, *EXTRA_TEMPLATES)
    names = scene.names()
    return templates[rng.integers(len(templates))].format(phrase), {h: names[h] for h, k in keep.items() if k}


def also_true(scenes: list[Scene | None], stated: list[dict[str, str]]) -> torch.Tensor:
    """``[i, j]``: caption j (stating ``stated[j]``) is true of image i, i != j. "a star" is as true of
    every other star in a batch as of its own: such a pair is no negative (``contrastive_loss``). A
    ``None`` scene is a non-scene: every non-scene's caption (stating ``NOTHING``) is true of it, and
    no scene's."""
    names = [NOTHING if s is None else s.names() for s in scenes]
    true = torch.ones(len(names), len(stated), dtype=torch.bool)
    for head in {h for facts in stated for h in facts}:  # per head: stated values against the images' (a
        codes: dict[str, int] = {}  # per-pair loop over the batch cost 17 ms of a 0.2 s training step)
        image = torch.tensor([codes.setdefault(n[head], len(codes)) if head in n else -1 for n in names])
        said = torch.tensor([codes.setdefault(facts[head], len(codes)) if head in facts else -2 for facts in stated])
        true &= (said[None, :] == -2) | (image[:, None] == said[None, :])
    return true & ~torch.eye(len(scenes), dtype=torch.bool)


def contrastive_loss(logits: torch.Tensor, captions: list[str], true: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric cross-entropy on an image x text ``logits`` matrix (row i: image i, column j:
    caption j; the diagonal pairs), with every *other* column holding the row's own caption left out
    of its softmax (and likewise by column): a duplicate caption is not a negative. ``true``
    (``also_true``): further off-diagonal pairs whose caption is true of the image, left out alike."""
    ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([ids[c] for c in captions])
    duplicate = (cid[:, None] == cid[None, :]) & ~torch.eye(len(captions), dtype=torch.bool)
    if true is not None:
        duplicate |= true
    masked = logits.masked_fill(duplicate, float("-inf"))
    target = torch.arange(len(captions))
    return (F.cross_entropy(masked, target) + F.cross_entropy(masked.T, target)) / 2


def nothing_caption(kind: str, rng: np.random.Generator) -> tuple[str, dict[str, str]]:
    """A caption of a non-scene of ``kind`` (``NOTHING_CAPTIONS``) and what it states (``NOTHING``)."""
    wordings = NOTHING_CAPTIONS[kind]
    return wordings[rng.integers(len(wordings))], NOTHING


def clip_views(images: torch.Tensor, negatives: NonScenes | None, idx: np.ndarray) -> torch.Tensor:
    """The batch ``idx`` of the training pool: scenes ``images`` first, then ``negatives``' images."""
    if negatives is None:
        return images[torch.from_numpy(idx)]
    n = len(images)
    out = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype)
    scene = torch.from_numpy(idx < n)
    out[scene] = images[torch.from_numpy(idx[idx < n])]
    out[~scene] = negatives.images[torch.from_numpy(idx[idx >= n] - n)]
    return out


def _pool(scenes: list[Scene], negatives: NonScenes | None) -> int:
    return len(scenes) + (len(negatives.kinds) if negatives is not None else 0)


def pretrain_image_tower(cfg: ClipConfig, model: Any, images: torch.Tensor, scenes: list[Scene],
                         vocab: Vocabulary, work: Path, progress: bool = True,
                         negatives: NonScenes | None = None) -> float:
    """LiT's first half: ``cfg.image_steps`` steps of the image tower (with a linear head per judge
    head of ``vocab`` on its pooled output, discarded afterwards) on the renders' labels, summed
    cross-entropy, AdamW with warmup and cosine decay; with ``negatives``, batches draw from the scenes
    and the non-scenes, and a scene head learns which is which (a non-scene has no attribute label).
    Resumable (``image_ckpt.pt``); loads the trained tower into ``model`` and returns the seconds it took."""
    from tqdm import tqdm

    from bench.world.judge import IGNORE, augment_vit

    tower = model.vision_model
    names = {head: list(labels) for head, labels in vocab.heads.items()}
    extra = _pool(scenes, negatives) - len(scenes)
    target = {head: torch.tensor([names[head].index(s.names()[head]) for s in scenes] + [IGNORE] * extra)
              for head in names}
    if negatives is not None:
        names["scene"] = ["scene", "nothing"]
        target["scene"] = torch.tensor([0] * len(scenes) + [1] * extra)
    heads = torch.nn.ModuleDict({h: torch.nn.Linear(tower.config.hidden_size, len(n)) for h, n in names.items()})
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.image_lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "image_ckpt.pt"
    start, prev = 0, 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        tower.load_state_dict(state["tower"])
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        start, prev = state["step"], state["seconds"]
    t0 = time.time()
    steps = cfg.image_steps
    bar = tqdm(range(start, steps), desc="image tower", initial=start, total=steps, mininterval=5,
               disable=not progress)
    pool = _pool(scenes, negatives)
    for step in bar:
        rng = np.random.default_rng([cfg.seed, 1, step])  # its own stream: the contrastive steps' stays as it was
        pick = rng.choice(pool, size=min(cfg.batch, pool), replace=False)
        idx = torch.from_numpy(pick)
        for group in opt.param_groups:
            group["lr"] = cfg.image_lr * _lr_factor(step, steps, min(cfg.warmup, steps))
        x = clip_views(images, negatives, pick)
        if cfg.augment:  # the ViT judge's augmentations, drawn from this step's stream
            x = augment_vit(x, torch.Generator().manual_seed(int(rng.integers(2**62))))
        pooled = tower(pixel_values=normalise(x)).pooler_output
        loss = sum(F.cross_entropy(heads[h](pooled), target[h][idx], ignore_index=IGNORE) for h in heads
                   if (target[h][idx] != IGNORE).any())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
        done = step + 1
        if done % cfg.ckpt_every == 0 or done == steps:
            state = {"tower": tower.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
                     "step": done, "seconds": prev + time.time() - t0}
            torch.save(state, ckpt.with_suffix(".tmp"))
            ckpt.with_suffix(".tmp").replace(ckpt)
    return prev + time.time() - t0


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only; gains, biases and the logit scale undecayed (open_clip's
    ``exclude`` rule in ``open_clip_train/main.py``: decaying the logit scale pulls the temperature back)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    plain = [p for n, p in named if p.ndim < 2 or "norm" in n or "bias" in n or "logit_scale" in n]
    ids = {id(p) for p in plain}
    return [{"params": plain, "weight_decay": 0.0},
            {"params": [p for _, p in named if id(p) not in ids], "weight_decay": weight_decay}]


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * p))


def train_clip(cfg: ClipConfig, images: torch.Tensor, scenes: list[Scene], work: Path,
               progress: bool = True, stop_after: int | None = None, vocab: Vocabulary = WORLD2,
               negatives: NonScenes | None = None) -> dict[str, Any]:
    """Train on ``images`` (N x 3 x 32 x 32 in [0, 1]) of ``scenes`` and on ``negatives`` (non-scenes,
    captioned by kind: ``nothing_caption``), drawn together into each batch; resumable from
    ``work/clip_ckpt.pt``; writes the model and tokenizer to ``work/clip`` (safetensors).
    ``stop_after``: checkpoint after that many steps and return (a time-sliced build; the next call
    resumes there and ends exactly where one uninterrupted run would)."""
    from tqdm import tqdm

    from bench.model.tokenizer import build_clip_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    model = make_clip(cfg)
    captions = CaptionTokens()
    ckpt = work / "clip_ckpt.pt"
    start, losses, prev = 0, [], 0.0
    if not ckpt.is_file() and cfg.image_steps:
        prev = pretrain_image_tower(cfg, model, images, scenes, vocab, work, progress, negatives)
    # LiT's locked image tower: the contrastive stage trains the text tower, both projections and the
    # temperature, and the image encoder keeps what its supervised pretraining learnt
    model.zero_grad(set_to_none=True)  # the pretraining's last gradients: no part of the clipped norm
    model.vision_model.requires_grad_(not cfg.lock_image)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98),
                            fused=cfg.fused_adam or None)
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, losses, prev = state["step"], state["losses"], state["seconds"]
    t0 = time.time()
    model.train()
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = tqdm(range(start, end), desc="world clip", initial=start, total=cfg.steps, mininterval=5,
               disable=not progress)
    pool, n = _pool(scenes, negatives), len(scenes)
    locked = locked_features(model, images, negatives) if cfg.lock_image else None
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step])  # a resumed run repeats every step exactly
        idx = rng.choice(pool, size=min(cfg.batch, pool), replace=False)
        text, stated = zip(*(described(scenes[i], rng) if i < n else nothing_caption(negatives.kinds[i - n], rng)
                             for i in idx), strict=True)
        text = list(text)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg.steps, cfg.warmup)
        if locked is not None:  # the locked tower's output, computed once; the projection still trains
            img = F.normalize(model.visual_projection(locked[torch.from_numpy(idx)]), dim=-1)
        else:
            img = image_embeddings(model, clip_views(images, negatives, idx), batch=len(idx))
        txt = text_embeddings(model, text, captions)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        loss = contrastive_loss(logits, text, also_true([scenes[i] if i < n else None for i in idx], list(stated))
                                if cfg.mask_true else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", refresh=False)
        done = step + 1
        if done % cfg.ckpt_every == 0 or done in (cfg.steps, end):
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": done, "losses": losses,
                     "seconds": prev + time.time() - t0}
            torch.save(state, ckpt.with_suffix(".tmp"))
            ckpt.with_suffix(".tmp").replace(ckpt)
    if end < cfg.steps:
        return {"stopped_at": end, "seconds": prev + time.time() - t0}
    model.eval()
    with torch.no_grad():  # stored as it ships (fp16 values, loaded as fp32): the frozen tower the
        for v in model.state_dict().values():  # UNet trains against is then bit for bit the shipped one
            if v.is_floating_point():
                v.copy_(v.half().float())
    model.save_pretrained(work / "clip", safe_serialization=True)
    build_clip_tokenizer().save_pretrained(work / "clip")
    meta = {"config": cfg.to_dict(), "vocab": vocab.version,
            "non_scenes": len(negatives.kinds) if negatives is not None else 0}  # rule 4 of the judge's reject
    (work / "clip" / "world_clip.json").write_text(json.dumps(meta, indent=2))
    return {"final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
            "seconds": prev + time.time() - t0, "steps": cfg.steps}


@torch.no_grad()
def locked_features(model: Any, images: torch.Tensor, negatives: NonScenes | None, batch: int = 512) -> torch.Tensor:
    """The locked image tower's pooled output (before the projection) for every image of the training
    pool, in ``clip_views`` order: the contrastive steps then cost the tower nothing (the same numbers as
    running it per batch, up to float summation order; about a quarter of a step at width 64)."""
    tower = model.vision_model
    pool = [images] if negatives is None else [images, negatives.images]
    return torch.cat([tower(pixel_values=normalise(x[i : i + batch])).pooler_output
                      for x in pool for i in range(0, len(x), batch)])


def training_views(cfg: ClipConfig, scenes: int, vocab: Vocabulary, vae: Any = None) -> tuple[np.ndarray, list[Scene]]:
    """The world CLIP's training images (uint8, n x 32 x 32 x 3) and their scenes: ``scenes`` renders
    from seed ``cfg.seed + 7``, ``cfg.jitter``, ``cfg.holes`` and ``cfg.large`` shares with jittered
    textures, holed textures and large shapes (``judge_build.Drawn``), and (given ``vae``) a
    ``cfg.vae_share`` share through the VAE's round trip, as the judges train (``judge_build.judge_set``).
    With every share 0 and no VAE these are exactly ``render_set``'s scenes."""
    from bench.worldgen.data import render_scenes, sample_scenes
    from bench.worldgen.judge_build import Drawn

    shares = Drawn(jitter=cfg.jitter, holes=cfg.holes, large=cfg.large)
    drawn = shares.apply(sample_scenes(cfg.seed + 7, scenes, 0.15, vocab), cfg.seed + 7)
    return _through_vae(render_scenes(drawn, "clip scenes"), vae, cfg.vae_share, cfg.seed + 11), drawn


def _through_vae(arr: np.ndarray, vae: Any, share: float, seed: int) -> np.ndarray:
    """``arr`` (uint8 views) with a ``share`` of them, drawn from ``seed``, replaced by their round trip
    through ``vae`` (none without a VAE)."""
    from bench.world.render import to_tensor
    from bench.worldgen.data import vae_roundtrip

    if vae is None or share <= 0:
        return arr
    pick = np.flatnonzero(np.random.default_rng(seed).random(len(arr)) < share)
    if len(pick):
        out = vae_roundtrip(vae, to_tensor(arr[pick]))
        arr[pick] = out.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return arr


def negative_views(cfg: ClipConfig, scenes: int, vocab: Vocabulary, vae: Any = None) -> tuple[np.ndarray, list[str]]:
    """The world CLIP's training non-scenes (uint8, m x 32 x 32 x 3; ``cfg.negatives`` per scene, from
    seed ``cfg.seed + 13``) and their kinds; (given ``vae``) a ``cfg.vae_share`` share through the VAE's
    round trip, as ``training_views``."""
    from bench.worldgen.negatives import render_negatives

    arr, kinds = render_negatives(cfg.seed + 13, int(round(cfg.negatives * scenes)), vocab=vocab)
    return _through_vae(arr, vae, cfg.vae_share, cfg.seed + 17), kinds


def load_negatives(work: Path, cfg: ClipConfig, scenes: int, vocab: Vocabulary, vae: Any = None) -> NonScenes | None:
    """``negative_views``, rendered once and cached in ``work/clip_negatives.npz``; None when
    ``cfg.negatives`` is 0."""
    if cfg.negatives <= 0:
        return None
    from bench.world.render import to_tensor

    path = work / "clip_negatives.npz"
    if not path.is_file():
        arr, kinds = negative_views(cfg, scenes, vocab, vae)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=arr, kinds=np.asarray(kinds))
        tmp.replace(path)
    z = np.load(path, allow_pickle=False)
    return NonScenes(to_tensor(z["images"]), [str(k) for k in z["kinds"]])


def pretrain(cfg: ClipConfig, work: Path, scenes: int, eval_scenes: int, vocab: Vocabulary = WORLD2,
             vae: Any = None) -> dict[str, Any]:
    """Render (once, cached in ``work``; ``training_views``, through ``vae`` when given) and train,
    then measure zero-shot accuracy on ``eval_scenes`` fresh, clean renders of another seed; the
    result lands in ``work/clip/zero_shot.json``."""
    from bench.world.render import render_batch, to_tensor
    from bench.worldgen.data import load_set, save_set

    work.mkdir(parents=True, exist_ok=True)
    data = work / "clip_train.npz"
    if not data.is_file():
        arr, drawn = training_views(cfg, scenes, vocab, vae)
        save_set(data, arr, drawn)
    images, _, drawn = load_set(data)
    negatives = load_negatives(work, cfg, scenes, vocab, vae)
    info = train_clip(cfg, images, drawn, work, vocab=vocab, negatives=negatives)
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(work / "clip", use_safetensors=True).eval()
    arr, held = render_batch(cfg.seed + 8, eval_scenes, vocab=vocab)
    acc = zero_shot(model, to_tensor(arr), held, vocab=vocab)
    result = {**info, "zero_shot": acc, "train_scenes": len(drawn), "eval_scenes": eval_scenes,
              "train_non_scenes": len(negatives.kinds) if negatives is not None else 0,
              "parameters": {"text": sum(p.numel() for p in model.text_model.parameters()),
                             "vision": sum(p.numel() for p in model.vision_model.parameters())}}
    (work / "clip" / "zero_shot.json").write_text(json.dumps(result, indent=2))
    return result


def save_text_tower(clip_dir: Path, out: Path) -> Any:
    """The text tower of the world CLIP in ``clip_dir`` as a ``CLIPTextModel`` folder (what a
    ``StableDiffusionPipeline``'s ``text_encoder`` is), its weights copied unchanged."""
    from transformers import CLIPModel, CLIPTextModel

    clip = CLIPModel.from_pretrained(clip_dir, use_safetensors=True)
    text = CLIPTextModel(clip.config.text_config)
    prefix = "text_model."
    keep = any(k.startswith(prefix) for k in text.state_dict())  # the prefix differs across transformers versions
    missing, unexpected = text.load_state_dict(
        {(k if keep else k[len(prefix):]): v for k, v in clip.state_dict().items() if k.startswith(prefix)},
        strict=False)
    if missing or unexpected:
        raise RuntimeError(f"world CLIP text tower does not fit CLIPTextModel: missing {missing}, extra {unexpected}")
    text.eval().save_pretrained(out, safe_serialization=True)
    return text


def ship_world_clip(clip_dir: Path, out: Path, text_encoder: Path) -> None:
    """Write the world CLIP in ``clip_dir`` to ``out`` without a second copy of its text tower (12 MB
    of the world's size): the tower is the pipeline's ``text_encoder`` bit for bit, so ``out`` keeps
    the config, the metadata and ``IMAGE_TOWER`` (vision tower, projections, logit scale, fp16) and
    records where the text tower is and its sha256 (``load_world_clip`` assembles and checks both).
    No ``model.safetensors`` is written, so ``CLIPModel.from_pretrained(out)`` fails loudly rather
    than loading a randomly initialised text tower."""
    import hashlib
    import shutil

    from safetensors.torch import load_file, save_file

    weights = load_file(clip_dir / "model.safetensors")
    tower = load_file(text_encoder / "model.safetensors")
    prefix = "text_model."
    for key, value in weights.items():  # the shipped tower must be this CLIP's, value for value
        if key.startswith(prefix):
            other = tower.get(key, tower.get(key[len(prefix):]))
            if other is None or not torch.equal(other.float(), value.float()):
                raise RuntimeError(f"{text_encoder} is not the world CLIP's text tower (differs at {key})")
    from bench.worldgen.data import fp16_files

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    save_file({k: v for k, v in weights.items() if not k.startswith(prefix)}, out / IMAGE_TOWER)
    shutil.copy(clip_dir / "config.json", out / "config.json")
    fp16_files(out)  # fp16 weights, a config that still loads them as fp32 (as the pipeline's folders)
    meta = json.loads((clip_dir / "world_clip.json").read_text())
    meta["text_tower"] = {"path": os.path.relpath(text_encoder, out),
                          "sha256": hashlib.sha256((text_encoder / "model.safetensors").read_bytes()).hexdigest()}
    meta["tokenizer"] = os.path.relpath(text_encoder.parent / "tokenizer", out)  # the real CLIP tokenizer
    (out / "world_clip.json").write_text(json.dumps(meta, indent=2))
    if (clip_dir / "zero_shot.json").is_file():
        shutil.copy(clip_dir / "zero_shot.json", out / "zero_shot.json")
