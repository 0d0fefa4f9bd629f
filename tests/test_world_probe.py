"""The robustness diagnosis's probes (bench/worldgen/probe.py) measure what their docstring says."""

from __future__ import annotations

import math

import torch

from bench.core.concepts import Concept, ConceptSet
from bench.model.crossattn import kv_matrix
from bench.worldgen.probe import (
    ProbeConfig,
    detour,
    footprint,
    probe_concept,
    relative_change,
    restored,
    summarise,
    summary_table,
)


def _random(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_one_map_for_every_layer_leaves_an_exact_detour():
    # UCE's closed form is K1 = K0 M (one M for every layer): text states M^-1 h undo it exactly
    k0, m, h = _random(0, 96, 16), torch.eye(16) + 0.3 * _random(1, 16, 16), _random(2, 3, 77, 16)
    k1 = k0 @ m
    out = detour(k0, k1, h)
    assert out["residual"] < 1e-6
    assert out["distance"] > 0.05
    x = h @ torch.linalg.inv(m).T
    assert abs(restored(k0, k1, h, x) - 1.0) < 1e-4
    assert restored(k0, k1, h, h) == 0.0


def test_layers_edited_apart_leave_a_residual():
    # a different change per layer (as a trained edit): no single text state restores every layer
    k0 = _random(0, 96, 16)
    k1 = k0 + 0.5 * _random(3, 96, 16)
    out = detour(k0, k1, _random(2, 3, 77, 16))
    assert 0.1 < out["residual"] < 1.0


def test_footprint_counts_the_prompts_an_edit_moves():
    k0 = _random(0, 64, 8)
    u = torch.zeros(8)
    u[0] = 1.0
    k1 = k0 + k0 @ torch.outer(u, u)  # changes what the first text direction carries, nothing else
    target = torch.zeros(4, 8)
    target[:, 0] = 1.0
    others = torch.cat([_random(5, 6, 8) * torch.tensor([0.0] + [1.0] * 7), target[:2]])  # 6 off it, 2 on it
    out = footprint(k0, k1, target, others, moved=0.5)
    assert abs(out["target"] - 1.0) < 1e-5
    assert out["others_moved"] == 2 / 8
    assert out["others"] == 8
    assert torch.allclose(relative_change(k0, k1, others[:6, None]), torch.zeros(6), atol=1e-6)


def test_probe_reads_an_edit_and_puts_the_weights_back(tiny_pipe):
    import numpy as np
    from PIL import Image

    from bench.api.method import build_method

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    cat = Concept(name="cat")
    cs = ConceptSet(name="probe-test", version="1", concepts=(cat, Concept(name="dog"), Concept(name="car")))
    before = kv_matrix(tiny_pipe)
    cfg = ProbeConfig(reach_steps=3, random_prefixes=4, prefix_len=2, attack_iterations=2)
    row = probe_concept(tiny_pipe, build_method("uce"), cat, cs, images, images, cfg)
    assert torch.equal(kv_matrix(tiny_pipe), before)
    assert row["detour"]["residual"] < 1e-3  # UCE: one map for every layer
    assert row["footprint"]["target"] > 0
    assert row["footprint"]["others"] == len({t.format(w) for w in ("dog", "car") for t in cat.templates})
    for key in ("restored", "random_best", "random_median"):
        assert math.isfinite(row["reach"][key])
    assert set(row["attack"]) == {"restored", "change", "seconds"}
    table = summary_table({"summary": summarise([{"method": "uce", "concept": "cat", **row}])})
    assert table.splitlines()[0] == "| probe | uce |"
    assert "detour.residual" in table


def test_crowding_split_reads_a_leaderboard(tmp_path):
    import pandas as pd
    import pytest

    from bench.core.errors import InputError
    from bench.worldgen.probe import crowding_split, split_table

    concepts = ["a", "b", "c", "d"]
    crowd = dict(zip(concepts, [0.1, 0.2, 0.3, 0.4], strict=True))
    asr = {"uce": [0.0, 0.0, 0.5, 1.0], "esd@x": [0.5, 0.5, 0.5, 0.5]}  # uce breaks where it is crowded
    rows = [{"method": m.split("@")[0], "variant": m.partition("@")[2], "concept": c, "metric": metric,
             "value": v if metric == "asr_ringabell@world" else 0.25}
            for m, vals in asr.items() for c, v in zip(concepts, vals, strict=True)
            for metric in ("asr_ringabell@world", "pre_asr")]
    csv = tmp_path / "leaderboard.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    result = {"summary": {"esd@x": {}, "uce": {}},
              "rows": [{"method": m, "concept": c, "footprint": {"cosine_others": crowd[c]}}
                       for m in ("esd@x", "uce") for c in concepts]}
    split = crowding_split(result, csv, ("asr_ringabell@world", "asr_ringabell@world - pre_asr"))
    assert split["concepts"] == {"sparse": ["a", "b"], "crowded": ["c", "d"]}
    plain = split["metrics"]["asr_ringabell@world"]
    assert plain["halves"]["sparse"] == {"esd@x": 0.5, "uce": 0.0, "difference": pytest.approx(
        {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5})}
    assert plain["halves"]["crowded"]["difference"]["mean"] == -0.25
    assert plain["halves"]["all"]["uce"] == 0.375
    assert plain["rho"]["uce"]["rho"] > 0.9
    assert plain["rho"]["esd@x"]["rho"] != plain["rho"]["esd@x"]["rho"]  # constant: no correlation (nan)
    assert split["metrics"]["asr_ringabell@world - pre_asr"]["halves"]["crowded"]["uce"] == 0.5
    assert "| asr_ringabell@world | crowded | 0.500 | 0.750 | -0.250" in split_table(split, ["esd@x", "uce"])
    with pytest.raises(InputError, match="no ua for esd@x"):
        crowding_split(result, csv, ("ua",))


def test_probe_command_refuses_bad_inputs_in_one_line(tmp_path, capsys):
    from bench.cli.world import main

    assert main(["probe", "--from", str(tmp_path / "missing.json")]) == 2
    assert "cannot read a probe result" in capsys.readouterr().err
    saved = tmp_path / "result.json"
    saved.write_text('{"summary": {"uce": {}}, "rows": [{"method": "uce", "concept": "a", '
                     '"footprint": {"cosine_others": 0.1}}]}')
    assert main(["probe", "--from", str(saved), "--leaderboard", str(tmp_path / "none.csv")]) == 2
    assert "no leaderboard at" in capsys.readouterr().err


def test_world_size_candidates_parse_and_measure(tiny_pipe):
    import pytest

    from bench.core.errors import InputError
    from bench.devtools.worldsize import Candidate, build, measure, table

    cand = Candidate.parse("text_hidden=64,text_layers=1,channels=32/32,max_length=16,vocab=1000")
    assert (cand.text_hidden, cand.channels, cand.heads, cand.max_length) == (64, (32, 32), 2, 16)
    for bad, why in (("text_width=64", "KEY=VALUE"), ("channels=32/x", "integers"), ("text_hidden=99", "divide")):
        with pytest.raises(InputError, match=why):
            Candidate.parse(bad)
    pipe = build(tiny_pipe, cand)
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim == 64
    assert pipe.tokenizer.model_max_length == 16 and tiny_pipe.tokenizer.model_max_length == 77
    from bench.core.protocol import SamplerSpec

    m = measure(pipe, cand.vocab, batch=2, sampler=SamplerSpec(steps=2, guidance=5.0), repeats=2)
    assert m["table_params"] == 1000 * 64 and m["fp16_mb"] * 2 == pytest.approx(m["fp32_mb"])
    assert 0 < m["images_per_s_range"][0] <= m["images_per_s"] <= m["images_per_s_range"][1]
    assert table([("tiny", m)], 2).count("\n") == 2
