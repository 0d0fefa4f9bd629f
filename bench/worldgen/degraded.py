"""Degraded but valid scenes: images the judge must read, not reject.

An edited model rarely draws a world scene as cleanly as the renderer does. Its images come out
soft, grainy, warped, low in contrast, tinted, fringed, small, cut by the frame, with textures off
the world's values; still, a person reads the shape, its colour and its texture at a glance. The
reject option is for images in which *nothing* can be read (``negatives.py``), so these images are
valid scenes, and each keeps every true label of the scene it was drawn from.

Kinds (equal shares, in this order within every block of ``len(KINDS)`` images); the strengths are
bounded away from the non-scenes' (``negatives.py``: blur sigma 2.5-5 px, a cut-off shape's centre
beyond the frame's edge, noise of std 30-90 on a blank frame):

  blur       Gaussian blur, sigma 0.6-1.5 px
  noise      Gaussian pixel noise, std 8-24 (of 255)
  warp       a smooth random displacement of up to 1-2 px, rotation +-12 deg, scale 0.9-1.1
  cutoff     the shape pushed against the frame: 15-45 % of its radius beyond the edge
  small      the shape drawn at 0.20-0.30 of the image (the world draws 0.30-0.40)
  texture    a textured style drawn off its values (``render.jitter_texture``) with holes (``Scene.holes``
             0.3-0.9)
  contrast   the shape 15-40 % towards the background, a colour cast, 0-35 % desaturation
  fringe     colour fringes: one channel shifted by 1 px, an unsharp-mask halo
  faded      a washed-out scene: a blur (sigma 0.6-1.2 px), the shape's colour bleeding into its
             surround, the frame 35-65 % of the way to a light, tinted, uneven haze (grey 130-200), 0-30 %
             desaturation, one channel shifted by 1 px, a strong halo and a contrast stretch (how an over-trained text encoder's model draws: lighter than any world
             background, soft and fringed, the shape still plain to see)
  vae        one or two round trips through the world's VAE (with a VAE; else the kind is skipped)
  mixed      two or three of the kinds above, one after another

Measured on these with a judge: ``degraded_report``; the judges train on a share of them
(``WorldConfig.judge_degraded``, ``judge_build.judge_set``). Nothing here comes from a world
model's own outputs: the renderer and simple image operations draw all of it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from bench.world.render import (
    SIZE,
    WORLD2,
    Scene,
    Vocabulary,
    jitter_texture,
    render_scene,
    sample_scene,
    to_tensor,
)

PIXEL_KINDS = ("blur", "noise", "warp", "contrast", "fringe", "faded")  # image operations on a rendered scene
SCENE_KINDS = ("cutoff", "small", "texture")  # drawn differently by the renderer
KINDS = ("blur", "noise", "warp", "cutoff", "small", "texture", "contrast", "fringe", "faded", "vae", "mixed")
BLUR_SIGMA = (0.6, 1.5)
NOISE_STD = (8.0, 24.0)
CUTOFF_OUT = (0.15, 0.45)  # share of the shape's radius beyond the frame's edge
SMALL_SCALE = (0.20, 0.30)
HOLES = (0.3, 0.9)
FADE = (0.35, 0.65)  # share of the way to the haze
HAZE = (130.0, 200.0)  # the haze's grey, of 255


def _cutoff(scene: Scene, rng: np.random.Generator) -> Scene:
    """The shape's centre moved towards one edge until ``CUTOFF_OUT`` of its radius lies beyond it."""
    out = float(rng.uniform(*CUTOFF_OUT))
    edge = scene.scale * (1 - out)  # the centre's distance from the edge
    side = int(rng.integers(0, 4))
    pos = edge if side % 2 == 0 else 1 - edge
    return replace(scene, cx=pos, cy=scene.cy) if side < 2 else replace(scene, cx=scene.cx, cy=pos)


def _scene_kind(kind: str, scene: Scene, rng: np.random.Generator) -> Scene:
    if kind == "cutoff":
        return _cutoff(scene, rng)
    if kind == "small":
        return replace(scene, scale=float(rng.uniform(*SMALL_SCALE)))
    return replace(jitter_texture(scene, rng), holes=float(rng.uniform(*HOLES)))  # texture


def _gauss(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(2.5 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    y = F.pad(x[None], (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)[0]


def _warp(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    amp = float(rng.uniform(1.0, 2.0)) * 2 / SIZE  # pixels -> grid units
    field = torch.from_numpy(rng.normal(0, 1, size=(1, 2, 4, 4)).astype(np.float32))
    field = F.interpolate(field, size=(SIZE, SIZE), mode="bicubic", align_corners=True)
    field = field / field.abs().amax().clamp(min=1e-6) * amp
    a, s = math.radians(float(rng.uniform(-12, 12))), float(rng.uniform(0.9, 1.1))
    theta = torch.tensor([[math.cos(a) / s, -math.sin(a) / s, 0.0], [math.sin(a) / s, math.cos(a) / s, 0.0]])
    grid = F.affine_grid(theta[None], [1, 3, SIZE, SIZE], align_corners=False) + field.permute(0, 2, 3, 1)
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def _contrast(x: torch.Tensor, background: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    towards = float(rng.uniform(0.15, 0.40))
    y = x + (background.view(3, 1, 1) - x) * towards
    cast = torch.from_numpy(rng.uniform(-0.06, 0.06, size=(3, 1, 1)).astype(np.float32))
    grey = y.mean(0, keepdim=True)
    return y + (grey - y) * float(rng.uniform(0, 0.35)) + cast


def _fringe(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    y = x.clone()
    c, dx, dy = int(rng.integers(0, 3)), int(rng.choice([-1, 1])), int(rng.choice([-1, 0, 1]))
    y[c] = torch.roll(x[c], shifts=(dy, dx), dims=(0, 1))
    amount = float(rng.uniform(0.3, 0.8))
    return y + (y - _gauss(y, 1.0)) * amount


def _faded(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    haze = torch.from_numpy((rng.uniform(*HAZE) + rng.uniform(-15, 15, size=(3, 1, 1))).astype(np.float32)) / 255
    y = _gauss(x, float(rng.uniform(0.6, 1.2)))
    y = y + (_gauss(x, float(rng.uniform(2.5, 4.0))) - y) * float(rng.uniform(0.2, 0.45))  # colour bleeding out
    mottle = torch.from_numpy(rng.normal(0, 0.04, size=(1, 3, 4, 4)).astype(np.float32))
    haze = haze + F.interpolate(mottle, size=(SIZE, SIZE), mode="bicubic", align_corners=True)[0]  # uneven haze
    y = y + (haze - y) * float(rng.uniform(*FADE))
    y = y + (y.mean(0, keepdim=True) - y) * float(rng.uniform(0, 0.3))
    c, dx = int(rng.integers(0, 3)), int(rng.choice([-1, 1]))
    y[c] = torch.roll(y[c], shifts=(0, dx), dims=(0, 1))
    y = y + (y - _gauss(y, float(rng.uniform(1.0, 2.0)))) * float(rng.uniform(1.0, 2.0))  # halo
    mean = y.mean(dim=(1, 2), keepdim=True)
    return mean + (y - mean) * float(rng.uniform(1.0, 1.4))


def _pixel_kind(kind: str, x: torch.Tensor, background: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    if kind == "blur":
        return _gauss(x, float(rng.uniform(*BLUR_SIGMA)))
    if kind == "noise":
        return x + torch.from_numpy(rng.normal(0, rng.uniform(*NOISE_STD) / 255, size=x.shape).astype(np.float32))
    if kind == "warp":
        return _warp(x, rng)
    if kind == "contrast":
        return _contrast(x, background, rng)
    if kind == "faded":
        return _faded(x, rng)
    return _fringe(x, rng)


def _one(kind: str, scene: Scene, rng: np.random.Generator, has_vae: bool) -> tuple[torch.Tensor, int]:
    """One degraded image (float 3 x 32 x 32) and how many VAE round trips it still needs."""
    if kind == "mixed":
        pool = [*PIXEL_KINDS, *SCENE_KINDS, *(("vae",) if has_vae else ())]
        steps = [str(k) for k in rng.choice(pool, size=int(rng.integers(2, 4)), replace=False)]
    else:
        steps = [kind]
    for k in steps:
        if k in SCENE_KINDS:
            scene = _scene_kind(k, scene, rng)
    x = to_tensor(render_scene(scene)[None])[0]
    background = torch.tensor(scene.background, dtype=torch.float32) / 255
    for k in steps:
        if k in PIXEL_KINDS:
            x = _pixel_kind(k, x, background, rng).clamp(0, 1)
    trips = int(rng.integers(1, 3)) if "vae" in steps else 0
    return x, trips


def render_degraded(seed: int, n: int, vocab: Vocabulary = WORLD2, vae=None, kinds: tuple[str, ...] = KINDS,
                    character_prob: float = 0.15) -> tuple[torch.Tensor, list[Scene], list[str]]:
    """``n`` degraded but valid scenes of ``vocab`` from ``seed``: float images N x 3 x 32 x 32 in
    [0, 1], the scene each was drawn from (its labels are the image's: ``Scene.labels``) and its kind.
    Without ``vae`` the kind ``vae`` is left out (and ``mixed`` draws no round trip)."""
    from bench.worldgen.data import vae_roundtrip

    kinds = tuple(k for k in kinds if k != "vae" or vae is not None)
    rng = np.random.default_rng(seed)
    names = [kinds[i % len(kinds)] for i in range(n)]
    scenes, images, trips = [], [], []
    textured = [v for v in vocab.styles if v != "solid"]
    for kind in names:
        if kind == "texture":  # a solid shape has no texture to draw off its values
            scene = sample_scene(rng, vocab=vocab, style=str(rng.choice(textured)))
        else:
            scene = sample_scene(rng, character_prob=character_prob, vocab=vocab)
        x, t = _one(kind, scene, rng, vae is not None)
        scenes.append(scene)
        images.append(x)
        trips.append(t)
    out = torch.stack(images) if images else torch.zeros(0, 3, SIZE, SIZE)
    with torch.no_grad():
        for rounds in (1, 2):
            idx = [i for i, t in enumerate(trips) if t >= rounds]
            if idx:
                out[idx] = vae_roundtrip(vae, out[idx])
    return out, scenes, names


def degraded_report(judge, images: torch.Tensor, scenes: list[Scene], names: list[str]) -> dict:
    """What ``judge`` (a ``WorldJudge``) makes of degraded scenes: the reject rate and each head's
    accuracy over the images it accepts (a rejected image is not read), in all and per kind."""
    from bench.world.judge import REJECT_HEAD

    pred = judge.predict(images)
    rejected = judge.rejected(pred)
    labels = {h: torch.tensor([s.labels()[h] for s in scenes]) for h in judge.attribute_heads}

    def summary(mask: torch.Tensor) -> dict:
        keep = mask & ~rejected
        row = {"n": int(mask.sum()), "reject": float(rejected[mask].float().mean()) if mask.any() else None}
        for h, y in labels.items():
            row[h] = float((pred[h][keep] == y[keep]).float().mean()) if keep.any() else None
        return row

    every = torch.ones(len(names), dtype=torch.bool)
    out = {"all": summary(every)}
    for kind in dict.fromkeys(names):
        out[kind] = summary(torch.tensor([k == kind for k in names]))
    out["reject_head"] = REJECT_HEAD
    return out
