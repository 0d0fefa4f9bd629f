"""Running the benchmark on another built world (--world) and comparing two worlds (bench.worldgen.compare)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.core.errors import ConfigError, InputError

WORLD = Path(__file__).resolve().parents[1] / "datasets" / "conceptworld"


def test_world_track_reads_a_built_world_and_refuses_anything_else(tmp_path):
    from bench.run.plan import Track, world_track

    track = world_track(WORLD.parent / "conceptworld3")  # the default track is world 3's
    default = Track()
    assert (Path(track.model), Path(track.concept_set), Path(track.judge), Path(track.second_judge)) == (
        Path(default.model), Path(default.concept_set), Path(default.judge), Path(default.second_judge))
    (tmp_path / "model").mkdir()
    with pytest.raises(InputError, match="missing concepts.yaml, judge"):
        world_track(tmp_path)
    # a world 3 built without a ViT judge (second_judge=clip) is judged a second time by its world CLIP
    (tmp_path / "judge").mkdir()
    (tmp_path / "concepts.yaml").write_text("")
    assert world_track(tmp_path).second_judge is None
    (tmp_path / "clip").mkdir()
    assert Path(world_track(tmp_path).second_judge) == tmp_path / "clip"
    (tmp_path / "judge_vit").mkdir()
    assert Path(world_track(tmp_path).second_judge) == tmp_path / "judge_vit"


def test_world_flag_reaches_every_grid_command_and_not_the_sd_track(tmp_path):
    from bench.cli.main import bench_from_args, build_parser

    for cmd in (["run", "--methods", "fuchi"], ["tune", "--method", "fuchi"], ["sweep", "--methods", "fuchi"]):
        args = build_parser().parse_args([*cmd, "--world", str(WORLD)])
        args.methods = getattr(args, "methods", None) or args.method  # as _cmd_tune sets it
        assert Path(bench_from_args(args).track.judge) == WORLD / "judge"
        args.world = str(tmp_path)
        with pytest.raises(InputError, match="is not a built ConceptWorld"):
            bench_from_args(args)
    args = build_parser().parse_args(["run", "--track", "sd", "--model", "m", "--world", str(WORLD)])
    with pytest.raises(ConfigError, match="does not go with --track sd"):
        bench_from_args(args)


def test_world3_concepts_are_illustrated_with_world3_scenes(tmp_path):
    """Few-shot renders of a world-3 concept draw from world 3's vocabulary (its six styles), and the
    world-3 concept set has its own name, so its tuned configs never overwrite world 2.1's."""
    from bench.core.concepts import load_concept_set
    from bench.core.protocol import EvalProtocol
    from bench.run.plan import Track, few_shot_images
    from bench.world.captions import concept_set_dict
    from bench.world.render import WORLD2, WORLD3
    from bench.world.sources import world_vocabulary

    path = tmp_path / "concepts.yaml"
    path.write_text(yaml.safe_dump(concept_set_dict(WORLD3), sort_keys=False))
    assert load_concept_set(path).name == "conceptworld3"
    assert load_concept_set(WORLD / "concepts.yaml").name == "conceptworld"
    assert world_vocabulary(str(path)) is WORLD3 and world_vocabulary(str(WORLD / "concepts.yaml")) is WORLD2
    track = Track(concept_set=str(path))
    heart = load_concept_set(path).get("heart")
    images, record = few_shot_images(track, heart, EvalProtocol(few_shot_images=2))
    assert len(images) == 2 and record["source"] == "rendered"
    from bench.world.render import render_batch

    drawn = np.stack([np.asarray(im) for im in images])
    assert np.array_equal(drawn, render_batch(record["seed"], 2, vocab=WORLD3, shape="heart")[0])
    assert not np.array_equal(drawn, render_batch(record["seed"], 2, vocab=WORLD2, shape="heart")[0])


class _Pipe:
    def __init__(self):
        torch.manual_seed(0)
        self.text_encoder = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        self.unet = torch.nn.Linear(4, 4)


def test_relative_change_measures_only_the_text_encoders_matrices():
    from bench.api.edit import Edit

    pipe = _Pipe()
    w0, w1 = pipe.text_encoder[0].weight.detach().clone(), pipe.text_encoder[1].weight.detach().clone()
    tensors = {"text_encoder.0.weight": 2 * w0,  # moved by 100 %
               "text_encoder.0.bias": torch.zeros(4),  # a bias: not a matrix
               "unet.weight": torch.zeros(4, 4)}  # another component
    edit = Edit(method="m", config={}, format="dense", tensors=tensors, trainable_params=0, seconds=0.0).apply(pipe)
    change = edit.relative_change("text_encoder")
    assert change["matrices"] == 1 and change["pooled"] == pytest.approx(1.0) and change["max"] == pytest.approx(1.0)
    assert edit.relative_change("unet")["pooled"] == pytest.approx(1.0)  # zeroed: ||0 - W|| / ||W||
    edit.restore()
    both = {"text_encoder.0.weight": 2 * w0, "text_encoder.1.weight": w1}  # the second one unchanged
    change = Edit(method="m", config={}, format="dense", tensors=both, trainable_params=0,
                  seconds=0.0).apply(pipe).relative_change()
    expected = float(w0.norm() / torch.sqrt(w0.norm() ** 2 + w1.norm() ** 2))
    assert change["matrices"] == 2 and change["pooled"] == pytest.approx(expected) and change["max"] == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="applied"):
        Edit(method="m", config={}, format="dense", tensors=both, trainable_params=0, seconds=0.0).relative_change()


def test_compare_sides_parse_and_bad_ones_are_one_line_errors():
    from bench.cli.world import main
    from bench.worldgen.compare import Side

    side = Side.parse("3=datasets/conceptworld3@runs/w3")
    assert (side.label, side.world, side.runs) == ("3", Path("datasets/conceptworld3"), Path("runs/w3"))
    with pytest.raises(InputError, match="LABEL=WORLD_DIR@RUNS_ROOT"):
        Side.parse("datasets/conceptworld3")
    assert main(["compare", "--side", "x=nowhere@runs"]) == 2


def test_a_comparison_is_measured_in_parts_and_merged(tmp_path):
    """``compare --merge`` keeps the entries an earlier run wrote (other methods or sides), replaces an
    entry measured again, orders the founding methods first, and refuses one side label on two models."""
    import json

    from bench.cli.world import main
    from bench.worldgen.compare import kept_results, merge_results

    def entry(method, side, model="m3", ua=0.5):
        return {"method": method, "side": side, "model": model, "ua": ua}

    kept = [entry("lora_eraser", "3"), entry("fuchi", "3", ua=0.1)]
    merged = merge_results(kept, [entry("fuchi", "2.1", model="m2"), entry("fuchi", "3", ua=0.9)])
    assert [(r["method"], r["side"], r["ua"]) for r in merged] == [
        ("fuchi", "2.1", 0.5), ("fuchi", "3", 0.9), ("lora_eraser", "3", 0.5)]
    with pytest.raises(InputError, match="side '3' was measured on more than one model"):
        merge_results(kept, [entry("full_finetune", "3", model="another build")])
    out = tmp_path / "comparison.json"
    assert kept_results(out) == []
    out.write_text(json.dumps(kept))
    assert kept_results(out) == kept
    out.write_text("{not json")
    with pytest.raises(InputError, match="not a comparison's JSON"):
        kept_results(out)
    assert main(["compare", "--side", f"3={WORLD}@{tmp_path}", "--merge"]) == 2  # --merge needs --out
