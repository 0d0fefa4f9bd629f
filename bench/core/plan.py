"""The prompt groups a cell generates, and one image's row in a cell's plan."""

from __future__ import annotations

from typing import NamedTuple

from bench.core.concepts import Concept

GROUPS = ("target", "synonym", "in_domain", "cross_domain", "near_neighbour")


RETAIN_GROUPS = {"in_domain": "retain_in_domain", "cross_domain": "retain_cross_domain",
                 "near_neighbour": "near_neighbours"}


COMPOSED = "composed"  # the group of composed target prompts (selective alignment), outside GROUPS


class ImageRow(NamedTuple):
    """One image a cell generates: its prompt group, the concept the judge looks for, prompt, seed
    and, for a composed prompt, the other attributes it names."""

    group: str
    concept: Concept
    prompt: str
    seed: int
    attributes: dict[str, str] | None = None
