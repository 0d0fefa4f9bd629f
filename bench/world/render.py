"""ConceptWorld's renderer: 32x32 scenes of one textured shape, deterministic from a seed.

Scenes are drawn at 4x with PIL and box-downsampled, so edges are anti-aliased the same way
every time. Shapes, colours and textures are chosen to stay unambiguous at 32x32: rotation is
limited per shape (a square turned 45 degrees would be a diamond) and each texture has its own
orientation and period.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SUPER = 4  # supersampling factor
_S = SIZE * SUPER

# Near-neighbour pairs on purpose: circle/ring, square/diamond, star/cross, triangle/moon.
SHAPES = ("circle", "ring", "square", "diamond", "triangle", "moon", "star", "cross")
# Half-range of the random rotation (degrees) that keeps each shape itself.
_ROTATION = {
    "circle": 180.0, "ring": 180.0, "square": 8.0, "diamond": 8.0,
    "triangle": 12.0, "moon": 25.0, "star": 12.0, "cross": 8.0,
}
COLOURS = {
    "red": (225, 30, 30),
    "orange": (255, 135, 0),
    "yellow": (245, 225, 20),
    "green": (30, 185, 45),
    "cyan": (20, 220, 230),
    "blue": (35, 70, 235),
    "purple": (150, 40, 210),
    "pink": (255, 120, 200),
}
STYLES = ("solid", "striped", "dotted", "checkered")
# Brightness of a texture's dark parts: high enough that the silhouette survives on a dark
# background (at 0.3 a striped cross lost its arms; a trial build drew 'a cross' right 36% of the time).
DARK_SHADE = 0.5
# Characters: a fixed combination plus a feature no plain scene has (white eyes / a white band),
# so erasing the character need not erase "purple dotted star".
CHARACTERS = {
    "zorbo": {"shape": "star", "colour": "purple", "style": "dotted", "mark": "two eyes"},
    "blimsy": {"shape": "circle", "colour": "orange", "style": "striped", "mark": "one big eye"},
    "quaddle": {"shape": "square", "colour": "green", "style": "checkered", "mark": "white crown"},
}
NONE_CHARACTER = "none"
CHARACTER_CLASSES = (NONE_CHARACTER, *CHARACTERS)
HEADS = {
    "object": SHAPES,
    "colour": tuple(COLOURS),
    "style": STYLES,
    "character": CHARACTER_CLASSES,
}

# ---- world 3's vocabulary: twice the test concepts -------------------------------------------------------
# Added after world 2's, so world 2's names keep their class indices (a world-2 scene has the same
# labels under either vocabulary) and world 2's draws are unchanged. New near-neighbour pairs:
# hexagon/circle, arrow/triangle, hourglass/diamond, heart/circle.
NEW_SHAPES = ("heart", "hexagon", "arrow", "hourglass")
_ROTATION.update({"heart": 10.0, "hexagon": 8.0, "arrow": 10.0, "hourglass": 8.0})
# halved: the shape's left half bright, its right half dark (a texture of no period at all: the
# lowest frequency a style can have, which the VAE keeps best; concentric rings were tried and read
# as the object "ring"); gradient: bright at the shape's top fading to dark at its bottom, as low in
# frequency as halved and at a right angle to it. Concept set 3.0's sixth style, pinstriped (thin
# vertical lines of period 7), was a sub-pattern of the dots (period 6 on both axes): build b2 drew
# "a dotted red circle" as columns without rows, read pinstriped on half of its images.
NEW_STYLES = ("halved", "gradient")
NEW_CHARACTERS = {
    "trizzle": {"shape": "triangle", "colour": "yellow", "style": "solid", "mark": "white smile"},
    "hexbert": {"shape": "hexagon", "colour": "cyan", "style": "striped", "mark": "three white dots"},
    "mopple": {"shape": "heart", "colour": "red", "style": "checkered", "mark": "white bar"},
}
CHARACTER_SPECS = {**CHARACTERS, **NEW_CHARACTERS}  # every character either world draws
_ATTRIBUTE = {"object": "shape", "colour": "colour", "style": "style", "character": "character"}


@dataclass(frozen=True)
class Vocabulary:
    """What a world draws and its judges classify: the class list of every head."""

    version: str
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    styles: tuple[str, ...]
    characters: tuple[str, ...]

    @property
    def heads(self) -> dict[str, tuple[str, ...]]:
        return {"object": self.shapes, "colour": self.colours, "style": self.styles,
                "character": (NONE_CHARACTER, *self.characters)}


WORLD2 = Vocabulary("2", SHAPES, tuple(COLOURS), STYLES, tuple(CHARACTERS))
WORLD3 = Vocabulary("3", SHAPES + NEW_SHAPES, tuple(COLOURS), STYLES + NEW_STYLES, tuple(CHARACTER_SPECS))
VOCABULARIES = {v.version: v for v in (WORLD2, WORLD3)}


def vocabulary(version: str) -> Vocabulary:
    if version not in VOCABULARIES:
        raise ValueError(f"unknown world vocabulary {version!r}: one of {sorted(VOCABULARIES)}")
    return VOCABULARIES[version]


@dataclass(frozen=True)
class Scene:
    """Everything that decides one rendered image."""

    shape: str
    colour: str
    style: str
    character: str = NONE_CHARACTER
    cx: float = 0.5  # centre, fraction of the image
    cy: float = 0.5
    scale: float = 0.36  # outer radius, fraction of the image
    angle: float = 0.0  # degrees
    background: tuple[int, int, int] = (90, 90, 90)
    noise: float = 0.0  # std of background noise, in 0..255 units
    phase: float = 0.0  # texture phase, fraction of a period
    seed: int = 0  # noise seed
    # texture geometry: the world's own values by default; the judge trains on jittered ones
    # (``jitter_texture``) because a generator draws dots and stripes a little off these values
    stripe_period: float = 10.0
    dot_period: float = 6.0
    dot_radius: float = 2.0
    check_cell: float = 5.0
    dark_shade: float = DARK_SHADE
    split: float = 0.0  # world 3's styles: where "halved" splits, in shape radii right of the centre
    # world 3's "gradient": the ramp's length in shape diameters, centred on the shape (shorter than the
    # shape, so its top and bottom show the full bright and dark shades, as a halved shape's halves do)
    fade: float = 0.7
    # share of the texture's dark parts left unpainted, the background showing through (0: none, the
    # world's own scenes): a generator often dissolves a textured shape into its bright parts (bars,
    # blobs, half a shape), and the judges train on such scenes (``judge_build.judge_set``)
    holes: float = 0.0

    def names(self) -> dict[str, str]:
        """Class name per judge head."""
        return {head: getattr(self, attribute) for head, attribute in _ATTRIBUTE.items()}

    def labels(self) -> dict[str, int]:
        """Class index per judge head (world 3's lists, of which world 2's are the first entries)."""
        return {head: WORLD3.heads[head].index(name) for head, name in self.names().items()}

    def to_dict(self) -> dict:
        return asdict(self)


CENTRE = (0.42, 0.58)  # where a sampled scene's centre lies (x and y), as a fraction of the image
SCALE = (0.30, 0.40)  # a sampled scene's outer radius, as a fraction of the image


def sample_scene(rng: np.random.Generator, character_prob: float = 0.15, vocab: Vocabulary | None = None,
                 **fixed: str) -> Scene:
    """Draw a random scene of ``vocab`` (default world 2's); ``fixed`` pins attributes
    (shape/colour/style/character)."""
    vocab = vocab or WORLD2
    character = fixed.get("character")
    if character is None and not ({"shape", "colour", "style"} & set(fixed)):
        character = str(rng.choice(list(vocab.characters))) if rng.random() < character_prob else NONE_CHARACTER
    character = character or NONE_CHARACTER
    if character != NONE_CHARACTER:
        spec = CHARACTER_SPECS[character]
        shape, colour, style = spec["shape"], spec["colour"], spec["style"]
    else:
        shape = fixed.get("shape") or str(rng.choice(vocab.shapes))
        colour = fixed.get("colour") or str(rng.choice(list(vocab.colours)))
        style = fixed.get("style") or str(rng.choice(vocab.styles))
    base_angle = 45.0 if shape == "diamond" else 0.0
    grey = rng.uniform(35, 110)
    tint = rng.uniform(-12, 12, size=3)
    return Scene(
        shape=shape,
        colour=colour,
        style=style,
        character=character,
        cx=float(rng.uniform(*CENTRE)),
        cy=float(rng.uniform(*CENTRE)),
        scale=float(rng.uniform(*SCALE)),
        angle=float(base_angle + rng.uniform(-1, 1) * _ROTATION[shape]),
        background=tuple(int(np.clip(grey + t, 0, 255)) for t in tint),
        noise=float(rng.uniform(0, 8)),
        phase=float(rng.uniform(0, 1)),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def _rot(points: list[tuple[float, float]], angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _regular(n: int, r: float, offset: float = -90.0) -> list[tuple[float, float]]:
    return [(r * math.cos(math.radians(offset + 360 * k / n)), r * math.sin(math.radians(offset + 360 * k / n)))
            for k in range(n)]


def _shape_mask(scene: Scene) -> Image.Image:
    """Binary mask (mode L, supersampled) of the shape's silhouette."""
    m = Image.new("L", (_S, _S), 0)
    d = ImageDraw.Draw(m)
    cx, cy, r = scene.cx * _S, scene.cy * _S, scene.scale * _S
    if scene.shape in ("circle", "ring"):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if scene.shape == "ring":
            ri = 0.55 * r
            d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif scene.shape in ("square", "diamond"):
        h = 0.82 * r if scene.shape == "square" else 0.76 * r
        d.polygon(_rot([(-h, -h), (h, -h), (h, h), (-h, h)], scene.angle, cx, cy), fill=255)
    elif scene.shape == "triangle":
        pts = _regular(3, 1.1 * r)
        pts = [(x, y + 0.18 * r) for x, y in pts]
        d.polygon(_rot(pts, scene.angle, cx, cy), fill=255)
    elif scene.shape == "star":
        outer, inner = _regular(5, 1.08 * r), _regular(5, 0.45 * r, offset=-90 + 36)
        pts = [p for pair in zip(outer, inner, strict=True) for p in pair]
        d.polygon(_rot(pts, scene.angle, cx, cy), fill=255)
    elif scene.shape == "cross":
        w, ln = 0.34 * r, 0.98 * r
        pts = [(-w, -ln), (w, -ln), (w, -w), (ln, -w), (ln, w), (w, w), (w, ln), (-w, ln), (-w, w), (-ln, w),
               (-ln, -w), (-w, -w)]
        d.polygon(_rot(pts, scene.angle, cx, cy), fill=255)
    elif scene.shape == "moon":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        a = math.radians(scene.angle)
        ox, oy = cx + 0.5 * r * math.cos(a), cy + 0.5 * r * math.sin(a) - 0.2 * r
        rc = 0.85 * r
        d.ellipse([ox - rc, oy - rc, ox + rc, oy + rc], fill=0)
    elif scene.shape == "heart":  # two lobes over a point
        for sx in (-1, 1):
            lx, ly, lr = cx + sx * 0.45 * r, cy - 0.3 * r, 0.52 * r
            d.ellipse([lx - lr, ly - lr, lx + lr, ly + lr], fill=255)
        pts = [(-0.95 * r, -0.2 * r), (0.95 * r, -0.2 * r), (0.0, 0.98 * r)]
        d.polygon(_rot(pts, scene.angle, cx, cy), fill=255)
    elif scene.shape == "hexagon":
        d.polygon(_rot(_regular(6, 1.0 * r, offset=0.0), scene.angle, cx, cy), fill=255)
    elif scene.shape == "arrow":  # pointing right: a shaft and a head
        w, hw = 0.28 * r, 0.75 * r
        pts = [(-r, -w), (0.05 * r, -w), (0.05 * r, -hw), (r, 0.0), (0.05 * r, hw), (0.05 * r, w), (-r, w)]
        d.polygon(_rot(pts, scene.angle, cx, cy), fill=255)
    elif scene.shape == "hourglass":  # two triangles meeting at their tips
        waist = 0.18 * r
        pts = [(-0.8 * r, -r), (0.8 * r, -r), (waist, 0.0), (0.8 * r, r), (-0.8 * r, r), (-waist, 0.0)]
        d.polygon(_rot(pts, scene.angle, cx, cy), fill=255)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return m


def _texture(scene: Scene) -> np.ndarray:
    """1 where the texture shows the bright colour, 0 where it shows the dark shade (supersampled).

    Each style owns its own orientations and period, so a half-drawn texture is not another style:
    stripes are horizontal (period 10), dots sit on an axis-aligned lattice (period 6) and the
    checkerboard's cells (5 px) put its energy on the diagonals. Diagonal stripes of period 6, as in
    world 1.0, were the checkerboard's own fundamental: the model drew one and the judge saw the other.
    """
    yy, xx = np.mgrid[0:_S, 0:_S].astype(np.float32) / SUPER  # in output pixels
    if scene.style == "solid":
        return np.ones((_S, _S), np.float32)
    if scene.style == "striped":
        period = scene.stripe_period
        return ((yy + scene.phase * period) % period < period * 0.5).astype(np.float32)
    if scene.style == "dotted":
        # radius 2.0: at 1.7 px and the 0.5 dark shade the dots were faint (world 2.0 drew 'a dotted shape'
        # as solid a quarter of the time); darker dots instead cost object binding in two builds and read
        # as zorbo's pupils. A larger dot at the same shade carries the texture's energy instead.
        period = scene.dot_period
        ph = scene.phase * period
        dx = (xx + ph) % period - period / 2
        dy = (yy + ph) % period - period / 2
        return (dx * dx + dy * dy > scene.dot_radius**2).astype(np.float32)
    if scene.style == "checkered":
        c = scene.check_cell
        ph = scene.phase * 2 * c
        return ((np.floor((xx + ph) / c) + np.floor((yy + ph) / c)) % 2 == 0).astype(np.float32)
    if scene.style == "halved":  # bright left half, dark right half (split near the centre)
        return (xx < (scene.cx + scene.split * scene.scale) * SIZE).astype(np.float32)
    if scene.style == "gradient":  # 1 at the ramp's top, 0 at its bottom, linear in between
        top = (scene.cy - scene.fade * scene.scale) * SIZE
        return np.clip((top + 2 * scene.fade * scene.scale * SIZE - yy) / (2 * scene.fade * scene.scale * SIZE),
                       0, 1).astype(np.float32)
    raise ValueError(f"unknown style {scene.style!r}")


def _draw_mark(img: Image.Image, scene: Scene) -> None:
    """The character's extra feature, drawn on top in white (with black pupils)."""
    d = ImageDraw.Draw(img)
    cx, cy, r = scene.cx * _S, scene.cy * _S, scene.scale * _S
    mark = CHARACTER_SPECS[scene.character]["mark"]
    if mark == "two eyes":
        for sx in (-1, 1):
            ex, ey, er = cx + sx * 0.3 * r, cy - 0.05 * r, 0.2 * r
            d.ellipse([ex - er, ey - er, ex + er, ey + er], fill=(255, 255, 255))
            pr = 0.09 * r
            d.ellipse([ex - pr, ey - pr, ex + pr, ey + pr], fill=(0, 0, 0))
    elif mark == "one big eye":
        er, pr = 0.42 * r, 0.2 * r
        d.ellipse([cx - er, cy - er, cx + er, cy + er], fill=(255, 255, 255))
        d.ellipse([cx - pr, cy - pr, cx + pr, cy + pr], fill=(0, 0, 0))
    elif mark == "white crown":
        h = 0.82 * r
        pts = [(-h, -h - 0.05 * r), (-h, -h - 0.5 * r), (-0.4 * h, -h - 0.2 * r), (0, -h - 0.55 * r),
               (0.4 * h, -h - 0.2 * r), (h, -h - 0.5 * r), (h, -h - 0.05 * r), (h, -h + 0.3 * r),
               (-h, -h + 0.3 * r)]
        d.polygon(_rot(pts, scene.angle, cx, cy), fill=(255, 255, 255))
    elif mark == "white smile":  # a thick arc below the centre
        w = 0.5 * r
        d.arc([cx - w, cy - 0.55 * w, cx + w, cy + 0.75 * w], start=20, end=160, fill=(255, 255, 255),
              width=max(1, round(0.16 * r)))
    elif mark == "three white dots":  # in a row across the middle
        dr = 0.13 * r
        for k in (-1, 0, 1):
            ox = cx + k * 0.42 * r
            d.ellipse([ox - dr, cy - dr, ox + dr, cy + dr], fill=(255, 255, 255))
    elif mark == "white bar":  # an upright bar in the middle
        bw, bh = 0.12 * r, 0.42 * r
        d.rectangle([cx - bw, cy - 0.1 * r - bh, cx + bw, cy - 0.1 * r + bh], fill=(255, 255, 255))
    else:
        raise ValueError(f"unknown mark {mark!r}")


def _layer(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """The scene's textured colour (supersampled float RGB) and its coverage (the shape's mask, less
    the texture's holes)."""
    colour = np.asarray(COLOURS[scene.colour], np.float32)
    tex = _texture(scene)[..., None]
    fill = colour * tex + colour * scene.dark_shade * (1 - tex)
    mask = np.asarray(_shape_mask(scene), np.float32)[..., None] / 255.0
    if scene.holes:
        mask = mask * (1 - scene.holes * (1 - tex))
    return fill, mask


def _paint(canvas: np.ndarray, scene: Scene) -> np.ndarray:
    """The scene's textured shape composited over ``canvas`` (supersampled float RGB)."""
    fill, mask = _layer(scene)
    return canvas * (1 - mask) + fill * mask


def _finish(canvas: np.ndarray, scene: Scene) -> np.ndarray:
    """Character mark, box downsampling and background noise: the last steps of every render."""
    rng = np.random.default_rng(scene.seed)
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if scene.character != NONE_CHARACTER:
        _draw_mark(img, scene)
    small = np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BOX), np.float32)
    small = small + rng.normal(0, scene.noise, size=small.shape).astype(np.float32)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


def render_scene(scene: Scene) -> np.ndarray:
    """Render one scene to a uint8 array of shape (32, 32, 3)."""
    bg = np.asarray(scene.background, np.float32)
    return _finish(_paint(np.broadcast_to(bg, (_S, _S, 3)).copy(), scene), scene)


def render_shapes(scenes: list[Scene]) -> np.ndarray:
    """Several shapes on the first scene's background (later ones on top): not a valid world scene,
    the judge's fused-shapes negatives are drawn with it."""
    bg = np.asarray(scenes[0].background, np.float32)
    canvas = np.broadcast_to(bg, (_S, _S, 3)).copy()
    for scene in scenes:
        canvas = _paint(canvas, scene)
    return _finish(canvas, replace(scenes[0], character=NONE_CHARACTER))


def render_mixture(scenes: list[Scene], weights: list[float]) -> np.ndarray:
    """A weighted average of several scenes on the first scene's background: what a generator draws
    when it averages between answers (``unclear.py``). Silhouettes (soft masks) and textured colours
    are averaged with the weights; the first scene's mark and noise."""
    if len(scenes) != len(weights) or not scenes:
        raise ValueError(f"{len(scenes)} scenes but {len(weights)} weights")
    w = np.asarray(weights, np.float32) / float(np.sum(weights))
    bg = np.asarray(scenes[0].background, np.float32)
    cover = np.zeros((_S, _S, 1), np.float32)
    paint = np.zeros((_S, _S, 3), np.float32)
    for share, scene in zip(w, scenes, strict=True):
        fill, mask = _layer(scene)
        cover += share * mask
        paint += share * mask * fill
    return _finish(bg * (1 - cover) + paint, scenes[0])


def jitter_texture(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with its texture drawn a little off the world's values, as a generator draws it:
    stripe/dot/check size and dot radius +-20 %, dark shade 0.35-0.7 (the world's is 0.5); world 3's
    halving line +-0.15 radii, gradient ramp 0.55-0.85 diameters."""
    out = replace(scene, stripe_period=float(scene.stripe_period * rng.uniform(0.8, 1.2)),
                  dot_period=float(scene.dot_period * rng.uniform(0.85, 1.15)),
                  dot_radius=float(scene.dot_radius * rng.uniform(0.8, 1.2)),
                  check_cell=float(scene.check_cell * rng.uniform(0.8, 1.2)),
                  dark_shade=float(rng.uniform(0.35, 0.7)))
    if scene.style in NEW_STYLES:  # drawn only for world 3's styles: world 2's draws stay as they were
        out = replace(out, split=float(rng.uniform(-0.15, 0.15)), fade=float(rng.uniform(0.55, 0.85)))
    return out


def render_batch(seed: int, n: int, character_prob: float = 0.15, vocab: Vocabulary | None = None,
                 **fixed: str) -> tuple[np.ndarray, list[Scene]]:
    """``n`` random scenes of ``vocab`` from ``seed``: uint8 images (n, 32, 32, 3) and their scenes."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, character_prob=character_prob, vocab=vocab, **fixed) for _ in range(n)]
    return np.stack([render_scene(s) for s in scenes]), scenes


def to_tensor(images: np.ndarray):
    """uint8 (n, 32, 32, 3) -> float tensor (n, 3, 32, 32) in [0, 1]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).contiguous()
