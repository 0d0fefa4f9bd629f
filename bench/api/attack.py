"""The attack interface: given an (erased) pipeline, produce conditionings that should show the concept."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image

from bench.api.config import MethodConfig
from bench.api.registry import Registry, package_registry
from bench.core.concepts import Concept
from bench.core.errors import ConfigError

ENTRY_POINT_GROUP = "erasebench.attacks"


@dataclass
class AttackOutcome:
    """What to generate: readable ``prompts`` and, for learned tokens, their ``prompt_embeds``."""

    prompts: list[str]
    prompt_embeds: torch.Tensor | None = None  # N x 77 x D, one per prompt
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class Attack(ABC):
    """Subclasses set ``name``, ``version`` and ``Config``; they must leave model weights untouched."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type[MethodConfig]]

    def __init__(self, config: MethodConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            config = self.Config.from_dict(config)
        self.config = config

    @abstractmethod
    def attack(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int) -> AttackOutcome:
        """``images``: held-out concept images (never the ones the erasure used)."""

    def text_prompts(self, concept: Concept) -> list[tuple[str, int]]:
        """The text prompts this attack encodes for ``concept``, each with the number of tokens it
        reserves beside them (a learned prefix), so their length is checked before any work."""
        return []


_REGISTRY: Registry[type[Attack]] | None = None


def attack_registry(refresh: bool = False) -> Registry[type[Attack]]:
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = package_registry("attack", "bench.attacks", "ATTACK", ENTRY_POINT_GROUP)
    return _REGISTRY


def build_attack(name: str, overrides: dict[str, Any] | None = None) -> Attack:
    cls = attack_registry().get(name)
    if not (isinstance(cls, type) and issubclass(cls, Attack)) or cls.name != name:
        raise ConfigError(f"attack {name!r} does not resolve to an Attack named {name!r}")
    return cls(cls.Config().replace(**overrides) if overrides else None)
