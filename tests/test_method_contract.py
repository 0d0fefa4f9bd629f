"""The contract every registered method (and each named variant) must keep."""

from __future__ import annotations

import pytest
import torch

from bench.concepts import Concept
from bench.edit import Edit
from bench.images import load_images
from bench.method import build_method
from bench.smoke import method_specs
from bench.tiny import build_tiny_pipeline
from bench.training import FewShotConfig, concept_loss, few_shot_latents
from tests.conftest import state

SPECS = method_specs()
CONCEPT = Concept("cat")


def _erase(spec: str, images, seed: int = 0):
    pipe = build_tiny_pipeline(seed=0)
    before = state(pipe)
    edit = build_method(spec).erase(pipe, CONCEPT, images, seed=seed)
    return pipe, before, edit


@pytest.fixture(scope="module")
def images(concept_images):
    return load_images(concept_images)


@pytest.mark.parametrize("spec", SPECS)
def test_changes_exactly_the_declared_parameters(spec, images):
    pipe, before, edit = _erase(spec, images)
    after = state(pipe)
    assert set(after) == set(before), "a method must not leave new parameters (e.g. LoRA layers) behind"
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    declared = set(build_method(spec).edited_parameters(pipe))
    assert changed == declared == set(edit.param_names)
    assert edit.trainable_params > 0 and edit.storage_bytes > 0 and edit.seconds > 0


def test_trainable_sets_match_the_papers(images):
    def changed(spec):
        pipe, before, _ = _erase(spec, images)
        after = state(pipe)
        return {k for k in before if not torch.equal(before[k], after[k])}, set(before)

    fuchi, every = changed("fuchi")
    assert fuchi and all(k.startswith("text_encoder.") for k in fuchi)
    assert not any("embeddings" in k or "final_layer_norm" in k for k in fuchi)
    assert any(".mlp.fc1." in k and "layers.0." in k for k in fuchi)  # MLPs of every layer
    assert any("layers.1.self_attn.q_proj" in k for k in fuchi)  # the last layer's attention
    assert not any("layers.0.self_attn" in k for k in fuchi)

    paper_era, _ = changed("fuchi@paper_era")
    assert paper_era == {k for k in every if k.startswith("text_encoder.")}

    full, _ = changed("full_finetune")
    assert full == {k for k in every if k.startswith(("text_encoder.", "unet."))}

    lora, _ = changed("lora_eraser")
    assert lora and all(k.startswith("text_encoder.") and k.endswith(".weight") for k in lora)


def test_lora_eraser_touches_only_targeted_layers(images):
    pipe = build_tiny_pipeline(seed=0)
    before = state(pipe)
    build_method("lora_eraser", {"lora_layers": 1, "ti_steps": 5, "steps": 5}).erase(pipe, CONCEPT, images, 0)
    changed = {k for k, v in state(pipe).items() if not torch.equal(before[k], v)}
    assert changed and all(".layers.1." in k for k in changed)


@pytest.mark.parametrize("spec", SPECS)
def test_concept_loss_goes_up(spec, images):
    pipe = build_tiny_pipeline(seed=0)
    method = build_method(spec)
    cfg = method.config if isinstance(method.config, FewShotConfig) else FewShotConfig()  # UCE takes no images
    latents = few_shot_latents(pipe, images, cfg, torch.Generator().manual_seed(7))
    before = concept_loss(pipe, latents, CONCEPT.prompts(), seed=11)
    method.erase(pipe, CONCEPT, images, seed=0)
    after = concept_loss(pipe, latents, CONCEPT.prompts(), seed=11)
    assert after > before


@pytest.mark.parametrize("spec", SPECS)
def test_restore_is_bit_identical(spec, images):
    pipe, before, edit = _erase(spec, images)
    edit.restore()
    after = state(pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(RuntimeError):
        edit.restore()


@pytest.mark.parametrize("spec", SPECS)
def test_same_seed_same_weights(spec, images):
    a, _, _ = _erase(spec, images, seed=3)
    b, _, _ = _erase(spec, images, seed=3)
    sa, sb = state(a), state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("spec", SPECS)
def test_save_load_round_trip(spec, images, tmp_path):
    pipe, before, edit = _erase(spec, images)
    erased = state(pipe)
    path = edit.save(tmp_path / "edit.safetensors")
    loaded = Edit.load(path)
    assert loaded.param_names == edit.param_names
    assert loaded.storage_bytes == edit.storage_bytes and loaded.trainable_params == edit.trainable_params
    assert loaded.config == build_method(spec).config.to_dict()
    fresh = build_tiny_pipeline(seed=0)
    loaded.apply(fresh)
    again = state(fresh)
    assert all(torch.equal(erased[k], again[k]) for k in erased)
    loaded.restore()
    assert all(torch.equal(before[k], v) for k, v in state(fresh).items())


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
