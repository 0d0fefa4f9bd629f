"""The few-shot gradient-ascent family (Fuchi & Takagi, the full fine-tune baseline): its config and
``AscentEraser``, the base class whose ``erase`` runs negated denoising epochs on the few concept images."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image

from bench.api.config import MethodConfig
from bench.api.method import Eraser
from bench.core.concepts import Concept
from bench.model.guards import check_losses
from bench.model.pipeline import pipeline_device
from bench.model.training import (
    Stopwatch,
    batches,
    count_params,
    denoising_loss,
    encode_latents,
    encode_prompts,
    images_to_tensor,
    noise_scheduler,
    only_trainable,
    prompt_batch,
    restored_on_failure,
    trainable_and_originals,
    training_precision,
)


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
    from bench.model.pipeline import default_resolution

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
