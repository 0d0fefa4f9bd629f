"""Judges: the reject option, the second opinion and how both reach the metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api.judge import REJECT_LABEL, SCENE_HEAD
from bench.core.plan import ImageRow
from bench.metrics.cell import cell_metrics
from bench.metrics.formulas import DISAGREEMENT_FLAG, agreement
from bench.world.render import HEADS, Scene, jitter_texture, render_batch, render_scene, to_tensor
from bench.worldgen.negatives import KINDS, render_negatives

WORLD = Path(__file__).resolve().parents[1] / "datasets" / "conceptworld"
needs_world = pytest.mark.skipif(not (WORLD / "judge_vit" / "judge.safetensors").is_file(),
                                 reason="world judges not built")


def test_negatives_cover_every_kind_and_are_deterministic():
    a, kinds = render_negatives(5, 2 * len(KINDS))
    b, _ = render_negatives(5, 2 * len(KINDS))
    assert a.shape == (2 * len(KINDS), 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and sorted(set(kinds)) == sorted(KINDS)
    blank = a[kinds.index("blank")].astype(float)
    assert blank.std(axis=(0, 1)).max() < 12  # one colour plus sensor noise


def test_texture_jitter_changes_texture_only_and_defaults_render_as_before():
    scene = Scene(shape="square", colour="yellow", style="dotted", scale=0.45)
    jittered = jitter_texture(scene, np.random.default_rng(0))
    assert (jittered.shape, jittered.colour, jittered.cx) == (scene.shape, scene.colour, scene.cx)
    assert jittered.dot_radius != scene.dot_radius
    assert not np.array_equal(render_scene(jittered), render_scene(scene))
    # the defaults are the world's own texture: a scene built without them renders identically
    plain = Scene(**{k: v for k, v in scene.to_dict().items()
                     if k not in ("stripe_period", "dot_period", "dot_radius", "check_cell", "dark_shade")})
    assert np.array_equal(render_scene(plain), render_scene(scene))


def test_holes_show_the_background_through_the_dark_texture_only():
    from dataclasses import replace

    striped = Scene(shape="square", colour="yellow", style="striped", scale=0.45)
    plain, holed = render_scene(striped), render_scene(replace(striped, holes=1.0))
    changed = (plain != holed).any(-1)
    assert 0.1 < changed.mean() < 0.5  # the dark stripes, not the bright ones or the background
    assert np.median(np.abs(holed[changed].astype(float) - np.asarray(striped.background))) <= 2
    solid = Scene(shape="square", colour="yellow", style="solid", scale=0.45)  # no dark parts: no holes
    assert np.array_equal(render_scene(solid), render_scene(replace(solid, holes=1.0)))


def test_judge_training_scenes_with_holes_keep_their_labels():
    """``judge_set``'s holed share changes textured scenes' pixels only: same labels, solid scenes
    untouched; with ``n_unclear`` the style head's none class appears, and nowhere else."""
    from bench.world.render import WORLD3
    from bench.worldgen.judge_build import Drawn, judge_set

    args = dict(seed=3, n=24, n_negatives=4, character_prob=0.0, vocab=WORLD3)
    plain_x, plain_y = judge_set(**args)
    holed_x, holed_y = judge_set(**args, drawn=Drawn(holes=1.0))
    assert all(torch.equal(plain_y[h], holed_y[h]) for h in plain_y)
    styles = [WORLD3.styles[int(k)] for k in plain_y["style"][:24]]
    changed = [bool((a != b).any()) for a, b in zip(plain_x[:24], holed_x[:24], strict=True)]
    assert all(c == (s != "solid") for c, s in zip(changed, styles, strict=True))
    x, y = judge_set(**args, n_unclear=6)
    assert len(x) == 24 + 6 + 4 and (y["style"][24:30] == len(WORLD3.styles)).all()
    assert (y["style"][:24] < len(WORLD3.styles)).all() and (y["scene"][24:30] == 0).all()


def test_large_judge_scenes_keep_their_labels_and_stay_in_the_frame():
    """``judge_set``'s large share draws the same scenes bigger (every label kept), centred so that
    no shape leaves the frame: the image border stays background."""
    from bench.world.render import sample_scene
    from bench.worldgen.judge_build import LARGE, Drawn, judge_set, large_share

    args = dict(seed=5, n=16, n_negatives=0, character_prob=0.0)
    plain_x, plain_y = judge_set(**args)
    big_x, big_y = judge_set(**args, drawn=Drawn(large=1.0))
    assert all(torch.equal(plain_y[h], big_y[h]) for h in plain_y)
    rng = np.random.default_rng(0)
    for k in range(32):
        s = large_share(sample_scene(np.random.default_rng(k)), rng)
        assert LARGE[0] <= s.scale <= LARGE[1] and s.scale <= s.cx <= 1 - s.scale and s.scale <= s.cy <= 1 - s.scale
    # more of each image is shape: fewer pixels equal to the image's corner (background) colour
    def share_bg(x):
        return float((x - x[:, :, :1, :1]).abs().sum(1).lt(0.08).float().mean())
    assert share_bg(big_x) < share_bg(plain_x)


def _rows(groups: list[str], seeds: list[int]) -> list[ImageRow]:
    return [ImageRow(g, None, f"prompt {g}", s) for g, s in zip(groups, seeds, strict=True)]


def test_a_rejected_image_is_a_miss_for_retain_and_not_seen_for_ua():
    """Four target and four retain images; the judge rejects half of each (and so detects nothing
    there): UA counts rejected target images as erased, retain counts rejected ones as misses."""
    groups = ["target"] * 4 + ["in_domain"] * 4
    rows = _rows(groups, [0, 1, 2, 3] * 2)
    rejected = torch.tensor([True, True, False, False, True, True, False, False])
    # what Judge.detect returns: the concept is seen on the kept images only
    det = torch.tensor([False, False, True, True, False, False, True, True])
    f = torch.randn(4, 3)
    m = cell_metrics(rows, {"edited": det, "original": det}, f, f, {"edited": rejected, "original": rejected})
    assert m["ua"]["value"] == 0.5  # 2 rejected = not seen
    assert m["retain_in_domain"]["value"] == 0.5  # 2 rejected = missed
    assert m["reject_rate"]["value"] == 0.5 and m["reject_rate_target"]["value"] == 0.5
    with pytest.raises(ValueError, match="rejected"):
        cell_metrics(rows, {"edited": rejected, "original": det}, f, f, {"edited": rejected, "original": rejected})


def test_agreement_on_a_constructed_disagreement():
    a = {SCENE_HEAD: ["valid"] * 10, "style": ["dotted"] * 10, "object": ["star"] * 10}
    b = {SCENE_HEAD: ["valid"] * 9 + [REJECT_LABEL], "style": ["dotted"] * 7 + ["solid"] * 3,
         "object": ["star"] * 10, "colour": ["red"] * 10}
    res = agreement(a, b)
    assert res["heads"] == {SCENE_HEAD: 0.9, "style": 0.7, "object": 1.0}  # colour: only one judge has it
    assert res["min"] == 0.7 and res["worst_head"] == "style" and res["n"] == 10
    assert res["all_heads"] == pytest.approx(0.7)  # images 7, 8, 9 differ (on style; 9 on the scene too)
    assert 1 - res["min"] > DISAGREEMENT_FLAG  # such a cell is flagged
    with pytest.raises(ValueError, match="no head"):
        agreement({"x": ["a"]}, {"y": ["a"]})
    # scored: style is read on images 0-7 only (their prompts name it), object on none, the scene on all
    scored = {"style": [True] * 8 + [False] * 2, "object": [False] * 10}
    res = agreement(a, b, scored=scored)
    assert res["heads"] == {SCENE_HEAD: 0.9, "style": 0.875} and res["images"] == {SCENE_HEAD: 10, "style": 8}
    assert res["every_image"] == {SCENE_HEAD: 0.9, "style": 0.7, "object": 1.0}
    assert res["min"] == 0.875 and res["worst_head"] == "style"
    assert res["all_heads"] == pytest.approx(0.8)  # 7 (style) and 9 (scene) differ on a scored head; 8 only off it
    with pytest.raises(ValueError, match="cover"):
        agreement(a, b, scored={"style": [True] * 3})


def test_cell_scores_each_head_where_its_numbers_read_it():
    from bench.core.concepts import Concept
    from bench.core.plan import ImageRow
    from bench.metrics.cell import scored_heads

    star = Concept(name="star", type="object", split="test", extra={"head": "object", "label": "star"})
    red = Concept(name="red", type="colour", split="dev", extra={"head": "colour", "label": "red"})
    rows = [ImageRow("target", star, "a star", 0), ImageRow("in_domain", red, "a red shape", 0),
            ImageRow("composed", star, "a dotted red star", 0, {"style": "dotted", "colour": "red"})]
    assert scored_heads(rows) == {"object": [True, False, True], "colour": [False, True, True],
                                  "style": [False, False, True]}


@pytest.fixture(scope="module")
def world_judges():
    from bench.judges.world import WorldConceptJudge

    return WorldConceptJudge(WORLD / "judge"), WorldConceptJudge(WORLD / "judge_vit")


@needs_world
@pytest.mark.parametrize("which", [0, 1], ids=["cnn", "vit"])
def test_reject_head_rejects_non_scenes_and_accepts_fresh_renders(world_judges, which):
    """Seeds no judge trained on: >= 95 % of synthetic non-scenes rejected (every kind, blank
    frames, washes and noise each >= 95 %), >= 99 % of fresh renders accepted."""
    judge = world_judges[which]
    neg, kinds = render_negatives(31_337, 40 * len(KINDS))
    rej = judge.reject(to_tensor(neg)).numpy()
    assert rej.mean() >= 0.95, rej.mean()
    for kind in ("blank", "wash", "gradient", "noise"):
        share = rej[[k == kind for k in kinds]].mean()
        assert share >= 0.95, (kind, share)
    images, scenes = render_batch(271_828, 400, character_prob=0.3)
    x = to_tensor(images)
    assert 1 - judge.reject(x).float().mean() >= 0.99
    labels = judge.labels(x)
    for head, classes in HEADS.items():
        truth = [classes[s.labels()[head]] for s in scenes]
        assert np.mean([a == b for a, b in zip(labels[head], truth, strict=True)]) >= 0.95, head


@needs_world
def test_detect_is_never_true_on_a_rejected_image(world_judges):
    from bench.core.concepts import Concept

    judge = world_judges[0]
    neg, _ = render_negatives(99, 64)
    x = to_tensor(neg)
    rejected = judge.reject(x)
    for head, classes in HEADS.items():
        for label in classes[1:] if head == "character" else classes:
            seen = judge.detect(x, Concept(label, type=head, extra={"head": head, "label": label}))
            assert not (seen & rejected).any()
    assert all(v == REJECT_LABEL for v, r in zip(judge.labels(x)["style"], rejected.tolist(), strict=True) if r)


def test_imagenet_judge_rejects_blank_frames_and_keeps_photographs():
    from skimage import data

    from bench.judges.imagenet import ImageNetJudge

    judge = ImageNetJudge()
    photos = torch.cat([torch.from_numpy(getattr(data, n)()[:300, :300]).permute(2, 0, 1).float().div(255)[None]
                        for n in ("chelsea", "coffee")])
    blank = torch.ones(3, 3, 300, 300) * torch.tensor([0.2, 0.5, 0.9]).view(3, 1, 1, 1)
    assert not judge.reject(photos).any()
    assert judge.reject(blank).all()
    labels = judge.labels(torch.cat([photos, blank]))
    assert labels[SCENE_HEAD] == ["valid", "valid"] + [REJECT_LABEL] * 3
    assert labels["imagenet"] == ["285", "967"] + [REJECT_LABEL] * 3
    assert labels["object"][:2] == ["other", "other"]  # no concept set given: every class is "other"


def test_judges_are_found_through_a_registry():
    """Names resolve through one registry (no if/elif); anything else is a ConceptWorld judge folder."""
    from bench.api.judge import build_judge, judge_registry
    from bench.core.concepts import load_concept_set
    from bench.core.errors import ConfigError
    from bench.judges.imagenet import ImageNetJudge
    from bench.run.plan import Track

    assert {"imagenet", "imagenet-restricted", "resnet50", "resnet50-restricted", "clip"} <= set(judge_registry())
    track = Track()
    cs = load_concept_set(Path(__file__).resolve().parents[1] / "datasets" / "sd" / "imagenette.yaml")
    judge = build_judge("imagenet-restricted", track, cs)
    assert isinstance(judge, ImageNetJudge) and judge.restricted and judge.backbone == "efficientnet-lite0"
    with pytest.raises(ConfigError, match="did you mean 'imagenet'"):
        build_judge("imagnet", track, cs)
    with pytest.raises(Exception, match="expected judge_config.json"):
        build_judge("/no/such/judge", track, cs)


@needs_world
def test_clip_score_is_part_of_the_interface():
    """A judge without a text encoder answers None: the cell then records no CLIP score."""
    from bench.judges.world import WorldConceptJudge

    judge = WorldConceptJudge(WORLD / "judge")
    assert judge.clip_score(torch.zeros(2, 3, 32, 32), ["a star", "a moon"]) is None


@needs_world
def test_collapse_on_rendered_scenes_with_the_world_judge():
    """Eight different renders of 'a star' against eight copies of one: the copies score 0 diversity."""
    from bench.judges.world import WorldConceptJudge
    from bench.metrics.formulas import collapse_ratio

    judge = WorldConceptJudge(WORLD / "judge")
    arr, _ = render_batch(7, 8, shape="star")
    varied = to_tensor(arr)
    copies = varied[:1].repeat(8, 1, 1, 1)
    prompts = ["a picture of a star"] * 8
    assert collapse_ratio(judge.features(copies), judge.features(varied), prompts) < 1e-6
    assert collapse_ratio(judge.features(varied), judge.features(varied), prompts) == 1.0


@needs_world
def test_selective_alignment_on_rendered_composed_scenes(world_judges):
    """Renders of each composed prompt of the concept set (the scene the prompt names): the world judge
    sees the other named attributes on nearly all; named wrongly, it sees them on almost none."""
    from bench.core.concepts import load_concept_set
    from bench.core.plan import COMPOSED, ImageRow
    from bench.metrics.cell import selective_alignment

    cs = load_concept_set(WORLD / "concepts.yaml")
    render_key = {"object": "shape", "colour": "colour", "style": "style"}
    images, attrs, wrong = [], [], []
    composed = [(c, comp) for c in cs.concepts for comp in c.composed]
    for seed, (c, comp) in enumerate(composed):
        scene = {render_key[k]: v for k, v in comp.attributes.items()}
        scene[render_key[c.extra["head"]]] = c.extra["label"]
        arr, _ = render_batch(500 + seed, 4, character_prob=0.0, **scene)
        images.append(to_tensor(arr))
        attrs += [dict(comp.attributes)] * 4
        # the same scenes asked about a colour (or shape) they do not show
        bad = dict(comp.attributes)
        key = "colour" if "colour" in bad else "object"
        bad[key] = next(v for v in HEADS[key] if v not in (bad[key], "none"))
        wrong += [bad] * 4
    x = torch.cat(images)
    assert len(cs.names()) > len({c.name for c in cs.concepts if c.composed}) > 0  # characters have none
    for judge in world_judges:
        seen = judge.sees(x, attrs)
        assert seen.float().mean() >= 0.9, (judge.id, seen.float().mean())
        assert judge.sees(x, wrong).float().mean() <= 0.05
    # as the cell records it: a share with a seed interval, edited and original; none -> empty, not 0
    rows = [ImageRow(COMPOSED, None, "p", s % 4, a) for s, a in enumerate(attrs)]
    seen = world_judges[0].sees(x, attrs)
    m = selective_alignment(rows, {"edited": seen, "original": seen})
    assert m["selective_alignment"]["value"] == float(seen.float().mean()) and m["selective_alignment"]["n"] == len(x)
    assert selective_alignment(rows, None)["selective_alignment"] is None


def test_a_judge_that_cannot_check_attributes_answers_none():
    from bench.api.judge import Judge

    class Blind(Judge):
        id, version = "blind", "1"

        def detect(self, images, concept):
            return torch.zeros(len(images), dtype=torch.bool)

        reject = detect

        def labels(self, images):
            return {}

        def features(self, images):
            return torch.zeros(len(images), 1)

    assert Blind().sees(torch.zeros(2, 3, 8, 8), [{"colour": "red"}] * 2) is None


def test_unclear_scenes_label_the_style_none_and_are_deterministic():
    """Every unclear scene's style label is one past the style list (``none``); every other head
    keeps the scene's true label; same seed, same images; a faint texture is fainter than a clear one."""
    from bench.world.judge import judge_heads
    from bench.world.render import WORLD3
    from bench.world.unclear import FAINT_SHADE, KINDS, render_unclear

    images, labels, kinds = render_unclear(11, 8 * len(KINDS), WORLD3)
    again, _, _ = render_unclear(11, 8 * len(KINDS), WORLD3)
    assert images.shape == (8 * len(KINDS), 32, 32, 3) and np.array_equal(images, again)
    assert sorted(set(kinds)) == sorted(KINDS)
    heads = judge_heads(WORLD3)
    for row, kind in zip(labels, kinds, strict=True):
        assert heads[KINDS[kind]][row[KINDS[kind]]] == REJECT_LABEL
        for head in ("object", "colour"):
            assert row[head] < len(WORLD3.heads[head])
        assert row["character"] == 0  # no character is drawn unclearly: its own "none" means no character
    # the same striped square: clear (the world's dark shade, 0.5) against faint (the faint range's middle)
    clear = Scene("square", "yellow", "striped", scale=0.45)
    faint = jitter_texture(clear, np.random.default_rng(0))
    faint = Scene(**{**faint.to_dict(), "dark_shade": sum(FAINT_SHADE) / 2, "stripe_period": 10.0})
    spread = [render_scene(s)[8:24, 8:24, 0].astype(float).std() for s in (clear, faint)]  # red channel
    assert spread[1] < 0.5 * spread[0]


def test_judge_heads_add_none_to_the_open_heads_only():
    from bench.world.judge import judge_heads
    from bench.world.render import WORLD2, WORLD3
    from bench.worldgen.quality import vocabulary_of

    heads = judge_heads(WORLD3)
    assert heads["style"] == (*WORLD3.heads["style"], REJECT_LABEL)
    assert heads["object"] == WORLD3.heads["object"] and heads["colour"] == WORLD3.heads["colour"]
    assert judge_heads(WORLD3, unclear=False)["style"] == WORLD3.heads["style"]  # judge_unclear=0
    assert heads["character"] == WORLD3.heads["character"] and heads["character"][0] == "none"

    class Stub:
        id = "stub"

    for vocab in (WORLD2, WORLD3):  # judges 2.3 (open heads end in none) and older ones are both placed
        for classes in (judge_heads(vocab), vocab.heads):
            Stub.classes = {h: list(v) for h, v in classes.items()}
            assert vocabulary_of(Stub()) == vocab


@needs_world
@pytest.mark.parametrize("which", [0, 1], ids=["cnn", "vit"])
def test_open_heads_answer_none_on_unclear_scenes_and_name_fresh_renders(world_judges, which):
    """Seeds no judge trained on: the style head answers none on >= 90 % of faint textures and on
    >= 30 % of blends (world 2.1's judges retrained with judge_unclear=9000: 92 % and 34 % for the CNN,
    94 % and 44 % for the ViT; many blends read as one of their styles), and on <= 1 % of fresh renders."""
    from bench.world.unclear import KINDS, UNCLEAR_HEADS, render_unclear

    judge = world_judges[which]
    if not judge.judge.unclear:
        pytest.skip(f"the committed {judge.ref} has no style none class (python -m bench.world judge "
                    "--set judge_unclear=9000 trains one)")
    images, _, kinds = render_unclear(8_675_309, 50 * len(KINDS), jitter=0.0)
    got = judge.labels(to_tensor(images))
    for kind, head in KINDS.items():
        pick = [i for i, k in enumerate(kinds) if k == kind]
        share = np.mean([got[head][i] == REJECT_LABEL for i in pick])
        assert share >= {"faint": 0.90, "blend": 0.30}[kind], (kind, share)
    renders, _ = render_batch(161_803, 400, character_prob=0.3)
    got = judge.labels(to_tensor(renders))
    for head in UNCLEAR_HEADS:
        assert np.mean([v == REJECT_LABEL for v in got[head]]) <= 0.01, head


def test_report_shows_each_judges_ua_and_retain():
    from bench.report.pooling import judges_table

    def cell(label, concept, ua_hits, second_hits):
        rows = []
        for model in ("original", "edited"):
            for seed in range(4):
                first = model == "original" or seed >= ua_hits  # judge 1 sees the target on the original
                second = model == "original" or seed >= second_hits
                rows.append({"model": model, "group": "target", "seed": seed, "detected": first, "second_detected": second})
                rows.append({"model": model, "group": "in_domain", "seed": seed, "detected": True,
                             "second_detected": seed != 0})
        agree = {"heads": {"object": 0.75}, "images": {"object": 8}, "n": 8, "min": 0.75}
        return {"label": label, "spec": {"concept": concept}, "per_image": rows,
                "metrics": {"judge_agreement": agree, "judge_agreement_original": agree}}

    cells = [cell("a", "circle", 4, 2), cell("a", "star", 2, 2), cell("b", "circle", 0, 1), cell("b", "star", 0, 1)]
    table = judges_table(cells).set_index("images")
    assert list(table.index) == ["original model", "a (edited)", "b (edited)"]
    assert table.loc["a (edited)", "UA judge 1"] == pytest.approx(6 / 8)
    assert table.loc["a (edited)", "UA judge 2"] == pytest.approx(4 / 8)
    assert table.loc["b (edited)", "UA judge 2"] == pytest.approx(2 / 8)
    assert table.loc["b (edited)", "RA judge 1"] == 1.0 and table.loc["b (edited)", "RA judge 2"] == 0.75
    # the original model's images are counted once per concept, not once per method
    assert table.loc["original model", "UA judge 2"] == 0.0 and table.loc["original model", "agree"] == 0.75
    assert table.loc["a (edited)", "UA judge 2 CI"].startswith("[")
    for c in cells:  # cells written before the second judge's detections were recorded: no table
        for r in c["per_image"]:
            del r["second_detected"]
    assert judges_table(cells).empty


def test_report_pools_agreement_over_the_images_each_head_is_scored_on():
    from bench.report.pooling import agreement_table, pooled_agreement

    a = {SCENE_HEAD: ["valid"] * 4, "style": ["dotted"] * 4}
    b1 = {SCENE_HEAD: ["valid"] * 4, "style": ["solid", "dotted", "dotted", "dotted"]}
    b2 = {SCENE_HEAD: ["valid"] * 4, "style": ["dotted", "dotted", "solid", "solid"]}
    one = agreement(a, b1, scored={"style": [True, True, False, False]})  # style 1/2 over 2 images
    two = agreement(a, b2, scored={"style": [True, True, True, True]})  # style 2/4 over 4 images
    cells = [{"label": "m", "metrics": {"judge_agreement": one, "judges_disagree": True}},
             {"label": "m", "metrics": {"judge_agreement": two, "judges_disagree": True}}]
    assert pooled_agreement(cells, "judge_agreement") == {SCENE_HEAD: 1.0, "style": pytest.approx(3 / 6)}
    every = pooled_agreement(cells, "judge_agreement", every_image=True)
    assert every["style"] == pytest.approx((3 + 2) / 8)
    table = agreement_table(cells)
    assert table.loc[0, "flagged cells"] == "2/2" and table.loc[0, "style"] == pytest.approx(0.5)
    assert "flagged cells" not in agreement_table(cells, every_image=True).columns
    # both_accept: the attribute heads over the scored images neither judge rejects
    b3 = {SCENE_HEAD: ["none", "valid", "valid", "none"], "style": ["none", "solid", "dotted", "none"]}
    three = agreement(a, b3, scored={"style": [True] * 4})
    assert three["heads"]["style"] == 0.25
    assert three["both_accept"] == {"heads": {"style": 0.5}, "images": {"style": 2}, "n": 2}
    cells.append({"label": "m", "metrics": {"judge_agreement": three}})
    assert pooled_agreement(cells, "judge_agreement", view="both_accept") == {"style": pytest.approx((1 + 2 + 1) / 8)}
    assert list(agreement_table(cells, view="both_accept").columns) == ["images", "style"]
    with pytest.raises(ValueError, match="view"):
        pooled_agreement(cells, "judge_agreement", view="accepted")
