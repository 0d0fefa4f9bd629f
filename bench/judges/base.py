"""The judge interface: does an image show a concept, and image features for KID/FID."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from bench.concepts import Concept


class Judge(ABC):
    """Images are float tensors N x 3 x H x W in [0, 1] on the CPU."""

    id: str
    version: str

    @property
    def ref(self) -> str:
        """What run specs record: ``id@version``."""
        return f"{self.id}@{self.version}"

    @abstractmethod
    def detect(self, images: torch.Tensor, concept: Concept) -> torch.Tensor:
        """Bool tensor N: the judge sees ``concept`` in each image."""

    @abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """N x D features for distribution distances (KID/FID)."""

    def describe(self, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per-image judge outputs written to ``per_image.jsonl`` (override for richer output)."""
        return [{} for _ in range(len(images))]
