"""GPU timing check: what one erase, one attack step and one batch of images cost on the card at hand.

    python -m bench.devtools.gpucheck [--out runs/gpu-check] [--archs sd15,sd21] [--methods all]
                                      [--attacks ...] [--budget-s 480] [--device auto] [--tiny]

Budgeted at 8 minutes on one H100 (``--budget-s``: once spent, no new item starts; not yet run on
a GPU). SD v1.5- and v2.1-size pipelines are built from their published
architectures with random weights (``bench.devtools.fullsize.build_full_size``: no download) and moved to
the device. Random weights change no cost: what is measured is time at real size, not erasure quality.
Per architecture, in this order (each a numbered phase of ``run``, which ``main`` calls):

1. build: the pipeline (on the CPU), then ``pipe.to(device, dtype)``;
2. FLOPs: the UNet's floating-point operations for one image and one step, counted once with
   ``torch.utils.flop_counter.FlopCounterMode`` (attention on the math kernel, so its matmuls count);
3. generation, in bf16 and fp16 at batch 8 and 32, on the pipeline (a copy where it is in another dtype):
   seconds per denoising step: the UNet alone on random latents and random text embeddings, at
   2 x batch (classifier-free guidance: conditional and unconditional halves), one warm-up then
   timed steps; images/s: the project's ``bench.model.generation.generate`` (the pipeline call:
   text encoding, every denoising step, VAE decoding, to uint8) at SD's protocol sampler (DDIM 50
   steps, guidance 7.5), after a one-step warm-up; the UNet's TFLOP/s and its share of the card's
   dense bf16 peak (``PEAK_BF16_TFLOPS``; unknown card: n/a);
4. erase, one concept per method (``method.erase`` in ``--erase-dtype``: bf16 on CUDA, trained in fp32
   under autocast as ``bench run --dtype bfloat16`` does; fp32 on the CPU; the seconds are the method's
   own ``Edit.seconds``, as a benchmark cell records them): first a reduced run (``ERASE_PLAN``: the config field that
   counts the method's steps, the reduced values, the weights that extrapolate it linearly to the
   published count), then
5. attacks: seconds per optimisation step of each attack (``ATTACK_PLAN``), from two reduced runs
   of the real attack code (the slope between them; a warm-up run first), and
6. published step counts: the reduced erases whose extrapolated time fits what is left of this
   architecture's share of the budget run again at the published count, cheapest first; the rest
   stay extrapolated. Each row says which (``done``), with steps run and steps published.

``--budget-s`` (480) bounds the work: each architecture gets its share of what is left; once the
budget is spent no new item starts (it is recorded as skipped: a reduced erase is also skipped when its
time on the first architecture, scaled by the FLOPs, would not fit) and the reduced runs' extrapolations
stand. With ``--tiny`` every item runs at its reduced count and the budget bounds only phase 6. Every
item is recorded on its own: one that fails (out of memory, an op the device lacks) keeps its error
string in the JSON and the run goes on. Results are written after every item
(``gpu-check.json`` and the table ``gpu-check.md`` in ``--out``), so a killed run loses nothing done.

The table sets the erase times beside the papers' reported ones (``REFERENCES``): Fuchi & Takagi, the
LoRA eraser, HUB's A6000 minutes (ESD, Concept Ablation, UCE, MACE, Receler) and FMN; methods not in
the registry appear as reference rows only.

``--tiny`` runs the same code path on tiny random pipelines (``bench.model.tiny``; sd21 as the
v-prediction one) on the CPU in seconds: what CI runs (``tests/test_gpu_check.py``). Without CUDA,
``--device auto`` (the default) switches to it and says so. It runs torch at one thread. On the CPU fp16 may be slow or unsupported
for some ops: such an item records its error. Seeds are fixed everywhere; CUDA is synchronised before every timer read.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.core.io import temp_path
from bench.model.pipeline import DTYPES, default_resolution
from bench.model.training import Stopwatch, count_params
from bench.report.text import md_text
from bench.run.attacking import attack_seeds
from bench.run.plan import ALL_ATTACKS

DEFAULT_BUDGET_S = 480.0  # 8 minutes on one H100
TINY_BUDGET_S = 60.0  # --tiny: a CPU check of the code path
# every attack a run can name (bench.run.plan.ALL_ATTACKS), at its published budget (no @world)
TIMED_ATTACKS = tuple(a.split("@")[0] for a in ALL_ATTACKS)
GEN_DTYPES = {k: DTYPES[k] for k in ("bf16", "fp16")}
GEN_BATCHES = (8, 32)
ERASE_DTYPES = {k: DTYPES[k] for k in ("fp32", "bf16", "fp16")}

# Dense bf16 tensor peak (TFLOP/s, no sparsity) by device name: every listed word must be in the name
# (case-insensitive); the first row that matches wins. H100 SXM reports itself as "NVIDIA H100 80GB HBM3".
PEAK_BF16_TFLOPS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("H100", "PCIe"), 756.0, "H100 PCIe"),
    (("H100", "SXM"), 989.0, "H100 SXM"),
    (("H100", "HBM3"), 989.0, "H100 SXM"),
    (("H200",), 989.0, "H200"),
    (("A100",), 312.0, "A100"),
    (("A6000",), 154.8, "RTX A6000 (FP16/BF16 tensor, FP32 accumulate)"),
)

# The papers' reported erase times, per concept. ``method``: our registry name (None: not implemented here).
REFERENCES: tuple[dict[str, Any], ...] = (
    {"method": "fuchi", "label": "Fuchi & Takagi", "reported": "<= 10 s", "reported_s": 10.0, "hardware": "",
     "source": "Fuchi & Takagi (BMVC 2024)"},
    {"method": "lora_eraser", "label": "LoRA eraser", "reported": "about 50 s (SD v2)", "reported_s": 50.0,
     "hardware": "", "source": "Aadarsh & Shreyas (2025)"},
    {"method": "esd", "label": "ESD", "reported": "106 min", "reported_s": 106 * 60.0, "hardware": "A6000",
     "source": "HUB (arXiv 2410.05664)"},
    {"method": "concept_ablation", "label": "Concept Ablation", "reported": "59.6 min", "reported_s": 59.6 * 60,
     "hardware": "A6000", "source": "HUB (arXiv 2410.05664)"},
    {"method": "uce", "label": "UCE", "reported": "0.1 min", "reported_s": 6.0, "hardware": "A6000", "source": "HUB (arXiv 2410.05664)"},
    {"method": None, "label": "MACE", "reported": "137 min", "reported_s": 137 * 60.0, "hardware": "A6000",
     "source": "HUB (arXiv 2410.05664)"},
    {"method": None, "label": "Receler", "reported": "100 min", "reported_s": 100 * 60.0, "hardware": "A6000",
     "source": "HUB (arXiv 2410.05664)"},
    {"method": None, "label": "FMN (Forget-Me-Not)", "reported": "about 30 s", "reported_s": 30.0, "hardware": "",
     "source": "Forget-Me-Not (Zhang et al. 2023)"},
)


def _advunlearn_probes(c: Any) -> list[tuple[dict[str, Any], float]]:
    """One warm-up and one attack iteration, weighted by how many of each the published run has."""
    attack = sum(1 for i in range(c.iterations) if i >= c.warmup and i % c.attack_every == 0)
    return [({"iterations": 1, "warmup": 1}, float(c.iterations - attack)),
            ({"iterations": 1, "warmup": 0}, float(attack))]


@dataclass(frozen=True)
class ErasePlan:
    """How one method's erase is timed: ``fields`` count its steps (summed: the steps published and
    run), ``probes`` gives the reduced runs (config overrides) and their weights, so that the published
    run's time is ``sum(weight x seconds)`` (linear in the step count); ``rule`` says it in words."""

    fields: tuple[str, ...]
    probes: Callable[[Any], list[tuple[dict[str, Any], float]]]
    rule: str


# method -> the config field that counts its steps, the reduced run, how it is extrapolated; in the order
# reduced erases run in: cheap first, so a spent budget skips the dear ones
ERASE_PLAN: dict[str, ErasePlan] = {
    "uce": ErasePlan((), lambda c: [({}, 1.0)], "closed form: no step count, run as published"),
    "negative_prompt": ErasePlan((), lambda c: [({}, 1.0)], "a sampling edit: nothing trains, run as published"),
    "rece": ErasePlan((), lambda c: [({}, 1.0)], "closed forms (UCE, then rounds): no step count, run as published"),
    "fuchi": ErasePlan(("epochs",), lambda c: [({"epochs": 1}, float(c.epochs))], "1 epoch, x epochs"),
    "full_finetune": ErasePlan(("epochs",), lambda c: [({"epochs": 1}, float(c.epochs))], "1 epoch, x epochs"),
    "lora_eraser": ErasePlan(("ti_steps", "steps"),
                             lambda c: [({"ti_steps": max(1, c.ti_steps // 10), "steps": max(1, c.steps // 10)},
                                         (c.ti_steps + c.steps) / (max(1, c.ti_steps // 10) + max(1, c.steps // 10)))],
                             "both loops (textual inversion, LoRA) cut to a tenth, x 10"),
    "esd": ErasePlan(("iterations",), lambda c: [({"iterations": c.sample_batch}, c.iterations / c.sample_batch)],
                     "one x_t sampling batch (sample_batch iterations), x iterations / sample_batch"),
    "concept_ablation": ErasePlan(("steps",), lambda c: [({"steps": 5}, c.steps / 5)],
                                  "5 steps (and their 5 x batch_size anchor images), x steps / 5"),
    "advunlearn": ErasePlan(("iterations",), _advunlearn_probes,
                            "1 warm-up iteration x warm-up count + 1 attack iteration (attack_steps as published) "
                            "x attack count"),
}


@dataclass(frozen=True)
class AttackPlan:
    """How one attack's step is timed: ``field`` set to ``probe[0]`` and ``probe[1]`` in two runs
    (``fixed`` overrides in both), seconds per step their slope; ``published`` the steps it takes per
    concept at its published config; ``call``: what is run (``attack``, ``prepare`` or ``optimise``)."""

    step: str
    field: str | None
    fixed: dict[str, Any]
    published: Callable[[Any, int], int]  # (config, attack seeds) -> steps per concept
    call: str
    probe: tuple[int, int] = (2, 4)
    note: str = ""


ATTACK_PLAN: dict[str, AttackPlan] = {
    "unlearndiffatk": AttackPlan(
        "one Adam update: SampledOneHot draw, text encode, UNet forward/backward on one latent", "iterations",
        {"timesteps": 1, "prompts": 1, "early_stop": False}, lambda c, s: c.iterations * c.timesteps * c.prompts,
        "attack", note="attack() on a random target latent; its success checks (renders) are generation, not counted"),
    "ringabell": AttackPlan(
        "one generation of the genetic search (population scored by the text encoder)", "generations",
        {"prompts": 1}, lambda c, s: c.generations * c.prompts, "prepare",
        note="prepare(): the search runs on the original model"),
    "p4d": AttackPlan(
        "one PEZ AdamW step: nearest tokens, text encode, UNet forward/backward on one latent", "iterations",
        {"prompts": 1}, lambda c, s: c.iterations * c.prompts, "optimise",
        note="P4D._optimise on random reference latents; the candidate renders are generation, not counted"),
    "noised_start": AttackPlan(
        "one held-out image denoised by img2img from t/T = strength (protocol sampler)", "images", {},
        lambda c, s: c.images * s, "attack", probe=(1, 2), note="attack() with one attack seed per image"),
    "inversion": AttackPlan("one textual-inversion step (batch_size images)", "steps", {}, lambda c, s: c.steps,
                            "attack"),
    "soft_prefix": AttackPlan("one AdamW step on the prefix (batch_size images)", "iterations", {},
                              lambda c, s: c.iterations, "attack"),
    "paraphrase": AttackPlan("none: prompts only (its cost is generation)", None, {}, lambda c, s: 0, "attack"),
}

CONCEPT_KW: dict[str, Any] = {
    "name": "cat", "synonyms": ("kitten",), "paraphrases": ("a small cat asleep on a sofa", "a cat in a garden"),
    "retain_in_domain": ("dog", "horse"), "anchor": "dog",
    "preserve": ("a photo of a dog", "a photo of a car", "a photo of a tree", "a photo of a house",
                 "a photo of a boat", "a photo of a chair"),
}


# -- small helpers -----------------------------------------------------------------------------------
def _timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of ``fn()``, CUDA synchronised before and after (``Stopwatch``)."""
    with Stopwatch(device) as watch:
        out = fn()
    return watch.seconds, out


def _latent_side(unet: Any) -> int:
    """The UNet's latent side (``sample_size``: an int, or a pair as some configs give it)."""
    size = unet.config.sample_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _error(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:500]


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_flops(device_name: str) -> tuple[float | None, str]:
    """The card's dense bf16 peak in TFLOP/s and the row it came from; (None, "n/a") when unknown."""
    low = device_name.lower()
    if "nvl" in low:  # NVL boards run at other clocks than the table's SXM/PCIe rows
        return None, "n/a"
    for words, tflops, label in PEAK_BF16_TFLOPS:
        if all(w.lower() in low for w in words):
            return tflops, label
    return None, "n/a"


def _fmt_s(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if s >= 2 * 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.3g} s" if s < 100 else f"{s:.0f} s"


def _images(side: int, n: int, seed: int) -> list[Any]:
    """``n`` seeded random RGB images of ``side`` pixels (a random model sees no concept anyway)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


def _base(spec: str) -> str:
    return spec.partition("@")[0]


class Budget:
    """Seconds left of ``--budget-s``, from the start of the run."""

    def __init__(self, seconds: float) -> None:
        self.total, self.start = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, until: float | None = None) -> float:
        return (self.total if until is None else min(until, self.total)) - self.elapsed()


@dataclass
class Results:
    """Everything measured so far, written as JSON and Markdown after every item."""

    out: Path
    meta: dict[str, Any]
    archs: dict[str, Any] = field(default_factory=dict)
    erase: list[dict[str, Any]] = field(default_factory=list)
    generation: list[dict[str, Any]] = field(default_factory=list)
    attacks: list[dict[str, Any]] = field(default_factory=list)

    def data(self) -> dict[str, Any]:
        return {"schema": 1, "meta": self.meta, "archs": self.archs, "erase": self.erase,
                "generation": self.generation, "attacks": self.attacks, "references": list(REFERENCES)}

    def save(self, budget: Budget) -> None:
        from bench.core.io import write_json

        self.meta["elapsed_s"] = round(budget.elapsed(), 2)
        write_json(self.out / "gpu-check.json", self.data())
        tmp = temp_path(self.out / "gpu-check.md")
        tmp.write_text(_markdown(self.data()), encoding="utf-8")
        tmp.replace(self.out / "gpu-check.md")


def _say(budget: Budget, text: str) -> None:
    print(f"[{budget.elapsed():7.1f} s] {text}", flush=True)


# -- phase 1: build -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers' warnings off (its warning on every dtype cast of a model built in code, whose list of
    modules to keep in float32 is empty)."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def _build(arch: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """SD v1.5/v2.1-size pipeline with random weights (tiny: the tiny pipeline, v-prediction for sd21)."""
    if tiny:
        from bench.model.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(seed=0, prediction_type="v_prediction" if arch == "sd21" else "epsilon")
    else:
        from bench.devtools.fullsize import build_full_size

        pipe = build_full_size(arch, seed=0)
    return pipe.to(device, dtype)


# -- phase 2: FLOPs -------------------------------------------------------------------------------------
@torch.no_grad()
def _unet_flops(unet: Any, device: torch.device) -> int:
    """The UNet's floating-point operations for one image and one denoising step (FlopCounterMode;
    attention on the math kernel, so its matmuls are counted on any device)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x, t, e = _unet_inputs(unet, 1, device, seed=0)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=e)
    return int(counter.get_total_flops())


def _unet_inputs(unet: Any, n: int, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """Random latents, a mid timestep and random text embeddings for ``n`` UNet rows."""
    cfg = unet.config
    size = _latent_side(unet)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.in_channels, size, size, generator=g).to(device, unet.dtype)
    e = torch.randn(n, 77, cfg.cross_attention_dim, generator=g).to(device, unet.dtype)
    return x, torch.full((n,), 500, device=device, dtype=torch.long), e


# -- phase 3: generation --------------------------------------------------------------------------------
def _pipeline_in(pipe: Any, dtype: torch.dtype) -> Any:
    """``pipe`` itself when already in ``dtype``, else a copy of its models in ``dtype`` (tokenizer shared)."""
    if pipe.unet.dtype == dtype:
        return pipe
    comps = {k: copy.deepcopy(v).to(dtype=dtype) if isinstance(v, torch.nn.Module)
             else v if k == "tokenizer" else copy.deepcopy(v) for k, v in pipe.components.items()}
    out = type(pipe)(**comps, requires_safety_checker=False)
    out.set_progress_bar_config(disable=True)
    return out


@torch.no_grad()
def _time_unet_step(unet: Any, batch: int, device: torch.device, steps: int) -> float:
    """Seconds per denoising step of ``batch`` images: the UNet at 2 x batch rows (guidance halves)."""
    x, t, e = _unet_inputs(unet, 2 * batch, device, seed=batch)
    unet(x, t, encoder_hidden_states=e)  # warm-up
    seconds, _ = _timed(device, lambda: [unet(x, t, encoder_hidden_states=e) for _ in range(steps)])
    return seconds / steps


def _time_generation(pipe: Any, dtype_name: str, batch: int, sampler: Any, device: torch.device,
                     unet_steps: int, flops_per_image_step: int | None, peak: float | None) -> dict[str, Any]:
    """One generation row: seconds per UNet step, images/s of the pipeline call, TFLOP/s, share of peak."""
    from dataclasses import replace

    from bench.core.errors import NonFiniteError
    from bench.model.generation import generate

    row: dict[str, Any] = {"dtype": dtype_name, "batch": batch, "sampler_steps": sampler.steps,
                           "guidance": sampler.guidance, "unet_steps_timed": unet_steps}
    step_s = _time_unet_step(pipe.unet, batch, device, unet_steps)
    row["unet_step_s"] = step_s
    if flops_per_image_step:
        tflops = 2 * batch * flops_per_image_step / step_s / 1e12
        row["unet_tflops"] = tflops
        row["share_of_bf16_peak"] = tflops / peak if peak else None
    prompts, seeds = ["a photo of a cat"] * batch, list(range(batch))
    try:
        generate(pipe, prompts, seeds, replace(sampler, steps=1), batch_size=batch)  # warm-up: encoder, decoder
        seconds, images = _timed(device, lambda: generate(pipe, prompts, seeds, sampler, batch_size=batch))
    except NonFiniteError as e:  # random weights in half precision may overflow: time the same call unchecked
        row["note"] = f"{_error(e)}; timed the pipeline call without the finite checks"
        seconds, images = _timed(device, lambda: _bare_pipeline_call(pipe, prompts, seeds, sampler))
    row["generate_s"] = seconds
    row["images_per_s"] = len(images) / seconds
    return row


@torch.no_grad()
def _bare_pipeline_call(pipe: Any, prompts: list[str], seeds: list[int], sampler: Any) -> torch.Tensor:
    """``generate`` without its finite checks (the same pipeline call, seeded per image)."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(prompt=prompts, num_inference_steps=sampler.steps, guidance_scale=sampler.guidance,
                generator=gens, output_type="pt").images


# -- phase 4 and 6: erase -------------------------------------------------------------------------------
def _time_erase(pipe: Any, spec: str, overrides: dict[str, Any], concept: Any, images: Sequence[Any]) -> float:
    """The method's own seconds (``Edit.seconds``) for one erase of ``concept``; the pipeline is restored."""
    from bench.api.method import build_method

    method = build_method(spec, overrides)
    edit = method.erase(pipe, concept, images, seed=0)
    try:
        return float(edit.seconds)
    finally:
        edit.restore()


def _erase_row(spec: str) -> dict[str, Any]:
    """The plan of one method's erase: published config, reduced runs and their weights."""
    from bench.api.method import build_method

    row: dict[str, Any] = {"method": spec}
    name = _base(spec)
    if name not in ERASE_PLAN:
        build_method(spec)  # an unknown method is the registry's error (with its suggestion)
        raise KeyError(f"no timing plan for method {name!r} in gpucheck.ERASE_PLAN")
    plan = ERASE_PLAN[name]
    published = build_method(spec).config
    probes = plan.probes(published)
    steps_published = sum(int(getattr(published, f)) for f in plan.fields)
    as_published = all(all(v >= getattr(published, k) for k, v in o.items() if k in plan.fields) for o, _ in probes)
    if as_published:
        probes = [({}, 1.0)]
    row.update(fields="+".join(plan.fields) or "-", steps_published=steps_published, rule=plan.rule,
               as_published=as_published,
               probes=[{"overrides": o, "weight": w} for o, w in probes],
               steps_run=sum(sum(int(o.get(f, getattr(published, f))) for f in plan.fields) for o, _ in probes))
    return row


def _same_configs(specs: list[str]) -> dict[str, str]:
    """Specs whose config another spec in the list already has, mapped to it: a plain name gives way to its
    variant (ESD's defaults are ``esd@x``: ``esd`` is not run again), otherwise the first one listed runs."""
    from bench.api.method import build_method

    keys: dict[str, tuple[str, Any]] = {}
    for spec in specs:
        try:
            keys[spec] = (_base(spec), build_method(spec).config)
        except Exception:  # noqa: BLE001 - an unknown spec fails (and is recorded) in its own row
            continue
    ranked = sorted(keys, key=lambda s: "@" not in s)  # variants first, otherwise in list order
    first: dict[tuple[str, Any], str] = {}
    out = {}
    for spec in ranked:
        if keys[spec] in first:
            out[spec] = first[keys[spec]]
        else:
            first[keys[spec]] = spec
    return out


# -- phase 5: attacks -----------------------------------------------------------------------------------
def _attack_context(sampler: Any, seeds: tuple[int, ...]) -> Any:
    """Rendering with the project's generation; a judge that never sees the concept (no early stop:
    every attack runs its whole budget, the worst case)."""
    from bench.api.attack import AttackContext
    from bench.model.generation import generate

    def render(pipe: Any, prompts: list[str], seeds: list[int], prompt_embeds: torch.Tensor | None = None
               ) -> torch.Tensor:
        return generate(pipe, prompts, seeds, sampler, 64, prompt_embeds=prompt_embeds)

    return AttackContext(reference={}, seeds=seeds, render=render,
                         sees=lambda images: torch.zeros(len(images), dtype=torch.bool), sampler=sampler)


def _attack_call(pipe: Any, spec: str, plan: AttackPlan, n: int | None, concept: Any, images: Sequence[Any],
                 context: Any) -> Callable[[], Any]:
    """A closure running the attack's real code with its step field at ``n``."""
    from dataclasses import replace

    from bench.api.attack import build_attack
    from bench.model.pipeline import pipeline_device

    overrides = dict(plan.fixed)
    if plan.field is not None and n is not None:
        overrides[plan.field] = n
    attack = build_attack(spec, overrides)
    device = pipeline_device(pipe)
    unet = pipe.unet
    size = _latent_side(unet)
    g = torch.Generator().manual_seed(0)
    if plan.call == "prepare":
        return lambda: attack.prepare(pipe, concept, images, 0, context)
    if plan.call == "optimise":
        iters = attack.config.iterations
        noisy = torch.randn(iters, unet.config.in_channels, size, size, generator=g)
        ts = torch.randint(0, 1000, (iters,), generator=g)
        targets = torch.randn(iters, unet.config.in_channels, size, size, generator=g)
        return lambda: attack._optimise(pipe, noisy, ts, targets, torch.Generator().manual_seed(0))
    if _base(spec) == "unlearndiffatk":
        latents = torch.randn(attack.config.prompts, unet.config.in_channels, size, size, generator=g)
        context = replace(context, reference={"target_latents": latents.to(device)})
    if _base(spec) == "noised_start":
        context = replace(context, seeds=context.seeds[:1])
    return lambda: attack.attack(pipe, concept, images, 0, context)


def _time_attack_step(pipe: Any, spec: str, concept: Any, images: Sequence[Any], context: Any,
                      device: torch.device, attack_seeds: int) -> dict[str, Any]:
    """Seconds per step of one attack: a warm-up run, then runs at two step counts; their slope."""
    from bench.api.attack import build_attack

    name = _base(spec)
    if name not in ATTACK_PLAN:
        build_attack(spec)  # an unknown attack is the registry's error
        raise KeyError(f"no timing plan for attack {name!r} in gpucheck.ATTACK_PLAN")
    plan = ATTACK_PLAN[name]
    published = build_attack(spec).config
    row: dict[str, Any] = {"attack": spec, "step": plan.step, "timed_by": plan.call, "note": plan.note,
                           "steps_published": plan.published(published, attack_seeds)}
    if plan.field is None:
        seconds, _ = _timed(device, _attack_call(pipe, spec, plan, None, concept, images, context))
        row.update(probe_steps=[], probe_seconds=[seconds], s_per_step=None, est_s_per_concept=seconds)
        return row
    n1, n2 = plan.probe
    _timed(device, _attack_call(pipe, spec, plan, n1, concept, images, context))  # warm-up
    t1, _ = _timed(device, _attack_call(pipe, spec, plan, n1, concept, images, context))
    t2, _ = _timed(device, _attack_call(pipe, spec, plan, n2, concept, images, context))
    slope = (t2 - t1) / (n2 - n1)
    how = "slope of two runs"
    if slope <= 0:  # timer noise on a step too short to see: the larger run's mean
        slope, how = t2 / n2, "mean of the larger run (the slope was not positive)"
    row.update(probe_steps=[n1, n2], probe_seconds=[t1, t2], s_per_step=slope, per_step_from=how,
               est_s_per_concept=slope * row["steps_published"])
    return row


# -- the Markdown table ---------------------------------------------------------------------------------
def _markdown(data: dict[str, Any]) -> str:
    m = data["meta"]
    refs = {r["method"]: r for r in data["references"] if r["method"]}
    lines = ["# GPU timing check (`make gpu-check`)", ""]
    if m.get("tiny"):
        lines += ["**Tiny mode: tiny random pipelines, a check of the code path. These are not GPU numbers.**", ""]
    lines += [f"Device: {m['device_name']} ({m['device']}); dense bf16 peak: "
              f"{m['peak_bf16_tflops'] or 'n/a'}{' TFLOP/s (' + m['peak_row'] + ')' if m['peak_bf16_tflops'] else ''}; "
              f"torch {m['torch']}, diffusers {m['diffusers']}. Erase and attack dtype: {m['erase_dtype']}. "
              f"Budget {m['budget_s']:g} s, used {m.get('elapsed_s', 0):.0f} s"
              f"{'' if m.get('finished') else ' (still running or stopped early)'}. Random weights: timings, "
              "not erasure quality.", ""]
    lines += ["## Erase: one concept per method", "",
              "`done`: *measured* at the published step count, or *extrapolated* linearly from the reduced run(s) "
              "(the rule says how). Seconds are the method's own `Edit.seconds`.", "",
              "| method | arch | step field | steps published | steps run | done | seconds run | "
              "seconds at published | papers report |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["erase"]:
        ref = refs.get(_base(r["method"]))
        paper = f"{ref['reported']}: {ref['source']}{', ' + ref['hardware'] if ref['hardware'] else ''}" if ref else ""
        done = r.get("done", "")
        if done == "extrapolated":
            done = f"extrapolated: {r['rule']}"
        elif done == "measured" and r.get("extrapolated_s"):
            done = f"measured (its reduced run extrapolated {_fmt_s(r['extrapolated_s'])})"
        if r.get("error"):
            done = f"{done}: {r['error']}" if done else f"failed: {r['error']}"
        counted = r.get("fields", "-") != "-"  # a closed form (UCE) has no steps
        published, ran = (r.get("steps_published", "-"), r.get("steps_run", "-")) if counted else ("-", "-")
        lines.append(f"| {r['method']} | {r['arch']} | {r.get('fields', '-')} | {published} | {ran} | {md_text(done)} | "
                     f"{_fmt_s(r.get('seconds_run'))} | {_fmt_s(r.get('seconds_published'))} | {paper} |")
    for ref in data["references"]:
        if ref["method"] is None:
            hw = f", {ref['hardware']}" if ref["hardware"] else ""
            lines.append(f"| {ref['label']} | - | - | - | - | not implemented here | - | - | "
                         f"{ref['reported']}: {ref['source']}{hw} |")
    lines += _reference_table(data)
    lines += ["", "## Generation", "",
              "s / step: the UNet alone on random latents and text embeddings at 2 x batch rows (guidance); "
              "images/s: the pipeline call (`bench.model.generation.generate`: text encoding, every step, VAE "
              "decoding) at the steps shown; TFLOP/s from the UNet's counted FLOPs.", "",
              "| arch | dtype | batch | s / step | images/s | steps | UNet TFLOP/s | share of bf16 peak | error |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in data["generation"]:
        share = r.get("share_of_bf16_peak")
        lines.append(f"| {r['arch']} | {r['dtype']} | {r['batch']} | {_num(r.get('unet_step_s'))} | "
                     f"{_num(r.get('images_per_s'))} | {r.get('sampler_steps', '-')} | {_num(r.get('unet_tflops'))} | "
                     f"{f'{share:.1%}' if share is not None else 'n/a'} | {md_text(r.get('error', ''))} |")
    lines += ["", "## Attacks: seconds per optimisation step", "",
              "From two runs of the attack's own code at two step counts (their slope; a warm-up run first). "
              "Est. per concept: seconds per step x the published steps (optimisation only; renders are generation).",
              "", "| attack | arch | one step is | s / step | steps per concept | est. per concept | timed by | note |",
              "|---|---|---|---|---|---|---|---|"]
    for r in data["attacks"]:
        note = r.get("error") or r.get("note", "")
        lines.append(f"| {r['attack']} | {r['arch']} | {r.get('step', '-')} | {_num(r.get('s_per_step'))} | "
                     f"{r.get('steps_published', '-')} | {_fmt_s(r.get('est_s_per_concept'))} | "
                     f"{r.get('timed_by', '-')} | {md_text(note)} |")
    return "\n".join(lines) + "\n"


def _reference_table(data: dict[str, Any]) -> list[str]:
    """The papers' reported erase times per concept, each beside ours (the method's default spec or its first
    variant, per architecture: measured, or ~ extrapolated)."""
    archs = data["meta"]["archs"]
    lines = ["", "## Beside the papers' reported times", "",
             "Per concept. Ours: seconds at the published step count (~: extrapolated from the reduced run).", "",
             "| method | papers report | source | " + " | ".join(f"here, {a}" for a in archs) + " |",
             "|---|---|---|" + "---|" * len(archs)]
    for ref in data["references"]:
        hw = f" ({ref['hardware']})" if ref["hardware"] else ""
        here = []
        for arch in archs:
            rows = [r for r in data["erase"] if r["arch"] == arch and ref["method"]
                    and _base(r["method"]) == ref["method"] and r.get("seconds_published") is not None]
            rows.sort(key=lambda r: "@" in r["method"])  # the plain name first
            if ref["method"] is None:
                here.append("not implemented here")
            elif not rows:
                here.append("not run")
            else:
                r = rows[0]
                mark = "~" if r["done"] == "extrapolated" else ""
                spec = f" ({r['method']})" if "@" in r["method"] else ""
                here.append(f"{mark}{_fmt_s(r['seconds_published'])}{spec}")
        lines.append(f"| {ref['label']} | {ref['reported']} | {ref['source']}{hw} | " + " | ".join(here) + " |")
    return lines


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


# -- main -------------------------------------------------------------------------------------------------
def _parse(argv: list[str] | None) -> argparse.Namespace:
    from bench.devtools.fullsize import ARCHS

    ap = argparse.ArgumentParser(prog="python -m bench.devtools.gpucheck", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/gpu-check", help="folder for gpu-check.json and gpu-check.md")
    ap.add_argument("--archs", default="sd15,sd21", help=f"comma-separated, of {', '.join(sorted(ARCHS))}")
    ap.add_argument("--methods", default="all", help="comma-separated method specs (all: every method and variant)")
    ap.add_argument("--attacks", default=",".join(TIMED_ATTACKS), help="comma-separated attacks, or none")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available, else --tiny on the CPU), cpu or cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny random pipelines: the code path in seconds (CI)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"seconds of work before extrapolating ({DEFAULT_BUDGET_S:g}; {TINY_BUDGET_S:g} with --tiny)")
    ap.add_argument("--erase-dtype", default="auto", choices=["auto", *ERASE_DTYPES],
                    help="pipeline dtype for erases and attacks (auto: bf16 on CUDA, fp32 on the CPU; half precision "
                         "trains in fp32 under autocast, as bench run --dtype does)")
    return ap.parse_args(argv)


def _setup(args: argparse.Namespace) -> tuple[torch.device, bool, list[str], list[str], list[str], float, str]:
    """Device, tiny or not, archs, methods, attacks, budget and erase dtype; bad input is an InputError."""
    from bench.core.errors import InputError
    from bench.devtools.fullsize import ARCHS
    from bench.model.pipeline import resolve_device
    from bench.run.smoke import method_specs

    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCHS]
    if not archs or bad:
        raise InputError(f"--archs: unknown {', '.join(map(repr, bad)) or 'empty list'} "
                         f"(choose from {', '.join(sorted(ARCHS))})")
    if args.budget_s is not None and not (args.budget_s > 0 and math.isfinite(args.budget_s)):
        raise InputError(f"--budget-s must be a positive number of seconds, got {args.budget_s}")
    device = resolve_device(args.device)
    tiny = bool(args.tiny)
    if device.type != "cuda" and not tiny and args.device == "auto":
        print("no CUDA device: running --tiny (tiny random pipelines on the CPU, the code path only, not GPU numbers); "
              "--device cpu runs full size on the CPU (slow)", flush=True)
        tiny = True
    methods = (method_specs() if args.methods.strip() == "all"
               else [s.strip() for s in args.methods.split(",") if s.strip()])
    order = {n: i for i, n in enumerate(ERASE_PLAN)}  # cheap first: a spent budget skips the dear ones
    methods.sort(key=lambda s: order.get(_base(s), len(order)))  # cheap first
    attacks = [] if args.attacks.strip() == "none" else [a.strip() for a in args.attacks.split(",") if a.strip()]
    budget = args.budget_s or (TINY_BUDGET_S if tiny else DEFAULT_BUDGET_S)
    erase_dtype = args.erase_dtype if args.erase_dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return device, tiny, archs, methods, attacks, budget, erase_dtype


def _meta(device: torch.device, tiny: bool, archs: list[str], methods: list[str], attacks: list[str],
          budget: float, erase_dtype: str) -> dict[str, Any]:
    import diffusers

    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({platform.machine()}, {os.cpu_count()} cores)")
    peak, row = _peak_flops(name) if device.type == "cuda" else (None, "n/a")
    meta = {"device": str(device), "device_name": name, "peak_bf16_tflops": peak, "peak_row": row, "tiny": tiny,
            "archs": archs, "methods": methods, "attacks": attacks, "budget_s": budget, "erase_dtype": erase_dtype,
            "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "finished": False,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32}
    if device.type == "cuda":
        meta["cuda"] = torch.version.cuda
    return meta


def main(argv: list[str] | None = None) -> int:
    from bench.core.errors import BenchError

    args = _parse(argv)
    try:
        device, tiny, archs, methods, attacks, budget_s, erase_dtype = _setup(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
    except (BenchError, OSError) as e:
        print("error: " + str(e).replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if tiny:  # a tiny model gains nothing from more threads, and on a busy machine they wait on each other
        torch.set_num_threads(1)
    try:
        with _quiet_diffusers():  # its warning on every dtype cast of a model built in code (methods cast too)
            run(out, device, tiny, archs, methods, attacks, budget_s, erase_dtype, skip_when_spent=not tiny)
    finally:
        torch.set_num_threads(threads)
    return 0


def run(out: Path, device: torch.device, tiny: bool, archs: list[str], methods: list[str], attacks: list[str],
        budget_s: float, erase_dtype: str, skip_when_spent: bool = True) -> dict[str, Any]:
    """Every phase for every architecture; returns what was written to ``out/gpu-check.json``.

    ``skip_when_spent``: once the budget is spent, record new items as skipped (a GPU run's 8 minutes);
    False (``--tiny``, a code-path check): every item runs at its reduced count, and the budget bounds
    only the runs at published counts (phase 6)."""
    from bench.core.concepts import Concept
    from bench.core.protocol import SD_SAMPLER, EvalProtocol, SamplerSpec

    torch.manual_seed(0)
    budget = Budget(budget_s)

    def spent() -> bool:
        return skip_when_spent and budget.left() <= 0

    res = Results(out, _meta(device, tiny, archs, methods, attacks, budget_s, erase_dtype))
    peak = res.meta["peak_bf16_tflops"]
    sampler = SamplerSpec(steps=2, guidance=SD_SAMPLER.guidance) if tiny else SD_SAMPLER
    protocol = EvalProtocol()
    seeds = attack_seeds(protocol)
    concept = Concept(**CONCEPT_KW)
    unet_steps = 2 if tiny else 5
    probe_seconds: dict[str, float] = {}  # a method's reduced-run seconds on the first arch: the next one's guess
    same_as = _same_configs(methods)
    _say(budget, f"{'TINY mode, ' if tiny else ''}device {res.meta['device_name']}, archs {','.join(archs)}, "
         f"budget {budget_s:g} s -> {out / 'gpu-check.json'}")
    res.save(budget)
    for k, arch in enumerate(archs):
        arch_end = budget.elapsed() + budget.left() / (len(archs) - k)
        # 1. build (CPU), move to the device
        build_s, pipe = _timed(device, lambda a=arch: _build(a, tiny, device, ERASE_DTYPES[erase_dtype]))
        side = default_resolution(pipe)
        info: dict[str, Any] = {"build_s": build_s, "resolution": side, "params": {
            c: count_params(list(getattr(pipe, c).parameters())) for c in ("unet", "text_encoder", "vae")}}
        res.archs[arch] = info
        _say(budget, f"{arch}: built in {build_s:.1f} s ({info['params']['unet'] / 1e6:.1f} M UNet parameters, "
             f"{side} px)")
        # 2. FLOPs of one UNet step per image, counted once
        try:
            info["unet_flops_per_image_step"] = _unet_flops(pipe.unet, device)
            _say(budget, f"{arch}: UNet {info['unet_flops_per_image_step'] / 1e9:.3g} GFLOP per image per step")
        except Exception as e:  # noqa: BLE001 - every item is recorded, never fatal
            info["unet_flops_error"] = _error(e)
        res.save(budget)
        # 3. generation in bf16 and fp16 at batch 8 and 32
        for dname, dtype in GEN_DTYPES.items():
            half = None
            for batch in GEN_BATCHES:
                row: dict[str, Any] = {"arch": arch, "dtype": dname, "batch": batch}
                if spent():
                    row["error"] = "skipped: budget spent"
                else:
                    try:
                        if half is None:
                            half = _pipeline_in(pipe, dtype)
                        row = {"arch": arch, **_time_generation(half, dname, batch, sampler, device, unet_steps,
                                                               info.get("unet_flops_per_image_step"), peak)}
                    except Exception as e:  # noqa: BLE001
                        row["error"] = _error(e)
                        _free(device)
                res.generation.append(row)
                res.save(budget)
                _say(budget, f"{arch} generation {dname} batch {batch}: " + (
                    row["error"] if "error" in row else
                    f"{row['unet_step_s']:.4g} s/step, {row['images_per_s']:.3g} images/s"))
            half = None  # the copy goes before the next dtype's is made
            _free(device)
        # 4. erase: the reduced runs
        images = _images(side, protocol.few_shot_images, seed=protocol.few_shot_seed)
        for spec in methods:
            row = {"arch": arch, "method": spec}
            res.erase.append(row)
            try:
                row.update(_erase_row(spec))
                if spec in same_as:
                    row.update(done=f"same config as {same_as[spec]}: not run again")
                    continue
                guess = probe_seconds.get(spec)
                if guess is not None and k > 0:
                    ratio = (info.get("unet_flops_per_image_step") or 1) / (res.archs[archs[0]].get(
                        "unet_flops_per_image_step") or 1)
                    guess *= ratio
                if spent() or (skip_when_spent and guess is not None and guess > budget.left()):
                    row.update(done="skipped", error="budget spent" if spent() else
                               f"budget: its reduced run (about {guess:.0f} s) would not fit")
                    continue
                seconds = [_time_erase(pipe, spec, p["overrides"], concept, images) for p in row["probes"]]
                for p, s in zip(row["probes"], seconds, strict=True):
                    p["seconds"] = s
                probe_seconds.setdefault(spec, sum(seconds))
                row["seconds_run"] = sum(seconds)
                estimate = sum(p["weight"] * s for p, s in zip(row["probes"], seconds, strict=True))
                if row["as_published"]:
                    row.update(done="measured", seconds_published=estimate)
                else:
                    row.update(done="extrapolated", seconds_published=estimate, extrapolated_s=estimate)
            except Exception as e:  # noqa: BLE001
                row.update(done="failed", error=_error(e))
                _free(device)
            finally:
                res.save(budget)
                _say(budget, f"{arch} erase {spec}: {row.get('done')}" + (
                    f": {row['error']}" if row.get("error") else "" if "seconds_run" not in row else
                    f", {row['seconds_run']:.3g} s run, {_fmt_s(row.get('seconds_published'))} at "
                    + (f"{row['steps_published']} published steps" if row["fields"] != "-" else "its closed form")))
        # 5. attacks: seconds per step
        held_out = _images(side, protocol.few_shot_images, seed=protocol.attack_image_seed)
        context = _attack_context(sampler, seeds)
        for spec in attacks:
            row = {"arch": arch, "attack": spec}
            if spent():
                row["error"] = "skipped: budget spent"
            else:
                try:
                    row.update(_time_attack_step(pipe, spec, concept, held_out, context, device, len(seeds)))
                except Exception as e:  # noqa: BLE001
                    row["error"] = _error(e)
                    _free(device)
            res.attacks.append(row)
            res.save(budget)
            _say(budget, f"{arch} attack {spec}: " + (row.get("error") or (
                f"{row['s_per_step']:.4g} s/step" if row.get("s_per_step") is not None
                else f"{row['est_s_per_concept']:.3g} s per call (no optimisation)")))
        # 6. published step counts where they fit this arch's share, cheapest first
        todo = sorted((r for r in res.erase if r["arch"] == arch and r.get("done") == "extrapolated"),
                      key=lambda r: r["seconds_published"])
        for r in todo:
            if r["seconds_published"] > budget.left(arch_end):
                continue
            try:
                s = _time_erase(pipe, r["method"], {}, concept, images)
                r.update(done="measured", seconds_published=s, seconds_run=s, steps_run=r["steps_published"],
                         extrapolation_over_measured=r["extrapolated_s"] / s)
            except Exception as e:  # noqa: BLE001
                r["full_run_error"] = _error(e)
                _free(device)
            res.save(budget)
            _say(budget, f"{arch} erase {r['method']} at {r['steps_published']} published steps: "
                 + (r.get("full_run_error") or f"{_fmt_s(r['seconds_published'])} (extrapolated "
                                                f"{_fmt_s(r['extrapolated_s'])})"))
        del pipe
        _free(device)
    res.meta["finished"] = True
    res.save(budget)
    failed = [r for rows in (res.erase, res.generation, res.attacks) for r in rows if r.get("error")]
    _say(budget, f"done: {out / 'gpu-check.json'}, {out / 'gpu-check.md'}"
         + (f"; {len(failed)} item(s) recorded an error or were skipped (see the table)" if failed else ""))
    return res.data()


if __name__ == "__main__":
    raise SystemExit(main())
