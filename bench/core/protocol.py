"""Sampler settings: one frozen record per track, recorded in every run spec."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from bench.core.errors import ConfigError

MAX_STEPS = 1000  # DDIM cannot take more steps than the model's training timesteps
MAX_GUIDANCE = 100.0
MAX_SIDE = 4096  # pixels; diffusers also needs a multiple of 8
MAX_SEED = 2**63 - 1


def _number(name: str, value: object, low: float, high: float, integer: bool = False) -> None:
    """A finite number in [low, high] (an integer when ``integer``), or one ConfigError naming it."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # an int of any size is finite (isfinite overflows)
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        span = f"[{low}, {high}]" if integer else f"[{low:g}, {high:g}]"
        raise ConfigError(f"{name} must be in {span}, got {value!r}")


@dataclass(frozen=True)
class SamplerSpec:
    """How images are generated: everything that changes a generated image, but the seed."""

    scheduler: str = "DDIMScheduler"
    steps: int = 25
    guidance: float = 7.5
    height: int | None = None  # None: the pipeline's default (unet sample size x vae scale factor)
    width: int | None = None
    eta: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.scheduler, str) or not self.scheduler.isidentifier():
            raise ConfigError(f"sampler scheduler must be a diffusers scheduler class name, got {self.scheduler!r}")
        _number("sampler steps", self.steps, 1, MAX_STEPS, integer=True)
        _number("sampler guidance", self.guidance, 0.0, MAX_GUIDANCE)
        _number("sampler eta", self.eta, 0.0, 1.0)
        for side in ("height", "width"):
            value = getattr(self, side)
            if value is not None:
                _number(f"sampler {side}", value, 8, MAX_SIDE, integer=True)
                if value % 8:
                    raise ConfigError(f"sampler {side} must be a multiple of 8, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)


# ConceptWorld's protocol (32x32 images); the world issue tunes these values.
WORLD_SAMPLER = SamplerSpec(scheduler="DDIMScheduler", steps=25, guidance=5.0)
# Stable Diffusion's protocol, the peers' common choice (ESD/UCE: DDIM/PNDM 50-100 steps, CFG 7.5-9).
SD_SAMPLER = SamplerSpec(scheduler="DDIMScheduler", steps=50, guidance=7.5)


@dataclass(frozen=True)
class EvalProtocol:
    """Which prompts and seeds judge a cell: fixed for a leaderboard, recorded in every spec."""

    seeds: tuple[int, ...] = tuple(range(8))
    target_prompts: int = 2  # the concept's first k templates
    synonym_prompts: int = 1  # templates per synonym
    retain_prompts: int = 1  # templates per retain / near-neighbour concept
    few_shot_images: int = 4
    few_shot_seed: int = 1000
    attack_image_seed: int = 2000  # held-out images for attacks: never the ones erasure used
    erase_seed: int = 0
    batch_size: int = 64
    # attack images use the first N evaluation seeds: an attack's teeth are its optimisation; its
    # images only measure ASR, whose interval (over these seeds) the report prints
    attack_seeds: int = 4
    composed_prompts: int = 2  # the concept's first k composed prompts (selective alignment)
    composed_seeds: int = 4  # composed images use the first N evaluation seeds (as attack images: budget)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("an evaluation needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"evaluation seeds repeat: {list(self.seeds)}")
        for seed in self.seeds:
            _number("evaluation seed", seed, 0, MAX_SEED, integer=True)
        for name in ("target_prompts", "few_shot_images", "batch_size", "attack_seeds", "composed_seeds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("synonym_prompts", "retain_prompts", "composed_prompts"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d


# The declared protocols (``bench run --protocol NAME``). ``full`` is the leaderboard's. ``quick`` is what
# ``make bench`` runs in 10 minutes on 2 cores: the first 4 evaluation seeds of the full protocol's 8, every
# other choice the same (attack and composed images already use the first 4 seeds, so their numbers are the
# full protocol's). A report of any protocol but ``full`` says so in its title and is never the leaderboard.
PROTOCOLS: dict[str, EvalProtocol] = {"full": EvalProtocol(), "quick": EvalProtocol(seeds=(0, 1, 2, 3))}


def protocol_name(recorded: dict) -> str:
    """The declared protocol a cell's recorded protocol is (``full``, ``quick``), or ``custom``."""
    for name, p in PROTOCOLS.items():
        if recorded == p.to_dict():
            return name
    return "custom"
