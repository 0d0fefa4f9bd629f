"""LoRA eraser (Aadarsh & Shreyas 2025), reconstructed: textual inversion, then LoRA ascent.

No code was published; the paper states that the *final layers* of the text encoder are
updated through LoRA with a *weighted loss* that uses textual inversion, on SD v2 with 4-5
images (~50 s per concept). This reconstruction:

1. Textual inversion: learn a pseudo-token embedding v* (``placeholder`` token, initialised
   from the concept's name) that reconstructs the images with the model frozen. It captures
   the visual concept, not just its name.
2. LoRA (peft ``LoraConfig``) on the attention and MLP projections of the last ``lora_layers``
   text-encoder layers, minimising
   ``lam * L_forget + (1 - lam) * L_TI_forget + retain_weight * L_retain``
   where both forget terms are the negated denoising loss of the images, under the concept's
   name prompts and under prompts containing v* respectively, and ``L_retain`` (off by default)
   is the MSE between edited and original text embeddings of ``retain_prompts``.
3. The LoRA factors are the edit (small storage); applying merges ``W + alpha/r * B @ A``.

Every number the paper does not give is an assumption exposed here: rank, alpha, layers,
lam, learning rates, step counts, the placeholder word and the retain term.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from bench.api.edit import Edit
from bench.api.method import Eraser, Knob
from bench.core.concepts import Concept
from bench.model.ascent import FewShotConfig, few_shot_latents
from bench.model.pipeline import pipeline_device
from bench.model.text import learn_token_embedding, single_token_id, token_override
from bench.model.training import (
    Stopwatch,
    denoising_loss,
    encode_prompts,
    noise_scheduler,
    only_trainable,
    prompt_batch,
    training_precision,
)

_TARGET = re.compile(r"layers\.(\d+)\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))$")


@dataclass(frozen=True)
class LoraEraserConfig(FewShotConfig):
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_layers: int = 2  # the last k text-encoder layers get LoRA
    lam: float = 0.5  # weight of the name-prompt forget loss vs the v*-prompt forget loss
    steps: int = 40  # LoRA optimiser steps
    lr: float = 1e-4
    ti_steps: int = 100
    ti_lr: float = 5e-3
    placeholder: str = "sks"  # an existing single-token word whose embedding v* overrides
    retain_weight: float = 0.0
    retain_prompts: tuple[str, ...] = ("a photo", "a picture of something", "an image")

    def validate(self) -> None:
        super().validate()
        self._require(self.lora_rank >= 1, f"lora_rank must be >= 1, got {self.lora_rank}")
        self._require(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        self._require(self.lora_layers >= 1, f"lora_layers must be >= 1, got {self.lora_layers}")
        self._require(0.0 <= self.lam <= 1.0, f"lam must be in [0, 1], got {self.lam}")
        self._require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        self._require(self.ti_steps >= 0, f"ti_steps must be >= 0, got {self.ti_steps}")
        self._require(self.ti_lr >= 0, f"ti_lr must be >= 0, got {self.ti_lr}")
        self._require(self.retain_weight >= 0, f"retain_weight must be >= 0, got {self.retain_weight}")
        self._require(self.retain_weight == 0 or len(self.retain_prompts) > 0,
                      "retain_weight > 0 needs retain_prompts")


class LoraEraser(Eraser):
    name = "lora_eraser"
    version = "1"
    Config = LoraEraserConfig
    # world 3's dev ladder: UA 0.02 at 1e-3, 0.96 at 4e-3 (reports/tuned/conceptworld3.json)
    strength = (Knob("lr", 1e-3, 1.6e-2, help="learning rate of the LoRA weights (the ascent after textual inversion)",
                     ranges={"conceptworld3": (5e-4, 8e-3)}),)

    def target_modules(self, pipe: Any) -> list[str]:
        """Text-encoder Linear modules (names inside the text encoder) that get LoRA."""
        n_layers = int(pipe.text_encoder.config.num_hidden_layers)
        first = n_layers - min(self.config.lora_layers, n_layers)
        out = []
        for name, module in pipe.text_encoder.named_modules():
            m = _TARGET.search(name)
            if m and isinstance(module, torch.nn.Linear) and int(m.group(1)) >= first:
                out.append(name)
        return sorted(out)

    def edited_parameters(self, pipe: Any) -> list[str]:
        return [f"text_encoder.{name}.weight" for name in self.target_modules(pipe)]

    def erase(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int) -> Edit:
        from peft import LoraConfig, get_peft_model

        cfg: LoraEraserConfig = self.config
        gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
        te = pipe.text_encoder
        token_id = single_token_id(pipe.tokenizer, cfg.placeholder)
        targets = self.target_modules(pipe)
        with Stopwatch(pipeline_device(pipe)) as sw:
            latents = few_shot_latents(pipe, images, cfg, gen)
            v_star = learn_token_embedding(pipe, latents, concept.templates, cfg.placeholder, concept.name,
                                           cfg.ti_steps, cfg.ti_lr, cfg.batch_size, gen, rng)
            with torch.no_grad():
                anchor = encode_prompts(pipe, cfg.retain_prompts) if cfg.retain_weight > 0 else None
            torch.manual_seed(seed)  # peft's LoRA A init draws from the global generator
            peft_model = get_peft_model(te, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                       target_modules=targets, lora_dropout=0.0, bias="none"))
            try:
                lora = {f"text_encoder.{n}": p for n, p in te.named_parameters() if ".lora_" in n}
                self._train(pipe, lora, latents, concept, v_star, token_id, anchor, gen, rng)
                factors, scale = self._factors(te, targets)
            finally:
                peft_model.unload()  # puts the original Linear modules back, weights untouched
        edit = Edit(
            method=self.name, config=cfg.to_dict(), format="lora", tensors=factors,
            trainable_params=sum(t.numel() for t in factors.values()), seconds=sw.seconds, lora_scale=scale,
            info={"method_version": self.version, "concept": concept.name, "seed": seed, "images": len(images),
                  "lora_targets": len(targets), "ti_steps": cfg.ti_steps, "steps": cfg.steps},
        )
        return edit.apply(pipe)

    def _train(self, pipe: Any, lora: dict[str, torch.nn.Parameter], latents: torch.Tensor, concept: Concept,
               v_star: torch.Tensor, token_id: int, anchor: torch.Tensor | None, gen: torch.Generator,
               rng: random.Random) -> None:
        cfg: LoraEraserConfig = self.config
        sched = noise_scheduler(pipe)
        with only_trainable(pipe, lora), training_precision(pipe, ["text_encoder"]):
            opt = cfg.optimiser(list(lora.values()))
            for _ in range(cfg.steps):
                idx = torch.randint(0, latents.shape[0], (min(cfg.batch_size, latents.shape[0]),), generator=gen)
                loss = torch.zeros((), device=latents.device)
                if cfg.lam > 0:
                    cond = encode_prompts(pipe, prompt_batch(rng, concept.templates, concept.name, len(idx)))
                    loss = loss - cfg.lam * denoising_loss(pipe, sched, latents[idx], cond, gen)
                if cfg.lam < 1:
                    with token_override(pipe.text_encoder, token_id, v_star):
                        cond = encode_prompts(pipe, prompt_batch(rng, concept.templates, cfg.placeholder, len(idx)))
                    loss = loss - (1 - cfg.lam) * denoising_loss(pipe, sched, latents[idx], cond, gen)
                if anchor is not None:
                    loss = loss + cfg.retain_weight * F.mse_loss(encode_prompts(pipe, cfg.retain_prompts).float(),
                                                                 anchor.float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    @staticmethod
    def _factors(te: Any, targets: list[str]) -> tuple[dict[str, torch.Tensor], float]:
        factors: dict[str, torch.Tensor] = {}
        scales = set()
        for name in targets:
            layer = te.get_submodule(name)
            adapter = layer.active_adapters[0]
            factors[f"text_encoder.{name}.weight.lora_A"] = layer.lora_A[adapter].weight.detach().cpu().clone()
            factors[f"text_encoder.{name}.weight.lora_B"] = layer.lora_B[adapter].weight.detach().cpu().clone()
            scales.add(float(layer.scaling[adapter]))
        if len(scales) != 1:
            raise RuntimeError(f"LoRA layers disagree on scaling: {sorted(scales)}")
        return factors, scales.pop()


METHOD = LoraEraser
