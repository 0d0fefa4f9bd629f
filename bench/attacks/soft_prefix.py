"""Soft prompt prefix: a white-box upper bound, not a published attack.

``prefix_len`` free *continuous* token vectors are placed before the target prompt and optimised so
that the *erased* model's denoising loss on held-out concept images is minimal: the diffusion model
acts as its own classifier, so no judge gradient is needed. Unlike UnlearnDiffAtk (``unlearndiffatk``),
which must end on real vocabulary tokens, these vectors need not be any word's embedding, so no text
prompt reproduces them: the attack is stronger than any discrete one and is reported as a bound.
5 vectors, 40 iterations (the attack was named ``prefix`` before attacks version 2).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from bench.api.attack import Attack, AttackContext, AttackOutcome
from bench.api.config import MethodConfig
from bench.core.concepts import Concept
from bench.model.pipeline import pipeline_device
from bench.model.text import encode_with_prefix
from bench.model.training import (
    Stopwatch,
    denoising_loss,
    encode_latents,
    images_to_tensor,
    noise_scheduler,
    only_trainable,
)


@dataclass(frozen=True)
class SoftPrefixConfig(MethodConfig):
    prefix_len: int = 5
    iterations: int = 40
    lr: float = 1e-2
    batch_size: int = 4
    prompts: int = 2  # the concept's first templates get the prefix

    def validate(self) -> None:
        self._require(self.prefix_len >= 1, f"prefix_len must be >= 1, got {self.prefix_len}")
        self._require(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        self._require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        self._require(self.batch_size >= 1 and self.prompts >= 1, "batch_size and prompts must be >= 1")


class SoftPrefix(Attack):
    name = "soft_prefix"
    upper_bound = True
    Config = SoftPrefixConfig

    def attack(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
               context: AttackContext | None = None) -> AttackOutcome:
        from bench.model.pipeline import default_resolution

        cfg: SoftPrefixConfig = self.config
        gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
        templates = list(concept.templates[: cfg.prompts])
        prompts = [t.format(concept.name) for t in templates]
        with Stopwatch(pipeline_device(pipe)) as sw:
            latents = encode_latents(pipe, images_to_tensor(images, default_resolution(pipe), gen), gen)
            table = pipe.text_encoder.get_input_embeddings().weight
            start = torch.randint(0, table.shape[0] - 2, (cfg.prefix_len,), generator=gen)
            prefix = table[start.to(table.device)].detach().float().clone().requires_grad_(True)
            opt = torch.optim.AdamW([prefix], lr=cfg.lr, weight_decay=0.0)
            sched = noise_scheduler(pipe)
            with only_trainable(pipe, {}):
                for _ in range(cfg.iterations):
                    idx = torch.randint(0, latents.shape[0], (cfg.batch_size,), generator=gen)
                    cond = encode_with_prefix(pipe, [rng.choice(prompts) for _ in range(len(idx))], prefix)
                    loss = denoising_loss(pipe, sched, latents[idx], cond, gen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                embeds = encode_with_prefix(pipe, prompts, prefix)
        return AttackOutcome(prompts=[f"<prefix x{cfg.prefix_len}> {p}" for p in prompts],
                             prompt_embeds=embeds.detach().cpu(), seconds=sw.seconds,
                             info={"iterations": cfg.iterations, "prefix_len": cfg.prefix_len})

    def text_prompts(self, concept: Concept) -> list[tuple[str, int]]:
        return [(t.format(concept.name), self.config.prefix_len) for t in concept.templates[: self.config.prompts]]


ATTACK = SoftPrefix
