"""Scenes with one attribute drawn unclearly: where a judge head must answer "none" rather than pick.

A generator asked for "a red shape" averages over what it saw: faint, half-formed or blended
textures, silhouettes between two shapes. A judge trained only on clean classes must still pick one
class per head there, and two judges built differently pick differently (world 3's first build: the
CNN and the ViT agreed on the style of such images 67 % of the time). So every attribute head with
an open class list (object, colour, style) has one more class, ``none`` ("no concept of this type
present", ``bench.judges.base.REJECT_LABEL``), learnt from the scenes below; the character head's
own "none" ("no character") already is that answer. Every other head keeps the scene's true label.

Kinds (equal shares, in this order within every block of ``len(KINDS)`` images):
  faint   a textured style whose dark parts are 78-92 % as bright as its bright parts (clear styles
          are drawn at 35-70 %, ``render.jitter_texture``): a texture that is barely there
  blend   two or three styles averaged (each 35-65 %, or a third each): no one texture
  morph   a shape part-way between two or three shapes (their signed distances averaged, 40-60 %
          each or a third each; same place and size): no one shape
  mixed   two colours averaged (35-65 %) where the mix is far from every world colour
Nothing here comes from the world model's own outputs: the renderer draws all of it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from bench.world.render import (
    COLOURS,
    SIZE,
    WORLD2,
    Scene,
    Vocabulary,
    jitter_texture,
    render_mixture,
    render_scene,
    sample_scene,
    silhouette,
)

UNCLEAR_LABEL = "none"  # the class an open attribute head answers on an unclear image (REJECT_LABEL)
UNCLEAR_HEADS = ("object", "colour", "style")  # the character head's "none" already means "no character"
KINDS = {"faint": "style", "blend": "style", "morph": "object", "mixed": "colour"}  # kind -> unclear head
FAINT_SHADE = (0.78, 0.92)
BLEND_SHARE = (0.35, 0.65)  # the first style's share in a two-style blend
MORPH_SHARE = (0.4, 0.6)  # the first shape's share in a two-shape morph (at 0.3 it is the other shape)
MIX_SHARE = (0.35, 0.65)
MIX_MIN_DISTANCE = 70.0  # RGB distance from a mixed colour to the nearest world colour


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


def signed_distance(mask: np.ndarray, radius: int = 48) -> np.ndarray:
    """Chessboard distance (in supersampled pixels, up to ``radius``) to the mask's edge: negative
    inside the shape, positive outside; repeated 3x3 erosions of the shape and of its complement."""
    inside = torch.from_numpy(np.ascontiguousarray(mask >= 0.5, dtype=np.float32))[None, None]
    outside = 1 - inside
    dist = torch.zeros_like(inside)
    for _ in range(radius):
        inside, outside = -F.max_pool2d(-inside, 3, 1, 1), -F.max_pool2d(-outside, 3, 1, 1)
        dist += outside - inside
    return (dist + (1 - 2 * (mask >= 0.5).astype(np.float32))[None, None] * 0.5)[0, 0].numpy()


def _morph(rng, vocab, jitter):
    """Shapes in between: the weighted mean of the silhouettes' signed distances, cut at zero (an
    opaque shape part-way from one to the other, as a generator's blend looks, not a ghosted overlay)."""
    scene = _base(rng, vocab, jitter)
    shares = _shares(rng, *MORPH_SHARE)
    scenes = [scene]
    for shape in _others(rng, vocab.shapes, scene.shape, len(shares) - 1):  # each shape at its own angle
        scenes.append(replace(scene, shape=shape, angle=sample_scene(rng, vocab=vocab, shape=shape).angle))
    field = sum(w * signed_distance(silhouette(s)) for w, s in zip(shares, scenes, strict=True))
    return render_mixture(scenes, shares, cover=(field < 0).astype(np.float32)), scene


def _mixed(rng, vocab, jitter):
    palette = {c: np.asarray(COLOURS[c], np.float32) for c in vocab.colours}
    while True:
        scene = _base(rng, vocab, jitter)
        other = _others(rng, vocab.colours, scene.colour, 1)[0]
        w = float(rng.uniform(*MIX_SHARE))
        mix = w * palette[scene.colour] + (1 - w) * palette[other]
        if min(float(np.linalg.norm(mix - c)) for c in palette.values()) >= MIX_MIN_DISTANCE:
            return render_mixture([scene, replace(scene, colour=other)], [w, 1 - w]), scene


_MAKERS = {"faint": _faint, "blend": _blend, "morph": _morph, "mixed": _mixed}


def render_unclear(seed: int, n: int, vocab: Vocabulary = WORLD2, jitter: float = 0.7
                   ) -> tuple[np.ndarray, list[dict[str, int]], list[str]]:
    """``n`` scenes of ``vocab`` from ``seed``, each with one attribute drawn unclearly: uint8
    (n, 32, 32, 3), the label index per head (the unclear head's is its ``none`` class, one past
    ``vocab.heads[head]``), and each image's kind. ``jitter``: share drawn with jittered textures."""
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
