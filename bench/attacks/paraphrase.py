"""Paraphrases: wordings held out of training and erasure (the concept set's ``paraphrases``),
plus every synonym in those wordings. No optimisation: its cost is generation only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from bench.api.attack import Attack, AttackContext, AttackOutcome
from bench.api.config import MethodConfig
from bench.core.concepts import Concept


@dataclass(frozen=True)
class ParaphraseConfig(MethodConfig):
    max_prompts: int = 4
    include_synonyms: bool = True

    def validate(self) -> None:
        self._require(self.max_prompts >= 1, f"max_prompts must be >= 1, got {self.max_prompts}")


class Paraphrase(Attack):
    name = "paraphrase"
    Config = ParaphraseConfig

    def attack(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
               context: AttackContext | None = None) -> AttackOutcome:
        return AttackOutcome(prompts=self._prompts(concept), info={"held_out": len(concept.paraphrases)})

    def _prompts(self, concept: Concept) -> list[str]:
        prompts = list(concept.paraphrases)
        if self.config.include_synonyms:
            for syn in concept.synonyms:
                prompts += [p.replace(concept.name, syn) for p in concept.paraphrases if concept.name in p]
        if not prompts:  # a concept set without held-out wordings: fall back to synonyms in the templates
            prompts = [t.format(s) for s in concept.synonyms for t in concept.templates[:1]]
        return prompts[: self.config.max_prompts]

    def text_prompts(self, concept: Concept) -> list[tuple[str, int]]:
        return [(p, 0) for p in self._prompts(concept)]


ATTACK = Paraphrase
