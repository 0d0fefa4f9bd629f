"""Scenes whose style is drawn unclearly: where the style head must answer "none" rather than pick.

A generator asked for "a red shape" averages over the textures it saw: faint, half-formed or
blended ones. A judge trained only on clean styles must still pick one there, and two judges built
differently pick differently: on world 3's build b3 the CNN and the ViT agreed on the style of the
model's images whose prompt names no style 67 % of the time. So the style head has one more class,
``none`` ("no concept of this type present", ``bench.api.judge.REJECT_LABEL``), learnt from the
scenes below, in which every other head keeps the scene's true label (the character head's own
"none", "no character", already is that answer for characters).

Kinds (equal shares, alternating):
  faint   a textured style whose dark parts are 78-92 % as bright as its bright parts (clear styles
          are drawn at 35-70 %, ``render.jitter_texture``): a texture that is barely there
  blend   two or three styles averaged (each 35-65 %, or a third each): no one texture
Nothing here comes from the world model's own outputs: the renderer draws all of it.

A judge learns these only when built with ``judge_unclear`` > 0 (``WorldConfig``; off by default).
On world 3's build b3, with the judges' holed scenes in both arms (``Scene.holes``), it raised the two
judges' style agreement on the model's images from 78.9 % to 90.0 % (87.8 % where the prompt leaves
the style open, against 66.5 %), but a faint texture that a prompt did name then reads "none": the
CNN's style reading of named prompts fell from 97.4 % to 95.9 %, below the 97 % gate. World 2.1's
judges retrained with it answer none on 92-94 % of fresh faint textures but only 34-44 % of fresh
blends (many read as one of their styles), and on none of 400 fresh renders.

Tried on build b3 and left out (judges retrained, same model and evaluation): shapes part-way
between two (their signed distances averaged) as the object head's "none", and two colours mixed
as the colour head's. Neither raised the two judges' agreement on the model's images (object 84.7 %
against 86.2 % without; colour 90.5 % against 93.3 %), and the colour "none" fired on 5 % of the
images whose prompt names the colour: a generator's colours drift off the palette without being mixes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bench.api.judge import REJECT_LABEL
from bench.world.render import (
    SIZE,
    WORLD2,
    Scene,
    Vocabulary,
    jitter_texture,
    render_mixture,
    render_scene,
    sample_scene,
)

UNCLEAR_LABEL = REJECT_LABEL  # the class an open attribute head answers on an unclear image
UNCLEAR_HEADS = ("style",)
KINDS = {"faint": "style", "blend": "style"}  # kind -> unclear head
FAINT_SHADE = (0.78, 0.92)
BLEND_SHARE = (0.35, 0.65)  # the first style's share in a two-style blend


def _base(rng: np.random.Generator, vocab: Vocabulary, jitter: float, **fixed: str) -> Scene:
    scene = sample_scene(rng, character_prob=0.0, vocab=vocab, **fixed)
    return jitter_texture(scene, rng) if rng.random() < jitter else scene


def _shares(rng: np.random.Generator, low: float, high: float) -> list[float]:
    if rng.random() < 0.25:
        return [1 / 3] * 3
    w = float(rng.uniform(low, high))
    return [w, 1 - w]


def _others(rng: np.random.Generator, options: tuple[str, ...], first: str, k: int) -> list[str]:
    rest = [o for o in options if o != first]
    return [str(o) for o in rng.choice(rest, size=k, replace=False)]


def _faint(rng, vocab, jitter):
    scene = _base(rng, vocab, 1.0, style=str(rng.choice([s for s in vocab.styles if s != "solid"])))
    scene = replace(scene, dark_shade=float(rng.uniform(*FAINT_SHADE)))
    return render_scene(scene), scene


def _blend(rng, vocab, jitter):
    scene = _base(rng, vocab, jitter)
    shares = _shares(rng, *BLEND_SHARE)
    scenes = [scene] + [replace(scene, style=s) for s in _others(rng, vocab.styles, scene.style, len(shares) - 1)]
    return render_mixture(scenes, shares), scene


_MAKERS = {"faint": _faint, "blend": _blend}


def render_unclear(seed: int, n: int, vocab: Vocabulary = WORLD2, jitter: float = 0.7
                   ) -> tuple[np.ndarray, list[dict[str, int]], list[str]]:
    """``n`` scenes of ``vocab`` from ``seed``, each with an unclear texture: uint8 (n, 32, 32, 3),
    the label index per head (the style's is the style head's ``none`` class, one past
    ``vocab.heads["style"]``), and each image's kind. ``jitter``: the share of blends drawn with
    jittered textures (faint textures always are)."""
    rng = np.random.default_rng(seed)
    kinds = list(KINDS)
    images, labels, names = [], [], []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        img, scene = _MAKERS[kind](rng, vocab, jitter)
        row = {h: vocab.heads[h].index(v) for h, v in scene.names().items()}
        row[KINDS[kind]] = len(vocab.heads[KINDS[kind]])
        images.append(img)
        labels.append(row)
        names.append(kind)
    return (np.stack(images) if images else np.zeros((0, SIZE, SIZE, 3), np.uint8)), labels, names
