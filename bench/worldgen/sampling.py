"""The world model as a sampler: its pipeline on CPU with a sampler's scheduler, and images per seed
(read by the quality gates and by the reject option's calibration on the model's own images)."""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch

from bench.core.protocol import WORLD_SAMPLER, SamplerSpec


def load_pipeline(model_dir: str | Path, sampler: SamplerSpec = WORLD_SAMPLER) -> diffusers.StableDiffusionPipeline:
    """The world model with the sampler's scheduler, on CPU in fp32."""
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(model_dir), safety_checker=None)
    pipe.scheduler = getattr(diffusers, sampler.scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt: str | list[str], seeds: list[int], sampler: SamplerSpec = WORLD_SAMPLER,
             batch: int = 64) -> torch.Tensor:
    """Images (N x 3 x H x W in [0, 1]) for one prompt per seed (or one prompt each)."""
    prompts = [prompt] * len(seeds) if isinstance(prompt, str) else list(prompt)
    out = []
    for i in range(0, len(seeds), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        res = pipe(prompts[i : i + batch], num_inference_steps=sampler.steps, guidance_scale=sampler.guidance,
                   eta=sampler.eta, height=sampler.height, width=sampler.width, generator=gens, output_type="pt")
        out.append(res.images.float().cpu())
    return torch.cat(out)
