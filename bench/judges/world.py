"""The ConceptWorld judge behind the Judge interface: a concept is one class of one head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.concepts import Concept
from bench.errors import ConfigError
from bench.judges.base import Judge


class WorldConceptJudge(Judge):
    """Maps a concept to (head, label) from its ``extra`` in the concept set."""

    def __init__(self, folder: str | Path) -> None:
        from bench.world.judge import WorldJudge

        self.judge = WorldJudge.load(folder)
        self.id = self.judge.id.split("@")[0]
        self.version = self.judge.id.split("@", 1)[1]

    def _target(self, concept: Concept) -> tuple[str, int]:
        head, label = concept.extra.get("head"), concept.extra.get("label")
        if head not in self.judge.classes or label not in self.judge.classes[head]:
            raise ConfigError(f"concept {concept.name!r} has no (head, label) this judge knows: {head!r}, {label!r}")
        return head, self.judge.classes[head].index(label)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, concept: Concept) -> torch.Tensor:
        head, index = self._target(concept)
        return self.judge.predict(images)[head] == index

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.features(images)

    @torch.no_grad()
    def describe(self, images: torch.Tensor) -> list[dict[str, Any]]:
        probs = self.judge.probs(images)
        rows = []
        for i in range(len(images)):
            row = {}
            for head, p in probs.items():
                k = int(p[i].argmax())
                row[head] = {"label": self.judge.classes[head][k], "p": round(float(p[i, k]), 4)}
            rows.append(row)
        return rows
