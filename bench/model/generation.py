"""Batched sampling through the pipeline's ordinary ``__call__``, and the reference-image cache.

Each image gets its own seeded generator, so an image depends on (prompt, seed, sampler) and,
through floating-point rounding only (about 1/255 at most), on the batch it was generated in.
Batches are therefore always cut the same way from a cell's prompt list, and a rerun after a
kill regenerates exactly the same batches: the same images, the same numbers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bench.core.io import temp_path
from bench.core.protocol import SamplerSpec
from bench.core.records import canonical_json
from bench.model.guards import check_finite


def set_scheduler(pipe: Any, sampler: SamplerSpec) -> None:
    """Use the sampler's scheduler class with the model's own noise schedule."""
    import diffusers

    if type(pipe.scheduler).__name__ != sampler.scheduler:
        cls = getattr(diffusers, sampler.scheduler, None)
        if cls is None:
            from bench.core.errors import ConfigError

            raise ConfigError(f"unknown diffusers scheduler {sampler.scheduler!r}")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)


@torch.no_grad()
def generate(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], sampler: SamplerSpec,
             batch_size: int = 64, progress: Any = None, prompt_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images N x 3 x H x W for ``prompts[i]`` with ``seeds[i]``.

    ``prompt_embeds`` (N x 77 x D), when given, replaces the text encoding of ``prompts``
    (learned tokens of an attack); the unconditional branch still encodes the empty prompt.
    """
    if len(prompts) != len(seeds) or (prompt_embeds is not None and len(prompt_embeds) != len(seeds)):
        raise ValueError("prompts, seeds (and prompt_embeds) must have the same length")
    set_scheduler(pipe, sampler)
    device = pipe._execution_device
    out = []
    for i in range(0, len(prompts), batch_size):
        p, s = list(prompts[i : i + batch_size]), seeds[i : i + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(int(x)) for x in s]
        # latents drawn on the CPU from per-image generators: identical on any device and batching
        shape = (pipe.unet.config.in_channels, *_latent_hw(pipe, sampler))
        latents = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device, pipe.unet.dtype)
        text: dict[str, Any] = {"prompt": p}
        if prompt_embeds is not None:
            from bench.model.training import encode_prompts

            text = {"prompt_embeds": prompt_embeds[i : i + batch_size].to(device, pipe.text_encoder.dtype),
                    "negative_prompt_embeds": encode_prompts(pipe, [""] * len(p))}
        images = pipe(**text, num_inference_steps=sampler.steps, guidance_scale=sampler.guidance, eta=sampler.eta,
                      height=sampler.height, width=sampler.width, latents=latents, output_type="pt",
                      callback_on_step_end=_finite_latents, callback_on_step_end_tensor_inputs=["latents"]).images
        check_finite(images, "decoded images", f"batch of {len(p)} from prompt {p[0]!r}")
        out.append((images.clamp(0, 1) * 255).round().to(torch.uint8).cpu())
        if progress is not None:
            progress.update(len(p))
    return torch.cat(out) if out else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)


def _finite_latents(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Stop at the first denoising step whose latents hold NaN or Inf (the pipeline's step hook)."""
    check_finite(kwargs["latents"], "latents", f"denoising step {step + 1}")
    return kwargs


def _latent_hw(pipe: Any, sampler: SamplerSpec) -> tuple[int, int]:
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, (list, tuple)) else (size, size)
    f = pipe.vae_scale_factor
    h = sampler.height // f if sampler.height else size[0]
    w = sampler.width // f if sampler.width else size[1]
    return int(h), int(w)


def _load_cached(path: Path) -> torch.Tensor:
    """One cached reference image; a truncated or foreign file is an error naming it."""
    try:
        image = load_file(str(path))["image"]
    except Exception as e:  # safetensors raises its own error types for corrupt files
        from bench.core.errors import RecordError

        raise RecordError(f"reference image cache file {path} is unreadable ({e}); delete it to regenerate") from None
    if image.dtype != torch.uint8 or image.ndim != 3:
        from bench.core.errors import RecordError

        raise RecordError(f"reference image cache file {path} does not hold a uint8 image; delete it to regenerate")
    return image


class ReferenceCache:
    """The original model's images, generated once per (model, prompt, seed, sampler)."""

    def __init__(self, folder: Path, model_sha256: str, sampler: SamplerSpec) -> None:
        self.folder = Path(folder)
        self.prefix = {"model": model_sha256, "sampler": sampler.to_dict()}

    def _path(self, prompt: str, seed: int) -> Path:
        key = hashlib.sha256(canonical_json({**self.prefix, "prompt": prompt, "seed": seed}).encode()).hexdigest()
        return self.folder / key[:2] / f"{key[:24]}.safetensors"

    def get_or_generate(self, pipe: Any, prompts: Sequence[str], seeds: Sequence[int], sampler: SamplerSpec,
                        batch_size: int = 64, progress: Any = None) -> torch.Tensor:
        """Cached images where present; a batch with any missing image is generated whole."""
        out = []
        for i in range(0, len(prompts), batch_size):
            p, s = list(prompts[i : i + batch_size]), list(seeds[i : i + batch_size])
            paths = [self._path(a, b) for a, b in zip(p, s, strict=True)]
            have = [path.is_file() for path in paths]
            if all(have):
                out.append(torch.stack([_load_cached(path) for path in paths]))
                if progress is not None:
                    progress.update(len(p))
                continue
            fresh = generate(pipe, p, s, sampler, batch_size, progress)
            for j, path in enumerate(paths):
                if have[j]:  # keep what earlier cells were judged on
                    fresh[j] = _load_cached(path)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = temp_path(path)
                save_file({"image": fresh[j].contiguous()}, str(tmp), metadata={"prompt": p[j], "seed": str(s[j])})
                os.replace(tmp, path)
            out.append(fresh)
        return torch.cat(out) if out else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
