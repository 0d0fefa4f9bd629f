"""The method interface every eraser implements, and the method registry.

A method is one file in ``methods/`` exposing ``METHOD = <Eraser subclass>``; outside packages
add methods through the ``erasebench.methods`` entry-point group. The harness only ever
looks methods up by name, so adding one never touches ``bench/``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from typing import Any, ClassVar

import torch
from PIL import Image

from bench.api.config import MethodConfig
from bench.api.edit import Edit
from bench.api.registry import Registry, package_registry
from bench.core.concepts import Concept
from bench.core.errors import ConfigError

ENTRY_POINT_GROUP = "erasebench.methods"


MAX_POINTS = 100  # points of a sweep or rungs of a ladder: each is a grid of cells to run


def _round(value: float, integer: bool) -> float | int:
    """A grid value written as people write them: 3 significant digits (an int for integer knobs)."""
    return max(1, round(value)) if integer else float(f"{value:.3g}")


@dataclass(frozen=True)
class Knob:
    """A strength knob: the config field that moves a method along its erase/retain trade-off.

    ``low``..``high`` is the default range, log-spaced: ``sweep(n)`` spreads n points over it for
    the trade-off curve; ``ladder(ratio)`` steps through it by at most ``ratio`` (tuning), and
    ``step(value, ratio, +1/-1)`` extends a ladder past its ends when the best point sits there.
    ``ranges`` gives a concept set (by name) its own (low, high): a world whose erase/retain
    transition lies elsewhere (ConceptWorld 3's frozen, pretrained text encoder moves at learning
    rates up to 16 times lower than world 2.1's); ``on(name)`` is the knob on that set.
    """

    field: str
    low: float
    high: float
    integer: bool = False
    help: str = ""
    ranges: Mapping[str, tuple[float, float]] = dc_field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name, (low, high) in {"default": (self.low, self.high), **self.ranges}.items():
            if not (0 < low < high and math.isfinite(high)):
                raise ConfigError(f"knob {self.field} ({name} range): need 0 < low < high, got {low}, {high}")

    def on(self, concept_set: str | None) -> Knob:
        """This knob on ``concept_set``: its own range where ``ranges`` names it, else the default."""
        if concept_set not in self.ranges:
            return self
        low, high = self.ranges[concept_set]
        return replace(self, low=low, high=high, ranges={})

    def sweep(self, points: int) -> list[float | int]:
        """``points`` log-spaced values from ``low`` to ``high`` inclusive."""
        if points < 2:
            raise ConfigError(f"a sweep needs at least 2 points, got {points}")
        if points > MAX_POINTS:
            raise ConfigError(f"a sweep of {points:,} points; at most {MAX_POINTS} (each point is a grid of cells)")
        r = math.log(self.high / self.low) / (points - 1)
        values = [_round(self.low * math.exp(r * i), self.integer) for i in range(points)]
        return sorted(set(values))

    def ladder(self, ratio: float = 2.0) -> list[float | int]:
        """The fewest log-spaced values from ``low`` to ``high`` with neighbours at most ``ratio`` apart."""
        if ratio <= 1:
            raise ConfigError(f"a ladder ratio must be > 1, got {ratio}")
        n = math.ceil(math.log(self.high / self.low) / math.log(ratio) - 1e-9) + 1
        if n > MAX_POINTS:
            raise ConfigError(f"a ladder ratio of {ratio:g} gives {n:,} rungs over {self.field} {self.low:g}..{self.high:g}; "
                              f"at most {MAX_POINTS}: use a larger ratio (2 is the default)")
        return self.sweep(max(n, 2))

    def step(self, value: float, ratio: float, direction: int) -> float | int:
        """The next rung beyond ``value``: ``value * ratio`` (direction +1) or ``value / ratio`` (-1)."""
        return _round(value * ratio ** direction, self.integer)


class Eraser(ABC):
    """Erases one concept from a diffusers pipeline given a few images of it.

    Subclasses set ``name``, ``version`` (bump when results may change), ``Config`` (a frozen
    ``MethodConfig``), ``strength`` (its strength knobs, the first swept by default: trade-off
    curves and tuning read them) and may list named ``variants`` (config overrides worth reporting).
    ``tune_choices`` names discrete config fields whose every value ``bench tune`` tries, walking
    the strength ladder once per combination (UCE: with and without the authors' prompt expansion).
    ``quick`` holds the overrides that shrink a long method's step budget (fewer iterations, never a
    different objective) for mechanics checks: the contract suite, ``bench smoke`` and ``bench
    regress`` build methods with it; a benchmark run never does. ``erasure_check`` states how the
    contract suite checks that an erase erases: None, the concept's denoising loss on the tiny
    pipeline goes up (the methods whose objective is a denoising loss of the concept); a dict of
    config overrides (on top of ``quick``), the ConceptWorld judge sees the concept in fewer of the
    world model's images after an erase with them (methods whose objective is not that loss).
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type[MethodConfig]]
    strength: ClassVar[tuple[Knob, ...]] = ()
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    tune_choices: ClassVar[dict[str, tuple[Any, ...]]] = {}
    quick: ClassVar[dict[str, Any]] = {}
    erasure_check: ClassVar[dict[str, Any] | None] = None
    # an inference-time method: its erase returns a sampling edit (``Edit.format == "sampling"``) that
    # changes how the pipeline samples and no weight
    inference_time: ClassVar[bool] = False
    # why a method without a strength knob has none (its trade-off curve is then one point); a method
    # declares either ``strength`` or this
    no_strength_knob: ClassVar[str] = ""

    @classmethod
    def knob(cls, field: str | None = None) -> Knob:
        """The strength knob named ``field`` (None: the method's first, its default sweep)."""
        if not cls.strength:
            why = f": {cls.no_strength_knob}; its trade-off curve is one point" if cls.no_strength_knob else \
                " (class attribute `strength`)"
            raise ConfigError(f"method {cls.name!r} declares no strength knob{why}")
        if field is None:
            return cls.strength[0]
        for k in cls.strength:
            if k.field == field:
                return k
        raise ConfigError(f"method {cls.name!r} has no strength knob {field!r} (knobs: {[k.field for k in cls.strength]})")

    def __init__(self, config: MethodConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            config = self.Config.from_dict(config)
        elif not isinstance(config, self.Config):
            raise ConfigError(f"{self.name} takes a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config

    @classmethod
    def variant(cls, variant: str | None) -> Eraser:
        """An instance configured as the named variant (None: the defaults)."""
        if variant is None:
            return cls()
        if variant not in cls.variants:
            raise ConfigError(f"method {cls.name!r} has no variant {variant!r} (variants: {sorted(cls.variants)})")
        return cls(cls.variants[variant])

    @abstractmethod
    def edited_parameters(self, pipe: Any) -> list[str]:
        """Names (``component.path``) of the pipeline parameters this method may change."""

    @abstractmethod
    def erase(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int) -> Edit:
        """Erase ``concept`` from ``pipe`` in place and return the applied ``Edit``."""

    def make_edit(
        self,
        pipe: Any,
        originals: dict[str, torch.Tensor],
        seconds: float,
        trainable_params: int,
        concept: Concept,
        seed: int,
        **info: Any,
    ) -> Edit:
        """A dense Edit of the current values of ``originals``' parameters, bound to ``pipe``."""
        from bench.api.edit import resolve_parameter

        tensors = {name: resolve_parameter(pipe, name).detach().cpu().clone() for name in originals}
        edit = Edit(
            method=self.name,
            config=self.config.to_dict(),
            format="dense",
            tensors=tensors,
            trainable_params=trainable_params,
            seconds=seconds,
            info={"method_version": self.version, "concept": concept.name, "seed": seed, **info},
        )
        return edit.bind(pipe, originals)


_REGISTRY: Registry[type[Eraser]] | None = None


def method_registry(refresh: bool = False) -> Registry[type[Eraser]]:
    """The registry of methods: built-ins from ``methods/`` plus installed plugins."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = package_registry("method", "methods", "METHOD", ENTRY_POINT_GROUP)
    return _REGISTRY


def get_method(name: str) -> type[Eraser]:
    """The Eraser class registered as ``name`` (with a suggestion on a typo)."""
    cls = method_registry().get(name)
    if not (isinstance(cls, type) and issubclass(cls, Eraser)):
        raise ConfigError(f"method {name!r} does not resolve to an Eraser subclass (got {cls!r})")
    if getattr(cls, "name", None) != name:
        raise ConfigError(f"method registered as {name!r} declares name {getattr(cls, 'name', None)!r}")
    return cls


def leaderboard_specs() -> list[str]:
    """Every registered method as the leaderboard reports it: by its variants when its defaults are
    one of them (ESD: ``esd@x``, ``esd@u``; plain ``esd`` would repeat ``esd@x``), else by its name."""
    specs = []
    for name in method_registry().names():
        cls = get_method(name)
        default = cls.Config()
        if any(cls.Config.from_dict({**default.to_dict(), **v}) == default for v in cls.variants.values()):
            specs += [f"{name}@{v}" for v in cls.variants]
        else:
            specs.append(name)
    return specs


def build_method(spec: str, overrides: dict[str, Any] | None = None, quick: bool = False) -> Eraser:
    """``"fuchi"`` or ``"fuchi@paper_era"`` (a variant), plus config overrides (on top of the
    method's ``quick`` step budget when ``quick``: mechanics checks only)."""
    name, _, variant = spec.partition("@")
    cls = get_method(name)
    base = cls.variant(variant or None).config
    overrides = {**(cls.quick if quick else {}), **(overrides or {})}
    return cls(base.replace(**overrides) if overrides else base)
