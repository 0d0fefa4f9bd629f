"""Every attack's contract on the tiny fixture: deterministic, trains only its own tokens."""

from __future__ import annotations

import pytest
import torch

from bench.api.attack import attack_registry, build_attack
from bench.core.concepts import Concept
from bench.core.errors import ConfigError
from bench.core.images import load_images
from bench.core.protocol import SamplerSpec
from bench.model.generation import generate
from bench.model.tiny import build_tiny_pipeline
from tests.conftest import state

FAST = {"inversion": {"steps": 5}, "soft_prefix": {"iterations": 3},
        "unlearndiffatk": {"iterations": 2, "timesteps": 2}, "ringabell": {"population": 8, "generations": 3},
        "p4d": {"iterations": 4, "eval_every": 2}, "noised_start": {"images": 2}}
CONCEPT = Concept("cat", synonyms=("kitty",), paraphrases=("a snapshot that shows a cat", "a cat, seen from afar"))


class HalfJudge:
    """Sees the concept in every other image; its features are the images' pixels."""

    ref = "fake"

    def detect(self, images, concept):
        return torch.arange(len(images)) % 2 == 1

    def features(self, images):
        return images.flatten(1)


def context_for(attack, pipe, images, seed, judge=None, sampler=None):
    """The runner's context for ``attack``, with its ``prepare`` run on ``pipe`` (as the original model)."""
    from dataclasses import replace

    from bench.core.protocol import EvalProtocol
    from bench.run.attacking import attack_context

    ctx = attack_context(judge or HalfJudge(), CONCEPT, sampler or SamplerSpec(steps=2),
                         EvalProtocol(seeds=(0, 1, 2), attack_seeds=2, batch_size=8))
    return replace(ctx, reference=attack.prepare(pipe, CONCEPT, images, seed, ctx))


@pytest.mark.parametrize("name", attack_registry().names())
def test_attack_contract(name, concept_images, tmp_path):
    import json

    images = load_images(concept_images)
    pipe = build_tiny_pipeline(seed=0)
    before = state(pipe)
    grads = [p.requires_grad for p in pipe.text_encoder.parameters()]
    overrides = FAST.get(name)
    if name == "replay":  # prompts another run found, from an export
        (tmp_path / "found.jsonl").write_text(json.dumps({"method": "m", "concept": "cat", "attack": "a",
                                                          "prompt": "a cat", "replayable": True}) + "\n")
        overrides = {"file": str(tmp_path / "found.jsonl")}
    attack = build_attack(name, overrides)
    a = attack.attack(pipe, CONCEPT, images, seed=3, context=context_for(attack, pipe, images, 3))
    b = attack.attack(pipe, CONCEPT, images, seed=3, context=context_for(attack, pipe, images, 3))
    after = state(pipe)
    assert all(torch.equal(before[k], after[k]) for k in before), "an attack must not change model weights"
    assert [p.requires_grad for p in pipe.text_encoder.parameters()] == grads
    assert a.prompts == b.prompts and a.prompts
    if a.images is not None:  # a probe that draws its own images
        assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8
        assert len(a.images) == len(a.prompts) == len(a.seeds)
        return
    if a.prompt_embeds is not None:
        assert torch.equal(a.prompt_embeds, b.prompt_embeds)
        assert a.prompt_embeds.shape == (len(a.prompts), 77, 32)
    if a.token_ids is not None:  # a discrete attack: its text is what a user can replay
        assert a.token_ids == b.token_ids and len(a.token_ids) == len(a.prompts)
    images_out = generate(pipe, a.prompts, [0] * len(a.prompts), SamplerSpec(steps=2), prompt_embeds=a.prompt_embeds)
    assert images_out.shape == (len(a.prompts), 3, 32, 32)


def test_learned_tokens_change_the_conditioning(concept_images):
    from bench.model.training import encode_prompts

    pipe = build_tiny_pipeline(seed=0)
    images = load_images(concept_images)
    inv = build_attack("inversion", {"steps": 5}).attack(pipe, CONCEPT, images, seed=0)
    pre = build_attack("soft_prefix", {"iterations": 3}).attack(pipe, CONCEPT, images, seed=0)
    with torch.no_grad():
        plain = encode_prompts(pipe, [CONCEPT.templates[0].format("cat")])[0]
    assert not torch.allclose(inv.prompt_embeds[0], plain) and not torch.allclose(pre.prompt_embeds[0], plain)


def test_attack_registry_and_configs():
    assert {"paraphrase", "inversion", "soft_prefix"} <= set(attack_registry().names())
    assert build_attack("soft_prefix").config.prefix_len == 5 and build_attack("soft_prefix").config.iterations == 40
    with pytest.raises(ConfigError, match="did you mean 'soft_prefix'"):
        build_attack("soft_prefx")
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        build_attack("inversion", {"steps": 0})


@pytest.mark.slow
@pytest.mark.parametrize("concept_name", [
    "star",
    "striped",  # world 1.0 drew it at 81% and inversion reached 0.56; world 2.0 draws it at 100%
    # zorbo: world 2.0 measured ASR 0.00 (a strict xfail); world 2.1 measures 1.00, as star and striped do
    "zorbo",
])
def test_inversion_recovers_concepts_from_the_original_world(concept_name):
    """The attack has teeth: on the *original* ConceptWorld model it brings the concept back."""
    from bench.core.concepts import load_concept_set
    from bench.core.protocol import EvalProtocol
    from bench.model.pipeline import load_pipeline
    from bench.run.attacking import run_attack
    from bench.run.plan import Track, few_shot_images, load_judge

    track, protocol = Track(), EvalProtocol()
    cs = load_concept_set(track.concept_set)
    concept = cs.get(concept_name)
    held_out, _ = few_shot_images(track, concept, protocol, held_out=True)
    pipe = load_pipeline(track.model, device="cpu")
    res = run_attack(pipe, build_attack("inversion"), concept, held_out, load_judge(track, cs), track.sampler,
                     protocol, seed=0)
    assert res["asr"]["value"] >= 0.8, res["asr"]


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["unlearndiffatk@world", "ringabell@world", "p4d@world", "noised_start"])
@pytest.mark.parametrize("concept_name", ["square", "moon"])
def test_faithful_attacks_recover_concepts_from_the_original_world(spec, concept_name):
    """Teeth: on the *original* world model each attack brings the concept back (ASR >= 0.75 here, on
    4 attack images; the full measurement over the 16 test concepts is in docs/robustness.md)."""
    from bench.core.concepts import load_concept_set
    from bench.core.protocol import EvalProtocol
    from bench.model.pipeline import load_pipeline
    from bench.run.attacking import run_attack
    from bench.run.plan import Track, few_shot_images, load_judge

    track, protocol = Track(), EvalProtocol()
    cs = load_concept_set(track.concept_set)
    concept = cs.get(concept_name)
    held_out, _ = few_shot_images(track, concept, protocol, held_out=True)
    pipe = load_pipeline(track.model, device="cpu")
    res = run_attack(pipe, build_attack(spec), concept, held_out, load_judge(track, cs), track.sampler, protocol,
                     seed=0)
    assert res["asr"]["value"] >= 0.75, res["asr"]


def test_attack_images_one_batched_call_on_the_attack_seeds(concept_images, monkeypatch):
    """Every attack's images of one model come from one generate call (full batches), on the first
    ``attack_seeds`` evaluation seeds; each attack keeps its own rows, ASR and interval."""
    import bench.run.attacking as runner
    from bench.core.protocol import EvalProtocol

    class Judge:  # sees the concept in every other image
        ref = "fake"

        def detect(self, images, concept):
            return torch.arange(len(images)) % 2 == 0

    calls = []
    real = runner.generate

    def spy(pipe, prompts, seeds, sampler, batch_size=64, progress=None, prompt_embeds=None):
        calls.append((len(prompts), batch_size, prompt_embeds is not None))
        return real(pipe, prompts, seeds, sampler, batch_size, progress, prompt_embeds)

    monkeypatch.setattr(runner, "generate", spy)
    images = load_images(concept_images)
    pipe = build_tiny_pipeline(seed=0)
    attacks = {n: build_attack(n, FAST.get(n)) for n in ("paraphrase", "inversion", "soft_prefix")}
    p = EvalProtocol(seeds=(5, 6, 7, 8, 9), attack_seeds=3, batch_size=64)
    res = runner.run_attacks(pipe, attacks, CONCEPT, images, Judge(), SamplerSpec(steps=2), p, seed=0)
    expected = {"paraphrase": 4 * 3, "inversion": 2 * 3, "soft_prefix": 2 * 3}
    assert calls == [(sum(expected.values()), 64, True)]
    for name, n in expected.items():
        rows = res[name]["rows"]
        assert len(rows) == n and len(res[name]["images"]) == n
        assert sorted({s for _, s, _ in rows}) == [5, 6, 7]
        assert res[name]["asr"]["n"] == n
    assert res[runner.GENERATION_ENTRY]["images"] == sum(expected.values())


def test_text_prompts_generate_the_same_through_their_embeddings(tiny_pipe):
    """Batching a text attack with learned ones encodes its prompts as the pipeline does."""
    from bench.model.training import encode_prompts

    prompts, seeds = ["a photo of a cat", "a cat, seen from afar"], [0, 1]
    plain = generate(tiny_pipe, prompts, seeds, SamplerSpec(steps=2))
    with torch.no_grad():
        embeds = encode_prompts(tiny_pipe, prompts)
    assert torch.equal(plain, generate(tiny_pipe, prompts, seeds, SamplerSpec(steps=2), prompt_embeds=embeds))


def test_attack_seeds_validated():
    from bench.core.protocol import EvalProtocol

    with pytest.raises(ConfigError, match="attack_seeds must be >= 1"):
        EvalProtocol(attack_seeds=0)
    assert EvalProtocol().attack_seeds == 4
