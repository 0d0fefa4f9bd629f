"""The harness on the committed ConceptWorld: cells, resume, determinism, report, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from bench.api.judge import REJECT_LABEL
from bench.core.errors import ConfigError, InputError
from bench.core.protocol import EvalProtocol
from bench.core.records import CELL_FILES, is_complete
from bench.report.build import build_report
from bench.run.grid import run_bench
from bench.run.plan import Bench, Track

FAST_TRACK = replace(Track(), sampler=replace(Track().sampler, steps=5))
FAST = EvalProtocol(seeds=(0, 1))
COMPARED = ("ua", "ua_original", "ua_synonyms", "retain_in_domain", "retain_cross_domain", "near_neighbours")


def _bench(**kw) -> Bench:
    args = {"track": FAST_TRACK, "methods": ["fuchi"], "concepts": ["circle"], "protocol": FAST,
            "method_overrides": {"fuchi": {"epochs": 1}}}
    args.update(kw)
    return Bench(**args)


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, run_bench(_bench(), out, progress=False)


def test_cell_folder_describes_itself(one_run):
    out, cells = one_run
    (cell,) = cells
    assert is_complete(cell) and {p.name for p in cell.iterdir()} == set(CELL_FILES)
    spec = json.loads((cell / "run_spec.json").read_text())
    assert spec["method"] == "fuchi" and spec["concept"] == "circle" and spec["eval_seeds"] == [0, 1]
    assert spec["sampler"]["steps"] == 5 and spec["judge"].startswith("conceptworld-judge")
    assert len(spec["model_sha256"]) == 64 and spec["method_config"]["epochs"] == 1
    metrics = json.loads((cell / "metrics.json").read_text())
    for key in COMPARED:
        assert 0.0 <= metrics[key]["value"] <= 1.0 and metrics[key]["ci_low"] <= metrics[key]["ci_high"]
    assert metrics["seconds_per_concept"] > 0 and metrics["trainable_params"] > 0
    assert "method_label" not in metrics  # labels are derived at report time (tests/test_labels.py)
    # every number the cell holds is declared in the metric registry, whose version it records
    from bench.metrics.registry import REGISTRY_VERSION, undeclared

    assert undeclared(list(metrics)) == [] and metrics["metrics_registry"] == REGISTRY_VERSION
    assert "clip_score_retain" not in metrics  # the ConceptWorld judge has no text encoder: no CLIP score
    rows = [json.loads(line) for line in (cell / "per_image.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"original", "edited"}
    assert {r["group"] for r in rows} >= {"target", "in_domain", "cross_domain", "near_neighbour"}
    # the judge's reject verdicts and the second judge's opinion are recorded with every image
    assert spec["second_judge"].startswith("conceptworld-clip@")  # world 3's second judge: its world CLIP
    assert all(isinstance(r["rejected"], bool) and not (r["rejected"] and r["detected"]) for r in rows)
    assert all(set(r["second_judge"]) >= {"scene", "object", "style"} for r in rows)
    assert 0 <= metrics["reject_rate"]["value"] <= 1 and metrics["reject_definition"]
    agree = metrics["judge_agreement_original"]
    assert agree["n"] == len(rows) // 2 and 0 <= agree["min"] <= 1 and agree["worst_head"] in agree["heads"]
    assert metrics["judges_disagree"] == (1 - metrics["judge_agreement"]["min"] > 0.10)
    # the second judge's own UA and RA, read from its detections recorded with every image
    for model, suffix in (("edited", ""), ("original", "_original")):
        mine = [r for r in rows if r["model"] == model]
        assert all(not (r["second_detected"] and r["second_judge"]["scene"] == REJECT_LABEL) for r in mine)
        target = [not r["second_detected"] for r in mine if r["group"] == "target"]
        assert metrics["ua_second" + suffix]["value"] == pytest.approx(np.mean(target))
        retain = [np.mean([r["second_detected"] for r in mine if r["group"] == g])
                  for g in ("in_domain", "cross_domain", "near_neighbour")]
        assert metrics["retain_mean_second" + suffix] == pytest.approx(np.mean(retain))
    env = json.loads((cell / "environment.json").read_text())
    assert env["packages"]["torch"] and "device" in env
    # samples: target, near-neighbour and in-domain retain images of both models, with their plan rows
    from safetensors import safe_open

    with safe_open(str(cell / "samples.safetensors"), "pt") as f:
        shown = json.loads(f.metadata()["rows"])
        keys = set(f.keys())
    assert set(shown) == {"target", "near_neighbour", "in_domain"}
    assert {"edited_near_neighbour", "original_in_domain"} <= keys
    plan = rows[::2]  # per_image: 2i original, 2i+1 edited
    assert {plan[i]["group"] for i in shown["near_neighbour"]} == {"near_neighbour"}
    assert len({plan[i]["judged_concept"] for i in shown["in_domain"]}) == 1


def test_rerun_skips_complete_cells_and_is_deterministic(one_run, tmp_path):
    out, cells = one_run
    before = (cells[0] / "metrics.json").stat().st_mtime_ns
    assert run_bench(_bench(), out, progress=False) == cells
    assert (cells[0] / "metrics.json").stat().st_mtime_ns == before  # skipped, not redone
    again = run_bench(_bench(), tmp_path, progress=False)
    a = json.loads((cells[0] / "metrics.json").read_text())
    b = json.loads((again[0] / "metrics.json").read_text())
    assert again[0].name == cells[0].name
    for key in COMPARED:
        assert a[key] == b[key]
    assert a["kid_retain"] == b["kid_retain"]


def test_report_is_built_from_folders(one_run, tmp_path):
    out, _ = one_run
    paths = build_report(out, tmp_path / "report")
    md = paths["markdown"].read_text()
    # the Markdown summary: the headline sentence and table, the original model as a baseline row
    assert "Best by H" in md and "| rank | method | H ↑ | UA ↑ | RA ↑ |" in md and "fuchi+" in md
    assert "| original model (no erasure) |" in md and "[index.html](index.html)" in md
    # both judges' UA and RA, side by side, in the summary and on the page
    assert "## Both judges" in md and "| images | cells | UA judge 1 | UA judge 1 CI | UA judge 2 |" in md
    assert "(edited) |" in md and "| original model |" in md
    page = paths["html"].read_text()
    assert "UA judge 2" in page and "RA judge 2" in page
    assert "data:image" not in page and 'src="figures/cost.png"' in page  # images are files beside the page
    assert "DDIMScheduler, 5 steps" in page and "H = 2 * UA * RA" in page
    # tidy data: one row per cell and metric, intervals as numbers, tuning state in its own column
    import pandas as pd

    tidy = pd.read_csv(paths["csv"])
    assert {"method", "variant", "tuned", "config_hash", "concept", "metric", "value", "ci_low", "ci_high", "n",
            "judge", "metrics_version", "commit"} <= set(tidy.columns)
    ua = tidy[(tidy["metric"] == "ua") & (tidy["concept"] == "circle")].iloc[0]
    assert ua["method"] == "fuchi" and 0 <= ua["ci_low"] <= ua["value"] <= ua["ci_high"] <= 1
    # overall.csv: exactly the headline's numbers, with concept x seed intervals on H
    overall = pd.read_csv(paths["overall_csv"])
    assert list(overall.columns[:3]) == ["rank", "method", "composite"]
    assert overall["composite_ci_low"].iloc[0] <= overall["composite"].iloc[0] <= overall["composite_ci_high"].iloc[0]
    assert "hierarchical bootstrap 95% over concepts and seeds" in page and "Images behind each pooled number" in page
    # definitions and directions come from the metric registry (tooltips and the protocol section)
    assert "UA: share of target-prompt images in which the judge does not see the concept (higher is better)" in page
    assert "KID: kernel inception distance" in page and "(lower is better)" in page
    assert 'title="share of target-prompt images in which the judge does not see the concept' in page


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"methods": ["fuchy"]}, ConfigError, "did you mean 'fuchi'"),
        ({"concepts": ["circel"]}, InputError, "did you mean 'circle'"),
        ({"method_overrides": {"fuchi": {"lr": -1.0}}}, ConfigError, "lr must be >= 0"),
        ({"track": replace(FAST_TRACK, model="/nonexistent/model")}, InputError, "model folder not found"),
        ({"track": replace(FAST_TRACK, judge="/nonexistent/judge")}, InputError, "no judge"),
    ],
)
def test_bad_input_fails_before_writing(tmp_path, kw, error, match):
    with pytest.raises(error, match=match):
        run_bench(_bench(**kw), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unwritable_output(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot be written"):
        run_bench(_bench(), tmp_path / "file" / "out", progress=False)


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_same_numbers(tmp_path):
    """A run killed with SIGKILL mid-way, then rerun, equals an uninterrupted run."""
    args = [sys.executable, "-m", "bench", "run", "--methods", "fuchi,lora_eraser", "--concepts", "circle,zorbo",
            "--seeds", "0-1", "--steps", "5", "--set", "lora_eraser.ti_steps=10", "--set", "lora_eraser.steps=5"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([*args, "--out", str(killed), "--report", str(tmp_path / "r1")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any(is_complete(p) for p in (killed / "cells").glob("*")):
        time.sleep(0.2)
    time.sleep(1.5)  # now inside the next cell
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for out, report in ((killed, "r1"), (clean, "r2")):
        res = subprocess.run([*args, "--out", str(out), "--report", str(tmp_path / report)], capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr
    a = sorted(p.name for p in (killed / "cells").iterdir())
    b = sorted(p.name for p in (clean / "cells").iterdir())
    assert a == b and len(a) == 4
    for name in a:
        ma = json.loads((killed / "cells" / name / "metrics.json").read_text())
        mb = json.loads((clean / "cells" / name / "metrics.json").read_text())
        assert {k: ma[k] for k in COMPARED} == {k: mb[k] for k in COMPARED}
