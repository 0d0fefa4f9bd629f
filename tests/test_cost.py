"""bench plan: unit costs read back from a finished run (its cells, run log and reference log), and an
estimate that grows with concepts, seeds, methods and attacks as the grid does; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli.main import main
from bench.run.cost import RUN_LOG, UnitCosts, calibrate, estimate

RUN = ["--methods", "fuchi,uce", "--concepts", "circle", "--seeds", "0-1", "--steps", "3", "--second-judge", "none",
       "--attacks", "paraphrase,noised_start", "--set", "fuchi.epochs=1"]


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny grid run with the command line, as a user runs one: cells and a run log."""
    out = tmp_path_factory.mktemp("costed") / "run"
    assert main(["run", "--model", str(tiny_model_dir), *RUN, "--out", str(out)]) == 0
    return out


def _costs(finished: Path) -> UnitCosts:
    return calibrate([finished], machine="test")


def test_every_run_logs_its_wall_time_and_cells(finished):
    (rec,) = [json.loads(line) for line in (finished / RUN_LOG).read_text().splitlines()]
    assert rec["cells"] == rec["cells_run"] == 2 and rec["executor"] == "local" and rec["workers"] == 1
    assert rec["seconds"] >= rec["cells_seconds"] > 0


def test_calibrate_reads_every_phase(finished):
    c = _costs(finished)
    assert set(c.erase) == {"fuchi", "uce"} and c.generate_per_image > 0 and c.judge_per_image > 0
    assert set(c.attack) == {"paraphrase", "noised_start"} and set(c.attack["noised_start"]) == {"fuchi", "uce", "*"}
    assert c.attack_images["noised_start"] > 0 and c.reference_per_image > 0  # the first cell computed them
    assert set(c.reference_attack) == {"paraphrase", "noised_start"} and c.startup > 0


def test_estimate_grows_with_the_grid(finished):
    c = _costs(finished)
    cell = {"method": "fuchi", "concept": "circle", "images": 100}
    one = estimate([cell], ("noised_start",), c, 1, set())
    assert estimate([cell, {**cell, "concept": "star"}], ("noised_start",), c, 1, set()).work == pytest.approx(
        2 * one.work)  # concepts
    assert estimate([{**cell, "images": 200}], (), c, 1, set()).work > estimate([cell], (), c, 1, set()).work  # seeds
    assert estimate([cell], (), c, 1, set()).work < one.work  # attacks
    assert estimate([cell], ("noised_start",), c, 1, {"circle"}).work > one.work  # references not shipped
    halved = estimate([cell, {**cell, "concept": "star"}], ("noised_start",), c, 2, set())
    assert halved.wall - c.startup == pytest.approx(one.work) and halved.notes  # 2 workers: assumed, and said so
    unknown = estimate([{**cell, "method": "esd@x"}], ("nope",), c, 1, set())
    assert any("esd@x" in n for n in unknown.notes) and any("nope" in n for n in unknown.notes)


def test_plan_prints_the_estimate_per_method_and_phase(finished, tiny_model_dir, tmp_path, capsys):
    costs = tmp_path / "costs.json"
    assert main(["plan", "--calibrate", str(finished), "--costs-out", str(costs)]) == 0
    capsys.readouterr()
    assert main(["plan", "--model", str(tiny_model_dir), *RUN, "--costs", str(costs)]) == 0
    out = capsys.readouterr().out
    assert "| fuchi |" in out and "| uce |" in out and "about" in out and "2 cells" in out


def test_plan_bad_input_is_one_line(tmp_path, capsys):
    assert main(["plan", "--calibrate", str(tmp_path)]) == 2  # no --costs-out
    (tmp_path / "bad.json").write_text("{}")
    assert main(["plan", "--costs", str(tmp_path / "bad.json")]) == 2
    assert main(["plan", "--calibrate", str(tmp_path), "--costs-out", str(tmp_path / "c.json")]) == 2  # no cells
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error") for line in err)
