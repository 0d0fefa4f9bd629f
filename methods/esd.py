"""ESD (Gandikota et al., ICCV 2023): erasing a concept by fine-tuning the UNet with negative guidance.

At a latent ``x_t`` reached by sampling the *original* model with the concept prompt (classifier-free
guidance 3, a random number of the 50 DDIM steps), the edited UNet's prediction for the concept is
regressed onto the original model's guidance pushed the other way::

    eps_theta(x_t, c) -> eps*(x_t, c_from) - eta * (eps*(x_t, c) - eps*(x_t, ""))

with ``c_from`` the concept itself unless ``erase_from`` names an anchor (then the edited model is
trained at ``c_from``). With no anchor the target is ``eps*(c) - eta (eps*(c) - eps*(""))``: the
paper's ``eps*("") - eta' (eps*(c) - eps*(""))`` with ``eta' = eta - 1`` (the authors' diffusers script
uses eta 2, their original script eta 1 in the paper's form: the same target). The formula is applied
to whatever the UNet predicts (noise or velocity): at one ``x_t`` the two are affine in each other
and the weights sum to one, so the target is the same point in either.

Variants: ``esd@x`` trains every cross-attention Linear (``attn2``), ``esd@u`` every Linear/Conv2d
outside cross-attention (norms never train, as in the authors' module filter).

Defaults, from the authors' ``rohitgandikota/erasing`` (commit 25613d2, 2025-07-01), ``esd_sd.py``
(the diffusers version; sampling in ``utils/sd_utils.py``):

| field | default | where |
|---|---|---|
| ``train_method`` | required there (``esd-x`` / ``esd-u`` / ``esd-all`` / ``esd-x-strict``); ours ``esd-x`` | L24-49, L59 |
| modules | Linear/Conv2d (and their LoRA-compatible forms), weight and bias, by name substring | L28-44 |
| ``iterations`` | 200 | L60 |
| ``lr`` | 5e-5, Adam with PyTorch's betas/eps, no weight decay, no clipping | L61, L92 |
| ``negative_guidance`` (eta) | 2.0 | L62 |
| ``guidance`` (sampling ``x_t``) | 3.0, unconditional = ``""`` | L57, L96-100 |
| ``steps`` | 50 inference steps; ``x_t`` after ``r`` steps, r uniform in 0..49, timestep ``timesteps[r]`` | L56, L89, L128-141 |
| sampling model | the frozen original, prompted with ``erase_from`` or the concept | L127-141 |
| batch | 1 latent per iteration | L77 |
| loss | MSE, mean | L85, L191 |
| ``erase_from`` | none (the concept itself) | L55, L112-119, L164-188 |
| noise seeds | a fresh ``random.randint`` seed per iteration | L130 |

Choices we had to make, exposed as config fields: the resolution (``resolution``; 0 = the pipeline's
native size; the script hard-codes 1024 even for SD v1.4, L78), the sampler (DDIM on the model's noise
schedule for every pipeline; the script uses the pipeline's default scheduler, PNDM on SD v1.4),
the concept's wording (``prompt_template``; the authors pass the bare concept text), the precision
(trainable weights train in fp32 under autocast for half-precision pipelines; the script trains in
bf16), every per-iteration seed drawn from the run's seed, and ``x_t`` drawn up front in batches of
``sample_batch`` (the original model never changes, so this is the same distribution; it only
makes CPU runs affordable). The frozen model's two predictions, e("") and e(c), come from one batch
of 2 (the script makes two calls, L143-174): the same rule, and float32 weights within 1e-7 of the
script's after 3 iterations of ESD-x on the tiny pipeline (docs/methods.md, "UCE and ESD against the
authors' code"). Images the harness passes are not used: ESD makes its own ``x_t``, and
that sampling counts in its seconds.
"""

from __future__ import annotations

import random
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

_MODULES = ("Linear", "Conv2d", "LoRACompatibleLinear", "LoRACompatibleConv")


def _selected(train_method: str, module_name: str) -> bool:
    if train_method == "esd-x":
        return "attn2" in module_name
    if train_method == "esd-u":
        return "attn2" not in module_name
    if train_method == "esd-x-strict":
        return "attn2.to_k" in module_name or "attn2.to_v" in module_name
    return True  # esd-all


@dataclass(frozen=True)
class EsdConfig(MethodConfig):
    train_method: Literal["esd-x", "esd-u", "esd-all", "esd-x-strict"] = "esd-x"
    iterations: int = 200
    lr: float = 5e-5
    negative_guidance: float = 2.0
    guidance: float = 3.0
    steps: int = 50
    erase_from: str = ""
    prompt_template: str = "{}"
    resolution: int = 0
    sample_batch: int = 16

    def validate(self) -> None:
        self._require(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        self._require(self.lr >= 0, f"lr must be >= 0, got {self.lr}")
        self._require(self.negative_guidance >= 0, f"negative_guidance must be >= 0, got {self.negative_guidance}")
        self._require(self.guidance >= 0, f"guidance must be >= 0, got {self.guidance}")
        self._require(1 <= self.steps <= 1000, f"steps must be in 1..1000, got {self.steps}")
        self._require(self.prompt_template.count("{}") == 1,
                      f"prompt_template must contain exactly one '{{}}', got {self.prompt_template!r}")
        self._require(self.resolution >= 0, f"resolution must be >= 0, got {self.resolution}")
        self._require(self.sample_batch >= 1, f"sample_batch must be >= 1, got {self.sample_batch}")


def esd_targets(predict: Any, x: torch.Tensor, t: torch.Tensor, cond_c: torch.Tensor, cond_0: torch.Tensor,
                cond_from: torch.Tensor | None, eta: float) -> torch.Tensor:
    """``eps*(x, c_from) - eta (eps*(x, c) - eps*(x, ""))`` from one batched call of the original model."""
    conds = [cond_0, cond_c] + ([cond_from] if cond_from is not None else [])
    preds = predict(torch.cat([x] * len(conds)), t.repeat(len(conds)), torch.cat(conds)).float()
    parts = preds.chunk(len(conds))
    e_0, e_c = parts[0], parts[1]
    e_from = parts[2] if cond_from is not None else e_c
    return e_from - eta * (e_c - e_0)


class Esd(Eraser):
    name = "esd"
    version = "1"
    Config = EsdConfig
    # lr first: at the authors' lr the world model barely moves (UA 0.00 on star, striped and zorbo,
    # 4 seeds; 0.75 at 1e-3), as with every method on this world (see the README's protocol).
    quick = {"iterations": 20}
    # Its objective is not the concept images' denoising loss: the contract suite checks the judge
    # (20 iterations at the world's lr: "star" seen in 8/8 world images before, 2/8 (x) and 0/8 (u) after).
    erasure_check = {"lr": 1e-3}
    # world 3's dev ladders (reports/tuned/conceptworld3.json): ESD-x erases 4 % at 3.125e-5, 85 % at 2.5e-4
    # and keeps 0.82 of retain at 2e-3 (0.28 at 4e-3); ESD-u erases 21 % at 3.125e-5, 35 % at 2.5e-4 and
    # keeps 0.08 at 1e-3. The variants share this knob, so one range (ESD-u's low end still erases 21 %).
    strength = (Knob("lr", 2.5e-4, 4e-3, help="Adam learning rate", ranges={"conceptworld3": (3.125e-5, 2e-3)}),
                Knob("negative_guidance", 0.5, 8.0, help="eta: how far the target is pushed away from the concept"),
                Knob("iterations", 50, 800, integer=True, help="optimiser steps (one x_t each)"))
    variants = {"x": {"train_method": "esd-x"}, "u": {"train_method": "esd-u"}}

    def edited_parameters(self, pipe: Any) -> list[str]:
        names = []
        for mod_name, module in pipe.unet.named_modules():
            if type(module).__name__ in _MODULES and _selected(self.config.train_method, mod_name):
                names += [f"unet.{mod_name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        return sorted(names)

    def erase(self, pipe: Any, concept: Concept, images: Sequence[Image.Image], seed: int) -> Any:
        from bench.model.sampling import guided_latents, unet_predict
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
        gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
        losses: list[float] = []
        with restored_on_failure(params, originals), Stopwatch(pipeline_device(pipe)) as sw:
            with torch.no_grad():
                cond_c, cond_0 = encode_prompts(pipe, [prompt]), encode_prompts(pipe, [""])
                cond_from = encode_prompts(pipe, [cfg.erase_from]) if cfg.erase_from else None
                # 1. every x_t, from the original model (unedited: training has not started)
                stops = torch.randint(0, cfg.steps, (cfg.iterations,), generator=gen).tolist()
                seeds = [rng.randrange(2**31) for _ in range(cfg.iterations)]
                x, ts = guided_latents(pipe, unet_predict(pipe), cond_from if cond_from is not None else cond_c,
                                       cond_0, [0] * cfg.iterations, stops, seeds, cfg.guidance, cfg.steps,
                                       cfg.resolution, cfg.sample_batch)
            with only_trainable(pipe, params), training_precision(pipe, ["unet"]):
                # 2. regress the edited UNet onto the negatively guided targets of the original
                frozen, edited = unet_predict(pipe, originals), unet_predict(pipe)
                train_cond = cond_from if cond_from is not None else cond_c
                opt = torch.optim.Adam(list(params.values()), lr=cfg.lr)
                device = cond_c.device
                for i in range(cfg.iterations):
                    xi, ti = x[i : i + 1].to(device), ts[i : i + 1].to(device)
                    with torch.no_grad():
                        target = esd_targets(frozen, xi, ti, cond_c, cond_0, cond_from, cfg.negative_guidance)
                    pred = edited(xi, ti, train_cond).float()
                    optimiser_step(opt, F.mse_loss(pred, target), losses, "esd loss")
        return self.make_edit(pipe, originals, sw.seconds, count_params(params), concept, seed,
                              prompt=prompt, erase_from=cfg.erase_from, steps=len(losses),
                              loss_first=losses[0], loss_last=losses[-1])


METHOD = Esd
