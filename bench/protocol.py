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
