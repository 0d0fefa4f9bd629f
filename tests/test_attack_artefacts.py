"""The attacks' artefacts: each cell keeps what its attacks found; an export replays on another model;
the faithful attacks' pieces (fixed timesteps, simplex projection, the genetic search) behave as their
authors' code does; the ranking composite lets no weak axis hide."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.protocol import EvalProtocol
from bench.model.tiny import build_tiny_pipeline
from bench.run.plan import Bench, Track

FAST = {"unlearndiffatk": {"iterations": 2, "timesteps": 2, "prompts": 1},
        "ringabell": {"population": 8, "generations": 3, "prompts": 1},
        "p4d": {"iterations": 4, "eval_every": 2, "prompts": 1},
        "soft_prefix": {"iterations": 2, "prompts": 1}, "noised_start": {"images": 1}}


def _bench(model: Path, attacks: tuple[str, ...], overrides: dict) -> Bench:
    track = replace(Track(model=str(model)), sampler=replace(Track().sampler, steps=3), second_judge=None)
    return Bench(track=track, methods=["uce"], concepts=["circle"], protocol=EvalProtocol(seeds=(0, 1), attack_seeds=2),
                 attacks=attacks, attack_overrides=overrides)


@pytest.fixture(scope="module")
def attacked_grid(tiny_model_dir, tmp_path_factory):
    from bench.run.grid import run_bench

    out = tmp_path_factory.mktemp("attacked")
    attacks = ("paraphrase", "unlearndiffatk", "ringabell", "p4d", "soft_prefix", "noised_start")
    run_bench(_bench(tiny_model_dir, attacks, FAST), out, progress=False)
    return out


def test_cells_keep_every_attacks_artefacts(attacked_grid):
    from safetensors.torch import load_file

    from bench.report.cells import load_cells

    (cell,) = load_cells(attacked_grid)
    folder = Path(cell["folder"])
    found = json.loads((folder / "attacks.json").read_text())
    assert set(found) == {"paraphrase", "unlearndiffatk", "ringabell", "p4d", "soft_prefix", "noised_start"}
    for name in ("unlearndiffatk", "ringabell", "p4d"):  # discrete: text with the token ids behind it
        (p,) = found[name]["prompts"]
        assert isinstance(p["token_ids"], list) and p["text"]
    embeds = load_file(str(folder / "attack_embeds.safetensors"))
    assert set(embeds) == {"soft_prefix"} and embeds["soft_prefix"].shape[1:] == (77, 32)
    assert found["noised_start"]["info"]["strength"] == 0.5 and found["noised_start"]["info"]["start_timestep"] > 0
    m = cell["metrics"]
    assert m["pre_asr"]["value"] == pytest.approx(1 - m["ua"]["value"])
    rows = [r for r in cell["per_image"] if r["group"] == "attack:noised_start"]
    assert len(rows) == 2 and m["asr_noised_start"]["n"] == 2  # 1 held-out image x 2 attack seeds


def test_export_then_replay_on_another_model(attacked_grid, tmp_path):
    from bench.cli.main import main
    from bench.core.artefacts import read_export
    from bench.report.cells import load_cells
    from bench.run.grid import run_bench

    out = tmp_path / "found.jsonl"
    assert main(["attacks", "export", "--runs", str(attacked_grid), "--out", str(out)]) == 0
    rows = read_export(out)
    replayable = [r for r in rows if r["replayable"]]
    assert {r["attack"] for r in replayable} == {"paraphrase", "unlearndiffatk", "ringabell", "p4d"}
    assert not any(r["replayable"] for r in rows if r["attack"] in ("soft_prefix", "noised_start"))
    assert main(["attacks", "export", "--runs", str(attacked_grid), "--out", str(tmp_path / "found.csv")]) == 0
    assert [r["prompt"] for r in read_export(tmp_path / "found.csv")] == [r["prompt"] for r in rows]

    other = tmp_path / "other-model"
    build_tiny_pipeline(seed=1).save_pretrained(other, safe_serialization=True)
    run_bench(_bench(other, ("replay",), {"replay": {"file": str(out)}}), tmp_path / "replayed", progress=False)
    (cell,) = load_cells(tmp_path / "replayed")
    replayed = [r["prompt"] for r in cell["per_image"] if r["group"] == "attack:replay"]
    assert sorted(set(replayed)) == sorted({r["prompt"] for r in replayable})
    assert cell["metrics"]["asr_replay"]["n"] == len(replayable) * 2


def test_replay_names_a_missing_file_or_concept(tmp_path):
    from bench.api.attack import build_attack
    from bench.core.concepts import Concept
    from bench.core.errors import InputError

    with pytest.raises(InputError, match="not found"):
        build_attack("replay", {"file": str(tmp_path / "none.jsonl")}).text_prompts(Concept("circle"))
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"method": "uce", "concept": "star", "attack": "p4d", "prompt": "a star",
                             "replayable": True}) + "\n")
    with pytest.raises(InputError, match="no replayable prompt for concept 'circle'"):
        build_attack("replay", {"file": str(f)}).text_prompts(Concept("circle"))


def test_unlearndiffatk_timesteps_and_simplex_projection():
    from bench.attacks.unlearndiffatk import fixed_timesteps
    from bench.model.discrete import project_simplex

    assert fixed_timesteps(50, 1000) == list(range(10, 1000, 20))
    a = torch.randn(3, 500)
    p = project_simplex(a)
    assert torch.all(p >= 0) and torch.allclose(p.sum(1), torch.ones(3), atol=1e-4)
    # the exact Euclidean projection (sorting), which the bisection approximates to its tolerance
    u, _ = torch.sort(a, dim=1, descending=True)
    css = u.cumsum(1) - 1
    k = torch.arange(1, a.shape[1] + 1)
    rho = (u - css / k > 0).float().cumsum(1).argmax(1)
    theta = css[torch.arange(3), rho] / (rho + 1)
    assert torch.allclose(p, (a - theta[:, None]).clamp(min=0), atol=1e-4)
    uniform = torch.full((2, 10), 0.1)
    assert torch.equal(project_simplex(uniform), uniform)


def test_ringabell_never_reads_the_attacked_model(concept_images):
    """Its prompts come from the original model alone: the same for any attacked model."""
    from bench.api.attack import build_attack
    from bench.core.images import load_images
    from tests.test_attacks import CONCEPT, context_for

    images = load_images(concept_images)
    attack = build_attack("ringabell", {"population": 8, "generations": 4})
    original = build_tiny_pipeline(seed=0)
    ctx = context_for(attack, original, images, 0)
    a = attack.attack(original, CONCEPT, images, 0, ctx)
    b = attack.attack(build_tiny_pipeline(seed=5), CONCEPT, images, 0, ctx)
    assert a.prompts == b.prompts and a.token_ids == b.token_ids and len(a.token_ids[0]) == 16


def test_ringabell_search_improves_on_its_random_start(concept_images):
    from bench.api.attack import build_attack
    from bench.model.training import encode_prompts

    pipe = build_tiny_pipeline(seed=0)
    attack = build_attack("ringabell", {"population": 16, "generations": 30, "length": 4})
    with torch.no_grad():
        goal = encode_prompts(pipe, ["a photo of a cat"])[0].float()
    best = attack._search(pipe, goal, np.random.default_rng(0))
    start, end = pipe.tokenizer.bos_token_id, pipe.tokenizer.eos_token_id
    rng = np.random.default_rng(0)
    first = np.full((16, 77), end)
    first[:, 0] = start
    top = pipe.text_encoder.get_input_embeddings().weight.shape[0] - 3
    first[:, 1:5] = rng.integers(1, top + 1, size=(16, 4))
    found = np.full((1, 77), end)
    found[0, 0], found[0, 1:5] = start, best
    assert attack._fitness(pipe, found, goal)[0] < attack._fitness(pipe, first, goal).min()


def test_robust_composite_lets_no_axis_hide():
    from bench.metrics.formulas import linear_robust_composite, pre_attack_asr, robust_composite

    assert robust_composite(1.0, 1.0, 0.0) == pytest.approx(1.0)
    # a method whose concept comes back in 90 % of attacked images: the linear composite still gives
    # 0.9 * 0.75 + 0.1 * 0.25 = 0.7; the harmonic mean gives about a quarter
    assert linear_robust_composite(0.9, 0.9) == pytest.approx(0.7)
    assert robust_composite(0.9, 0.9, 0.9) == pytest.approx(3 / (1 / 0.9 + 1 / 0.9 + 1 / 0.1))
    assert robust_composite(0.9, 0.9, 1.0) == 0.0
    assert robust_composite(float("nan"), 0.9, 0.1) != robust_composite(float("nan"), 0.9, 0.1)
    assert pre_attack_asr({"value": 0.8, "ci_low": 0.7, "ci_high": 0.9, "n": 10}) == pytest.approx(
        {"value": 0.2, "ci_low": 0.1, "ci_high": 0.3, "n": 10})


def test_csv_export_is_spreadsheet_safe_and_round_trips(tmp_path):
    from bench.core.artefacts import read_export
    from bench.report.artefacts import write_export

    rows = [{"method": "uce", "concept": "circle", "attack": "ringabell@world", "prompt": p, "token_ids": [1, 2],
             "replayable": True, "hits": 1, "images": 4, "embeds_file": "", "cell": "abc"}
            for p in ("=HYPERLINK(1)", "-a circle", "a circle, \"quoted\"\nnewline")]
    out = write_export(rows, tmp_path / "x.csv")
    assert "\n=HYPERLINK" not in out.read_text() and ",=HYPERLINK" not in out.read_text()
    assert [r["prompt"] for r in read_export(out)] == [r["prompt"] for r in rows]
