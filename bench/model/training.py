"""Training pieces shared by methods and attacks: data, the denoising objective, freezing, optimiser steps.

Every random draw (flips, latent sampling, timesteps, noise, prompt choice) comes from a seeded
CPU generator or ``random.Random`` so one seed gives the same weights on CPU.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.api.method import Eraser
from bench.core.errors import ConfigError, InputError
from bench.model.guards import check_losses
from bench.model.pipeline import pipeline_device, pipeline_dtype


# -- data --------------------------------------------------------------------------------------
def images_to_tensor(images: Sequence[Image.Image], resolution: int, generator: torch.Generator,
                     flip_p: float = 0.5) -> torch.Tensor:
    """Resize (bicubic, no crop) to a square, random horizontal flip, scale to [-1, 1]."""
    if not images:
        raise InputError("no concept images given: a few-shot method needs at least one image")
    out = []
    for im in images:
        arr = np.asarray(im.convert("RGB").resize((resolution, resolution), Image.BICUBIC), dtype=np.float32)
        x = torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0
        if torch.rand((), generator=generator).item() < flip_p:
            x = x.flip(-1)
        out.append(x)
    return torch.stack(out)


@torch.no_grad()
def encode_latents(pipe: Any, pixels: torch.Tensor, generator: torch.Generator, sample: bool = True) -> torch.Tensor:
    """VAE-encode once, up front, and scale by the VAE's scaling factor."""
    vae = pipe.vae
    x = pixels.to(pipeline_device(pipe), vae.dtype)
    dist = vae.encode(x).latent_dist
    if sample:
        noise = torch.randn(dist.mean.shape, generator=generator).to(dist.mean.device, dist.mean.dtype)
        z = dist.mean + dist.std * noise
    else:
        z = dist.mean
    return (z * vae.config.scaling_factor).float()


def encode_prompts(pipe: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Text-encoder hidden states for ``prompts`` (padded to the tokenizer's max length)."""
    tok = pipe.tokenizer
    ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(pipeline_device(pipe))
    return pipe.text_encoder(ids)[0]


# -- the denoising objective -------------------------------------------------------------------
def noise_scheduler(pipe: Any) -> Any:
    """A DDPM scheduler with the pipeline's noise schedule and prediction type (for training)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def denoising_loss(pipe: Any, scheduler: Any, latents: torch.Tensor, cond: torch.Tensor,
                   generator: torch.Generator, reduction: str = "mean") -> torch.Tensor:
    """MSE between the UNet's prediction and its target at random timesteps.

    The target follows the scheduler's ``prediction_type``: noise (epsilon), velocity
    (v_prediction, SD 2.x 768) or the clean latent (sample).
    """
    device = latents.device
    n = latents.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator).to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    noisy = scheduler.add_noise(latents, noise, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    elif kind == "sample":
        target = latents
    else:
        raise ConfigError(f"unsupported scheduler prediction_type {kind!r}")
    dtype = pipeline_dtype(pipe)
    pred = pipe.unet(noisy.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return loss.mean() if reduction == "mean" else loss


@torch.no_grad()
def concept_loss(pipe: Any, latents: torch.Tensor, prompts: Sequence[str], seed: int, repeats: int = 4) -> float:
    """Mean denoising loss of ``latents`` under ``prompts`` at fixed seeded timesteps and noise.

    Used to check that an erasure made the concept harder to denoise (the loss goes up).
    """
    sched = noise_scheduler(pipe)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for r in range(repeats):
        p = [prompts[(r + i) % len(prompts)] for i in range(latents.shape[0])]
        total += denoising_loss(pipe, sched, latents, encode_prompts(pipe, p), gen).item()
    return total / repeats


# -- which parameters train --------------------------------------------------------------------
@contextlib.contextmanager
def only_trainable(pipe: Any, params: dict[str, torch.nn.Parameter]) -> Iterator[None]:
    """Freeze every pipeline model except ``params``; put the old ``requires_grad`` back after."""
    from bench.api.edit import pipeline_parameters

    everything = pipeline_parameters(pipe)
    before = {name: p.requires_grad for name, p in everything.items()}
    modes = {c: getattr(pipe, c).training for c in ("text_encoder", "unet", "vae") if getattr(pipe, c, None) is not None}
    try:
        for name, p in everything.items():
            p.requires_grad_(name in params)
        for c in modes:
            getattr(pipe, c).eval()  # no dropout: the same seed must give the same weights
        yield
    finally:
        for name, p in everything.items():
            p.requires_grad_(before[name])
        for c, was_training in modes.items():
            getattr(pipe, c).train(was_training)


@contextlib.contextmanager
def training_precision(pipe: Any, components: Sequence[str]) -> Iterator[None]:
    """Half-precision pipelines train their trainable components in fp32 under autocast.

    fp16/bf16 -> fp32 -> fp16/bf16 is exact, so untouched weights come back bit-identical.
    """
    dtype = pipeline_dtype(pipe)
    if dtype == torch.float32:
        yield
        return
    device = pipeline_device(pipe)
    for c in components:
        getattr(pipe, c).to(torch.float32)
    try:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
    finally:
        for c in components:
            getattr(pipe, c).to(dtype)


def snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params.items()}


def trainable_and_originals(method: Eraser, pipe: Any) -> tuple[dict[str, torch.nn.Parameter], dict[str, torch.Tensor]]:
    """The parameters ``method`` edits, by name, and a snapshot of their current values."""
    from bench.api.edit import pipeline_parameters

    every = pipeline_parameters(pipe)
    params = {n: every[n] for n in method.edited_parameters(pipe)}
    return params, snapshot(params)


@contextlib.contextmanager
def restored_on_failure(params: dict[str, torch.nn.Parameter], originals: dict[str, torch.Tensor]) -> Iterator[None]:
    """A diverged (or interrupted) erase leaves the model as it found it."""
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for name, p in params.items():
                p.data.copy_(originals[name])
        raise


def optimiser_step(opt: torch.optim.Optimizer, loss: torch.Tensor, history: list[float], what: str,
                   clip: float | None = None) -> None:
    """Zero, back-propagate ``loss``, optionally clip the gradient norm, step; log the loss and stop
    on a non-finite one (``history`` holds every step's loss)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()
    history.append(loss.item())
    check_losses(history[-1:], what, first_step=len(history) - 1)


def count_params(params: dict[str, torch.nn.Parameter] | Sequence[torch.nn.Parameter]) -> int:
    values = params.values() if isinstance(params, dict) else params
    return sum(p.numel() for p in values)


class Stopwatch:
    """Wall time of a block, synchronising CUDA so queued kernels are counted; entering it again
    adds the next block's time (``seconds`` is the total)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Stopwatch:
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start


# -- prompts -----------------------------------------------------------------------------------
def prompt_batch(rng: random.Random, templates: Sequence[str], word: str, n: int) -> list[str]:
    """``n`` prompts, each a random template filled with ``word``."""
    return [rng.choice(templates).format(word) for _ in range(n)]


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's shuffled index batches (the last one may be smaller)."""
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


# -- textual-inversion token -------------------------------------------------------------------


# -- the few-shot fine-tuning loop --------------------------------------------------------------


