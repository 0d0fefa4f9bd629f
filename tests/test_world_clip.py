"""The world CLIP (ConceptWorld 3, stage 1): captions, the duplicate-aware contrastive loss, a
resumable deterministic training loop, and a saved model the CLIP judge loads as a folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.world.captions import COLOUR_SYNONYMS, NOUN, OBJECT_SYNONYMS, STYLE_SYNONYMS
from bench.world.clip import zero_shot
from bench.world.render import NONE_CHARACTER, render_batch
from bench.worldgen.clip_train import STYLE_PHRASES, clip_caption, contrastive_loss, make_clip, train_clip
from bench.worldgen.config import MINI_CLIP, ClipConfig


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


def test_captions_true_of_another_image_are_not_negatives():
    """"a star" is as true of the other star in a batch as of its own: that pair leaves the softmax;
    a caption naming something the image lacks stays a negative."""
    from bench.world.render import Scene
    from bench.worldgen.clip_train import also_true, described

    scenes = [Scene("star", "red", "solid"), Scene("star", "blue", "dotted"), Scene("moon", "red", "solid")]
    stated = [{"object": "star"}, {"object": "star", "colour": "blue"}, {"colour": "red"}]
    true = also_true(scenes, stated)
    assert true.tolist() == [[False, False, True],   # red star: "a star" is its own; "red" is true of it too
                             [True, False, False],   # blue star: "a star" (not its own caption) is true of it
                             [False, False, False]]  # red moon: its own caption only
    logits = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    captions = ["a star", "a blue star", "a red shape"]
    base = contrastive_loss(logits, captions, true)
    moved = logits.clone()
    moved[1, 0] += 4.0
    moved[0, 2] -= 2.0
    assert torch.equal(contrastive_loss(moved, captions, true), base)
    moved[2, 0] += 4.0  # the moon against "a star": a negative
    assert contrastive_loss(moved, captions, true) > base
    text, facts = described(Scene("star", "red", "striped"), np.random.default_rng(3))
    assert facts and all(Scene("star", "red", "striped").names()[h] == v for h, v in facts.items()) and text


def test_also_true_is_the_pairwise_definition_on_training_batches():
    """``also_true`` (per head, vectorised) gives what its definition does pair by pair, on batches of
    world 3's training captions with characters and non-scenes among them."""
    from bench.world.render import WORLD3
    from bench.worldgen.clip_train import NOTHING, also_true, described, nothing_caption
    from bench.worldgen.data import sample_scenes
    from bench.worldgen.negatives import KINDS

    rng = np.random.default_rng(3)
    for batch in range(4):
        scenes = [None if rng.random() < 0.15 else s for s in sample_scenes(batch, 96, 0.3, WORLD3)]
        stated = [nothing_caption(KINDS[k % len(KINDS)], rng)[1] if s is None else described(s, rng)[1]
                  for k, s in enumerate(scenes)]
        names = [NOTHING if s is None else s.names() for s in scenes]
        expected = [[i != j and all(n.get(h) == v for h, v in facts.items()) for j, facts in enumerate(stated)]
                    for i, n in enumerate(names)]
        got = also_true(scenes, stated)
        assert got.tolist() == expected and 0 < int(got.sum()) < got.numel()


@pytest.mark.slow  # trains CLIPs (make test-slow)
def test_image_tower_pretraining_learns_the_labels(world_scenes, tmp_path):
    """LiT's first half: the image tower with a linear head per attribute fits the renders' labels
    (summed cross-entropy falls), and a finished run reloads from its checkpoint without training."""
    from bench.world.render import WORLD2
    from bench.worldgen.clip_train import pretrain_image_tower

    images, scenes = world_scenes
    cfg = ClipConfig().override([*MINI_CLIP, "image_steps=40", "vision_hidden=32", "vision_heads=2", "vision_ff=64",
                                 "ckpt_every=20"])
    model = make_clip(cfg)
    before = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
    pretrain_image_tower(cfg, model, images, scenes, WORLD2, tmp_path, progress=False)
    state = torch.load(tmp_path / "image_ckpt.pt", weights_only=True)
    assert state["step"] == 40
    trained = model.vision_model.state_dict()
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    again = make_clip(cfg)
    pretrain_image_tower(cfg, again, images, scenes, WORLD2, tmp_path, progress=False)  # resumes at the end
    assert all(torch.equal(v, again.vision_model.state_dict()[k]) for k, v in trained.items())
    # the judge's augmentations are drawn from each step's own stream: a second run repeats the first,
    # and a run without them trains another tower
    assert cfg.augment
    for aug, same in ((True, True), (False, False)):
        other = make_clip(cfg)
        pretrain_image_tower(cfg.override([f"augment={aug}"]), other, images, scenes, WORLD2, tmp_path / str(aug),
                             progress=False)
        assert all(torch.equal(v, other.vision_model.state_dict()[k]) for k, v in trained.items()) == same
    names = WORLD2.heads
    heads = torch.nn.ModuleDict({h: torch.nn.Linear(32, len(n)) for h, n in names.items()})
    heads.load_state_dict(state["heads"])
    from bench.world.clip import normalise

    with torch.no_grad():
        pooled = model.vision_model(pixel_values=normalise(images)).pooler_output
        fresh = make_clip(cfg).vision_model(pixel_values=normalise(images)).pooler_output
    target = {h: torch.tensor([n.index(s.names()[h]) for s in scenes]) for h, n in names.items()}
    loss = sum(F.cross_entropy(heads[h](pooled), target[h]) for h in names)
    untrained = sum(F.cross_entropy(heads[h](fresh), target[h]) for h in names)
    assert loss < 0.8 * untrained


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


@pytest.fixture(scope="module")
def trained_clip(world_scenes, tmp_path_factory):
    """One mini world CLIP trained on ``world_scenes`` (``train_clip``'s folder; its model in ``clip/``), shared
    read-only by the tests that need a trained one (the tests of training itself train their own)."""
    images, scenes = world_scenes
    folder = tmp_path_factory.mktemp("trained-clip")
    train_clip(ClipConfig().override(MINI_CLIP), images, scenes, folder, progress=False)
    return folder


@pytest.mark.slow  # trains CLIPs (make test-slow)
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


@pytest.mark.slow  # trains CLIPs (make test-slow)
def test_fused_optimizer_is_the_same_update(world_scenes, tmp_path):
    """``fused_adam`` (world 3's default) runs torch's fused AdamW kernel: the same training up to float
    rounding as the default per-tensor loop it replaces."""
    images, scenes = world_scenes
    runs = {}
    for fused in (True, False):
        cfg = ClipConfig().override([*MINI_CLIP, f"fused_adam={fused}"])
        out = train_clip(cfg, images, scenes, tmp_path / str(fused), progress=False)
        # the checkpoint's full-precision weights (the saved model's are rounded to fp16 values)
        runs[fused] = out["final_loss"], torch.load(tmp_path / str(fused) / "clip_ckpt.pt", weights_only=True)["model"]
    (loss_f, w_f), (loss_p, w_p) = runs[True], runs[False]
    assert abs(loss_f - loss_p) < 1e-4 * abs(loss_p)
    moved = [k for k in w_p if not torch.equal(w_p[k], w_f[k])]  # not bit-identical: another kernel ...
    assert moved and all(torch.allclose(w_f[k], w_p[k], rtol=1e-3, atol=1e-4) for k in w_p)  # ... same update


@pytest.mark.slow  # trains CLIPs (make test-slow)
def test_locked_image_tower_keeps_its_pretraining_and_resumes_exactly(world_scenes, tmp_path):
    """``lock_image`` (LiT): the contrastive stage leaves the pretrained image encoder as it was (up to
    the fp16 values it ships as) and trains the rest; a time-sliced run ends where a whole one does."""
    from safetensors.torch import load_file

    images, scenes = world_scenes
    cfg = ClipConfig().override([*MINI_CLIP, "lock_image=true"])
    train_clip(cfg, images, scenes, tmp_path / "whole", progress=False)
    tower = torch.load(tmp_path / "whole" / "image_ckpt.pt", weights_only=True)["tower"]
    got = load_file(tmp_path / "whole" / "clip" / "model.safetensors")
    assert all(torch.equal(got[f"vision_model.{k}"], v.half().float()) for k, v in tower.items())
    free = train_clip(ClipConfig().override([*MINI_CLIP, "lock_image=false"]), images, scenes, tmp_path / "free",
                      progress=False)
    assert np.isfinite(free["final_loss"])
    moved = load_file(tmp_path / "free" / "clip" / "model.safetensors")
    assert not all(torch.equal(moved[f"vision_model.{k}"], v.half().float()) for k, v in tower.items())
    train_clip(cfg, images, scenes, tmp_path / "sliced", progress=False, stop_after=3)
    train_clip(cfg, images, scenes, tmp_path / "sliced", progress=False)
    again = load_file(tmp_path / "sliced" / "clip" / "model.safetensors")
    assert all(torch.equal(got[k], again[k]) for k in got)


def test_a_locked_tower_is_run_once_over_the_pool(world_scenes):
    """With the image tower locked the contrastive steps read its pooled output, computed once for the
    training pool (scenes, then non-scenes, as ``clip_views`` orders them): the same embeddings as running
    the tower on each batch."""
    import torch.nn.functional as F

    from bench.world.clip import image_embeddings
    from bench.worldgen.clip_train import NonScenes, clip_views, locked_features, make_clip

    images, _ = world_scenes
    negatives = NonScenes(torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)), ["noise"] * 5)
    model = make_clip(ClipConfig().override(MINI_CLIP)).eval()
    locked = locked_features(model, images, negatives, batch=7)
    assert locked.shape == (len(images) + 5, model.config.vision_config.hidden_size)
    idx = np.array([len(images) + 4, 0, 3, len(images), 1])
    with torch.no_grad():
        want = image_embeddings(model, clip_views(images, negatives, idx))
        got = F.normalize(model.visual_projection(locked[torch.from_numpy(idx)]), dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_saved_world_clip_is_a_clip_judge(world_scenes, trained_clip):
    """The trained folder is what ``--clip-model FOLDER`` loads; zero-shot accuracy is per head."""
    from transformers import CLIPModel

    from bench.core.concepts import load_concept_set
    from bench.judges.clip import ClipJudge
    from bench.run.plan import Track

    images, scenes = world_scenes
    judge = ClipJudge(str(trained_clip / "clip"), None, load_concept_set(Track().concept_set))
    assert judge.features(images[:4]).shape == (4, 8)
    acc = zero_shot(CLIPModel.from_pretrained(trained_clip / "clip").eval(), images, scenes)
    assert set(acc) == {"object", "colour", "style", "character"} and all(0 <= v <= 1 for v in acc.values())


# ---- world 3: the UNet against the frozen text tower --------------------------------------------------


def test_world_config_sets_the_clip_by_dotted_keys():
    from bench.core.errors import ConfigError
    from bench.worldgen.config import MINI_FROZEN_CLIP, WorldConfig

    cfg = WorldConfig().override(["text_encoder=frozen-clip", "clip.steps=7", "clip.text_hidden=32"])
    assert cfg.clip.steps == 7 and cfg.cond_dim == 32 and WorldConfig().cond_dim == WorldConfig().text_hidden
    assert WorldConfig().override(MINI_FROZEN_CLIP).clip.text_layers == 1
    with pytest.raises(ConfigError, match="clip.step="):
        WorldConfig().override(["clip.step=3"])
    assert WorldConfig().override(["clip.augment=False"]).clip.augment is False
    with pytest.raises(ConfigError, match="clip.lock_image=ture"):  # a misspelt flag is no silent False
        WorldConfig().override(["clip.lock_image=ture"])
    with pytest.raises(ConfigError, match="text_encoder"):
        WorldConfig().override(["text_encoder=frozen"])
    with pytest.raises(ConfigError, match="'clip=3'"):
        WorldConfig().override(["clip=3"])


def test_text_tower_is_the_clip_text_model_unchanged(trained_clip, tmp_path):
    """``save_text_tower`` gives a CLIPTextModel (a pipeline's text_encoder) with the world CLIP's
    text weights bit for bit, stored as fp16 values, and the same hidden states."""
    from transformers import CLIPModel, CLIPTextModel

    from bench.model.tokenizer import build_clip_tokenizer
    from bench.worldgen.clip_train import save_text_tower

    save_text_tower(trained_clip / "clip", tmp_path / "text_encoder")
    clip = CLIPModel.from_pretrained(trained_clip / "clip").eval()
    text = CLIPTextModel.from_pretrained(tmp_path / "text_encoder").eval()
    tower = {k.removeprefix("text_model."): v for k, v in clip.state_dict().items() if k.startswith("text_model.")}
    mine = {k.removeprefix("text_model."): v for k, v in text.state_dict().items()}
    assert mine.keys() == tower.keys() and all(torch.equal(mine[k], tower[k]) for k in mine)
    assert all(torch.equal(v, v.half().float()) for v in mine.values() if v.is_floating_point())
    ids = build_clip_tokenizer()(["a picture of a star", "a red moon"], padding="max_length", max_length=77,
                                 return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(text(ids)[0], clip.text_model(input_ids=ids)[0])


def test_frozen_states_are_the_encoders_per_caption(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.model.tokenizer import build_clip_tokenizer
    from bench.worldgen.train import FrozenStates, TokenCache

    torch.manual_seed(0)
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=77)).eval()
    tokens = TokenCache(build_clip_tokenizer())
    captions = ["a star", "a red moon", "a star", "", "a picture of zorbo"]
    states = FrozenStates.compute(enc, tokens, captions, chunk=2)
    assert len(states.row) == 4 and states.states.shape == (4, 77, 16)
    got = states(["a red moon", "a star", "a red moon"])
    with torch.no_grad():
        want = enc(tokens(["a red moon", "a star", "a red moon"]))[0]
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(got, FrozenStates.compute(enc, tokens, list(reversed(captions)), chunk=2)(
        ["a red moon", "a star", "a red moon"]))
    # stage "states" keeps them for the diffusion stage, which reads them back for its own captions only
    states.save(tmp_path)
    assert torch.equal(FrozenStates.load(tmp_path, list(reversed(captions)))(["a red moon", "a star"]), got[:2])
    with pytest.raises(ValueError, match="other captions"):
        FrozenStates.load(tmp_path, ["a star", "a blue moon"])


@pytest.mark.slow
def test_miniature_world3_ships_the_pretrained_tower_bit_for_bit(tmp_path):
    """A miniature world 3 build: the stage list, an ordinary pipeline whose text encoder is the
    world CLIP's text tower bit for bit (the UNet trained against it frozen), the CLIP shipped too."""
    from transformers import CLIPModel

    from bench.world.clip import load_world_clip
    from bench.worldgen.build import build
    from bench.worldgen.config import MINI_FROZEN_CLIP, WorldConfig
    from bench.worldgen.quality import load_pipeline

    cfg = WorldConfig().override(MINI_FROZEN_CLIP)
    res = build(tmp_path / "out", tmp_path / "work", cfg, evaluate=False)
    # the frozen states get a stage of their own; the world CLIP is the second judge: no ViT is trained
    assert list(res["stages"]) == ["data", "vae", "judge", "clip", "latents", "states", "diffusion", "export"]
    assert list(res["stages"]["judge"]) == ["seconds", "judge"] and not (tmp_path / "out" / "judge_vit").exists()
    from pathlib import Path

    from bench.run.plan import world_track

    assert Path(world_track(tmp_path / "out").second_judge) == tmp_path / "out" / "clip"
    assert set(res["stages"]["clip"]["zero_shot"]) == {"object", "colour", "style", "character"}
    pipe = load_pipeline(tmp_path / "out" / "model")
    shipped = pipe.text_encoder.state_dict()
    assert not (tmp_path / "out" / "clip" / "model.safetensors").exists()  # one copy of the tower ships
    for source in (load_world_clip(tmp_path / "out" / "clip")[0],
                   CLIPModel.from_pretrained(tmp_path / "work" / "world_clip" / "clip")):
        tower = {k.removeprefix("text_model."): v for k, v in source.state_dict().items() if k.startswith("text_model.")}
        assert {k.removeprefix("text_model."): v for k, v in shipped.items()}.keys() == tower.keys()
        assert all(torch.equal(v, tower[k.removeprefix("text_model.")]) for k, v in shipped.items())
    assert pipe.unet.config.cross_attention_dim == cfg.clip.text_hidden
    # the CLIP saw captioned non-scenes (clip.negatives), so the shipped judge rejects zero-shot
    from bench.judges.world import WorldClipJudge

    assert (tmp_path / "work" / "world_clip" / "clip_negatives.npz").is_file()
    assert WorldClipJudge(tmp_path / "out" / "clip").rule == WorldClipJudge.REJECT_RULE_ZERO_SHOT
    assert "text" not in torch.load(tmp_path / "work" / "diffusion_ckpt.pt", weights_only=True)
    images = pipe(["a picture of a star"], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    assert build(tmp_path / "out", tmp_path / "work", cfg, evaluate=False)["stages"] == res["stages"]


def test_shipped_world_clip_keeps_one_text_tower_and_checks_it(world_scenes, trained_clip, tmp_path):
    """A shipped world's clip/ holds every weight but the text tower, which it loads from the
    pipeline's text_encoder after checking its sha256: same model as the whole folder, one copy of
    the tower on disk, and a changed or missing tower is a one-line error, never a random tower."""
    from safetensors.torch import load_file, save_file

    from bench.core.errors import ConfigError
    from bench.world.clip import IMAGE_TOWER, load_world_clip
    from bench.worldgen.clip_train import save_text_tower, ship_world_clip

    images, scenes = world_scenes
    train = trained_clip  # read only: what is shipped goes under tmp_path
    save_text_tower(train / "clip", tmp_path / "model" / "text_encoder")
    ship_world_clip(train / "clip", tmp_path / "clip", tmp_path / "model" / "text_encoder")
    assert not (tmp_path / "clip" / "model.safetensors").exists()
    assert not any(k.startswith("text_model.") for k in load_file(tmp_path / "clip" / IMAGE_TOWER))
    whole, whole_version = load_world_clip(train / "clip")
    shipped, version = load_world_clip(tmp_path / "clip")
    assert shipped.state_dict().keys() == whole.state_dict().keys()
    assert all(torch.equal(v, shipped.state_dict()[k]) for k, v in whole.state_dict().items())  # fp16 values already
    assert len(version) == 12 and version != whole_version
    assert zero_shot(shipped, images, scenes) == zero_shot(whole, images, scenes)
    tower = tmp_path / "model" / "text_encoder" / "model.safetensors"
    state = load_file(tower)
    key = next(iter(state))
    save_file({**state, key: state[key] + 1}, tower)
    with pytest.raises(ConfigError, match="sha256"):
        load_world_clip(tmp_path / "clip")
    tower.unlink()
    with pytest.raises(ConfigError, match="missing"):
        load_world_clip(tmp_path / "clip")
    save_file({**state, key: state[key] + 1}, tower)
    with pytest.raises(RuntimeError, match="not the world CLIP"):  # shipping with another tower is refused
        ship_world_clip(train / "clip", tmp_path / "clip2", tmp_path / "model" / "text_encoder")


def test_world_clip_quality_against_the_judge(world_scenes, trained_clip, tmp_path):
    """The world-3 gates on a world CLIP: zero-shot accuracy per head on renders and agreement with
    the CNN judge on (here: rendered) images the CNN accepts."""
    import shutil
    from pathlib import Path

    from bench.world.render import WORLD2
    from bench.worldgen.quality import vocabulary_of, world_clip_quality

    world = Path(__file__).resolve().parents[1] / "datasets" / "conceptworld"
    images, scenes = world_scenes
    shutil.copytree(trained_clip / "clip", tmp_path / "w" / "clip")
    shutil.copytree(world / "judge", tmp_path / "w" / "judge")
    from bench.world.judge import WorldJudge

    judge = WorldJudge.load(tmp_path / "w" / "judge")
    assert vocabulary_of(judge) is WORLD2
    res = world_clip_quality(tmp_path / "w" / "clip", WORLD2, images[:24], n=32)
    assert set(res["zero_shot"]) == {"object", "colour", "style", "character"} and res["renders"] == 32
    a = res["agreement_with_judge"]
    assert set(a["heads"]) == {"object", "colour", "style", "character"}
    assert a["n"] == 24 - res["rejected_by_judge"] and all(0 <= v <= 1 for v in a["heads"].values())
    # its reject, measured on the model's images and on fresh non-scenes: this CLIP saw scenes only (rule 2)
    r = res["reject"]
    assert r["rule"] == 2 and r["non_scene_images"] == 16 and 0 <= r["generated"] <= 1 and 0 <= r["non_scenes"] <= 1


def test_judge_agreement_is_split_by_what_the_prompt_names(world_scenes):
    from pathlib import Path

    from bench.world.render import HEADS
    from bench.worldgen.quality import judges_on_generated

    world = Path(__file__).resolve().parents[1] / "datasets" / "conceptworld"
    images, _ = world_scenes
    named = [(images[:10], {"style": 1}), (images[10:16], {"object": 2, "colour": 0, "style": 3})]
    res = judges_on_generated(world, named, HEADS)
    split = res["agreement_by_prompt"]
    assert split["named"]["style"]["images"] == 16 and "style" not in split["unnamed"]
    assert split["named"]["object"]["images"] == 6 and split["unnamed"]["object"]["images"] == 10
    assert split["unnamed"]["character"]["images"] == 16
    # the gate's agreement counts a head where the prompt names it; every_image is the image-weighted
    # mean of the two parts; the reject verdict counts on every image
    a = res["agreement"]
    assert a["heads"]["object"] == split["named"]["object"]["agreement"] and a["images"]["object"] == 6
    assert "character" not in a["heads"] and a["images"]["scene"] == 16 and a["images"]["style"] == 16
    obj = split["named"]["object"]["agreement"] * 6 + split["unnamed"]["object"]["agreement"] * 10
    assert abs(obj / 16 - a["every_image"]["object"]) < 1e-9


def test_world_clip_folder_is_a_second_judge(world_scenes, trained_clip):
    """A world CLIP folder given as a judge spec (``--second-judge FOLDER``) is the zero-shot judge:
    labels on the world's heads (comparable with the CNN's), reject, detect, composed checks, CLIP score."""
    from pathlib import Path

    from bench.api.judge import REJECT_LABEL, SCENE_HEAD, build_judge
    from bench.core.concepts import load_concept_set
    from bench.judges.world import WorldClipJudge, WorldConceptJudge
    from bench.metrics.formulas import agreement

    world = Path(__file__).resolve().parents[1] / "datasets" / "conceptworld"
    images, scenes = world_scenes
    cs = load_concept_set(world / "concepts.yaml")
    judge = build_judge(str(trained_clip / "clip"), None, cs)
    assert isinstance(judge, WorldClipJudge) and judge.ref.startswith("conceptworld-clip@")
    from bench.world.render import render_batch, to_tensor

    arr, _ = render_batch(424_242, 2000)
    assert abs(float(judge.reject(to_tensor(arr)).float().mean()) - 0.01) < 0.005  # the calibration
    # the reject score is the best similarity to any object's or character's name (not "a shape")
    emb = judge.features(images)
    names = judge._prompts["character"][1:]
    want = (emb @ torch.cat([judge._prompts["object"], names]).T).amax(-1)
    assert torch.allclose(judge._scene_score(emb), want) and judge.ref.endswith(f".r{WorldClipJudge.REJECT_RULE}")
    got = judge.labels(images)
    assert set(got) == {SCENE_HEAD, "object", "colour", "style", "character"}
    rejected = [s == REJECT_LABEL for s in got[SCENE_HEAD]]
    assert all(got["object"][i] == REJECT_LABEL for i, r in enumerate(rejected) if r)
    star = cs.get("star")
    assert judge.detect(images, star).tolist() == [v == "star" for v in got["object"]]
    composed = [{"object": got["object"][i], "colour": got["colour"][i]} for i in range(len(images))]
    assert judge.sees(images, composed).tolist() == [not r for r in rejected]
    score = judge.clip_score(images[:3], ["a picture of a star"] * 3)
    assert score.shape == (3,) and (score >= 0).all() and (score <= 100).all()
    a = agreement(WorldConceptJudge(world / "judge").labels(images), got)
    assert set(a["heads"]) == {SCENE_HEAD, "object", "colour", "style", "character"}


def test_joint_world_initialises_as_world_2_1_did():
    """World 2.1's joint build draws unet, text encoder, then their EMA copies from the seed: the
    frozen-CLIP refactor keeps that order, so world 2.1 rebuilds with the same initial weights."""
    from bench.worldgen.config import MINI_FROZEN_CLIP, MINI_OVERRIDES, WorldConfig
    from bench.worldgen.train import init_models, make_text_encoder, make_unet

    cfg = WorldConfig().override(MINI_OVERRIDES)
    torch.manual_seed(0)
    unet, text = make_unet(cfg), make_text_encoder(cfg)
    torch.manual_seed(0)
    got = init_models(cfg)
    for a, b in ((unet, got[0]), (text, got[1]), (unet, got[2]), (text, got[3])):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    frozen = init_models(WorldConfig().override(MINI_FROZEN_CLIP))
    assert frozen[1] is None and frozen[3] is None


def test_training_views_are_robust_like_the_judges():
    """Jittered and holed textures, large shapes and VAE round trips change pixels, never what the
    scene is; with none of them, the views are the plain renders of the same seed."""
    from bench.world.render import vocabulary
    from bench.worldgen.clip_train import training_views
    from bench.worldgen.config import MINI_OVERRIDES, WorldConfig
    from bench.worldgen.data import render_set
    from bench.worldgen.train import make_vae

    vocab = vocabulary("3")
    plain = ClipConfig().override(["jitter=0", "vae_share=0", "holes=0", "large=0"])
    arr, scenes = training_views(plain, 24, vocab)
    ref, ref_scenes = render_set(plain.seed + 7, 24, 0.15, "ref", vocab=vocab)
    assert np.array_equal(arr, ref) and [s.labels() for s in scenes] == [s.labels() for s in ref_scenes]

    torch.manual_seed(0)
    vae = make_vae(WorldConfig().override(MINI_OVERRIDES)).eval()
    robust = ClipConfig().override(["jitter=1", "vae_share=0.5"])
    arr2, scenes2 = training_views(robust, 24, vocab, vae)
    assert [s.labels() for s in scenes2] == [s.labels() for s in scenes]  # same scenes, same captions
    assert all(a.dot_period != b.dot_period for a, b in zip(scenes2, scenes, strict=True))
    changed = [not np.array_equal(a, b) for a, b in zip(arr2, ref, strict=True)]
    assert 0 < sum(changed) <= 24 and arr2.dtype == np.uint8
    again, _ = training_views(robust, 24, vocab, vae)
    assert np.array_equal(again, arr2)  # seeded
    # holed textures and large shapes, as judge 2.3 trains: same captions, and the jitter draws as they were
    shaped = ClipConfig().override(["jitter=1", "vae_share=0", "holes=1", "large=1"])
    arr3, scenes3 = training_views(shaped, 24, vocab)
    assert [s.labels() for s in scenes3] == [s.labels() for s in scenes]
    assert all(s.holes >= 0.5 and s.scale >= 0.4 for s in scenes3)
    jittered, _ = training_views(ClipConfig().override(["jitter=1", "vae_share=0", "holes=0", "large=0"]), 24, vocab)
    assert [s.dot_period for s in scenes3] == [s.dot_period for s in scenes2]
    assert sum(not np.array_equal(a, b) for a, b in zip(arr3, jittered, strict=True)) == 24


@pytest.mark.slow  # trains CLIPs (make test-slow)
def test_non_scenes_teach_the_clip_to_reject_zero_shot(world_scenes, tmp_path):
    """``ClipConfig.negatives``: captioned non-scenes join the scenes in every stage. Their captions are
    true of each other and of no scene; the pretraining learns a scene head; a run resumes exactly and
    differs from one without them; and the judge of such a CLIP rejects zero-shot (rule 4)."""
    from bench.judges.clip import REJECT_PROMPTS
    from bench.judges.world import WorldClipJudge
    from bench.world.render import WORLD2, Scene, to_tensor
    from bench.worldgen.clip_train import NOTHING, NOTHING_CAPTIONS, NonScenes, also_true, negative_views
    from bench.worldgen.negatives import KINDS

    images, scenes = world_scenes
    cfg = ClipConfig().override([*MINI_CLIP, "negatives=0.25"])
    arr, kinds = negative_views(cfg, len(scenes), WORLD2)
    assert arr.shape == (16, 32, 32, 3) and kinds == [KINDS[i % len(KINDS)] for i in range(16)]
    assert set(NOTHING_CAPTIONS) == set(KINDS)
    # the judge rejects with the SD track's CLIP judge's prompts: the world CLIP learns every one of them
    assert set(REJECT_PROMPTS) <= {c for wordings in NOTHING_CAPTIONS.values() for c in wordings}
    negatives = NonScenes(to_tensor(arr), kinds)
    true = also_true([Scene("star", "red", "solid"), None, None], [{"object": "star"}, NOTHING, NOTHING])
    assert true.tolist() == [[False, False, False], [False, False, True], [False, True, False]]

    whole = train_clip(cfg, images, scenes, tmp_path / "whole", progress=False, vocab=WORLD2, negatives=negatives)
    assert np.isfinite(whole["final_loss"])
    heads = torch.load(tmp_path / "whole" / "image_ckpt.pt", weights_only=True)["heads"]
    assert heads["scene.weight"].shape[0] == 2
    train_clip(cfg, images, scenes, tmp_path / "sliced", progress=False, stop_after=4, vocab=WORLD2,
               negatives=negatives)
    train_clip(cfg, images, scenes, tmp_path / "sliced", progress=False, vocab=WORLD2, negatives=negatives)
    train_clip(cfg, images, scenes, tmp_path / "plain", progress=False, vocab=WORLD2)
    from safetensors.torch import load_file

    got = {name: load_file(tmp_path / name / "clip" / "model.safetensors") for name in ("whole", "sliced", "plain")}
    assert all(torch.equal(v, got["sliced"][k]) for k, v in got["whole"].items())
    assert any(not torch.equal(v, got["plain"][k]) for k, v in got["whole"].items())

    judge = WorldClipJudge(tmp_path / "whole" / "clip")
    assert judge.ref.endswith(f".r{WorldClipJudge.REJECT_RULE_ZERO_SHOT}") and "a blank image" in judge.reject_definition
    probe = torch.cat([images[:8], negatives.images[:8]])
    emb = judge.features(probe)
    # rule 4: a reject prompt outscores every concept's prompt, the colours' and styles' too
    concepts = judge._concept_score(emb)
    assert (concepts >= judge._scene_score(emb) - 1e-6).all()
    assert torch.allclose(concepts, (emb @ torch.cat([judge._prompts[h] for h in ("object", "colour", "style")]).T)
                          .amax(-1).maximum((emb @ judge._prompts["character"][1:].T).amax(-1)), atol=1e-6)
    want = (emb @ judge._reject_prompts.T).amax(-1) > concepts
    assert torch.equal(judge.reject(probe), want)
    plain = WorldClipJudge(tmp_path / "plain" / "clip")  # saw scenes only: the threshold rule
    assert plain.ref.endswith(f".r{WorldClipJudge.REJECT_RULE}") and "percentile" in plain.reject_definition
