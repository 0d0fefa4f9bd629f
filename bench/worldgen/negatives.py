"""Synthetic "nothing here" images: what the judge must reject rather than label.

A judge forced to pick a class per head labels a colour wash "a green solid square" with high
confidence, so a model that draws nothing would earn retain credit. The judge therefore learns a
reject class from images that are not valid ConceptWorld scenes. They come from the renderer and
from simple image operations only, never from the world model's own outputs labelled by prompt
(that would teach the judge the model's failures as the truth).

Kinds (equal shares, in this order within every block of ``len(KINDS)`` images):
  blank       a uniform frame (any grey or colour) with sensor-like noise
  wash        a pastel or saturated colour wash with a soft low-frequency blotch pattern
  gradient    a linear or radial gradient between two random colours
  noise       white, coloured or salt-and-pepper noise around a random base colour
  blur        a valid scene blurred until the shape is gone (Gaussian, sigma 2.5-5 px)
  cutoff      a shape pushed mostly out of the frame (a sliver left)
  shattered   a scene cut into tiles that are shuffled, or its shape broken into displaced shards
  fused       two or three shapes drawn overlapping into one blob
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image, ImageFilter

from bench.world.render import COLOURS, SIZE, WORLD2, Vocabulary, render_scene, render_shapes, sample_scene

KINDS = ("blank", "wash", "gradient", "noise", "blur", "cutoff", "shattered", "fused")
_PALETTE = np.asarray(list(COLOURS.values()), np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A world colour, a grey, a pastel (colour mixed with white) or any RGB, equally often."""
    k = rng.integers(0, 4)
    if k == 0:
        return _PALETTE[rng.integers(0, len(_PALETTE))].copy()
    if k == 1:
        return np.full(3, rng.uniform(20, 235), np.float32)
    if k == 2:
        c = _PALETTE[rng.integers(0, len(_PALETTE))]
        return c + (255 - c) * rng.uniform(0.3, 0.75)
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _smooth_field(rng: np.random.Generator, cells: int, channels: int) -> np.ndarray:
    """A low-frequency random field in [0, 1] (``cells`` x ``cells`` values, bicubic-upsampled)."""
    grid = rng.uniform(0, 1, size=(cells, cells, channels)).astype(np.float32)
    planes = [np.asarray(Image.fromarray(grid[..., i]).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
              for i in range(channels)]
    return np.clip(np.stack(planes, -1), 0, 1)


def _noise(img: np.ndarray, rng: np.random.Generator, max_std: float = 8.0) -> np.ndarray:
    return img + rng.normal(0, rng.uniform(0, max_std), size=img.shape).astype(np.float32)


def _blank(rng: np.random.Generator) -> np.ndarray:
    return _noise(np.broadcast_to(_random_colour(rng), (SIZE, SIZE, 3)).astype(np.float32), rng)


def _wash(rng: np.random.Generator) -> np.ndarray:
    a, b = _random_colour(rng), _random_colour(rng)
    if rng.random() < 0.5:  # mostly one colour, softly mottled
        b = a + rng.uniform(-40, 40, size=3).astype(np.float32)
    t = _smooth_field(rng, int(rng.integers(2, 6)), 1)
    return _noise(a * (1 - t) + b * t, rng, 5.0)


def _gradient(rng: np.random.Generator) -> np.ndarray:
    a, b = _random_colour(rng), _random_colour(rng)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)
    else:
        cx, cy = rng.uniform(0.2, 0.8, size=2)
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6))[..., None]
    return _noise(a * (1 - t) + b * t, rng, 5.0)


def _noise_frame(rng: np.random.Generator) -> np.ndarray:
    base = np.broadcast_to(_random_colour(rng), (SIZE, SIZE, 3)).astype(np.float32)
    k = rng.integers(0, 3)
    if k == 0:  # grey noise
        return base + rng.normal(0, rng.uniform(30, 90), size=(SIZE, SIZE, 1)).astype(np.float32)
    if k == 1:  # coloured noise
        return base + rng.normal(0, rng.uniform(30, 90), size=(SIZE, SIZE, 3)).astype(np.float32)
    img = base.copy()  # salt and pepper
    u = rng.random((SIZE, SIZE))
    p = rng.uniform(0.1, 0.4)
    img[u < p / 2] = 0
    img[u > 1 - p / 2] = 255
    return img


def _blur(rng: np.random.Generator, vocab: Vocabulary) -> np.ndarray:
    img = Image.fromarray(render_scene(sample_scene(rng, vocab=vocab)))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(2.5, 5.0))), np.float32)


def _cutoff(rng: np.random.Generator, vocab: Vocabulary) -> np.ndarray:
    scene = sample_scene(rng, vocab=vocab)
    along = float(rng.uniform(0.2, 0.8))
    out = float(rng.choice([-1.0, 1.0])) * rng.uniform(0.42, 0.55)  # centre beyond the edge
    cx, cy = (0.5 + out, along) if rng.random() < 0.5 else (along, 0.5 + out)
    return render_scene(replace(scene, cx=cx, cy=cy)).astype(np.float32)


def _shattered(rng: np.random.Generator, vocab: Vocabulary) -> np.ndarray:
    img = render_scene(sample_scene(rng, vocab=vocab)).astype(np.float32)
    tiles = int(rng.choice([2, 4]))
    t = SIZE // tiles
    blocks = [img[i * t:(i + 1) * t, j * t:(j + 1) * t] for i in range(tiles) for j in range(tiles)]
    order = rng.permutation(len(blocks))
    while tiles == 2 and (order == np.arange(4)).all():
        order = rng.permutation(4)
    if rng.random() < 0.5:  # rotate every shard as well
        blocks = [np.rot90(b, int(rng.integers(1, 4))) for b in blocks]
    rows = [np.concatenate([blocks[order[i * tiles + j]] for j in range(tiles)], 1) for i in range(tiles)]
    return np.concatenate(rows, 0)


def _fused(rng: np.random.Generator, vocab: Vocabulary) -> np.ndarray:
    first = sample_scene(rng, character_prob=0.0, vocab=vocab)
    scenes = [replace(first, cx=float(rng.uniform(0.35, 0.45)), cy=float(rng.uniform(0.35, 0.65)))]
    for _ in range(int(rng.integers(1, 3))):
        other = sample_scene(rng, character_prob=0.0, vocab=vocab)
        scenes.append(replace(other, cx=float(rng.uniform(0.55, 0.68)), cy=float(rng.uniform(0.35, 0.65)),
                              scale=float(rng.uniform(0.26, 0.36))))
    return render_shapes(scenes).astype(np.float32)


_MAKERS = {"blank": _blank, "wash": _wash, "gradient": _gradient, "noise": _noise_frame, "blur": _blur,
           "cutoff": _cutoff, "shattered": _shattered, "fused": _fused}


_SCENE_MAKERS = {"blur", "cutoff", "shattered", "fused"}  # those drawn from a world's scenes


def render_negatives(seed: int, n: int, kinds: tuple[str, ...] = KINDS, vocab: Vocabulary = WORLD2
                     ) -> tuple[np.ndarray, list[str]]:
    """``n`` reject-class images from ``seed`` (scenes of ``vocab`` where a kind starts from one):
    uint8 (n, 32, 32, 3) and the kind of each."""
    rng = np.random.default_rng(seed)
    names = [kinds[i % len(kinds)] for i in range(n)]
    images = [np.clip(np.round(_MAKERS[k](rng, vocab) if k in _SCENE_MAKERS else _MAKERS[k](rng)), 0, 255
                      ).astype(np.uint8) for k in names]
    return (np.stack(images) if images else np.zeros((0, SIZE, SIZE, 3), np.uint8)), names
