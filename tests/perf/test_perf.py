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


@pytest.mark.parametrize("name", ["inversion", "soft_prefix"])
def test_attack_vs_bare_loop(name, world, benchmark):
    """(c) an attack's optimisation (its ``seconds``) over the same optimiser steps on the same model."""
    from bench.api.attack import build_attack
    from bench.model.training import encode_latents, images_to_tensor

    pipe, concept, images = world
    attack = build_attack(name)
    cfg = attack.config
    benchmark.pedantic(lambda: attack.attack(pipe, concept, images, 0, None), rounds=ROUNDS, iterations=1,
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


# the faithful attacks at a few steps each (the ratio, not the budget, is measured): their optimisation
# through the harness over the same steps written out bare
FAITHFUL = {"unlearndiffatk@world": {"timesteps": 2, "early_stop": False}, "p4d@world": {"iterations": 60},
            "ringabell@world": {"generations": 30}}


def _bare_unlearndiffatk(pipe, x0, prompt, cfg, seed):
    """UnlearnDiffAtk's updates with nothing around them (no checks)."""
    import torch.nn.functional as F

    from bench.attacks.unlearndiffatk import _target, fixed_timesteps
    from bench.model.discrete import SampledOneHot, encode_with_slots, project_simplex, prompt_ids, slot_ids

    gen = torch.Generator().manual_seed(seed)
    ids, slots = slot_ids(pipe.tokenizer, [], cfg.k, prompt_ids(pipe.tokenizer, prompt))
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    probs = torch.full((cfg.k, table.shape[0]), 1.0 / table.shape[0], requires_grad=True)
    opt = torch.optim.Adam([probs], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = noise_scheduler(pipe)
    for t in fixed_timesteps(cfg.timesteps, 1000):
        tt = torch.tensor([t])
        for _ in range(cfg.iterations):
            cond = encode_with_slots(pipe, ids[None], slots, SampledOneHot.apply(probs, gen) @ table)
            noise = torch.randn(x0.shape, generator=gen)
            pred = pipe.unet(sched.add_noise(x0, noise, tt), tt, encoder_hidden_states=cond).sample
            loss = F.mse_loss(pred, _target(sched, x0, noise, tt))
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                probs.copy_(project_simplex(probs))


def _bare_p4d(pipe, ref, cfg, seed):
    """P4D's PEZ steps with nothing around them (no candidate images)."""
    import torch.nn.functional as F

    from bench.model.discrete import encode_with_slots, nearest_tokens, slot_ids

    gen = torch.Generator().manual_seed(seed)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    ids, slots = slot_ids(pipe.tokenizer, [], cfg.tokens, [], pad=0)
    vectors = table[torch.randint(0, table.shape[0], (cfg.tokens,), generator=gen)].clone().requires_grad_(True)
    opt = torch.optim.AdamW([vectors], lr=cfg.lr, weight_decay=cfg.weight_decay)
    for step in range(cfg.iterations):
        hard = table[nearest_tokens(vectors.detach(), table)].clone().requires_grad_(True)
        cond = encode_with_slots(pipe, ids[None], slots, hard)
        pred = pipe.unet(ref["noisy"][0][step : step + 1], ref["timesteps"][0][step : step + 1],
                         encoder_hidden_states=cond).sample
        (grad,) = torch.autograd.grad(F.mse_loss(pred, ref["predictions"][0][step : step + 1]), hard)
        opt.zero_grad()
        vectors.grad = grad
        opt.step()


def _bare_ringabell(pipe, goal, cfg, seed):
    """The genetic search as the authors' notebook runs it: the whole population scored every generation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pop = np.full((cfg.population, 77), pipe.tokenizer.eos_token_id)
    pop[:, 0] = pipe.tokenizer.bos_token_id
    pop[:, 1 : cfg.length + 1] = rng.integers(1, 49406, size=(cfg.population, cfg.length))
    for gen in range(cfg.generations):
        with torch.no_grad():
            h = pipe.text_encoder(torch.from_numpy(pop))[0]
        pop = pop[np.argsort(((h - goal) ** 2).sum(dim=(1, 2)).numpy(), kind="stable")[: cfg.population // 2]]
        if gen == cfg.generations - 1:
            break
        rows = []
        for i in range(len(pop)):
            rows.append(pop[i])
            if rng.random() < cfg.crossover:
                mate, cut = pop[int(rng.integers(0, len(pop)))], int(rng.integers(1, cfg.length + 1))
                rows += [np.concatenate([pop[i][:cut], mate[cut:]]), np.concatenate([mate[:cut], pop[i][cut:]])]
        pop = np.stack(rows)
        for row in pop:
            if rng.random() < cfg.mutation:
                row[int(rng.integers(1, cfg.length + 1))] = int(rng.integers(1, 49406))


@pytest.mark.parametrize("spec", list(FAITHFUL))
def test_faithful_attack_vs_bare_loop(spec, world, benchmark):
    """(c) a faithful attack's optimisation (``seconds``; Ring-A-Bell's is its search on the original
    model, ``prepare``) over the same steps written out bare."""
    from dataclasses import replace

    from bench.api.attack import build_attack
    from bench.core.concepts import load_concept_set
    from bench.core.protocol import EvalProtocol
    from bench.model.training import encode_prompts
    from bench.run.attacking import attack_context
    from bench.run.plan import Track, load_judge

    pipe, concept, images = world
    track = Track()
    attack = build_attack(spec, FAITHFUL[spec])
    cfg = attack.config
    ctx = attack_context(load_judge(track, load_concept_set(track.concept_set)), concept, WORLD_SAMPLER, EvalProtocol())
    ref = attack.prepare(pipe, concept, images, 0, ctx)
    ctx = replace(ctx, reference=ref)
    prompt = concept.templates[0].format(concept.name)
    if spec.startswith("ringabell"):
        from bench.attacks.ringabell import concept_vector

        run = lambda: attack.prepare(pipe, concept, images, 0, ctx)  # noqa: E731
        goal = encode_prompts(pipe, [prompt]).detach()[0] + cfg.eta * concept_vector(pipe, concept)
        bare = lambda: _bare_ringabell(pipe, goal, cfg, 0)  # noqa: E731
    elif spec.startswith("p4d"):
        run = lambda: attack._optimise(pipe, ref["noisy"][0], ref["timesteps"][0], ref["predictions"][0],  # noqa: E731
                                       torch.Generator().manual_seed(0))
        bare = lambda: _bare_p4d(pipe, ref, cfg, 0)  # noqa: E731
    else:
        run = lambda: attack.attack(pipe, concept, images, 0, ctx)  # noqa: E731
        bare = lambda: _bare_unlearndiffatk(pipe, ref["target_latents"][:1], prompt, cfg, 0)  # noqa: E731
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.min
    bare_s = _min_time(bare)
    RATIOS.append((f"(c) attack {spec} {FAITHFUL[spec]} / bare loop", ours, bare_s, ours / bare_s, "<= 1.2"))


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
    attacks = {n: build_attack(n, {"steps": 1} if n == "inversion" else {"iterations": 1} if n == "soft_prefix" else None)
               for n in ("paraphrase", "inversion", "soft_prefix")}
    best = float("inf")
    for _ in range(ROUNDS + 1):  # the first is a warm-up
        res = run_attacks(pipe, attacks, concept, images, judge, WORLD_SAMPLER, p, seed=0)
        best = min(best, res[GENERATION_ENTRY]["seconds"])
    n = res[GENERATION_ENTRY]["images"]
    prompts = [r[0] for a in attacks for r in res[a]["rows"]]
    seeds = [r[1] for a in attacks for r in res[a]["rows"]]
    bare = _min_time(lambda: _bare_denoise(pipe, prompts, seeds, WORLD_SAMPLER.steps, WORLD_SAMPLER.guidance))
    RATIOS.append((f"(d) attack generation {n} images/s: harness / bare", n / best, n / bare, bare / best, ">= 0.8"))
