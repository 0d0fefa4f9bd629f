"""The contract every registered method (and each named variant) must keep."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch

from bench.api.edit import Edit, pipeline_parameters
from bench.api.method import build_method, get_method
from bench.core.concepts import Concept
from bench.core.images import load_images
from bench.model.ascent import FewShotConfig, few_shot_latents
from bench.model.tiny import build_tiny_pipeline
from bench.model.training import concept_loss
from bench.run.smoke import method_specs
from tests.conftest import state


def _distinct(specs: list[str]) -> list[str]:
    """Each method and variant whose config differs from every earlier one's: a variant that restates its
    method's defaults (``esd@x`` is ``esd``) is the same erase, checked once."""
    seen: set[tuple[str, str]] = set()
    out = []
    for spec in specs:
        key = (spec.partition("@")[0], repr(build_method(spec, quick=True).config))
        if key not in seen:
            seen.add(key)
            out.append(spec)
    return out


SPECS = _distinct(method_specs())
CONCEPT = Concept("cat")


def _erase(spec: str, images, seed: int = 0):
    pipe = build_tiny_pipeline(seed=0)
    before = state(pipe)
    edit = build_method(spec, quick=True).erase(pipe, CONCEPT, images, seed=seed)
    return pipe, before, edit


class Erased(NamedTuple):
    """One erase of the tiny pipeline (seed 0), shared read-only by the contract tests: the pipe as the
    erase left it, its weights before and after, and the edit."""

    pipe: Any
    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    edit: Edit


@pytest.fixture(scope="module")
def images(concept_images):
    return load_images(concept_images)


@pytest.fixture(scope="module")
def erased(images):
    """Per method spec, its erase (seed 0, made on first use), shared by the contract tests: ``copy=1`` is a
    second, independent erase with the same seed (what determinism and restore are checked on), so each
    method is erased twice in this module."""
    made: dict[tuple[str, int], Erased] = {}

    def get(spec: str, copy: int = 0) -> Erased:
        if (spec, copy) not in made:
            pipe, before, edit = _erase(spec, images)
            made[spec, copy] = Erased(pipe, before, state(pipe), edit)
        return made[spec, copy]

    return get


def _changed(e: Erased) -> set[str]:
    return {k for k in e.before if not torch.equal(e.before[k], e.after[k])}


@pytest.mark.parametrize("spec", SPECS)
def test_changes_exactly_the_declared_parameters(spec, erased):
    e = erased(spec)
    assert set(e.after) == set(e.before), "a method must not leave new parameters (e.g. LoRA layers) behind"
    declared = set(build_method(spec, quick=True).edited_parameters(e.pipe))
    assert _changed(e) == declared == set(e.edit.param_names)
    if get_method(spec.partition("@")[0]).inference_time:  # no weight, no trained parameter, no file
        assert e.edit.format == "sampling"
        assert not declared and e.edit.trainable_params == 0 and e.edit.storage_bytes == 0 and e.edit.sampling
    else:
        assert e.edit.trainable_params > 0 and e.edit.storage_bytes > 0 and e.edit.seconds > 0


def _images(pipe) -> torch.Tensor:
    from bench.core.protocol import SamplerSpec
    from bench.model.generation import generate

    return generate(pipe, ["a photo of a cat"] * 2, [0, 1], SamplerSpec(steps=3, guidance=5.0))


@pytest.mark.parametrize("spec", [s for s in SPECS if get_method(s.partition("@")[0]).inference_time])
def test_a_sampling_edit_changes_sampling_until_restored(spec, images, tmp_path):
    """What the ordinary pipeline call draws changes while the edit is applied (also from a saved edit, the
    same images), and restore() brings back the plain sampling bit for bit."""
    pipe = build_tiny_pipeline(seed=0)
    plain = _images(pipe)
    edit = build_method(spec, quick=True).erase(pipe, CONCEPT, images, seed=0)
    edited = _images(pipe)
    assert edit.format == "sampling" and not torch.equal(plain, edited)
    with pytest.raises(Exception, match="already samples under"):
        Edit.load(edit.save(tmp_path / "edit.safetensors")).apply(pipe)
    edit.restore()
    assert torch.equal(_images(pipe), plain)
    loaded = Edit.load(tmp_path / "edit.safetensors").apply(pipe)
    assert torch.equal(_images(pipe), edited)
    loaded.restore()
    assert torch.equal(_images(pipe), plain)


def test_trainable_sets_match_the_papers(erased):
    every = set(erased("fuchi").before)
    fuchi = _changed(erased("fuchi"))
    assert fuchi and all(k.startswith("text_encoder.") for k in fuchi)
    assert not any("embeddings" in k or "final_layer_norm" in k for k in fuchi)
    assert any(".mlp.fc1." in k and "layers.0." in k for k in fuchi)  # MLPs of every layer
    assert any("layers.1.self_attn.q_proj" in k for k in fuchi)  # the last layer's attention
    assert not any("layers.0.self_attn" in k for k in fuchi)

    assert _changed(erased("fuchi@paper_era")) == {k for k in every if k.startswith("text_encoder.")}
    assert _changed(erased("full_finetune")) == {k for k in every if k.startswith(("text_encoder.", "unet."))}

    lora = _changed(erased("lora_eraser"))
    assert lora and all(k.startswith("text_encoder.") and k.endswith(".weight") for k in lora)


def test_lora_eraser_touches_only_targeted_layers(images):
    pipe = build_tiny_pipeline(seed=0)
    before = state(pipe)
    build_method("lora_eraser", {"lora_layers": 1, "ti_steps": 5, "steps": 5}).erase(pipe, CONCEPT, images, 0)
    changed = {k for k, v in state(pipe).items() if not torch.equal(before[k], v)}
    assert changed and all(".layers.1." in k for k in changed)


def _check(spec: str):
    return get_method(spec.partition("@")[0]).erasure_check


@pytest.mark.parametrize("spec", [s for s in SPECS if _check(s) is None])
def test_concept_loss_goes_up(spec, images, erased):
    """The shared erase's weights, loaded into a fresh copy of the original pipe, raise the concept's loss."""
    pipe = build_tiny_pipeline(seed=0)
    method = build_method(spec, quick=True)
    cfg = method.config if isinstance(method.config, FewShotConfig) else FewShotConfig()  # the data settings of a method without images
    latents = few_shot_latents(pipe, images, cfg, torch.Generator().manual_seed(7))
    before = concept_loss(pipe, latents, CONCEPT.prompts(), seed=11)
    params, after = pipeline_parameters(pipe), erased(spec).after  # the erase itself runs outside no_grad
    with torch.no_grad():
        for k, v in after.items():
            params[k].copy_(v)
    after = concept_loss(pipe, latents, CONCEPT.prompts(), seed=11)
    assert after > before


@pytest.fixture(scope="module")
def world():
    """The committed world, its judge, and a way to count how often the judge sees "star" in 8 images of "a
    picture of a star"; the original model's count is measured once."""
    from bench.core.concepts import load_concept_set
    from bench.model.generation import generate
    from bench.model.pipeline import load_pipeline
    from bench.run.plan import Track, load_judge

    track = Track()
    cs = load_concept_set(track.concept_set)
    judge, star = load_judge(track, cs), cs.get("star")

    def seen(pipe) -> float:
        images = generate(pipe, [star.prompts()[0]] * 8, list(range(8)), track.sampler).float() / 255
        return judge.sees(images, [{"object": "star"}] * 8).float().mean().item()

    def pipe():
        return load_pipeline(track.model, device="cpu")

    return pipe, star, seen, seen(pipe())


@pytest.mark.parametrize("spec", [s for s in SPECS if _check(s) is not None])
def test_erase_lowers_the_judges_detection_on_conceptworld(spec, world):
    """Methods whose objective is not a denoising loss of the concept: the ConceptWorld judge sees
    "star" in fewer of 8 images of "a picture of a star" after the erase (their declared config)."""
    load, star, seen, before = world
    pipe = load()
    build_method(spec, _check(spec), quick=True).erase(pipe, star, [], seed=0)
    assert seen(pipe) < before


@pytest.mark.parametrize("spec", SPECS)
def test_same_seed_same_weights(spec, erased):
    """A second erase with the same seed gives the first one's weights bit for bit."""
    first, second = erased(spec).after, erased(spec, copy=1).after
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("spec", SPECS)
def test_save_load_round_trip(spec, erased, tmp_path):
    e = erased(spec)
    path = e.edit.save(tmp_path / "edit.safetensors")
    loaded = Edit.load(path)
    assert loaded.param_names == e.edit.param_names
    assert loaded.storage_bytes == e.edit.storage_bytes and loaded.trainable_params == e.edit.trainable_params
    assert loaded.config == build_method(spec, quick=True).config.to_dict()
    fresh = build_tiny_pipeline(seed=0)
    loaded.apply(fresh)
    again = state(fresh)
    assert all(torch.equal(e.after[k], again[k]) for k in e.after)
    loaded.restore()
    assert all(torch.equal(e.before[k], v) for k, v in state(fresh).items())


@pytest.mark.parametrize("spec", SPECS)
def test_restore_is_bit_identical(spec, erased):
    """On the second erase (the first keeps the pipe as the erase left it; ``after`` is a snapshot either way)."""
    e = erased(spec, copy=1)
    e.edit.restore()
    restored = state(e.pipe)
    assert all(torch.equal(e.before[k], restored[k]) for k in e.before)
    with pytest.raises(RuntimeError):
        e.edit.restore()


def test_lora_edit_merge_reproduces_the_peft_forward():
    """The stored factors, merged as W + scale * B @ A, give the text encoder peft trained."""
    from peft import LoraConfig, get_peft_model

    from methods.lora_eraser import LoraEraser

    pipe = build_tiny_pipeline(seed=0)
    method = LoraEraser({"lora_layers": 2, "lora_rank": 2, "lora_alpha": 6.0})
    targets = method.target_modules(pipe)
    ids = pipe.tokenizer(["a photo of a cat"], padding="max_length", return_tensors="pt").input_ids
    torch.manual_seed(0)
    peft_model = get_peft_model(pipe.text_encoder, LoraConfig(r=2, lora_alpha=6.0, target_modules=targets))
    with torch.no_grad():
        for n, p in pipe.text_encoder.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
        expected = pipe.text_encoder(ids)[0]
    factors, scale = method._factors(pipe.text_encoder, targets)
    peft_model.unload()
    assert scale == 3.0
    edit = Edit(method="lora_eraser", config={}, format="lora", tensors=factors, trainable_params=0, seconds=0.0,
                lora_scale=scale).apply(pipe)
    with torch.no_grad():
        got = pipe.text_encoder(ids)[0]
    assert torch.allclose(got, expected, atol=1e-5)
    edit.restore()


def test_baselines_declare_the_authors_trainable_sets():
    """ESD x/u split the UNet's Linear/Conv2d at cross-attention; UCE and Concept Ablation edit the
    cross-attention keys and values; AdvUnlearn the text encoder's layers (no embeddings)."""
    from bench.api.edit import pipeline_parameters

    pipe = build_tiny_pipeline(seed=0)
    unet = set(pipeline_parameters(pipe, ("unet",)))
    declared = {spec: set(build_method(spec).edited_parameters(pipe))
                for spec in ("esd@x", "esd@u", "uce", "concept_ablation", "advunlearn")}
    x, u = declared["esd@x"], declared["esd@u"]
    assert x and all(".attn2." in n for n in x)
    assert {n.rsplit(".", 2)[-2] for n in x} >= {"to_q", "to_k", "to_v", "0"}  # to_out.0 too
    assert any(n.endswith(".bias") for n in x)
    assert u and not any(".attn2." in n for n in u) and not x & u
    assert any(n.startswith("unet.conv_in.") for n in u) and any("time_embedding" in n for n in u)
    assert not any("norm" in n.rsplit(".", 2)[-2] for n in x | u)  # Linear/Conv2d only, never norms
    assert x | u < unet
    kv = {n for n in unet if (".attn2.to_k." in n or ".attn2.to_v." in n)}
    assert declared["uce"] == {n for n in kv if n.endswith(".weight")}
    assert declared["concept_ablation"] == kv
    adv = declared["advunlearn"]
    assert adv and all(n.startswith("text_encoder.") and ".layers." in n for n in adv)
    assert not any("embeddings" in n or "final_layer_norm" in n for n in adv)


def test_concept_set_declares_anchor_and_preservation():
    """A method's preservation list never names what the concept's own evaluation retains."""
    from bench.core.concepts import load_concept_set
    from bench.run.plan import Track

    cs = load_concept_set(Track().concept_set)
    for c in cs.concepts:
        evaluated = {p for n in (c.name, *c.near_neighbours, *c.retain_in_domain, *c.retain_cross_domain)
                     for p in cs.get(n).prompts()}
        assert c.preserve and not set(c.preserve) & evaluated
        assert len(c.anchor_prompts()) == len(c.prompts())
    star = cs.get("star")
    assert star.anchor_prompts()[0] == "a picture of a" and all("star" not in p for p in star.preserve)


def test_concept_set_anchor_and_preserve_declared_in_yaml():
    from bench.core.concepts import parse_concept_set
    from bench.core.errors import ConfigError

    data = {"name": "s", "version": "1", "concepts": [
        {"name": "star", "anchor": "shape", "preserve": ["a red shape"]},
        {"name": "ring", "split": "dev"}, {"name": "striped", "type": "style", "split": "dev"}]}
    cs = parse_concept_set(data)
    assert cs.get("star").anchor_prompts()[0] == "a photo of a shape" and cs.get("star").preserve == ("a red shape",)
    assert cs.get("ring").preserve == ("a painting in the style of striped",)  # dev concepts of other types
    data["concepts"][0]["anchor"] = 5
    with pytest.raises(ConfigError, match="anchor must be a string"):
        parse_concept_set(data)
