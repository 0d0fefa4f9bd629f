"""Sampler settings: one frozen record per track, recorded in every run spec."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.errors import ConfigError


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
        if self.steps < 1:
            raise ConfigError(f"sampler steps must be >= 1, got {self.steps}")
        if self.guidance < 0:
            raise ConfigError(f"sampler guidance must be >= 0, got {self.guidance}")

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

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("an evaluation needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"evaluation seeds repeat: {list(self.seeds)}")
        for name in ("target_prompts", "few_shot_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("synonym_prompts", "retain_prompts"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d
