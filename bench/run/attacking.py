"""Robustness: the attacks on an edited model (ASR with its interval, the images and prompts they found),
and the same attacks on the original model, cached per concept beside the reference images."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.api.attack import Attack
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


def run_attacks(pipe: Any, attacks: dict[str, Attack], concept: Concept, held_out: list[Image.Image] | None,
                judge: Judge, sampler: SamplerSpec, p: EvalProtocol, seed: int, progress: bool = False
                ) -> dict[str, dict[str, Any]]:
    """Run ``attacks`` on the pipeline as it is now; ASR = share of an attack's images showing the concept.

    1. each attack optimises its conditionings (its own work, timed as its ``seconds``);
    2. the images of every attack are generated together, in full batches of the protocol's batch
       size, on the attack seeds (text prompts are encoded once, like learned ones);
    3. the judge looks for the concept; each attack gets its own ASR, interval and images.
    """
    if held_out is None:
        raise InputError("attacks need held-out concept images")
    if not attacks:
        return {}
    from tqdm.auto import tqdm

    outcomes = {}
    with tqdm(total=len(attacks), desc=f"  attacks on {concept.name}", leave=False, disable=not progress) as bar:
        for name, a in attacks.items():
            bar.set_postfix_str(name)
            outcomes[name] = a.attack(pipe, concept, held_out, seed)
            bar.update()
    seeds_a = attack_seeds(p)
    prompts, seeds, embeds, spans = _attack_rows(pipe, outcomes, seeds_a)
    t0 = time.perf_counter()
    images = generate(pipe, prompts, seeds, sampler, p.batch_size, prompt_embeds=embeds)
    gen_seconds = time.perf_counter() - t0
    hits = judge.detect(u8_to_float(images), concept)
    out = {}
    for name, (a, b) in spans.items():
        out[name] = {"asr": summary(hits[a:b].numpy(), np.array(seeds[a:b])), "seconds": outcomes[name].seconds,
                     "images": images[a:b],
                     "rows": [(q, s, bool(h)) for q, s, h in zip(prompts[a:b], seeds[a:b], hits[a:b].tolist(),
                                                                 strict=True)]}
    out[GENERATION_ENTRY] = {"seconds": gen_seconds, "images": len(prompts)}
    return out


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
               sampler: SamplerSpec, p: EvalProtocol, seed: int) -> dict[str, Any]:
    """One attack alone (``run_attacks`` with one entry)."""
    res = run_attacks(pipe, {attack.name: attack}, concept, held_out, judge, sampler, p, seed)
    return {**res[attack.name], "generate_seconds": res[GENERATION_ENTRY]["seconds"]}


def cached_attacks(pipe: Any, attacks: dict[str, Attack], concept: Concept, held_out: list[Image.Image] | None,
                   judge: Judge, sampler: SamplerSpec, p: EvalProtocol, cache: ReferenceCache,
                   spec: RunSpec) -> dict[str, dict[str, Any]]:
    """The attacks on the original model (the sanity reference; a null edit is bit-identical to it),
    computed once per concept and cached beside the reference images; the missing ones run together."""
    from bench.core.io import write_json
    from bench.core.records import hash_key, sha256_json

    paths = {}
    for name, a in attacks.items():
        key = sha256_json({"model": spec.model_sha256, "concept": concept.name, "attack": a.name,
                           "version": a.version, "config": a.config.to_dict(), "seed": spec.erase_seed,
                           "sampler": sampler.to_dict(), "seeds": list(attack_seeds(p)), "judge": judge.ref,
                           "images": hash_key(spec.to_dict())["images"], "protocol": spec.protocol})
        paths[name] = cache.folder / "attacks" / f"{key[:24]}.json"
    out = {name: json.loads(path.read_text()) for name, path in paths.items() if path.is_file()}
    missing = {name: a for name, a in attacks.items() if name not in out}
    if missing:
        res = run_attacks(pipe, missing, concept, held_out, judge, sampler, p, spec.erase_seed)
        for name in missing:
            out[name] = {"asr": res[name]["asr"], "seconds": res[name]["seconds"]}
            paths[name].parent.mkdir(parents=True, exist_ok=True)
            write_json(paths[name], out[name])
    return {name: out[name] for name in attacks}
