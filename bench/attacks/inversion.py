"""Concept inversion: textual inversion against the erased model.

A fresh token embedding is learned from held-out concept images (not those the erasure used)
with a fixed step budget, everything else frozen; the model then generates from prompts that
use the token. If the concept comes back, the eraser only cut the word, not the concept.
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
from bench.model.text import encode_with_token, learn_token_embedding
from bench.model.training import Stopwatch, encode_latents, images_to_tensor


@dataclass(frozen=True)
class InversionConfig(MethodConfig):
    steps: int = 150
    lr: float = 5e-3
    batch_size: int = 4
    placeholder: str = "sks"  # a single-token word whose embedding is replaced (the table is untouched)
    init_word: str = "thing"  # neutral start: the attack must not lean on the erased name
    prompts: int = 2  # the concept's first templates, with the placeholder

    def validate(self) -> None:
        self._require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        self._require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        self._require(self.batch_size >= 1 and self.prompts >= 1, "batch_size and prompts must be >= 1")


class Inversion(Attack):
    name = "inversion"
    Config = InversionConfig

    def attack(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
               context: AttackContext | None = None) -> AttackOutcome:
        from bench.model.pipeline import default_resolution

        cfg: InversionConfig = self.config
        gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
        with Stopwatch(pipeline_device(pipe)) as sw:
            pixels = images_to_tensor(images, default_resolution(pipe), gen, flip_p=0.5)
            latents = encode_latents(pipe, pixels, gen)
            vector = learn_token_embedding(pipe, latents, concept.templates, cfg.placeholder, cfg.init_word,
                                           cfg.steps, cfg.lr, cfg.batch_size, gen, rng)
            templates = list(concept.templates[: cfg.prompts])
            with torch.no_grad():
                embeds = encode_with_token(pipe, [t.format(cfg.placeholder) for t in templates], cfg.placeholder,
                                           vector)
        return AttackOutcome(prompts=[t.format("<v*>") for t in templates], prompt_embeds=embeds.detach().cpu(),
                             seconds=sw.seconds, info={"steps": cfg.steps, "images": len(images)})

    def text_prompts(self, concept: Concept) -> list[tuple[str, int]]:
        return [(t.format(self.config.placeholder), 0) for t in concept.templates[: self.config.prompts]]


ATTACK = Inversion
