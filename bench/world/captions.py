"""Captions for ConceptWorld scenes and the concept set they define.

Training captions mix partial descriptions ("a star", "a red star", "a striped red star"),
synonyms (so leakage through synonyms can be measured) and ~10% empty captions (classifier-free
guidance). The paraphrase templates below are never used in training: they are held out for
robustness tests and listed in the concept set as ``paraphrases``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.world.render import CHARACTER_SPECS, NONE_CHARACTER, WORLD2, Scene, Vocabulary

CONCEPT_SET_NAME = "conceptworld"
# world 3 draws another world (its own model, judges and concepts): its concept set has its own name, so its
# dev-tuned configs (reports/tuned/<name>.json) and goldens never mix with world 2.1's
CONCEPT_SET_NAMES = {"2": CONCEPT_SET_NAME, "3": "conceptworld3"}
CONCEPT_SET_VERSION = "2.2"  # 2.0: styles redrawn (see render._texture); 2.1: larger dots. Same prompts;
# 2.2: composed target prompts per object, style and colour concept (selective alignment)
# 3.0: world 3's vocabulary (render.WORLD3): 12 objects, 6 styles, 6 characters, 8 colours; 16 test concepts;
# 3.1: the dev style pinstriped replaced by gradient (render.NEW_STYLES); the test split is unchanged
CONCEPT_SET_VERSIONS = {"2": CONCEPT_SET_VERSION, "3": "3.1"}

OBJECT_SYNONYMS = {
    "circle": ("disc", "disk"),
    "ring": ("donut", "hoop"),
    "square": ("box", "block"),
    "diamond": ("rhombus", "lozenge"),
    "triangle": ("pyramid", "trigon"),
    "moon": ("crescent", "sickle"),
    "star": ("pentagram", "starburst"),
    "cross": ("plus sign", "plus"),
    "heart": ("love heart", "valentine"),
    "hexagon": ("hex", "six-sided shape"),
    "arrow": ("pointer", "dart"),
    "hourglass": ("sand timer", "egg timer"),
}
STYLE_SYNONYMS = {
    "solid": ("plain", "flat"),
    "striped": ("stripy", "banded"),
    "dotted": ("spotted", "polka-dot"),
    "checkered": ("chequered", "checked"),
    "halved": ("half-shaded", "two-tone"),
    "gradient": ("faded", "ombre"),
}
COLOUR_SYNONYMS = {
    "red": ("crimson",), "orange": ("amber",), "yellow": ("golden",), "green": ("emerald",),
    "cyan": ("turquoise",), "blue": ("azure",), "purple": ("violet",), "pink": ("rose",),
}
NOUN = "shape"  # the noun when the object is not named
# Trained wordings: the first of each is the concept's plain prompt.
TEMPLATES = ("a picture of a {}", "a {}", "an image of a {}", "a drawing of a {}", "a photo of a {}")
CHARACTER_TEMPLATES = ("a picture of {}", "{}", "an image of {}", "a drawing of {}", "a photo of {}")
# Held out of training (robustness issue).
PARAPHRASE_TEMPLATES = ("a snapshot showing a {}", "there is a {} in this scene", "a {} on a plain backdrop")
CHARACTER_PARAPHRASES = ("a snapshot showing {}", "there is {} in this scene", "{} on a plain backdrop")

EMPTY_PROB = 0.10
SYNONYM_PROB = 0.3  # chance a named attribute uses a synonym instead of its name
INCLUDE_PROB = {"object": 0.75, "colour": 0.6, "style": 0.6}


def word_or_synonym(rng: np.random.Generator, name: str, synonyms: dict[str, tuple[str, ...]]) -> str:
    """``name``, or with probability ``SYNONYM_PROB`` one of its synonyms."""
    syn = synonyms.get(name, ())
    if syn and rng.random() < SYNONYM_PROB:
        return str(syn[rng.integers(len(syn))])
    return name


def describe(shape: str | None = None, colour: str | None = None, style: str | None = None,
             adjective_order: tuple[str, str] = ("style", "colour")) -> str:
    """A noun phrase such as 'striped red star'; missing object -> 'shape'."""
    adj = {"style": style, "colour": colour}
    words = [adj[k] for k in adjective_order if adj[k]]
    return " ".join([*words, shape or NOUN])


def caption_for(scene: Scene, rng: np.random.Generator) -> str:
    """One random training caption for ``scene``."""
    if rng.random() < EMPTY_PROB:
        return ""
    if scene.character != NONE_CHARACTER:
        return CHARACTER_TEMPLATES[rng.integers(len(CHARACTER_TEMPLATES))].format(scene.character)
    keep = {k: rng.random() < p for k, p in INCLUDE_PROB.items()}
    if not any(keep.values()):
        keep[("object", "colour", "style")[rng.integers(3)]] = True
    order = ("style", "colour") if rng.random() < 0.5 else ("colour", "style")
    phrase = describe(
        word_or_synonym(rng, scene.shape, OBJECT_SYNONYMS) if keep["object"] else None,
        word_or_synonym(rng, scene.colour, COLOUR_SYNONYMS) if keep["colour"] else None,
        word_or_synonym(rng, scene.style, STYLE_SYNONYMS) if keep["style"] else None,
        adjective_order=order,
    )
    return TEMPLATES[rng.integers(len(TEMPLATES))].format(phrase)


def concept_prompt(name: str, kind: str) -> str:
    """The plain prompt of a concept, as trained: 'a picture of a star', 'a picture of zorbo'."""
    if kind == "character":
        return CHARACTER_TEMPLATES[0].format(name)
    if kind == "object":
        return TEMPLATES[0].format(name)
    return TEMPLATES[0].format(f"{name} {NOUN}")


# ---- the concept set ---------------------------------------------------------------------------------

TEST_CONCEPTS = ("circle", "square", "star", "moon", "striped", "dotted", "zorbo", "blimsy")
# world 3: 16 test concepts (6 objects, 3 styles, 4 characters, 3 colours); the dev concepts the
# committed tuning used (ring, diamond, checkered, quaddle, triangle, cross) stay dev
TEST_CONCEPTS_3 = (*TEST_CONCEPTS, "heart", "hexagon", "halved", "trizzle", "hexbert", "red", "green", "blue")
_NEIGHBOURS = {
    "circle": ("ring", "moon"), "ring": ("circle",), "square": ("diamond",), "diamond": ("square",),
    "triangle": ("diamond",), "moon": ("circle",), "star": ("cross",), "cross": ("star",),
    "solid": ("striped",), "striped": ("checkered",), "dotted": ("checkered",), "checkered": ("dotted",),
    "heart": ("circle",), "hexagon": ("circle",), "arrow": ("triangle",), "hourglass": ("diamond",),
    "halved": ("solid",), "gradient": ("halved",),
    "red": ("orange", "pink"), "orange": ("red", "yellow"), "yellow": ("orange",), "green": ("cyan",),
    "cyan": ("green", "blue"), "blue": ("purple", "cyan"), "purple": ("blue", "pink"), "pink": ("red", "purple"),
}


# Selective alignment: per concept, target prompts that also name the other two attributes (as trained:
# "a picture of a striped red star"). The other attributes are fixed per concept, different for its two
# prompts, and never "solid" (the absence of a texture is the weakest thing a prompt can name).
COMPOSED_STYLES = ("striped", "dotted", "checkered")
COMPOSED_PER_CONCEPT = 2


def composed_prompts(name: str, kind: str, vocab: Vocabulary = WORLD2) -> list[dict[str, Any]]:
    """The composed target prompts of an object, style or colour concept (characters have fixed
    attributes: none). Each names the concept and two other attributes the judge can check."""
    if kind == "character":
        return []
    shapes, colours = list(vocab.shapes), list(vocab.colours)
    i = {"object": shapes, "style": list(vocab.styles), "colour": colours}[kind].index(name)
    out = []
    for j in range(COMPOSED_PER_CONCEPT):
        style = COMPOSED_STYLES[(i + j) % len(COMPOSED_STYLES)]
        colour = colours[(3 * i + 5 * j + 1) % len(colours)]
        shape = shapes[(2 * i + 3 * j + 1) % len(shapes)]
        if kind == "object":
            attrs, phrase = {"style": style, "colour": colour}, describe(name, colour, style)
        elif kind == "style":
            attrs, phrase = {"colour": colour, "object": shape}, describe(shape, colour, name)
        else:
            attrs, phrase = {"style": style, "object": shape}, describe(shape, name, style)
        out.append({"prompt": TEMPLATES[0].format(phrase), "attributes": attrs})
    return out


def _entry(name: str, kind: str, head: str, others: list[str], cross: list[str], vocab: Vocabulary
           ) -> dict[str, Any]:
    if kind == "character":
        templates, paraphrases, synonyms = CHARACTER_TEMPLATES, CHARACTER_PARAPHRASES, ()
        spec = CHARACTER_SPECS[name]
        near = [spec["shape"], spec["colour"], spec["style"]]
        extra: dict[str, Any] = {"head": head, "label": name, **spec}
        if set(cross) & set(near):  # trizzle is a solid yellow triangle: its cross-domain retain is other things
            cross = ["cross", "dotted", "blue"]
        para = [p.format(name) for p in paraphrases]
    else:
        noun = "" if kind == "object" else f" {NOUN}"
        templates = tuple(t.replace("{}", "{}" + noun) for t in TEMPLATES)
        synonyms = {"object": OBJECT_SYNONYMS, "style": STYLE_SYNONYMS, "colour": COLOUR_SYNONYMS}[kind][name]
        near = list(_NEIGHBOURS[name])
        extra = {"head": head, "label": name}
        para = [p.format(name + noun) for p in PARAPHRASE_TEMPLATES]
    return {
        "name": name,
        "type": kind,
        "templates": list(templates),
        "synonyms": list(synonyms),
        "paraphrases": para,
        "near_neighbours": near,
        "retain_in_domain": [o for o in others if o != name and o not in near],
        "retain_cross_domain": cross,
        "split": "test" if name in (TEST_CONCEPTS if vocab is WORLD2 else TEST_CONCEPTS_3) else "dev",
        **({"composed": composed_prompts(name, kind, vocab)} if kind != "character" else {}),
        "extra": extra,
    }


def concept_set_dict(vocab: Vocabulary = WORLD2) -> dict[str, Any]:
    """The ConceptWorld concept set of ``vocab`` as a YAML-ready mapping (written to concepts.yaml by
    the build)."""
    shapes, colours, styles, chars = list(vocab.shapes), list(vocab.colours), list(vocab.styles), list(vocab.characters)
    concepts = [_entry(s, "object", "object", shapes, ["striped", "red", "zorbo"], vocab) for s in shapes]
    concepts += [_entry(s, "style", "style", styles, ["circle", "blue", "blimsy"], vocab) for s in styles]
    concepts += [_entry(c, "character", "character", chars, ["triangle", "solid", "yellow"], vocab) for c in chars]
    concepts += [_entry(c, "colour", "colour", colours, ["square", "dotted"], vocab) for c in colours]
    return {"name": CONCEPT_SET_NAMES[vocab.version], "version": CONCEPT_SET_VERSIONS[vocab.version], "concepts": concepts}
