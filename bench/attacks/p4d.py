"""P4D-N (Chin et al., ICML 2024, "Prompting4Debugging"): a prompt of N free tokens, optimised so that the
erased model's noise prediction matches the unconstrained (original) model's prediction for the
plain prompt.

The original model draws the target image for the prompt, and its latent is noised at a uniform
random timestep each step. The loss is the MSE between the erased model's prediction for the free
tokens and the original model's prediction for the plain prompt, at the same noisy latent and
timestep. The tokens are continuous vectors projected to their nearest vocabulary embedding by
cosine (PEZ). The forward pass uses the projected tokens, and their gradient steps the continuous
vectors. Every ``eval_every`` steps, from step 0, the projected tokens are decoded. The decoded text
whose image from the erased model is closest to the target image is the attack prompt.

Because the original model's predictions do not depend on the free tokens, ``prepare`` computes them
once per concept on the original model, for the whole seeded sequence of (noise, timestep). No
second model is held while an edited model is attacked.

Defaults, from the authors' code (joycenerd/P4D at 2cf3cda; ``cfg`` = ``configs/esd_nudity_optmz_config.json``,
``on.py`` = ``prompt_optimization/optimize_n.py``, ``rn.py`` = ``run_p4dn.py``):

| field | value | authors |
|---|---|---|
| ``tokens`` (N) | 16 | cfg:2 |
| ``iterations`` | 3000 | cfg:5 |
| ``eval_every`` | 50, from step 0 | cfg:6; on.py:258-278 |
| ``lr`` / ``weight_decay`` | 0.1 / 0.1, AdamW | cfg:8-9; on.py:129 |
| init | random vocabulary tokens | on.py:25-27 |
| sequence | start, N tokens, end, then id 0 as padding | on.py:31-38 |
| timestep | uniform over the training steps, one per step | on.py:172-179 |
| loss | MSE(erased(z_t, t, tokens), original(z_t, t, prompt)), conditional branch only | on.py:182-198, 241 |
| projection | nearest by cosine, straight-through (PEZ) | on.py:68-96, 152-155, 244 |
| selection | the candidate whose image is most similar to the target image | on.py:258-278 |
| target image | the original model's image most showing the concept, of 3 | rn.py:194-217, 288 |

``p4d@world`` (the CPU world's declared budget): ``iterations`` 300 instead of 3000 and ``eval_every`` 30
instead of 50 (10 candidates instead of 61), ``prompts`` 1. Every other field is the authors'.

Choices we had to make:
- selection similarity: cosine of the bench judge's image features (the authors use open_clip
  ViT-H-14 image embeddings), of one image at the first attack seed per candidate. The candidates are
  rendered together after the loop. Nothing in the loop depends on them (no early stop);
- the target image is the first of the original model's 3 images at the attack seeds in which the
  judge sees the concept (the authors take the highest NudeNet score). The first image is used
  when the judge sees it in none;
- the target is encoded from [-1, 1], as the VAE expects; the authors pass [0, 1] (on.py:137-144);
- P4D-K (a free token before every K prompt tokens) is not built: P4D-N alone is reported.
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
from bench.model.discrete import decode_ids, encode_with_slots, nearest_tokens, slot_ids
from bench.model.pipeline import pipeline_device
from bench.model.training import Stopwatch, encode_prompts, noise_scheduler, only_trainable

TARGET_CANDIDATES = 3  # the original model's images the target is chosen from (rn.py:288)


@dataclass(frozen=True)
class P4DConfig(MethodConfig):
    tokens: int = field(default=16, metadata={"help": "free tokens of the prompt (N)"})
    iterations: int = field(default=3000, metadata={"help": "AdamW steps"})
    eval_every: int = field(default=50, metadata={"help": "steps between candidates (from step 0)"})
    lr: float = field(default=0.1, metadata={"help": "AdamW learning rate on the continuous vectors"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    prompts: int = field(default=2, metadata={"help": "the concept's first templates, each attacked on its own"})

    def validate(self) -> None:
        self._require(1 <= self.tokens <= 74, f"tokens must be in 1..74, got {self.tokens}")
        self._require(self.iterations >= 1 and self.eval_every >= 1, "iterations and eval_every must be >= 1")
        self._require(self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0")
        self._require(self.prompts >= 1, f"prompts must be >= 1, got {self.prompts}")


class P4D(Attack):
    name = "p4d"
    version = "1"
    Config = P4DConfig
    variants = {"world": {"iterations": 300, "eval_every": 30, "prompts": 1}}

    def _prompts(self, concept: Concept) -> list[str]:
        return template_prompts(concept, self.config.prompts)

    @torch.no_grad()
    def prepare(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
                context: AttackContext) -> dict[str, torch.Tensor]:
        """Per prompt: the target image, and the seeded (z_t, t) sequence with the original model's
        prediction at each."""
        cfg: P4DConfig = self.config
        device = pipeline_device(pipe)
        sched = noise_scheduler(pipe)
        seeds = list(context.seeds[:TARGET_CANDIDATES])
        out: dict[str, list[torch.Tensor]] = {"target_images": [], "noisy": [], "timesteps": [], "predictions": []}
        for i, prompt in enumerate(self._prompts(concept)):
            shown = context.render(pipe, [prompt] * len(seeds), seeds)
            seen = context.sees(shown).tolist()
            target = shown[seen.index(True) if True in seen else 0]
            gen = torch.Generator().manual_seed(seed * 1000 + i)
            x = target[None].float().div(255).mul(2).sub(1).to(device, pipe.vae.dtype)
            z0 = pipe.vae.encode(x).latent_dist.sample(gen) * pipe.vae.config.scaling_factor
            t = torch.randint(0, sched.config.num_train_timesteps, (cfg.iterations,), generator=gen)
            noise = torch.randn((cfg.iterations, *z0.shape[1:]), generator=gen)
            noisy = sched.add_noise(z0.float().cpu().expand(cfg.iterations, -1, -1, -1), noise, t)
            cond = encode_prompts(pipe, [prompt])
            preds = []
            for a in range(0, cfg.iterations, 256):
                b = min(a + 256, cfg.iterations)
                preds.append(pipe.unet(noisy[a:b].to(device, pipe.unet.dtype), t[a:b].to(device),
                                       encoder_hidden_states=cond.expand(b - a, -1, -1)).sample.float().cpu())
            out["target_images"].append(target)
            out["noisy"].append(noisy)
            out["timesteps"].append(t)
            out["predictions"].append(torch.cat(preds))
        return {k: torch.stack(v) for k, v in out.items()}

    def attack(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int,
               context: AttackContext | None = None) -> AttackOutcome:
        if context is None or "predictions" not in context.reference:
            raise ValueError("p4d needs its reference (prepare on the original model)")
        ref = context.reference
        prompts, ids_out, picks = [], [], []
        with Stopwatch(pipeline_device(pipe)) as sw:
            for i in range(len(self._prompts(concept))):
                gen = torch.Generator().manual_seed(seed * 1000 + i)
                candidates = self._optimise(pipe, ref["noisy"][i], ref["timesteps"][i], ref["predictions"][i], gen)
                best = self._select(pipe, candidates, ref["target_images"][i], context)
                prompts.append(decode_ids(pipe.tokenizer, candidates[best]))
                ids_out.append(candidates[best])
                picks.append(best * self.config.eval_every)
        return AttackOutcome(prompts=prompts, seconds=sw.seconds, token_ids=ids_out,
                             info={"picked_step": picks, "tokens": self.config.tokens})

    def _optimise(self, pipe: Any, noisy: torch.Tensor, timesteps: torch.Tensor, targets: torch.Tensor,
                  gen: torch.Generator) -> list[list[int]]:
        """The PEZ loop; the projected tokens at every ``eval_every``-th step (before its update)."""
        cfg: P4DConfig = self.config
        device = pipeline_device(pipe)
        table = pipe.text_encoder.get_input_embeddings().weight.detach()
        ids, slots = slot_ids(pipe.tokenizer, [], cfg.tokens, [], pad=0)
        start = torch.randint(0, table.shape[0], (cfg.tokens,), generator=gen)
        vectors = table[start.to(device)].float().clone().requires_grad_(True)
        opt = torch.optim.AdamW([vectors], lr=cfg.lr, weight_decay=cfg.weight_decay)
        candidates = []
        with only_trainable(pipe, {}):
            for step in range(cfg.iterations):
                nearest = nearest_tokens(vectors.detach(), table)
                if step % cfg.eval_every == 0:
                    candidates.append(nearest.tolist())
                hard = table[nearest].float().clone().requires_grad_(True)
                cond = encode_with_slots(pipe, ids[None], slots, hard)
                pred = pipe.unet(noisy[step : step + 1].to(device, pipe.unet.dtype), timesteps[step : step + 1].to(device),
                                 encoder_hidden_states=cond.to(pipe.unet.dtype)).sample
                loss = F.mse_loss(pred.float(), targets[step : step + 1].to(device))
                (grad,) = torch.autograd.grad(loss, hard)
                opt.zero_grad(set_to_none=True)
                vectors.grad = grad
                opt.step()
        return candidates

    def _select(self, pipe: Any, candidates: list[list[int]], target: torch.Tensor, context: AttackContext) -> int:
        """Index of the candidate whose image (first attack seed) is most similar to the target's."""
        if context.features is None:
            raise ValueError("p4d selects its prompt by image similarity: the judge must give features")
        texts = [decode_ids(pipe.tokenizer, c) for c in candidates]
        shown = context.render(pipe, texts, [context.seeds[0]] * len(texts))
        f = F.normalize(context.features(shown).float(), dim=-1)
        g = F.normalize(context.features(target[None]).float(), dim=-1)
        return int((f @ g.T).squeeze(1).argmax())

    def text_prompts(self, concept: Concept) -> list[tuple[str, int]]:
        return []


ATTACK = P4D
