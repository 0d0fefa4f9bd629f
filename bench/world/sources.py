"""The ``render`` image source: a ConceptWorld's renderer draws a concept's few-shot images."""

from __future__ import annotations

import functools
from typing import Any

from PIL import Image

from bench.core.concepts import Concept, load_concept_set
from bench.core.errors import InputError
from bench.core.protocol import EvalProtocol
from bench.world.captions import CONCEPT_SET_NAMES
from bench.world.render import render_batch, vocabulary

RENDER_KEY = {"object": "shape", "colour": "colour", "style": "style", "character": "character"}


@functools.lru_cache(maxsize=8)
def world_vocabulary(concept_set: str) -> Any:
    """The ConceptWorld vocabulary whose scenes illustrate ``concept_set`` (world 3's concept set has its
    own name; every other set renders world 2's scenes, as always)."""
    name = load_concept_set(concept_set).name
    return vocabulary(next((v for v, n in CONCEPT_SET_NAMES.items() if n == name), "2"))


def rendered(track: Any, concept: Concept, p: EvalProtocol, pipe: Any = None, held_out: bool = False
             ) -> tuple[list[Image.Image], dict[str, Any]]:
    """``p.few_shot_images`` renders of the concept's attribute from seed ``p.few_shot_seed`` (the held-out
    set arrives with the attack image seed there already)."""
    head, label = concept.extra.get("head"), concept.extra.get("label")
    if head not in RENDER_KEY:
        raise InputError(f"concept {concept.name!r} has no renderer attribute (extra.head)")
    arr, _ = render_batch(p.few_shot_seed, p.few_shot_images, vocab=world_vocabulary(track.concept_set),
                          **{RENDER_KEY[head]: label})
    return [Image.fromarray(a) for a in arr], {"source": "rendered", "n": p.few_shot_images, "seed": p.few_shot_seed}
