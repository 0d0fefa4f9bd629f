"""UnlearnDiffAtk (Zhang et al., ECCV 2024): discrete adversarial prefix tokens found with the erased
model as its own classifier.

For each target prompt, ``k`` prefix tokens are searched over the whole vocabulary. The variable is a
probability vector per slot, not an embedding. Each step draws one token per slot from those
probabilities, embeds the one-hot through the text encoder's token table, and measures the erased
model's denoising loss on the *original* model's image for the prompt, noised to a fixed timestep.
The gradient passes straight through the draw (clipped to [-1, 1]); Adam steps the probabilities,
and each row is projected back onto the simplex. The timesteps are fixed: 40 steps at each of
t = 10, 30, ..., 990, in that order. After each block the most probable tokens are decoded to text,
and the erased model draws that text. The attack stops as soon as the judge sees the concept.

Defaults, from the authors' code (OPTML-Group/Diffusion-MU-Attack at 5a3e5d3; paths under ``src/``):

| field | value | authors |
|---|---|---|
| ``k`` | 3 (objects and styles; 5 for nudity and violence) | ``execs/attack.py:39``; ``configs/object/text_grad_esd_church_classifier.json:19``, ``configs/style/text_grad_esd_vangogh_classsifier.json:19`` |
| position | after the start token (``prefix_k``) | ``execs/attack.py:38``; ``attackers/text_grad_.py:81-94`` |
| ``iterations`` (per timestep) | 40 | ``execs/attack.py:40`` |
| timesteps | 50: t = 10, 30, ..., 990, rising | ``tasks/classifier_.py:30, 67-70`` |
| ``lr`` / ``weight_decay`` | 0.01 / 0.1, Adam (L2 added to the gradient) | ``execs/attack.py:82-83``; ``attackers/text_grad_.py:79`` |
| init | uniform 1/V over the whole vocabulary | ``attackers/text_grad_.py:68-76`` |
| draw | ``torch.multinomial``, one-hot; backward ``hardtanh`` | ``attackers/text_grad_.py:240-255`` |
| projection | onto the simplex by bisection, tol 1e-5, after every step | ``attackers/text_grad_.py:20-66, 219-220`` |
| loss | MSE, the true added noise against the erased UNet's prediction, conditional branch only | ``tasks/classifier_.py:76-87`` |
| target latent | the VAE's mean of the original model's image for the prompt | ``tasks/classifier_.py:95-100``; ``execs/generate_dataset.py:57-161`` |
| check | decode the argmax tokens, generate with the erased model, stop at the first success | ``attackers/text_grad_.py:222-233``; ``tasks/classifier_.py:250-256`` |
| pre-attack | the plain prompt first; a prompt that already succeeds is not attacked | ``attackers/text_grad_.py:191-197`` |

``unlearndiffatk@world`` (the CPU world's declared budget): ``timesteps`` 10 instead of 50 (t = 50, 150,
..., 950: the same even spacing, coarser; at most 400 updates and 10 checks instead of 2,000 and 50) and
``prompts`` 1. Every other field is the authors'.

Choices we had to make (each a field where it is a value):
- the loss target follows the model's prediction type: the noise for epsilon models (the authors'
  SD v1.4), the velocity for v-prediction (ConceptWorld);
- the target image and every check use the protocol's sampler, at the first attack seed (the
  authors use LMS, 25 steps for the target and 50 for checks, at the prompt's csv seed);
- the success check is the bench's judge (the authors use NudeNet, ResNet-50 or a style classifier);
- the ASR counts the final prompt's images on every attack seed. The authors count one image per
  prompt, at its csv seed;
- ``prompts``: the concept's first templates, each attacked on its own (the authors attack one csv
  row per process).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from bench.api.attack import Attack, AttackContext, AttackOutcome, template_prompts
from bench.api.config import MethodConfig
from bench.core.concepts import Concept
from bench.model.discrete import (
    SampledOneHot,
    decode_ids,
    encode_with_slots,
    project_simplex,
    prompt_ids,
    slot_ids,
)
from bench.model.pipeline import pipeline_device
from bench.model.training import Stopwatch, noise_scheduler, only_trainable


@dataclass(frozen=True)
class UnlearnDiffAtkConfig(MethodConfig):
    k: int = field(default=3, metadata={"help": "adversarial prefix tokens (authors: 3 for objects and styles)"})
    iterations: int = field(default=40, metadata={"help": "Adam steps at each timestep"})
    timesteps: int = field(default=50, metadata={"help": "fixed timesteps, evenly spaced: T/(2n), 3T/(2n), ..."})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate on the token probabilities"})
    weight_decay: float = field(default=0.1, metadata={"help": "Adam's L2 term (added to the gradient)"})
    early_stop: bool = field(default=True, metadata={"help": "stop once the judge sees the concept"})
    prompts: int = field(default=2, metadata={"help": "the concept's first templates, each attacked on its own"})

    def validate(self) -> None:
        self._require(1 <= self.k <= 16, f"k must be in 1..16, got {self.k}")
        self._require(self.iterations >= 1 and self.timesteps >= 1, "iterations and timesteps must be >= 1")
        self._require(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0")
        self._require(self.prompts >= 1, f"prompts must be >= 1, got {self.prompts}")


def fixed_timesteps(n: int, total: int) -> list[int]:
    """The authors' ``range(T // n // 2, T, T // n)[:n]``: 10, 30, ..., 990 for n = 50, T = 1000."""
    return list(range(total // n // 2, total, total // n))[:n]


def _target(sched: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet predicts at ``t``: the added noise (epsilon), the velocity or the clean latent."""
    kind = sched.config.prediction_type
    return {"epsilon": lambda: noise, "v_prediction": lambda: sched.get_velocity(x0, noise, t),
            "sample": lambda: x0}[kind]()


class UnlearnDiffAtk(Attack):
    name = "unlearndiffatk"
    version = "1"
    Config = UnlearnDiffAtkConfig
    variants = {"world": {"timesteps": 10, "prompts": 1}}

    def _prompts(self, concept: Concept) -> list[str]:
        return template_prompts(concept, self.config.prompts)

    def prepare(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
                context: AttackContext) -> dict[str, torch.Tensor]:
        """The original model's image for each prompt at the first attack seed, and its VAE mean latent."""
        prompts = self._prompts(concept)
        shown = context.render(pipe, prompts, [context.seeds[0]] * len(prompts))
        with torch.no_grad():
            x = shown.float().div(255).mul(2).sub(1).to(pipeline_device(pipe), pipe.vae.dtype)
            latents = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        return {"target_images": shown, "target_latents": latents.float()}

    def attack(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
               context: AttackContext | None = None) -> AttackOutcome:
        if context is None or "target_latents" not in context.reference:
            raise ValueError("unlearndiffatk needs its reference (prepare on the original model)")
        cfg: UnlearnDiffAtkConfig = self.config
        out_prompts, out_ids, steps, pre = [], [], [], []
        with Stopwatch(pipeline_device(pipe)) as sw:
            for i, prompt in enumerate(self._prompts(concept)):
                gen = torch.Generator().manual_seed(seed * 1000 + i)
                text, ids, n, already = self._one(pipe, prompt, context.reference["target_latents"][i : i + 1],
                                                  context, gen)
                out_prompts.append(text)
                out_ids.append(ids)
                steps.append(n)
                pre.append(already)
        return AttackOutcome(prompts=out_prompts, seconds=sw.seconds, token_ids=out_ids,
                             info={"updates": steps, "pre_attack_success": pre, "k": cfg.k})

    def _one(self, pipe: Any, prompt: str, x0: torch.Tensor, context: AttackContext, gen: torch.Generator
             ) -> tuple[str, list[int], int, bool]:
        """(final text, its prefix token ids, Adam updates spent, whether the plain prompt already succeeded)."""
        cfg: UnlearnDiffAtkConfig = self.config
        tok = pipe.tokenizer
        eval_seed = context.seeds[0]
        if cfg.early_stop and bool(context.sees(context.render(pipe, [prompt], [eval_seed]))[0]):
            return prompt, [], 0, True
        ids, slots = slot_ids(tok, [], cfg.k, prompt_ids(tok, prompt))
        table = pipe.text_encoder.get_input_embeddings().weight.detach()
        device = pipeline_device(pipe)
        probs = torch.full((cfg.k, table.shape[0]), 1.0 / table.shape[0], device=device, requires_grad=True)
        opt = torch.optim.Adam([probs], lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = noise_scheduler(pipe)
        x0 = x0.to(device)
        text, best, updates = prompt, [], 0
        with only_trainable(pipe, {}):
            for t in fixed_timesteps(cfg.timesteps, sched.config.num_train_timesteps):
                tt = torch.tensor([t], device=device)
                for _ in range(cfg.iterations):
                    onehot = SampledOneHot.apply(probs, gen)
                    cond = encode_with_slots(pipe, ids[None], slots, onehot @ table.to(onehot.dtype))
                    noise = torch.randn(x0.shape, generator=gen).to(device)
                    noisy = sched.add_noise(x0, noise, tt)
                    target = _target(sched, x0, noise, tt)
                    pred = pipe.unet(noisy.to(pipe.unet.dtype), tt, encoder_hidden_states=cond.to(pipe.unet.dtype)).sample
                    loss = F.mse_loss(pred.float(), target.float())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        probs.copy_(project_simplex(probs))
                    updates += 1
                best = probs.detach().argmax(-1).tolist()
                full = ids.clone()
                full[slots] = torch.tensor(best)
                text = decode_ids(tok, full.tolist())
                if cfg.early_stop and bool(context.sees(context.render(pipe, [text], [eval_seed]))[0]):
                    break
        return text, best, updates, False

    def text_prompts(self, concept: Concept) -> list[tuple[str, int]]:
        return [(p, self.config.k) for p in self._prompts(concept)]


ATTACK = UnlearnDiffAtk
