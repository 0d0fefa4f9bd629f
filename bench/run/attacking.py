"""Robustness: the attacks on an edited model (ASR with its interval, the images and prompts they found),
and the same attacks on the original model, cached per concept beside the reference images."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.api.attack import Attack, AttackContext, AttackOutcome
from bench.api.judge import Judge
from bench.core.concepts import Concept
from bench.core.errors import InputError
from bench.core.protocol import EvalProtocol, SamplerSpec
from bench.core.records import RunSpec
from bench.metrics.formulas import summary
from bench.model.generation import ReferenceCache, generate


def u8_to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(255.0)


def attack_seeds(p: EvalProtocol) -> tuple[int, ...]:
    """The evaluation seeds attack images are generated with: the first ``p.attack_seeds``."""
    return tuple(p.seeds[: p.attack_seeds])


def attack_context(judge: Judge, concept: Concept, sampler: SamplerSpec, p: EvalProtocol,
                   reference: dict[str, torch.Tensor] | None = None) -> AttackContext:
    """What an attack may use besides the pipeline: its ``prepare`` tensors, the attack seeds, and
    rendering and judging under the protocol's sampler (the same calls the runner makes)."""

    def render(pipe: Any, prompts: list[str], seeds: list[int], prompt_embeds: torch.Tensor | None = None
               ) -> torch.Tensor:
        return generate(pipe, prompts, seeds, sampler, p.batch_size, prompt_embeds=prompt_embeds)

    return AttackContext(reference=reference or {}, seeds=attack_seeds(p), render=render,
                         sees=lambda images: judge.detect(u8_to_float(images), concept),
                         features=lambda images: judge.features(u8_to_float(images)), sampler=sampler)


def prepare_attacks(pipe: Any, attacks: dict[str, Attack], concept: Concept, held_out: list[Image.Image] | None,
                    judge: Judge, sampler: SamplerSpec, p: EvalProtocol, seed: int,
                    cache: ReferenceCache | None = None, spec: RunSpec | None = None,
                    seconds: dict[str, float] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Each attack's work on the *original* model (``Attack.prepare``), run with the pipeline as it is
    now; with a ``cache`` (and the cell's ``spec``) kept as safetensors beside the reference images,
    keyed by model, concept, attack, its config, seed, sampler, attack seeds and held-out images.
    ``seconds``: where each ``prepare`` that ran (not found in the cache) adds its wall time."""
    if held_out is None:
        raise InputError("attacks need held-out concept images")
    out = {}
    for name, a in attacks.items():
        if type(a).prepare is Attack.prepare:
            out[name] = {}
            continue
        rel = None
        if cache is not None and spec is not None:
            rel = f"attack_refs/{_attack_key(a, concept, seed, sampler, p, judge, spec)}.safetensors"
            found = cache.tensors(rel)
            if found is not None:
                out[name] = found
                continue
        t0 = time.perf_counter()
        ref = a.prepare(pipe, concept, held_out, seed, attack_context(judge, concept, sampler, p))
        out[name] = {k: v.detach().cpu().contiguous() for k, v in ref.items()}
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
        if rel is not None:
            cache.put_tensors(rel, out[name])
    return out


def _attack_key(a: Attack, concept: Concept, seed: int, sampler: SamplerSpec, p: EvalProtocol, judge: Judge,
                spec: RunSpec) -> str:
    """What an attack's work on the original model depends on, hashed: the model, concept, attack and its
    config, seed, sampler, attack seeds, judge, few-shot images and the protocol. The protocol's evaluation
    seeds beyond the attack seeds are left out: an attack sees only ``attack_seeds(p)`` (keyed as
    ``seeds``), so the quick protocol (seeds 0-3) shares the full protocol's (0-7) attack references."""
    from bench.core.records import hash_key, sha256_json

    protocol = {k: v for k, v in spec.protocol.items() if k != "seeds"}
    return sha256_json({"model": spec.model_sha256, "concept": concept.name, "attack": a.name,
                        "version": a.version, "config": a.config.to_dict(), "seed": seed,
                        "sampler": sampler.to_dict(), "seeds": list(attack_seeds(p)), "judge": judge.ref,
                        "images": hash_key(spec.to_dict())["images"], "protocol": protocol})[:24]


def run_attacks(pipe: Any, attacks: dict[str, Attack], concept: Concept, held_out: list[Image.Image] | None,
                judge: Judge, sampler: SamplerSpec, p: EvalProtocol, seed: int, progress: bool = False,
                references: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, dict[str, Any]]:
    """Run ``attacks`` on the pipeline as it is now; ASR = share of an attack's images showing the concept.

    1. each attack optimises its conditionings (its own work, timed as its ``seconds``), reading what
       its ``prepare`` found on the original model (``references``; computed here when not given, so
       with the pipeline as it is now);
    2. the images of every attack are generated together, in full batches of the protocol's batch
       size, on the attack seeds (text prompts are encoded once, like learned ones); a non-text probe
       brings its own images;
    3. the judge looks for the concept; each attack gets its own ASR, interval, images and artefacts.
    """
    if held_out is None:
        raise InputError("attacks need held-out concept images")
    if not attacks:
        return {}
    from tqdm.auto import tqdm

    if references is None:
        references = prepare_attacks(pipe, attacks, concept, held_out, judge, sampler, p, seed)
    outcomes = {}
    with tqdm(total=len(attacks), desc=f"  attacks on {concept.name}", leave=False, disable=not progress) as bar:
        for name, a in attacks.items():
            bar.set_postfix_str(name)
            context = attack_context(judge, concept, sampler, p, references.get(name))
            outcomes[name] = a.attack(pipe, concept, held_out, seed, context)
            bar.update()
    seeds_a = attack_seeds(p)
    generated = {n: o for n, o in outcomes.items() if o.images is None}
    prompts, seeds, embeds, spans = _attack_rows(pipe, generated, seeds_a)
    t0 = time.perf_counter()
    images = (generate(pipe, prompts, seeds, sampler, p.batch_size, prompt_embeds=embeds) if prompts
              else torch.zeros(0, 3, 1, 1, dtype=torch.uint8))
    gen_seconds = time.perf_counter() - t0
    for name, o in outcomes.items():  # probes that drew their own images
        if o.images is not None:
            start = len(prompts)
            prompts, seeds = prompts + list(o.prompts), seeds + list(o.seeds or [])
            if len(o.prompts) != len(o.images) or len(seeds) != len(prompts):
                raise ValueError(f"attack {name!r} gave {len(o.images)} images for {len(o.prompts)} prompts "
                                 f"and {len(o.seeds or [])} seeds")
            images = o.images if start == 0 else torch.cat([images, o.images.to(images.dtype)])
            spans[name] = (start, len(prompts))
    hits = judge.detect(u8_to_float(images), concept)
    out = {}
    for name in outcomes:
        a, b = spans[name]
        o = outcomes[name]
        out[name] = {"asr": summary(hits[a:b].numpy(), np.array(seeds[a:b])), "seconds": o.seconds,
                     "images": images[a:b],
                     "rows": [(q, s, bool(h)) for q, s, h in zip(prompts[a:b], seeds[a:b], hits[a:b].tolist(),
                                                                 strict=True)],
                     "artefacts": artefacts(o)}
    out[GENERATION_ENTRY] = {"seconds": gen_seconds, "images": len(prompts)}
    return out


def artefacts(o: AttackOutcome) -> dict[str, Any]:
    """What an attack found, kept in the cell: each prompt's text, its token ids (discrete attacks),
    the outcome's facts, and its learned conditionings (``embeds``, a tensor, or None)."""
    return {"prompts": [{"text": q, **({"token_ids": o.token_ids[i]} if o.token_ids else {})}
                        for i, q in enumerate(o.prompts if o.images is None else dict.fromkeys(o.prompts))],
            "info": o.info, "embeds": o.prompt_embeds,
            "replayable": o.prompt_embeds is None and o.images is None}  # its text alone reproduces it


GENERATION_ENTRY = "_generation"  # run_attacks' entry for the shared generation of every attack's images


def _attack_rows(pipe: Any, outcomes: dict[str, Any], seeds_a: tuple[int, ...]
                 ) -> tuple[list[str], list[int], torch.Tensor, dict[str, tuple[int, int]]]:
    """Every attack's (prompt, seed) rows in one list, their conditionings, and each attack's slice."""
    from bench.model.training import encode_prompts

    prompts: list[str] = []
    seeds: list[int] = []
    embeds = []
    spans = {}
    for name, o in outcomes.items():
        e = o.prompt_embeds
        if e is None:  # text prompts: the hidden states the pipeline would compute for them
            with torch.no_grad():
                e = encode_prompts(pipe, o.prompts).cpu()
        start = len(prompts)
        prompts += [q for q in o.prompts for _ in seeds_a]
        seeds += [s for _ in o.prompts for s in seeds_a]
        embeds.append(e.float().repeat_interleave(len(seeds_a), dim=0))
        spans[name] = (start, len(prompts))
    return prompts, seeds, torch.cat(embeds), spans


def run_attack(pipe: Any, attack: Attack, concept: Concept, held_out: list[Image.Image] | None, judge: Judge,
               sampler: SamplerSpec, p: EvalProtocol, seed: int,
               reference: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """One attack alone (``run_attacks`` with one entry; ``reference`` as its ``prepare`` gave, else
    prepared on the pipeline as it is)."""
    res = run_attacks(pipe, {attack.name: attack}, concept, held_out, judge, sampler, p, seed,
                      references=None if reference is None else {attack.name: reference})
    return {**res[attack.name], "generate_seconds": res[GENERATION_ENTRY]["seconds"]}


def cached_attacks(pipe: Any, attacks: dict[str, Attack], concept: Concept, held_out: list[Image.Image] | None,
                   judge: Judge, sampler: SamplerSpec, p: EvalProtocol, cache: ReferenceCache,
                   spec: RunSpec, references: dict[str, dict[str, torch.Tensor]] | None = None,
                   seconds: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """The attacks on the original model (the sanity reference; a null edit is bit-identical to it),
    computed once per concept and cached beside the reference images; the missing ones run together.
    ``seconds``: where each attack that ran adds its own seconds and its share of the generation."""
    rels = {name: f"attacks/{_attack_key(a, concept, spec.erase_seed, sampler, p, judge, spec)}.json"
            for name, a in attacks.items()}
    texts = {name: cache.text(rel) for name, rel in rels.items()}
    out = {name: json.loads(text) for name, text in texts.items() if text is not None}
    missing = {name: a for name, a in attacks.items() if name not in out}
    if missing:
        res = run_attacks(pipe, missing, concept, held_out, judge, sampler, p, spec.erase_seed,
                          references=None if references is None else {n: references[n] for n in missing})
        total = sum(res[n]["asr"]["n"] for n in missing) or 1
        for name in missing:
            out[name] = {"asr": res[name]["asr"], "seconds": res[name]["seconds"]}
            if seconds is not None:
                share = res[GENERATION_ENTRY]["seconds"] * res[name]["asr"]["n"] / total
                seconds[name] = seconds.get(name, 0.0) + res[name]["seconds"] + share
            cache.put_json(rels[name], out[name])
    return {name: out[name] for name in attacks}
