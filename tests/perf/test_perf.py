"""``make perf``: the harness against bare loops doing the same work on the same model.

(a) a method's erase vs a bare training loop with the same steps (target: ratio <= 1.2);
(b) the harness's generation throughput vs a bare batched denoising loop (target: >= 0.8).
Speed is reported, not asserted: benchmarks are not tests.
"""

from __future__ import annotations

import random
import time

import pytest
import torch

from bench.api.method import build_method
from bench.core.protocol import WORLD_SAMPLER
from bench.model.ascent import few_shot_latents
from bench.model.text import token_override
from bench.model.training import denoising_loss, encode_prompts, noise_scheduler
from bench.run.plan import Track, few_shot_images
from tests.perf.conftest import RATIOS

pytestmark = pytest.mark.perf
ROUNDS = 3


@pytest.fixture(scope="module")
def world():
    from bench.core.concepts import load_concept_set
    from bench.core.protocol import EvalProtocol
    from bench.model.pipeline import load_pipeline

    track = Track()
    pipe = load_pipeline(track.model, device="cpu")
    concept = load_concept_set(track.concept_set).get("circle")
    images, _ = few_shot_images(track, concept, EvalProtocol())
    return pipe, concept, images


def _min_time(fn, rounds: int = ROUNDS) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _bare_ascent(pipe, params, latents, prompts, steps, batch, make_opt, two_prompts=None):
    """The same optimisation (same optimiser settings) with nothing around it: no snapshot, no edit."""
    for p in pipe.unet.parameters():
        p.requires_grad_(False)
    for p in pipe.text_encoder.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = make_opt(params)
    sched = noise_scheduler(pipe)
    g = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    for _ in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        loss = -denoising_loss(pipe, sched, latents[idx], encode_prompts(pipe, [rng.choice(prompts)] * batch), g)
        if two_prompts is not None:
            with two_prompts():
                loss = loss - denoising_loss(pipe, sched, latents[idx],
                                             encode_prompts(pipe, [rng.choice(prompts)] * batch), g)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("spec", ["fuchi", "fuchi@paper_era", "full_finetune", "lora_eraser"])
def test_erase_vs_bare_loop(spec, world, benchmark):
    pipe, concept, images = world
    method = build_method(spec)

    def erase():
        method.erase(pipe, concept, images, seed=0).restore()

    benchmark.pedantic(erase, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.min
    cfg = method.config
    g = torch.Generator().manual_seed(0)
    state = {k: v.detach().clone() for k, v in pipe.text_encoder.state_dict().items()}
    ustate = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}

    if spec == "lora_eraser":
        from peft import LoraConfig, get_peft_model

        def bare():
            latents = few_shot_latents(pipe, images, cfg, g)
            vec = pipe.text_encoder.get_input_embeddings().weight[320].detach().clone().requires_grad_(True)
            tid = pipe.tokenizer("sks", add_special_tokens=False).input_ids[0]
            with token_override(pipe.text_encoder, tid, vec):
                _bare_ascent(pipe, [vec], latents, [t.format("sks") for t in concept.templates], cfg.ti_steps,
                             cfg.batch_size, lambda p: torch.optim.AdamW(p, lr=cfg.ti_lr, weight_decay=0.0))
            peft = get_peft_model(pipe.text_encoder, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                                target_modules=method.target_modules(pipe)))
            lora = [p for n, p in pipe.text_encoder.named_parameters() if "lora_" in n]
            _bare_ascent(pipe, lora, latents, concept.prompts(), cfg.steps, cfg.batch_size, cfg.optimiser,
                         two_prompts=lambda: token_override(pipe.text_encoder, tid, vec.detach()))
            peft.unload()
    else:
        names = set(method.edited_parameters(pipe))
        params = [p for n, p in list(pipe.text_encoder.named_parameters()) if f"text_encoder.{n}" in names]
        params += [p for n, p in pipe.unet.named_parameters() if f"unet.{n}" in names]
        steps = cfg.epochs * -(-len(images) // cfg.batch_size)

        def bare():
            latents = few_shot_latents(pipe, images, cfg, g)
            _bare_ascent(pipe, params, latents, concept.prompts(), steps, cfg.batch_size, cfg.optimiser)

    bare_s = _min_time(bare)
    pipe.text_encoder.load_state_dict(state)
    pipe.unet.load_state_dict(ustate)
    RATIOS.append((f"(a) erase {spec} / bare loop", ours, bare_s, ours / bare_s, "<= 1.2"))


@torch.no_grad()
def _bare_denoise(pipe, prompts, seeds, steps, guidance):
    """Text encoding, a DDIM loop with classifier-free guidance, VAE decoding: nothing else."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    cond = encode_prompts(pipe, prompts)
    uncond = encode_prompts(pipe, [""] * len(prompts))
    emb = torch.cat([uncond, cond])
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    x = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    x = x * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample
        e_u, e_c = eps.chunk(2)
        x = sched.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
    return pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample


def test_generation_vs_bare_denoising(world, benchmark):
    from bench.model.generation import generate

    pipe = world[0]
    n = 64
    prompts = ["a picture of a circle"] * n
    seeds = list(range(n))
    benchmark.pedantic(lambda: generate(pipe, prompts, seeds, WORLD_SAMPLER, batch_size=n), rounds=ROUNDS,
                       iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.min
    bare = _min_time(lambda: _bare_denoise(pipe, prompts, seeds, WORLD_SAMPLER.steps, WORLD_SAMPLER.guidance))
    RATIOS.append((f"(b) generation {n} images/s: harness / bare", n / ours, n / bare, bare / ours, ">= 0.8"))


# -- attacks (the robustness axis) ---------------------------------------------------------------
def _bare_token_loop(pipe, latents, prompts, placeholder, steps, batch, lr, init):
    """Textual inversion with nothing around it: a hooked vector, AdamW, the denoising loss."""
    from bench.model.text import single_token_id

    for p in pipe.unet.parameters():
        p.requires_grad_(False)
    for p in pipe.text_encoder.parameters():
        p.requires_grad_(False)
    tid = single_token_id(pipe.tokenizer, placeholder)
    vec = init.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([vec], lr=lr, weight_decay=0.0)
    sched = noise_scheduler(pipe)
    g, rng = torch.Generator().manual_seed(0), random.Random(0)
    with token_override(pipe.text_encoder, tid, vec):
        for _ in range(steps):
            idx = torch.randint(0, len(latents), (batch,), generator=g)
            loss = denoising_loss(pipe, sched, latents[idx], encode_prompts(pipe, [rng.choice(prompts)] * batch), g)
            opt.zero_grad()
            loss.backward()
            opt.step()


def _bare_prefix_loop(pipe, latents, prompts, steps, batch, lr, k):
    """The prefix optimisation with nothing around it."""
    from bench.model.text import encode_with_prefix

    for p in pipe.unet.parameters():
        p.requires_grad_(False)
    for p in pipe.text_encoder.parameters():
        p.requires_grad_(False)
    table = pipe.text_encoder.get_input_embeddings().weight
    prefix = table[:k].detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([prefix], lr=lr, weight_decay=0.0)
    sched = noise_scheduler(pipe)
    g, rng = torch.Generator().manual_seed(0), random.Random(0)
    for _ in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        loss = denoising_loss(pipe, sched, latents[idx], encode_with_prefix(pipe, [rng.choice(prompts)] * batch,
                                                                           prefix), g)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", ["inversion", "prefix"])
def test_attack_vs_bare_loop(name, world, benchmark):
    """(c) an attack's optimisation (its ``seconds``) over the same optimiser steps on the same model."""
    from bench.api.attack import build_attack
    from bench.model.training import encode_latents, images_to_tensor

    pipe, concept, images = world
    attack = build_attack(name)
    cfg = attack.config
    benchmark.pedantic(lambda: attack.attack(pipe, concept, images, seed=0), rounds=ROUNDS, iterations=1,
                       warmup_rounds=1)
    ours = benchmark.stats.stats.min
    g = torch.Generator().manual_seed(0)
    templates = concept.templates[: cfg.prompts]

    def bare():
        latents = encode_latents(pipe, images_to_tensor(images, 32, g), g)
        if name == "inversion":
            init = pipe.text_encoder.get_input_embeddings().weight[320]
            _bare_token_loop(pipe, latents, [t.format(cfg.placeholder) for t in concept.templates],
                             cfg.placeholder, cfg.steps, cfg.batch_size, cfg.lr, init)
        else:
            _bare_prefix_loop(pipe, latents, [t.format(concept.name) for t in templates], cfg.iterations,
                              cfg.batch_size, cfg.lr, cfg.prefix_len)

    bare_s = _min_time(bare)
    RATIOS.append((f"(c) attack {name} / bare loop", ours, bare_s, ours / bare_s, "<= 1.2"))


def test_attack_generation_vs_bare_denoising(world):
    """(d) images/s of the attacks' generation (every attack's images of one model, one batched call)
    over a bare batched denoising loop of as many images."""
    from bench.api.attack import build_attack
    from bench.core.concepts import load_concept_set
    from bench.core.protocol import EvalProtocol
    from bench.run.attacking import GENERATION_ENTRY, run_attacks
    from bench.run.plan import Track, load_judge

    pipe, concept, images = world
    track, p = Track(), EvalProtocol()
    judge = load_judge(track, load_concept_set(track.concept_set))
    attacks = {n: build_attack(n, {"steps": 1} if n == "inversion" else {"iterations": 1} if n == "prefix" else None)
               for n in ("paraphrase", "inversion", "prefix")}
    best = float("inf")
    for _ in range(ROUNDS + 1):  # the first is a warm-up
        res = run_attacks(pipe, attacks, concept, images, judge, WORLD_SAMPLER, p, seed=0)
        best = min(best, res[GENERATION_ENTRY]["seconds"])
    n = res[GENERATION_ENTRY]["images"]
    prompts = [r[0] for a in attacks for r in res[a]["rows"]]
    seeds = [r[1] for a in attacks for r in res[a]["rows"]]
    bare = _min_time(lambda: _bare_denoise(pipe, prompts, seeds, WORLD_SAMPLER.steps, WORLD_SAMPLER.guidance))
    RATIOS.append((f"(d) attack generation {n} images/s: harness / bare", n / best, n / bare, bare / best, ">= 0.8"))
