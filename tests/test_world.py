"""ConceptWorld: renderer, captions, concept set, committed model and judge, miniature build."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.core.concepts import load_concept_set, parse_concept_set
from bench.core.errors import ConfigError, InputError
from bench.world.captions import CHARACTER_PARAPHRASES, PARAPHRASE_TEMPLATES, caption_for, concept_set_dict
from bench.world.render import CHARACTERS, HEADS, Scene, render_batch, render_scene, sample_scene, to_tensor
from bench.worldgen.config import MINI_OVERRIDES, WorldConfig

WORLD = Path(__file__).resolve().parents[1] / "datasets" / "conceptworld"
needs_world = pytest.mark.skipif(not (WORLD / "model" / "model_index.json").is_file(), reason="world not built")


def test_renderer_is_deterministic():
    a, sa = render_batch(7, 16)
    b, sb = render_batch(7, 16)
    c, _ = render_batch(8, 16)
    assert a.shape == (16, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and sa == sb
    assert not np.array_equal(a, c)


def test_parallel_rendering_gives_the_same_set():
    from bench.worldgen.data import render_set

    one, scenes_one = render_set(3, 40, 0.15, "serial", workers=1)
    two, scenes_two = render_set(3, 40, 0.15, "parallel", workers=2)
    assert scenes_one == scenes_two
    assert np.array_equal(one, two)


def test_styles_do_not_share_a_dominant_frequency():
    """A half-drawn checkerboard must not be stripes: each style's strongest spatial frequency (over
    the shape's area) is its own; the checkerboard's lies on a diagonal, the stripes' on an axis
    (world 1.0 drew diagonal stripes at the checkerboard's own frequency and failed this)."""
    peaks = {}
    for style in ("striped", "dotted", "checkered"):
        img = render_scene(Scene(shape="square", colour="yellow", style=style, scale=0.45, background=(0, 0, 0)))
        g = img.astype(np.float32).mean(-1)[6:26, 6:26]
        spec = np.abs(np.fft.fft2(g - g.mean()))
        spec[0, 0] = 0
        fy, fx = np.unravel_index(np.argmax(spec), spec.shape)
        peaks[style] = (min(fy, 20 - fy), min(fx, 20 - fx))
    assert len(set(peaks.values())) == 3, peaks
    assert peaks["checkered"][0] > 0 and peaks["checkered"][1] > 0, peaks  # diagonal energy
    assert 0 in peaks["striped"], peaks  # axis-aligned stripes


def test_character_differs_from_its_plain_ingredients():
    for name, spec in CHARACTERS.items():
        char = sample_scene(np.random.default_rng(0), character=name)
        plain = Scene(**{**char.to_dict(), "character": "none"})
        assert (char.shape, char.colour, char.style) == (spec["shape"], spec["colour"], spec["style"])
        diff = np.abs(render_scene(char).astype(int) - render_scene(plain).astype(int)).sum(-1)
        assert (diff > 60).sum() >= 6, f"{name}'s mark is not visible"


def test_scene_labels_cover_every_head():
    _, scenes = render_batch(0, 400)
    for head, classes in HEADS.items():
        seen = {s.labels()[head] for s in scenes}
        assert seen == set(range(len(classes))), head


def test_captions_are_seeded_and_keep_paraphrases_out():
    _, scenes = render_batch(1, 2000)
    rng1, rng2 = np.random.default_rng(0), np.random.default_rng(0)
    caps = [caption_for(s, rng1) for s in scenes]
    assert caps == [caption_for(s, rng2) for s in scenes]
    assert 0.06 < sum(c == "" for c in caps) / len(caps) < 0.14
    held_out = [t.split("{}") for t in PARAPHRASE_TEMPLATES + CHARACTER_PARAPHRASES]
    assert not any(c.startswith(pre) and c.endswith(post) for c in caps for pre, post in held_out)
    assert any("striped" in c and "star" in c for c in caps)


def test_committed_concept_set_matches_the_generator():
    cs = load_concept_set(WORLD / "concepts.yaml")
    expected = parse_concept_set(concept_set_dict())
    assert cs.concepts == expected.concepts
    test = [c for c in cs.concepts if c.split == "test"]
    assert len(test) >= 8
    assert {"object", "style", "character"} <= {c.type for c in test}
    for c in cs.concepts:
        if c.type in ("object", "style"):
            assert len(c.synonyms) >= 2 and c.paraphrases


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["concepts"][0].update(type="shape"), "type 'shape' is not one of"),
        (lambda d: d["concepts"][0].update(templates=["a picture of a star"]), "exactly one"),
        (lambda d: d["concepts"][0].update(near_neighbours=["hexagon"]), "unknown concept 'hexagon'"),
        (lambda d: d["concepts"][0].update(synonym=["x"]), "did you mean 'synonyms'"),
        (lambda d: d["concepts"][0].update(split="train"), "split 'train'"),
        (lambda d: d["concepts"].append(dict(d["concepts"][1])), "listed more than once"),
        (lambda d: d.pop("version"), "missing top-level key 'version'"),
        (lambda d: d["concepts"][0].update(synonyms="disc"), "must be a list of strings"),
    ],
)
def test_concept_set_validation_errors(tmp_path, mutate, message):
    data = concept_set_dict()
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_concept_set(path)


def test_config_override_rejects_unknown_keys():
    cfg = WorldConfig().override(["unet_steps=3", "unet_channels=8,16"])
    assert cfg.unet_steps == 3 and cfg.unet_channels == (8, 16)
    with pytest.raises(ConfigError, match="unet_step"):
        WorldConfig().override(["unet_step=3"])


@needs_world
def test_manifest_hashes_every_committed_file():
    manifest = json.loads((WORLD / "MANIFEST.json").read_text())
    files = {str(p.relative_to(WORLD)) for p in WORLD.rglob("*") if p.is_file() and p.name != "MANIFEST.json"}
    assert files == set(manifest["files"])
    for rel, info in manifest["files"].items():
        assert hashlib.sha256((WORLD / rel).read_bytes()).hexdigest() == info["sha256"], rel
    assert not any(f.endswith((".pt", ".pkl", ".bin", "__init__.py")) for f in files)
    assert sum(i["bytes"] for i in manifest["files"].values()) <= 25 * 2**20


@needs_world
def test_committed_pipeline_generates_deterministically():
    from bench.core.protocol import WORLD_SAMPLER
    from bench.worldgen.quality import generate, load_pipeline

    pipe = load_pipeline(WORLD / "model")
    a = generate(pipe, "a picture of a red star", [0, 1], WORLD_SAMPLER)
    b = generate(pipe, "a picture of a red star", [0, 1], WORLD_SAMPLER)
    assert a.shape == (2, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


@needs_world
def test_judge_recognises_fresh_renders():
    from bench.world.judge import WorldJudge

    judge = WorldJudge.load(WORLD / "judge")
    images, scenes = render_batch(424_242, 256, character_prob=0.3)
    x = to_tensor(images)
    pred = judge.predict(x)
    for head in HEADS:
        truth = torch.tensor([s.labels()[head] for s in scenes])
        assert (pred[head] == truth).float().mean() >= 0.95, head
    probs = judge.probs(x[:4])
    assert torch.allclose(probs["object"].sum(-1), torch.ones(4), atol=1e-5)
    assert judge.features(x[:4]).shape == (4, judge.net.feature_dim)
    assert judge.version and judge.id


@pytest.mark.slow
def test_miniature_world_builds_end_to_end(tmp_path):
    from bench.world.judge import WorldJudge
    from bench.worldgen.build import build
    from bench.worldgen.quality import load_pipeline

    cfg = WorldConfig().override(MINI_OVERRIDES)
    res = build(tmp_path / "out", tmp_path / "work", cfg)
    assert set(res["stages"]) == {"data", "vae", "judge", "latents", "diffusion", "export"}
    assert (tmp_path / "out" / "samples" / "grid.png").is_file()
    assert "quality" in json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    pipe = load_pipeline(tmp_path / "out" / "model")
    assert pipe.text_encoder.dtype == torch.float32
    WorldJudge.load(tmp_path / "out" / "judge")
    # a rerun resumes: every stage is skipped, the result is the same
    again = build(tmp_path / "out", tmp_path / "work", cfg, evaluate=False)
    assert again["stages"] == res["stages"]


def test_unet_heads_have_the_width_the_config_names():
    """diffusers reads ``attention_head_dim`` as a head count: world 2.1 keeps its 32 heads per block
    (and its weights), world 3's preset gives heads of width 32, and a width that does not divide
    every block's channels is a one-line error."""
    from bench.worldgen.config import PRESETS
    from bench.worldgen.train import make_unet, unet_heads

    world2 = WorldConfig()
    assert unet_heads(world2) == 32
    world3 = WorldConfig().override(PRESETS["3"])
    assert unet_heads(world3) == (1, 2, 4)
    torch.manual_seed(0)
    unet = make_unet(world3)
    attn = [m for name, m in unet.named_modules() if name.endswith("attn2")]
    assert attn and {m.inner_dim // m.heads for m in attn} == {32}  # every cross-attention head is 32 wide
    assert {m.heads for m in attn} == {1, 2, 4}
    torch.manual_seed(0)
    # the same parameters in the same order: only how attention splits them into heads differs
    counted = make_unet(WorldConfig().override([*PRESETS["3"], "unet_head_width=0"]))
    assert [p.shape for p in counted.parameters()] == [p.shape for p in unet.parameters()]
    with pytest.raises(ConfigError, match="unet_head_width=48"):
        WorldConfig().override(["unet_head_width=48"])


def _stage_report(cfg: WorldConfig, work: Path) -> dict:
    """A stage for the side-by-side test: where and on how many threads it ran."""
    import os

    return {"pid": os.getpid(), "stage_threads": torch.get_num_threads(), "seed": cfg.seed}


def _stage_fails(cfg: WorldConfig, work: Path) -> dict:
    raise ValueError("stage broke")


@pytest.mark.slow  # builds world stages (make test-slow)
def test_independent_stages_run_side_by_side_on_one_thread_each(tmp_path):
    """``parallel_stages``: the first lane of stages runs in a second process, the second here, each
    stage on one thread and each lane in order; all are recorded; a resumed build runs what is left on
    one thread too; the caller's thread count comes back; a failing stage raises, the stages that
    finished are kept and the rest of its lane does not run."""
    import os

    from bench.worldgen.train import Stages

    cfg = WorldConfig().override(["parallel_stages=true", "seed=5"])
    threads = torch.get_num_threads()
    stages = Stages(tmp_path)
    stages.run_side_by_side([("a", _stage_report), ("a2", _stage_report)], [("b", _stage_report), ("b2", _stage_report)],
                            cfg)
    a, b = stages.done["a"], stages.done["b"]
    assert a["pid"] == stages.done["a2"]["pid"] != os.getpid() == b["pid"] == stages.done["b2"]["pid"]
    assert all(stages.done[n]["stage_threads"] == stages.done[n]["threads"] == 1 for n in ("a", "a2", "b", "b2"))
    assert a["seed"] == b["seed"] == 5 and a["seconds"] >= 0 and b["seconds"] >= 0
    assert list(stages.done) == ["b", "b2", "a", "a2"]  # here as each finishes, the other lane's when it returns
    assert torch.get_num_threads() == threads
    assert json.loads((tmp_path / "stages.json").read_text()) == stages.done
    # resumed with one lane's last stage left: it runs alone, here, still on one thread
    resumed = Stages(tmp_path)
    del resumed.done["a2"]
    resumed.run_side_by_side([("a", _stage_fails), ("a2", _stage_report)], [("b", _stage_fails), ("b2", _stage_fails)],
                             cfg)  # the others are done: never rerun
    assert resumed.done["a2"]["stage_threads"] == 1 and resumed.done["a2"]["pid"] == os.getpid()
    assert resumed.done["a"] == a and resumed.done["b"] == b
    (tmp_path / "broken").mkdir()
    broken = Stages(tmp_path / "broken")
    with pytest.raises(ValueError, match="stage broke"):
        broken.run_side_by_side([("a", _stage_fails)], [("b", _stage_report), ("b2", _stage_report)], cfg)
    # the stages that finished are kept, so a rerun trains only the one that failed
    assert "a" not in broken.done and broken.done["b"]["stage_threads"] == broken.done["b2"]["threads"] == 1
    assert json.loads((tmp_path / "broken" / "stages.json").read_text()) == broken.done
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="stage broke"):  # and the other way round: the failing lane stops there
        Stages(tmp_path / "broken").run_side_by_side([("c", _stage_report), ("c2", _stage_report)],
                                                     [("d", _stage_fails), ("d2", _stage_report)], cfg)
    done = json.loads((tmp_path / "broken" / "stages.json").read_text())
    assert "c" in done and "c2" in done and "d" not in done and "d2" not in done


def test_presets_name_every_world(tmp_path, capsys):
    """``build --preset 3`` is world 3 (``make world WORLD=3`` calls it): the overrides come from one
    list, ``--set`` goes on top of them, and an unknown preset is refused by the parser."""
    from bench.cli.world import main
    from bench.world.presets import DEFAULT_PRESET, PRESET_FOLDERS
    from bench.world.presets import DEFAULT_WORLD as WORLD  # what the default Track (run.plan) measures on
    from bench.worldgen.config import PRESETS

    assert set(PRESETS) == set(PRESET_FOLDERS) == {"2.1", "3"}
    assert DEFAULT_PRESET == "3" and WORLD.name == Path(PRESET_FOLDERS["3"][0]).name  # make bench's world
    cfg = WorldConfig().override(PRESETS["3"])
    assert (cfg.vocab, cfg.text_encoder, cfg.unet_head_width, cfg.second_judge) == ("3", "frozen-clip", 32, "clip")
    assert cfg.fused_adam and not WorldConfig().fused_adam  # world 2.1's diffusion stage draws the floats it did
    with pytest.raises(ConfigError, match="second_judge=clip: only a world with a world CLIP"):
        WorldConfig().override(["second_judge=clip"])
    with pytest.raises(ConfigError, match="second_judge='cnn'"):
        WorldConfig().override(["second_judge=cnn"])
    import shutil
    import subprocess

    if shutil.which("make"):
        root = Path(__file__).resolve().parents[1]
        for world, preset in ((None, "--preset 3"), ("3", "--preset 3"), ("2", "--preset 2.1"), ("2.1", "--preset 2.1")):
            dry = subprocess.run(["make", "-n", "world", "world-eval", *([f"WORLD={world}"] if world else [])], cwd=root,
                                 capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "WORLD"})
            assert f"-m bench.world build {preset}" in dry.stdout and f"-m bench.world evaluate {preset}" in dry.stdout
    # `judge` retrains the judges of the preset a world was built with (its MANIFEST.json), never another's
    from bench.cli.world import judged_preset
    from bench.worldgen.config import preset_of

    root = Path(__file__).resolve().parents[1] / "datasets"
    for folder, preset in (("conceptworld", "2.1"), ("conceptworld3", "3")):
        assert preset_of(json.loads((root / folder / "MANIFEST.json").read_text())["config"]) == preset
        assert judged_preset(str(root / folder), None) == judged_preset(str(root / folder), preset) == preset
    assert judged_preset(None, None) == DEFAULT_PRESET and judged_preset(None, "2.1") == "2.1"
    with pytest.raises(InputError, match="built with preset 2.1, not --preset 3"):
        judged_preset(str(root / "conceptworld"), "3")
    assert preset_of({"vocab": "3"}) is None  # half of world 3's overrides is no preset
    assert main(["judge", "--world", str(tmp_path)]) == 2 and "give --preset" in capsys.readouterr().err
    (tmp_path / "MANIFEST.json").write_text("[1, 2]")
    assert main(["judge", "--world", str(tmp_path)]) == 2 and "is not a world manifest" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build", "--preset", "4", "--out", str(tmp_path)])
    assert main(["build", "--preset", "3", "--set", "unet_head_width=48", "--out", str(tmp_path)]) == 2
    assert "unet_head_width=48" in capsys.readouterr().err


# ---- world 3's vocabulary ---------------------------------------------------------------------------------


def test_world3_vocabulary_extends_world2_without_changing_it():
    """World 2's names keep their class indices and its draws stay the same (world 2.1 rebuilds as
    before); world 3 draws every new shape, style and character and labels them on its own lists."""
    from bench.world.render import NEW_CHARACTERS, NEW_SHAPES, NEW_STYLES, WORLD2, WORLD3, vocabulary

    for head, classes in WORLD2.heads.items():
        assert WORLD3.heads[head][: len(classes)] == classes == HEADS[head]
    assert len(WORLD3.shapes) == 12 and len(WORLD3.styles) == 6 and len(WORLD3.characters) == 6
    a, _ = render_batch(11, 40)
    b, _ = render_batch(11, 40, vocab=WORLD2)
    assert np.array_equal(a, b)
    _, scenes = render_batch(12, 600, character_prob=0.3, vocab=WORLD3)
    assert {s.shape for s in scenes} >= set(NEW_SHAPES) and {s.style for s in scenes} >= set(NEW_STYLES)
    assert {s.character for s in scenes} >= set(NEW_CHARACTERS)
    for s in scenes[:50]:
        assert all(WORLD3.heads[h][k] == (s.shape if h == "object" else getattr(s, h)) for h, k in s.labels().items())
    with pytest.raises(ValueError, match="vocabulary"):
        vocabulary("4")


def test_world3_new_styles_have_their_own_signature():
    """A gradient fades from bright at the top to dark at the bottom and is flat across (no period,
    nothing in common with the dots' lattice); a halved shape is one bright and one dark half."""
    img = render_scene(Scene(shape="square", colour="yellow", style="gradient", scale=0.45, background=(0, 0, 0)))
    g = img.astype(np.float32).mean(-1)[8:24, 8:24]
    rows = g.mean(1)
    assert np.all(np.diff(rows) < 0) and rows[0] > 1.6 * rows[-1]
    assert g.std(1).max() < 8  # flat along each row
    img = render_scene(Scene(shape="square", colour="yellow", style="halved", scale=0.45, background=(0, 0, 0)))
    g = img.astype(np.float32).mean(-1)[8:24, 8:24]
    left, right = g[:, :6].mean(), g[:, 10:].mean()
    assert left > 1.6 * right and g[:, :6].std() < 8 and g[:, 10:].std() < 8


def test_world3_concept_set_has_16_test_concepts():
    from bench.world.render import WORLD3

    d = concept_set_dict(WORLD3)
    cs = parse_concept_set(d)
    test = [c for c in cs.concepts if c.split == "test"]
    assert d["version"] == "3.1" and len(cs.concepts) == 32 and len(test) >= 16
    assert {c.type for c in test} == {"object", "style", "character", "colour"}
    dev = {c.name for c in cs.concepts if c.split == "dev"}
    assert {"ring", "diamond", "checkered", "quaddle", "triangle", "cross"} <= dev
    for c in cs.concepts:
        assert not set(c.retain_cross_domain) & set(c.near_neighbours), c.name
        assert c.name not in c.retain_in_domain + c.retain_cross_domain
