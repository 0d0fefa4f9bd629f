"""The ConceptWorld judges behind the Judge interface: a concept is one class of one head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.concepts import Concept
from bench.errors import ConfigError
from bench.judges.base import REJECT_LABEL, SCENE_HEAD, Judge, scene_labels


class WorldConceptJudge(Judge):
    """Maps a concept to (head, label) from its ``extra`` in the concept set."""

    reject_definition = ("the judge's reject head finds no valid scene (trained on synthetic blank frames, "
                         "colour washes, gradients, noise, heavy blur, cut-off, shattered and fused shapes)")

    def __init__(self, folder: str | Path) -> None:
        from bench.world.judge import REJECT_HEAD, WorldJudge

        self.judge = WorldJudge.load(folder)
        if REJECT_HEAD not in self.judge.classes:
            raise ConfigError(f"judge {self.judge.id} in {folder} has no reject head ({REJECT_HEAD!r}): "
                              "judges >= 2.2 have one (python -m bench.world judge retrains them)")
        self.id = self.judge.id.split("@")[0]
        self.version = self.judge.id.split("@", 1)[1]

    def _target(self, concept: Concept) -> tuple[str, int]:
        head, label = concept.extra.get("head"), concept.extra.get("label")
        if head not in self.judge.attribute_heads or label not in self.judge.classes[head]:
            raise ConfigError(f"concept {concept.name!r} has no (head, label) this judge knows: {head!r}, {label!r}")
        return head, self.judge.classes[head].index(label)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, concept: Concept) -> torch.Tensor:
        head, index = self._target(concept)
        pred = self.judge.predict(images)
        return (pred[head] == index) & ~self.judge.rejected(pred)

    @torch.no_grad()
    def reject(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.rejected(self.judge.predict(images))

    @torch.no_grad()
    def labels(self, images: torch.Tensor) -> dict[str, list[str]]:
        pred = self.judge.predict(images)
        mask = self.judge.rejected(pred)
        rejected = mask.tolist()
        out = {SCENE_HEAD: scene_labels(mask)}
        for head in self.judge.attribute_heads:
            names = self.judge.classes[head]
            out[head] = [REJECT_LABEL if r else names[k] for k, r in zip(pred[head].tolist(), rejected, strict=True)]
        return out

    @torch.no_grad()
    def sees(self, images: torch.Tensor, attributes: list[dict[str, str]]) -> torch.Tensor:
        """Every named attribute is its head's prediction, on a scene the judge does not reject."""
        if len(attributes) != len(images):
            raise ValueError(f"{len(images)} images but {len(attributes)} attribute sets")
        pred = self.judge.predict(images)
        ok = ~self.judge.rejected(pred)
        for i, attrs in enumerate(attributes):
            for head, label in attrs.items():
                if head not in self.judge.attribute_heads or label not in self.judge.classes[head]:
                    raise ConfigError(f"a composed prompt names {head}={label!r}, which judge {self.judge.id} "
                                      f"cannot see (heads: {list(self.judge.attribute_heads)})")
                ok[i] &= bool(pred[head][i] == self.judge.classes[head].index(label))
        return ok

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
