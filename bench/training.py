"""Training pieces shared by the methods (and, later, the attacks).

Every random draw (flips, latent sampling, timesteps, noise, prompt choice) comes from a seeded
CPU generator or ``random.Random`` so one seed gives the same weights on CPU.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.concepts import Concept
from bench.config import MethodConfig
from bench.errors import ConfigError, InputError
from bench.guards import check_losses
from bench.method import Eraser
from bench.pipeline import pipeline_device, pipeline_dtype


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
    from bench.edit import pipeline_parameters

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
    from bench.edit import pipeline_parameters

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
def single_token_id(tokenizer: Any, word: str) -> int:
    """Id of ``word`` when it is exactly one token (a placeholder must be one token)."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ConfigError(f"placeholder {word!r} is {len(ids)} tokens for this tokenizer; pick a single-token word")
    return ids[0]


@contextlib.contextmanager
def token_override(text_encoder: Any, token_id: int, embedding: torch.Tensor) -> Iterator[None]:
    """Make ``token_id`` embed to ``embedding`` without touching the embedding table.

    A forward hook substitutes the vector, so the tokenizer and the model weights stay
    exactly as they were (and gradients flow into ``embedding`` when it requires them).
    """
    table = text_encoder.get_input_embeddings()

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        mask = (args[0] == token_id).unsqueeze(-1)
        return torch.where(mask, embedding.to(output.dtype), output)

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def learn_token_embedding(
    pipe: Any,
    latents: torch.Tensor,
    templates: Sequence[str],
    placeholder: str,
    init_word: str,
    steps: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    rng: random.Random,
    progress: bool = False,
) -> torch.Tensor:
    """Textual inversion: a token embedding that makes the frozen model reconstruct ``latents``.

    Only the new vector trains; the model's weights are not modified.
    """
    from tqdm.auto import tqdm

    tok, te = pipe.tokenizer, pipe.text_encoder
    token_id = single_token_id(tok, placeholder)
    table = te.get_input_embeddings().weight
    init_ids = tok(init_word, add_special_tokens=False).input_ids or [token_id]
    vector = table[init_ids].detach().float().mean(0).clone().requires_grad_(True)
    opt = torch.optim.AdamW([vector], lr=lr, weight_decay=0.0)
    sched = noise_scheduler(pipe)
    with only_trainable(pipe, {}), token_override(te, token_id, vector):
        for step in tqdm(range(steps), desc="textual inversion", disable=not progress, leave=False):
            idx = torch.randint(0, latents.shape[0], (min(batch_size, latents.shape[0]),), generator=generator)
            cond = encode_prompts(pipe, prompt_batch(rng, templates, placeholder, len(idx)))
            loss = denoising_loss(pipe, sched, latents[idx], cond, generator)
            check_losses([loss.item()], "textual-inversion loss", first_step=step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return vector.detach()


# -- the few-shot fine-tuning loop --------------------------------------------------------------


@dataclass(frozen=True)
class FewShotConfig(MethodConfig):
    """Data and optimiser settings shared by the few-shot methods (Fuchi & Takagi's defaults)."""

    resolution: int = 0  # image side for VAE encoding; 0 = the pipeline's default size
    flip_p: float = 0.5  # one random horizontal flip per image, drawn once, before encoding
    latent_sample: bool = True  # sample the VAE posterior (True) or take its mean
    batch_size: int = 2
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-5
    beta1: float = 0.9
    beta2: float = 0.98
    adam_eps: float = 1e-6
    weight_decay: float = 1e-8

    def validate(self) -> None:
        self._require(self.resolution >= 0, f"resolution must be >= 0, got {self.resolution}")
        self._require(0.0 <= self.flip_p <= 1.0, f"flip_p must be in [0, 1], got {self.flip_p}")
        self._require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        self._require(self.lr >= 0, f"lr must be >= 0, got {self.lr}")
        self._require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "betas must be in [0, 1)")
        self._require(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}")
        self._require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")

    def optimiser(self, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, betas=(self.beta1, self.beta2), eps=self.adam_eps,
                   weight_decay=self.weight_decay)


@dataclass(frozen=True)
class AscentConfig(FewShotConfig):
    """``FewShotConfig`` plus the number of passes over the few images."""

    epochs: int = 4

    def validate(self) -> None:
        super().validate()
        self._require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")


def few_shot_latents(pipe: Any, images: Sequence[Image.Image], cfg: FewShotConfig,
                     generator: torch.Generator) -> torch.Tensor:
    """The concept images as scaled VAE latents, encoded once."""
    from bench.pipeline import default_resolution

    size = cfg.resolution or default_resolution(pipe)
    return encode_latents(pipe, images_to_tensor(images, size, generator, cfg.flip_p), generator,
                          sample=cfg.latent_sample)


def negated_denoising_epochs(
    pipe: Any,
    params: dict[str, torch.nn.Parameter],
    latents: torch.Tensor,
    templates: Sequence[str],
    word: str,
    cfg: FewShotConfig,
    epochs: int,
    generator: torch.Generator,
    rng: random.Random,
    progress: bool = False,
) -> list[float]:
    """Gradient ascent on the denoising loss of the concept images under the concept prompts.

    ``epochs`` passes over the images in shuffled batches; returns the per-step loss
    (positive MSE) so callers can log how far the ascent went.
    """
    from tqdm.auto import tqdm

    sched = noise_scheduler(pipe)
    components = sorted({name.split(".", 1)[0] for name in params})
    history: list[float] = []
    with only_trainable(pipe, params), training_precision(pipe, components):
        opt = cfg.optimiser(list(params.values()))
        steps = [b for _ in range(epochs) for b in batches(latents.shape[0], cfg.batch_size, generator)]
        for idx in tqdm(steps, desc="erase", disable=not progress, leave=False):
            cond = encode_prompts(pipe, prompt_batch(rng, templates, word, len(idx)))
            mse = denoising_loss(pipe, sched, latents[idx], cond, generator)
            opt.zero_grad(set_to_none=True)
            (-mse).backward()
            opt.step()
            history.append(mse.item())
            check_losses(history[-1:], "erase loss", first_step=len(history) - 1)
    return history



class AscentEraser(Eraser):
    """Base for methods that differ only in *which* parameters the negated loss trains.

    Subclasses define ``edited_parameters`` and a config derived from ``FewShotConfig`` (an ``AscentConfig``); the data, prompts, objective and optimiser are shared.
    """

    def erase(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int) -> Any:
        cfg = self.config
        gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
        params, originals = trainable_and_originals(self, pipe)
        with restored_on_failure(params, originals), Stopwatch(pipeline_device(pipe)) as sw:
            latents = few_shot_latents(pipe, images, cfg, gen)
            losses = negated_denoising_epochs(pipe, params, latents, concept.templates, concept.name, cfg,
                                              cfg.epochs, gen, rng)
        return self.make_edit(pipe, originals, sw.seconds, count_params(params), concept, seed,
                              steps=len(losses), images=len(images), loss_first=losses[0], loss_last=losses[-1])


def encode_with_prefix(pipe: Any, prompts: Sequence[str], prefix: torch.Tensor) -> torch.Tensor:
    """Hidden states of ``prompts`` with ``k`` free token vectors placed right after the start token.

    The ids get ``k`` filler slots; a forward hook on the token embedding writes ``prefix`` there,
    so gradients reach ``prefix`` and the model's weights are never touched.
    """
    tok, te = pipe.tokenizer, pipe.text_encoder
    k = prefix.shape[0]
    ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length - k, truncation=True,
              return_tensors="pt").input_ids
    filler = torch.full((ids.shape[0], k), tok.pad_token_id if tok.pad_token_id is not None else 0)
    ids = torch.cat([ids[:, :1], filler, ids[:, 1:]], dim=1).to(pipeline_device(pipe))

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[:, 1 : 1 + k] = prefix.to(out.dtype)
        return out

    handle = te.get_input_embeddings().register_forward_hook(hook)
    try:
        return te(ids)[0]
    finally:
        handle.remove()


def encode_with_token(pipe: Any, prompts: Sequence[str], placeholder: str, embedding: torch.Tensor) -> torch.Tensor:
    """Hidden states of ``prompts`` in which the single-token word ``placeholder`` means ``embedding``."""
    token_id = single_token_id(pipe.tokenizer, placeholder)
    with token_override(pipe.text_encoder, token_id, embedding):
        return encode_prompts(pipe, prompts)
