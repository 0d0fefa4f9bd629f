"""Strength knobs, tuning ladders, trade-off curves and the Pareto frontier area."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from bench.api.method import Knob, build_method, get_method, method_registry
from bench.core.concepts import parse_concept_set
from bench.core.errors import ConfigError
from bench.core.protocol import EvalProtocol
from bench.metrics.formulas import ClusterTable, frontier_area, hierarchical_draws, pareto_front
from bench.run.plan import Bench, Track


def test_every_method_declares_a_strength_knob_with_a_valid_default_sweep():
    for name in method_registry().names():
        cls = get_method(name)
        assert cls.strength or cls.no_strength_knob, f"{name} declares no strength knob, nor why it has none"
        assert not (cls.strength and cls.no_strength_knob), f"{name} declares a knob and a reason to have none"
        for knob in cls.strength:
            assert knob.field in cls.Config.__dataclass_fields__, (name, knob.field)
            for concept_set in (None, *knob.ranges):  # the default range and each world's own
                values = knob.on(concept_set).sweep(5)
                assert len(values) >= 5 and values == sorted(values)
                for v in values:
                    build_method(name, {knob.field: v})  # every point is a valid config


def test_ladders_step_by_at_most_the_ratio_and_cover_the_range():
    k = Knob("lr", 1e-3, 1.6e-2)
    assert k.ladder(2.0) == [0.001, 0.002, 0.004, 0.008, 0.016]
    fine = k.ladder(1.5)
    assert fine[0] == 1e-3 and fine[-1] == 1.6e-2
    assert max(b / a for a, b in zip(fine, fine[1:], strict=False)) <= 1.5 * 1.01  # 3 significant digits
    assert k.step(0.016, 2.0, 1) == 0.032 and k.step(0.001, 2.0, -1) == 0.0005
    assert Knob("epochs", 1, 16, integer=True).ladder(2.0) == [1, 2, 4, 8, 16]
    with pytest.raises(ConfigError):
        Knob("lr", 1e-2, 1e-3)
    with pytest.raises(ConfigError, match="no strength knob"):
        get_method("fuchi").knob("beta1")


def test_tuning_extends_the_ladder_past_an_end_that_holds_the_best():
    """A score that peaks beyond the declared range: the search walks on, recording every rung."""
    from bench.run.tune import TuneSpec, ladder_search

    seen = []

    def score(point):
        seen.append(point["lr"])
        return {"overrides": point, "H": -abs(np.log(point["lr"] / 0.05)), "UA": 0.0, "retain": 0.0}

    scores, how = ladder_search("fuchi", TuneSpec(extend=3), score, lambda s: s["H"])
    assert seen == [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128]  # stops: best (0.064) inside
    assert [s["overrides"]["lr"] for s in scores] == sorted(seen) and "<= 2x" in how
    with pytest.raises(ConfigError, match="finer than decades"):
        TuneSpec(ratio=10)


def test_a_world_declares_its_own_knob_range_and_tuning_and_sweeps_walk_it():
    """World 3's transitions lie lower than world 2.1's: ``Knob.ranges`` gives its concept set its own
    range, which the tuning ladder and the trade-off sweep both walk; other sets keep the default."""
    from pathlib import Path

    from bench.run.plan import world_track
    from bench.run.sweep import sweep_plan
    from bench.run.tune import TuneSpec, ladder_search

    knob = get_method("fuchi").knob()
    assert knob.on("conceptworld3").ladder(2.0) == [0.000125, 0.00025, 0.0005, 0.001, 0.002]
    assert knob.on("conceptworld") is knob and knob.on(None) is knob and knob.on("conceptworld3").ranges == {}
    seen = []

    def score(point):
        seen.append(point["lr"])
        return {"overrides": point, "H": -abs(np.log(point["lr"] / 1e-3)), "UA": 0.0, "retain": 0.0}

    _, how = ladder_search("fuchi", TuneSpec(extend=3), score, lambda s: s["H"], "conceptworld3")
    assert seen == [0.000125, 0.00025, 0.0005, 0.001, 0.002] and "0.000125..0.002" in how  # best inside: no rung more
    world21 = world_track(Path(__file__).resolve().parents[1] / "datasets" / "conceptworld")
    plans = [sweep_plan(Bench(track=t, methods=["fuchi"], concepts=["circle"]), 5)["fuchi"] for t in (Track(), world21)]
    assert plans == [("lr", [0.000125, 0.00025, 0.0005, 0.001, 0.002]), ("lr", [0.001, 0.002, 0.004, 0.008, 0.016])]
    with pytest.raises(ConfigError, match=r"lr \(conceptworld3 range\): need 0 < low < high"):
        Knob("lr", 1e-3, 1e-2, ranges={"conceptworld3": (1e-2, 1e-3)})


def test_tuning_walks_one_ladder_per_declared_choice():
    """UCE declares expand_prompts as a tuning choice: a ladder with it off, then one with it on, every
    point recorded with the choice it was made with; a choice fixed by the caller is not varied."""
    from bench.run.tune import TuneSpec, choice_ladders

    seen = []

    def score(point):
        seen.append(dict(point))
        peak = 0.5 if point.get("expand_prompts", True) else 2.0
        return {"overrides": point, "H": -abs(np.log(point["erase_scale"] / peak)), "UA": 0.0, "retain": 0.0}

    scores, how = choice_ladders("uce", TuneSpec(extend=0), score, lambda s: s["H"])
    assert [p["expand_prompts"] for p in seen] == [False] * 5 + [True] * 5
    assert [p["erase_scale"] for p in seen] == [0.25, 0.5, 1.0, 2.0, 4.0] * 2
    assert [s["overrides"] for s in scores] == seen and "expand_prompts in (false, true)" in how
    seen.clear()
    choice_ladders("uce", TuneSpec(extend=0, fixed={"expand_prompts": True}), score, lambda s: s["H"])
    assert [p for p in seen if "expand_prompts" in p] == [] and len(seen) == 5
    seen.clear()
    choice_ladders("fuchi", TuneSpec(extend=0), score=lambda p: seen.append(p) or {"overrides": p, "H": 0.0},
                    key=lambda s: s["H"])
    assert all(set(p) == {"lr"} for p in seen)  # no declared choices: one ladder, as before


def test_frontier_area_is_the_dominated_region():
    assert frontier_area([1.0], [1.0]) == 1.0
    assert frontier_area([0.5], [0.5]) == 0.25
    assert frontier_area([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)
    # a dominated point adds nothing; order does not matter
    assert frontier_area([0.5, 1.0, 0.4], [1.0, 0.5, 0.4]) == pytest.approx(0.75)
    assert frontier_area([1.0, 0.5], [0.5, 1.0]) == pytest.approx(0.75)
    assert np.isnan(frontier_area([0.5, float("nan")], [0.5, 0.5]))
    assert pareto_front([0.5, 1.0, 0.4], [1.0, 0.5, 0.4]) == [0, 1]


def test_sweep_points_share_bootstrap_draws():
    """Two tables of the same concepts and seeds are resampled identically: a frontier interval is
    the area recomputed on the same draws of every point. Tables of complementary hits show it: on
    the same draws, one's rate is 1 minus the other's, draw by draw."""
    rng = np.random.default_rng(0)
    hits = {(c, s): [bool(x) for x in rng.random(3) < 0.3] for c in ("a", "b", "c") for s in range(4)}

    def table(flip):
        t = ClusterTable()
        for (c, s), hs in hits.items():
            for h in hs:
                t.add("ua", c, s, h != flip)
        return t

    d1 = hierarchical_draws(table(False), {"ua": lambda r: r["ua"]})["ua"]
    d2 = hierarchical_draws(table(True), {"ua": lambda r: r["ua"]})["ua"]
    assert d1.std() > 0 and np.allclose(d1 + d2, 1.0)


def test_composed_prompts_are_validated():
    base = {"name": "s", "version": "1", "concepts": [{"name": "star"}]}
    ok = json.loads(json.dumps(base))
    ok["concepts"][0]["composed"] = [{"prompt": "a red star", "attributes": {"colour": "red"}}]
    (c,) = parse_concept_set(ok).concepts
    assert c.composed[0].prompt == "a red star" and dict(c.composed[0].attributes) == {"colour": "red"}
    for bad in ([{"prompt": "a red star"}], [{"prompt": "", "attributes": {"colour": "red"}}],
                [{"prompt": "a red star", "attributes": {}}], "a red star",
                [{"prompt": "a red star", "attributes": {"colour": 3}}]):
        data = json.loads(json.dumps(base))
        data["concepts"][0]["composed"] = bad
        with pytest.raises(ConfigError, match="composed"):
            parse_concept_set(data)


def test_a_sweep_writes_cells_a_manifest_and_the_report_draws_its_curve(tmp_path):
    from bench.report.build import build_report
    from bench.report.curves import MANIFEST, curve_tables
    from bench.run.sweep import run_sweep

    track = replace(Track(), sampler=replace(Track().sampler, steps=5))
    bench = Bench(track=track, methods=["fuchi"], concepts=["circle"], protocol=EvalProtocol(seeds=(0, 1)),
                  method_overrides={"fuchi": {"epochs": 1}})
    out = tmp_path / "sweep"
    manifest = run_sweep(bench, out, points=2, progress=False)
    entry = manifest["methods"]["fuchi"]
    assert entry["knob"] == "lr" and [p["value"] for p in entry["points"]] == [0.000125, 0.002]  # world 3's range
    assert entry["base"] == {"epochs": 1} and json.loads((out / MANIFEST).read_text()) == manifest
    points, front = curve_tables(out)
    assert list(points["value"]) == [0.000125, 0.002] and len(front) == 1
    assert points[["ua_ci_low", "retain_ci_low"]].notna().all().all()
    assert (points["ua_ci_low"] <= points["ua"]).all() and (points["ua"] <= points["ua_ci_high"]).all()
    assert 0 <= front["frontier_area"].iloc[0] <= 1
    assert front["frontier_area_ci_low"].iloc[0] <= front["frontier_area"].iloc[0] <= front["frontier_area_ci_high"].iloc[0]
    assert "selective_alignment" in points  # composed prompts: the judge sees the other attributes
    paths = build_report(out, tmp_path / "report", sweeps=out)
    page = paths["html"].read_text()
    assert 'src="figures/curves.png"' in page and "frontier area" in page
    assert (tmp_path / "report" / "figures" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "report" / "curves.csv").is_file() and (tmp_path / "report" / "frontier.csv").is_file()
    # a second run reuses every cell
    again = run_sweep(bench, out, points=2, progress=False)
    assert again == manifest


def test_a_sweep_range_replaces_the_declared_one_and_bad_ranges_are_refused():
    """``bench sweep --range METHOD=LOW:HIGH``: another model's transition lies elsewhere."""
    from bench.run.sweep import parse_ranges, sweep_plan

    bench = Bench(track=Track(), methods=["fuchi", "lora_eraser"], concepts=["circle"])
    ranges = parse_ranges(["fuchi=1e-4:1e-2"])
    assert ranges == {"fuchi": (1e-4, 1e-2)}
    plan = sweep_plan(bench, 3, ranges=ranges)
    assert plan["fuchi"] == ("lr", [1e-4, 1e-3, 1e-2])
    assert plan["lora_eraser"] == sweep_plan(bench, 3)["lora_eraser"]  # unnamed methods keep theirs
    for bad in ("fuchi=1e-2", "fuchi:1e-4:1e-2", "=1e-4:1e-2", "fuchi=a:b"):
        with pytest.raises(ConfigError, match="bad --range"):
            parse_ranges([bad])
    with pytest.raises(ConfigError, match="0 < low < high"):
        sweep_plan(bench, 3, ranges={"fuchi": (1e-2, 1e-4)})
    with pytest.raises(ConfigError, match="does not run"):
        sweep_plan(bench, 3, ranges={"esd": (1e-6, 1e-5)})
