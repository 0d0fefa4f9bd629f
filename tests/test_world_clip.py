"""The world CLIP (ConceptWorld 3, stage 1): captions, the duplicate-aware contrastive loss, a
resumable deterministic training loop, and a saved model the CLIP judge loads as a folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.world.captions import COLOUR_SYNONYMS, NOUN, OBJECT_SYNONYMS, STYLE_SYNONYMS
from bench.world.clip import (
    MINI_CLIP,
    STYLE_PHRASES,
    ClipConfig,
    clip_caption,
    contrastive_loss,
    make_clip,
    train_clip,
    zero_shot,
)
from bench.world.render import NONE_CHARACTER, render_batch


def test_duplicate_captions_are_not_negatives():
    logits = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    captions = ["a star", "a star", "a red moon"]
    base = contrastive_loss(logits, captions)
    moved = logits.clone()
    moved[0, 1] += 5.0  # image 0 against the other "a star" caption: not a negative
    moved[1, 0] -= 3.0
    assert torch.equal(contrastive_loss(moved, captions), base)
    moved[0, 2] += 5.0  # against "a red moon": a negative
    assert contrastive_loss(moved, captions) > base
    # without duplicates it is CLIP's loss
    distinct = ["a star", "a red star", "a moon"]
    target = torch.arange(3)
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert torch.allclose(contrastive_loss(logits, distinct), expected)


def test_captions_name_only_what_the_scene_shows():
    _, scenes = render_batch(3, 300)
    rng = np.random.default_rng(0)
    seen = set()
    for scene in scenes:
        caption = clip_caption(scene, rng)
        assert caption
        seen.add(caption)
        if scene.character != NONE_CHARACTER:
            assert scene.character in caption
            continue
        words = {scene.shape, *OBJECT_SYNONYMS[scene.shape], scene.colour, *COLOUR_SYNONYMS[scene.colour],
                 scene.style, *STYLE_SYNONYMS[scene.style], STYLE_PHRASES[scene.style], NOUN}
        assert any(w in caption for w in words), (scene, caption)
    assert len(seen) > 150  # varied wording, not a handful of templates
    again = [clip_caption(s, np.random.default_rng(0)) for s in scenes[:5]]
    assert again == [clip_caption(s, np.random.default_rng(0)) for s in scenes[:5]]


def test_clip_is_shaped_like_sd_text_encoder_by_default():
    cfg = ClipConfig()
    assert cfg.text_layers >= 6 and cfg.text_hidden >= 128
    model = make_clip(ClipConfig().override(MINI_CLIP))
    assert model.config.text_config.vocab_size == 49408 and model.config.text_config.max_position_embeddings == 77


@pytest.fixture(scope="module")
def world_scenes():
    arr, scenes = render_batch(5, 64)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255), scenes


def test_training_resumes_exactly(world_scenes, tmp_path):
    images, scenes = world_scenes
    cfg = ClipConfig().override(MINI_CLIP)
    whole = train_clip(cfg, images, scenes, tmp_path / "whole", progress=False)
    assert np.isfinite(whole["final_loss"])
    part = train_clip(cfg, images, scenes, tmp_path / "sliced", progress=False, stop_after=4)
    assert part["stopped_at"] == 4 and not (tmp_path / "sliced" / "clip").exists()
    train_clip(cfg, images, scenes, tmp_path / "sliced", progress=False)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "whole" / "clip" / "model.safetensors")
    b = load_file(tmp_path / "sliced" / "clip" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_saved_world_clip_is_a_clip_judge(world_scenes, tmp_path):
    """The trained folder is what ``--clip-model FOLDER`` loads; zero-shot accuracy is per head."""
    from transformers import CLIPModel

    from bench.concepts import load_concept_set
    from bench.judges.clip import ClipJudge
    from bench.runner import Track

    images, scenes = world_scenes
    train_clip(ClipConfig().override(MINI_CLIP), images, scenes, tmp_path, progress=False)
    judge = ClipJudge(str(tmp_path / "clip"), None, load_concept_set(Track().concept_set))
    assert judge.features(images[:4]).shape == (4, 8)
    acc = zero_shot(CLIPModel.from_pretrained(tmp_path / "clip").eval(), images, scenes)
    assert set(acc) == {"object", "colour", "style", "character"} and all(0 <= v <= 1 for v in acc.values())
