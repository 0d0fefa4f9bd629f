"""AdvUnlearn (Zhang et al., NeurIPS 2024): ESD's objective on the text encoder, trained against an
adversarial prompt prefix found by an inner attack, with a retain loss.

Each iteration draws ``x_t`` from the original model (concept prompt, guidance 3, a random number of
the 50 DDIM steps) and regresses the UNet's prediction, conditioned by the *edited text encoder*, onto
ESD's target from the original model: ``eps*(x_t, "") - eta (eps*(x_t, c) - eps*(x_t, ""))``. After a
warm-up, the condition is not the concept prompt but the concept prompt behind ``k`` adversarial token
embeddings, refreshed by an attack that, on fresh ``x_t``, makes the edited model reproduce the
original model's concept prediction (Adam on the embeddings, minimising that MSE). A retain term
keeps the edited encoder's predictions on other prompts where the original's were. The UNet never
changes.

Defaults, from the authors' ``OPTML-Group/AdvUnlearn`` (commit 9d23124), ``train-scripts/AdvUnlearn.py``
(A), ``train-scripts/utils/attack_util.py`` (AU), ``utils/get_loss.py`` (GL), ``utils/util.py`` (U),
``README.md`` (R):

| field | default | where |
|---|---|---|
| trainable | every text-encoder ``encoder.*`` parameter (no token/position embeddings; final LayerNorm only with ``norm_layer``) | A:L245-246, U:L41-67 |
| ``iterations`` | 1000 | A:L249 |
| ``lr`` | 1e-5, Adam (PyTorch defaults), MSE mean | A:L251, A:L62-63 |
| ``negative_guidance`` | 1.0 (target ``e_0 - eta (e_p - e_0)``) | A:L227, GL:L352 |
| ``guidance`` (sampling ``x_t``) | 3 | A:L226 |
| ``steps`` | 50 DDIM steps | A:L234 |
| ``warmup`` | 200 iterations without attack | A:L261, A:L143-152 |
| ``attack_every`` | 1 (adv_prompt_update_step) | A:L259 |
| ``attack_steps`` | 30 | A:L258 |
| ``attack_lr`` | 1e-3, a new Adam per attack, gradients never zeroed between steps | A:L260, AU:L168-215 |
| ``attack_method`` | ``pgd`` (``fast_at``: the sign of the accumulated gradient) | A:L247, AU:L206-212 |
| ``prefix_tokens`` | 1 (prefix_k, word-embedding space) | A:L254-256, AU:L224-317 |
| ``attack_init`` | ``random`` vocabulary tokens (README; the code's default ``latest``) | R:L99, A:L257, AU:L5-20 |
| returned prefix | the one before the attack's last update | AU:L217-220 |
| ``retain_mode`` | ``reg`` (README; the code's default ``iter``) | R:L99, A:L241 |
| ``retain_weight`` | 0.3 (README; the code's default 1.0) | R:L99, A:L243 |
| ``retain_batch`` | 5 prompts, drawn without replacement, retain ``x_t`` at the same step | A:L240, GL:L313-361, PD:L9-31 |

Choices we had to make, exposed as config fields: the retain prompts are the concept set's
``preserve`` list (the dev concepts of other types: never the evaluation's retain prompts; the
authors use 243 COCO object prompts; ``retain_prompts`` overrides); ``layers`` selects encoder layers
by index (the authors' ``text_encoder_layerXYZ`` options match names by prefix, so "layer01" also
trains layers 10 and 11: not reproduced); ``x_t`` for an iteration (the update's, the retain batch's
and the attack's) are drawn together from the original model before that iteration (the UNet never
changes, so the distribution is the authors'); every seed comes from the run's seed; the concept's
wording is ``prompt_template`` (the authors use the bare concept text). Images the harness passes
are not used.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from bench.api.config import MethodConfig
from bench.api.method import Eraser, Knob
from bench.core.concepts import Concept
from bench.model.pipeline import pipeline_device

_LAYER = re.compile(r"^text_encoder\.(?:text_model\.)?encoder\.layers\.(\d+)\.")
_FINAL_NORM = re.compile(r"^text_encoder\.(?:text_model\.)?final_layer_norm\.")


@dataclass(frozen=True)
class AdvUnlearnConfig(MethodConfig):
    iterations: int = 1000
    lr: float = 1e-5
    negative_guidance: float = 1.0
    guidance: float = 3.0
    steps: int = 50
    warmup: int = 200
    attack_every: int = 1
    attack_steps: int = 30
    attack_lr: float = 1e-3
    attack_method: Literal["pgd", "fast_at"] = "pgd"
    attack_init: Literal["random", "latest"] = "random"
    prefix_tokens: int = 1
    retain_mode: Literal["reg", "iter"] = "reg"
    retain_weight: float = 0.3
    retain_batch: int = 5
    retain_prompts: tuple[str, ...] = ()
    layers: tuple[int, ...] = ()
    component: Literal["all", "ffn", "attn"] = "all"
    norm_layer: bool = False
    prompt_template: str = "{}"
    resolution: int = 0

    def validate(self) -> None:
        self._require(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        self._require(self.lr >= 0, f"lr must be >= 0, got {self.lr}")
        self._require(self.negative_guidance >= 0, f"negative_guidance must be >= 0, got {self.negative_guidance}")
        self._require(self.guidance >= 0, f"guidance must be >= 0, got {self.guidance}")
        self._require(1 <= self.steps <= 1000, f"steps must be in 1..1000, got {self.steps}")
        self._require(self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}")
        self._require(self.attack_every >= 1, f"attack_every must be >= 1, got {self.attack_every}")
        self._require(self.attack_steps >= 1, f"attack_steps must be >= 1, got {self.attack_steps}")
        self._require(self.attack_lr > 0, f"attack_lr must be > 0, got {self.attack_lr}")
        self._require(1 <= self.prefix_tokens <= 16, f"prefix_tokens must be in 1..16, got {self.prefix_tokens}")
        self._require(self.retain_weight >= 0, f"retain_weight must be >= 0, got {self.retain_weight}")
        self._require(self.retain_batch >= 1, f"retain_batch must be >= 1, got {self.retain_batch}")
        self._require(all(i >= 0 for i in self.layers), f"layers must be >= 0, got {self.layers}")
        self._require(self.prompt_template.count("{}") == 1,
                      f"prompt_template must contain exactly one '{{}}', got {self.prompt_template!r}")
        self._require(self.resolution >= 0, f"resolution must be >= 0, got {self.resolution}")


class _RetainPool:
    """Retain prompts drawn without replacement; the pool refills when too few remain."""

    def __init__(self, n: int, rng: random.Random) -> None:
        self.n, self.rng, self.left = n, rng, []

    def draw(self, k: int) -> list[int]:
        if len(self.left) < k:
            self.left = list(range(self.n))
            self.rng.shuffle(self.left)
        out, self.left = self.left[:k], self.left[k:]
        return out


class AdvUnlearn(Eraser):
    name = "advunlearn"
    version = "1"
    Config = AdvUnlearnConfig
    quick = {"iterations": 6, "warmup": 2, "attack_steps": 3, "retain_batch": 2}
    # its objective is ESD's negative guidance, not the concept's denoising loss: the contract suite checks that
    # the world judge sees the concept less after an erase at this rate (6 iterations)
    erasure_check = {"lr": 1e-2}
    strength = (Knob("lr", 1e-4, 1.6e-3, help="Adam learning rate of the text encoder"),
                Knob("iterations", 250, 2000, integer=True, help="unlearning iterations (the first `warmup` without attack)"))

    def edited_parameters(self, pipe: Any) -> list[str]:
        from bench.api.edit import pipeline_parameters

        cfg = self.config
        keep = []
        for name in pipeline_parameters(pipe, ("text_encoder",)):
            if _FINAL_NORM.match(name):
                if cfg.norm_layer:
                    keep.append(name)
                continue
            m = _LAYER.match(name)
            if not m or (cfg.layers and int(m.group(1)) not in cfg.layers):
                continue
            if (cfg.component == "ffn" and ".mlp." not in name) or (cfg.component == "attn" and ".self_attn." not in name):
                continue
            keep.append(name)
        return sorted(keep)

    # -- pieces -------------------------------------------------------------------------------
    def _attack(self, pipe: Any, unet: Any, prompt: str, x: torch.Tensor, t: torch.Tensor, e_p: torch.Tensor,
                previous: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        """Prefix embeddings that make the edited model predict the original's ``e_p`` at each ``x``."""
        from bench.model.text import encode_with_prefix

        cfg = self.config
        table = pipe.text_encoder.get_input_embeddings().weight
        if cfg.attack_init == "latest" and previous is not None:
            adv = previous.clone()
        else:
            adv = table[torch.randint(0, table.shape[0], (cfg.prefix_tokens,), generator=gen).to(table.device)]
        adv = adv.detach().float().clone().requires_grad_(True)
        opt = torch.optim.Adam([adv], lr=cfg.attack_lr)
        returned = adv.detach().clone()
        for s in range(cfg.attack_steps):
            cond = encode_with_prefix(pipe, [prompt], adv)
            pred = unet(x[s : s + 1], t[s : s + 1], cond).float()
            F.mse_loss(pred, e_p[s : s + 1]).backward()  # gradients add up across steps, as the authors'
            if cfg.attack_method == "fast_at":
                adv.grad.sign_()
            returned = adv.detach().clone()
            opt.step()
        return returned

    def _retain_loss(self, pipe: Any, unet: Any, x: torch.Tensor, t: torch.Tensor, prompts: list[str],
                     frozen_cond: torch.Tensor) -> torch.Tensor:
        """MSE between the edited and the original encoder's predictions on retain prompts."""
        from bench.model.training import encode_prompts

        with torch.no_grad():
            want = unet(x, t, frozen_cond).float()
        return F.mse_loss(unet(x, t, encode_prompts(pipe, prompts)).float(), want)

    def _iteration_latents(self, pipe: Any, unet: Any, conds: torch.Tensor, cond_0: torch.Tensor, rows: list[int],
                           attack: bool, gen: torch.Generator, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration's ``x_t`` from the original model, in one batch: the update's (concept), the
        retain batch's (at the update's step for ``reg``, a step of their own for ``iter``) and, when
        attacking, one per attack step (concept, each at its own step)."""
        from bench.model.sampling import guided_latents

        cfg = self.config
        first = int(torch.randint(0, cfg.steps, (1,), generator=gen))
        which, stops = [0], [first]
        if rows:
            step = first if cfg.retain_mode == "reg" else int(torch.randint(0, cfg.steps, (1,), generator=gen))
            which += [1 + k for k in rows]
            stops += [step] * len(rows)
        if attack:
            which += [0] * cfg.attack_steps
            stops += torch.randint(0, cfg.steps, (cfg.attack_steps,), generator=gen).tolist()
        seeds = [rng.randrange(2**31) for _ in which]
        x, ts = guided_latents(pipe, unet, conds, cond_0, which, stops, seeds, cfg.guidance, cfg.steps,
                               cfg.resolution, batch_size=len(which))
        return x.to(conds.device), ts.to(conds.device)

    def erase(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int) -> Any:
        from bench.model.sampling import unet_predict
        from bench.model.text import encode_with_prefix
        from bench.model.training import (
            Stopwatch,
            count_params,
            encode_prompts,
            only_trainable,
            optimiser_step,
            restored_on_failure,
            trainable_and_originals,
            training_precision,
        )

        cfg = self.config
        params, originals = trainable_and_originals(self, pipe)
        prompt = cfg.prompt_template.format(concept.name)
        retain = list(cfg.retain_prompts or concept.preserve)
        gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
        pool = _RetainPool(len(retain), rng)
        unet = unet_predict(pipe)
        losses: list[float] = []
        retain_losses: list[float] = []
        adv: torch.Tensor | None = None
        with restored_on_failure(params, originals), Stopwatch(pipeline_device(pipe)) as sw:
            with torch.no_grad():  # the original encoder's conditions, fixed for the whole run
                conds = encode_prompts(pipe, [prompt, *retain]).float()
                cond_0 = encode_prompts(pipe, [""]).float()
            with only_trainable(pipe, params), training_precision(pipe, ["text_encoder"]):
                opt = torch.optim.Adam(list(params.values()), lr=cfg.lr)
                for i in range(cfg.iterations):
                    attack = i >= cfg.warmup and i % cfg.attack_every == 0
                    rows = pool.draw(cfg.retain_batch) if retain else []
                    r = slice(1, 1 + len(rows))
                    # 1. this iteration's x_t and the original model's predictions for the update
                    with torch.no_grad():
                        x, ts = self._iteration_latents(pipe, unet, conds, cond_0, rows, attack, gen, rng)
                        e_0, e_p = unet(torch.cat([x[:1], x[:1]]), ts[:1].repeat(2),
                                        torch.cat([cond_0, conds[:1]])).float().chunk(2)
                    # 2. the attack: a prefix that brings the concept back
                    if attack:
                        a_x, a_t = x[1 + len(rows) :], ts[1 + len(rows) :]
                        with torch.no_grad():
                            a_e = unet(a_x, a_t, conds[:1].expand(len(a_x), -1, -1)).float()
                        for p in params.values():
                            p.requires_grad_(False)
                        adv = self._attack(pipe, unet, prompt, a_x, a_t, a_e, adv, gen)
                        for p in params.values():
                            p.requires_grad_(True)
                    # 3. the update: ESD's target, through the edited encoder (behind the prefix)
                    cond_n = (encode_with_prefix(pipe, [prompt], adv) if i >= cfg.warmup and adv is not None
                              else encode_prompts(pipe, [prompt]))
                    loss = F.mse_loss(unet(x[:1], ts[:1], cond_n).float(), e_0 - cfg.negative_guidance * (e_p - e_0))
                    retain_args = (pipe, unet, x[r], ts[r], [retain[k] for k in rows], conds[[1 + k for k in rows]])
                    if rows and cfg.retain_mode == "reg":
                        loss = loss + cfg.retain_weight * self._retain_loss(*retain_args)
                    optimiser_step(opt, loss, losses, "advunlearn loss")
                    if rows and cfg.retain_mode == "iter":  # one retain-only step on its own x_t
                        optimiser_step(opt, cfg.retain_weight * self._retain_loss(*retain_args), retain_losses,
                                       "advunlearn retain loss")
        return self.make_edit(pipe, originals, sw.seconds, count_params(params), concept, seed, prompt=prompt,
                              retain_prompts=retain, steps=len(losses), loss_first=losses[0], loss_last=losses[-1])


METHOD = AdvUnlearn
