"""The judge interface: does an image show a concept, is there anything to judge at all, and
image features for KID/FID."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from bench.api.registry import load_target, named_registry
from bench.core.concepts import Concept

REJECT_LABEL = "none"  # a head's label on a rejected image: no concept of this type present
SCENE_HEAD = "scene"  # the head that carries the reject verdict in ``labels`` ("valid" / "none")
# a rejected image whose own head for the judged concept names it with at least this probability is a
# masked detection (``Judge.reads``; the metric ``masked_detections``): a reject that hides a concept
MASKED_P = 0.9


class Judge(ABC):
    """Images are float tensors N x 3 x H x W in [0, 1] on the CPU.

    Every judge can **reject** an image ("no valid scene / no concept of this type present"):
    ``detect`` is never true on a rejected image, so a rejected image counts as "concept not seen"
    for UA and as a miss for retain accuracy. ``reject_definition`` says what rejection means for
    this judge; reports print it.
    """

    id: str
    version: str
    reject_definition: str = ""

    @property
    def ref(self) -> str:
        """What run specs record: ``id@version``."""
        return f"{self.id}@{self.version}"

    @abstractmethod
    def detect(self, images: torch.Tensor, concept: Concept) -> torch.Tensor:
        """Bool tensor N: the judge sees ``concept`` in each image (never on a rejected one)."""

    @abstractmethod
    def reject(self, images: torch.Tensor) -> torch.Tensor:
        """Bool tensor N: nothing to judge in each image (see ``reject_definition``)."""

    @abstractmethod
    def labels(self, images: torch.Tensor) -> dict[str, list[str]]:
        """The judge's answer per head (attribute, class space) and image; ``SCENE_HEAD`` holds
        "valid" or ``REJECT_LABEL``, and every other head holds ``REJECT_LABEL`` on a rejected image.
        Two judges agree on a head of an image when their labels are equal."""

    @abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """N x D features for distribution distances (KID/FID)."""

    def describe(self, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per-image judge outputs written to ``per_image.jsonl`` (override for richer output)."""
        return [{} for _ in range(len(images))]

    def reads(self, images: torch.Tensor, concept: Concept, p: float = MASKED_P) -> torch.Tensor | None:
        """Bool tensor N: the judge's head for ``concept`` names it with probability >= ``p``, whatever
        the reject verdict (with ``reject``: the masked detections); None when this judge gives no
        per-head probabilities (the metric is then not recorded, never recorded as 0)."""
        return None

    def sees(self, images: torch.Tensor, attributes: list[dict[str, str]]) -> torch.Tensor | None:
        """Bool tensor N: the judge sees every attribute named for each image (``{head: label}``, from
        a composed prompt) and does not reject the image; None when this judge cannot check such
        attributes (selective alignment is then not recorded, never recorded as 0)."""
        return None

    def clip_score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor | None:
        """Per-image image-text similarity with ``prompts`` (CLIP score), or None: a judge without
        a text encoder gives none, and the cell records no CLIP score (never a 0)."""
        return None


def scene_labels(rejected: torch.Tensor) -> list[str]:
    return [REJECT_LABEL if r else "valid" for r in rejected.tolist()]


# -- the registry of judges ------------------------------------------------------------------------
ENTRY_POINT_GROUP = "erasebench.judges"
# name -> "module:factory"; a factory takes (name, track, concept set) and returns a Judge. A judge
# spec that is not a name here is a ConceptWorld judge folder.
_BUILTIN = {
    "imagenet": "bench.judges.imagenet:build",
    "imagenet-restricted": "bench.judges.imagenet:build",
    "resnet50": "bench.judges.imagenet:build",
    "resnet50-restricted": "bench.judges.imagenet:build",
    "clip": "bench.judges.clip:build",
}
# a spec that names no registered judge is a ConceptWorld judge folder: this factory reads it
FOLDER_JUDGE = "bench.judges.world:from_folder"
_REGISTRY: Any = None


def judge_registry(refresh: bool = False) -> Any:
    """Judge factories by name (built in, then the ``erasebench.judges`` entry points)."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = named_registry("judge", _BUILTIN, ENTRY_POINT_GROUP)
    return _REGISTRY


def build_judge(spec: str, track: Any, concept_set: Any) -> Judge:
    """The judge ``spec`` names: a registered name, or else a ConceptWorld judge folder (the CNN or
    ViT judge, or world 3's CLIP folder)."""
    from pathlib import Path

    reg = judge_registry()
    if spec in reg:
        return reg.get(spec)(spec, track, concept_set)
    if not Path(spec).exists() and "/" not in spec and "\\" not in spec:
        reg.get(spec)  # a bare word that is no judge: "unknown judge ...; did you mean ...?"
    return load_target(FOLDER_JUDGE, "judge")(spec, track, concept_set)
