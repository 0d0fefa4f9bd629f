"""The attack interface: given an (erased) pipeline, produce conditionings that should show the concept.

An attack may read the *original* model too (Ring-A-Bell's concept vector, P4D's unconstrained noise
predictions, UnlearnDiffAtk's target image): ``Attack.prepare`` runs on it before any edit, once per
concept, and its tensors reach ``Attack.attack`` through ``AttackContext.reference`` (cached beside the
reference images). ``AttackContext`` also lets an attack render and judge its candidates with the
attacked model, as the authors' early stopping and prompt selection do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
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
    """What to generate: readable ``prompts`` and, for learned tokens, their ``prompt_embeds``.

    A non-text probe gives its ``images`` itself (uint8 N x 3 x H x W, ``seeds[i]`` for image i): they
    are judged as they are and nothing is generated for it. ``token_ids`` keeps a discrete attack's
    found tokens (one list per prompt) beside their decoded text, for the cell's artefacts.
    """

    prompts: list[str]
    prompt_embeds: torch.Tensor | None = None  # N x 77 x D, one per prompt
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    images: torch.Tensor | None = None
    seeds: list[int] | None = None
    token_ids: list[list[int]] | None = None


@dataclass
class AttackContext:
    """What an attack may use besides the attacked pipeline.

    ``reference``: what ``Attack.prepare`` computed on the original model for this concept;
    ``seeds``: the protocol's attack seeds (the first is the seed an attack checks a candidate with);
    ``render``/``sees``: generate with the attacked model under the protocol's sampler, and whether the
    judge sees the concept in images (the authors' success check).
    """

    reference: dict[str, torch.Tensor]
    seeds: tuple[int, ...]
    render: Callable[..., torch.Tensor]  # (pipe, prompts, seeds, prompt_embeds=None) -> uint8 images
    sees: Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> bool per image
    features: Callable[[torch.Tensor], torch.Tensor] | None = None  # uint8 images -> judge features
    sampler: Any = None  # the protocol's SamplerSpec (a probe that samples on its own uses its steps, guidance)


class Attack(ABC):
    """Subclasses set ``name``, ``version`` and ``Config``; they must leave model weights untouched."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type[MethodConfig]]
    # named config overrides, built as ``name@variant`` (``@world``: a declared smaller budget for the
    # CPU world, each scaled field stated beside the published one in the attack's defaults table)
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    # an upper bound no user could type (learned vectors): reported beside the others, never in the mean
    # ASR that the ranking composite reads
    upper_bound: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            config = self.Config.from_dict(config)
        self.config = config

    @abstractmethod
    def attack(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
               context: AttackContext | None = None) -> AttackOutcome:
        """``images``: held-out concept images (never the ones the erasure used); ``context`` as
        ``AttackContext`` (the runner always gives one; attacks that need none accept ``None``)."""

    def prepare(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
                context: AttackContext) -> dict[str, torch.Tensor]:
        """Work on the *original* model, before any edit, for one concept: tensors ``attack`` reads as
        ``context.reference`` (cached per model, concept, attack, config and seed). None by default."""
        return {}

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


def template_prompts(concept: Concept, n: int) -> list[str]:
    """The concept's first ``n`` templates filled with its name: the target prompts an attack works on."""
    return [t.format(concept.name) for t in concept.templates[:n]]


def ranked_attacks(specs: list[str] | tuple[str, ...]) -> list[str]:
    """The attacks whose mean ASR the ranking composite reads: all but upper bounds (``soft_prefix``)."""
    reg = attack_registry()
    return [s for s in specs if not getattr(reg.get(s.partition("@")[0]), "upper_bound", False)]


def build_attack(spec: str, overrides: dict[str, Any] | None = None) -> Attack:
    """``"ringabell"`` or ``"ringabell@world"`` (a variant), plus config overrides on top."""
    name, _, variant = spec.partition("@")
    cls = attack_registry().get(name)
    if not (isinstance(cls, type) and issubclass(cls, Attack)) or cls.name != name:
        raise ConfigError(f"attack {name!r} does not resolve to an Attack named {name!r}")
    if variant and variant not in cls.variants:
        raise ConfigError(f"attack {name!r} has no variant {variant!r} (variants: {sorted(cls.variants) or 'none'})")
    config = cls.Config().replace(**cls.variants[variant]) if variant else cls.Config()
    return cls(config.replace(**overrides) if overrides else config)
