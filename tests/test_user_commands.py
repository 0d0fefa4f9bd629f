"""What a user runs never alters what they cloned; a request that cannot be met is refused, never bent;
the world is verified against its MANIFEST before the first cell. Through the CLI, as a user runs it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli.main import main
from bench.core.errors import InputError
from bench.core.paths import ROOT
from bench.run.plan import Track
from bench.world.manifest import SKIPPED, VERIFIED
from bench.world.presets import DEFAULT_WORLD


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_exit_2(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip()
    assert err.splitlines() == [err] and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_make_bench_leaves_the_committed_reports_untouched(tmp_path, tiny_model_dir):
    """``make bench``'s own command (the Makefile's recipe) on the tiny pipeline: its report goes to
    OUT/report with a comparison against reports/, and not one file of reports/ changes."""
    before = _tree(ROOT / "reports")
    out = tmp_path / "bench"
    res = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "bench", f"PY={sys.executable}",
         f"MODEL={tiny_model_dir}", "METHODS=fuchi", "CONCEPTS=circle", "SEEDS=0", "ATTACKS=none", f"OUT={out}",
         "EXECUTOR=local",  # make bench's default is Ray where installed: its start-up is tests/test_executors.py's
         "ARGS=--steps 3 --set fuchi.epochs=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _tree(ROOT / "reports") == before
    assert (out / "report" / "index.html").is_file() and (out / "report" / "comparison.md").is_file()
    assert f"report: {out / 'report' / 'index.html'}" in res.stdout
    # the tiny model's cell is not on the committed leaderboard: said so, and the committed methods listed
    assert "compared with reports: 0 cell(s) in both" in res.stdout
    assert "cells of this run that the committed leaderboard lacks" in res.stdout and "fuchi 1" in res.stdout
    (cell,) = (out / "cells").iterdir()
    spec = json.loads((cell / "run_spec.json").read_text())
    assert spec["world_check"] == VERIFIED  # the tiny model is no world's; the world's judges were checked


def test_compare_names_the_rows_that_differ(tmp_path):
    import pandas as pd

    from bench.report.compare import compare_leaderboards

    same = compare_leaderboards(ROOT / "reports", ROOT / "reports")
    assert same.same and same.shared_cells > 0 and same.compared_numbers > 0
    frame = pd.read_csv(ROOT / "reports" / "leaderboard.csv")
    frame = frame[frame["method"] == "uce"].copy()
    row = frame.index[frame["metric"] == "ua"][0]
    frame.loc[row, "value"] += 0.5
    timing = frame.index[frame["metric"] == "seconds_per_concept"]
    frame.loc[timing, "value"] *= 3  # this machine's wall time: never compared
    frame.to_csv(tmp_path / "leaderboard.csv", index=False)
    moved = compare_leaderboards(tmp_path, ROOT / "reports")
    assert not moved.same and moved.shared_cells == frame["concept"].nunique()
    assert moved.differing == [f"uce {frame.loc[row, 'concept']} ua: value {frame.loc[row, 'value']} vs "
                               f"{frame.loc[row, 'value'] - 0.5}"]
    assert "uce" not in moved.only_theirs and moved.only_theirs and not moved.only_ours


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        # the three bad inputs a new user met: a traceback, a bent request, an ignored empty item
        (["tune", "--method", "fuchi", "--concepts", "ring", "--seeds", "0-1", "--grid", "lr=fast"],
         ["FuchiConfig.lr must be a number, got 'fast'"]),
        (["run", "--methods", "fuchi", "--concepts", "circle", "--seeds", "0-3", "--attack-seeds", "9",
          "--attacks", "soft_prefix"], ["--attack-seeds 9", "4 evaluation seeds", "at most 4"]),
        (["run", "--methods", "fuchi", "--concepts", "star,,square"], ["empty item", "write star,square"]),
    ],
)
def test_the_three_bad_inputs_are_one_line_and_write_nothing(tmp_path, args, needles):
    res = _run(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    _one_line_exit_2(res, *needles)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--methods", "fuchi,fuchi"], "--methods names 'fuchi' twice; list each once"),
        (["run", "--methods", "fuchi,"], "--methods 'fuchi,' has an empty item"),
        (["run", "--methods", ""], "--methods is empty"),
        (["run", "--concepts", "circle,circle"], "--concepts names 'circle' twice"),
        (["run", "--attacks", "soft_prefix,,inversion"], "write soft_prefix,inversion"),
        (["run", "--seeds", "0,1,1"], "--seeds names '1' twice"),
        (["run", "--seeds", "0,,1"], "--seeds '0,,1' has an empty item"),
        (["run", "--seeds", "7-0"], "the range runs backwards; write 0-7"),
        (["run", "--seeds", "0-99999999999"], "at most 10,000"),
        (["run", "--seeds", "0-1", "--attack-seeds", "3"], "at most 2 (or give more --seeds)"),
        (["run", "--set", "fuchi.lr=1e-5", "--set", "fuchi.lr=2e-5"], "--set fuchi.lr=... is given twice"),
        (["run", "--set", "fuchi.lr="], "the value is empty"),
        (["tune", "--method", "fuchi", "--grid", "lr=1e-5,1e-5"], "the value 1e-05 is listed twice"),
        (["tune", "--method", "fuchi", "--grid", "lr=1e-5,,2e-5"], "an item is empty"),
        (["tune", "--method", "fuchi", "--grid", "lr=1e-5", "--grid", "lr=2e-5"], "given twice"),
        (["run", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["run", "--steps", "many"], "argument --steps: invalid int value: 'many'"),
    ],
)
def test_strict_lists_and_flags_are_one_line_errors(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.splitlines() == [err] and needle in err, err
    assert list(tmp_path.iterdir()) == []


def test_help_names_the_real_default_second_judge():
    res = _run("run", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    default = Path(Track().second_judge).relative_to(ROOT)
    assert f"(default: {default};" in text
    assert "ViT" not in text.split("--second-judge", 2)[-1].split("--images")[0]


@pytest.fixture
def world_copy(tmp_path) -> Path:
    world = tmp_path / "world"
    shutil.copytree(DEFAULT_WORLD, world, ignore=shutil.ignore_patterns("samples"))
    manifest = json.loads((world / "MANIFEST.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("samples/")}
    (world / "MANIFEST.json").write_text(json.dumps(manifest))
    return world


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # in the tensor data: still a valid safetensors file, one weight changed
    path.write_bytes(bytes(data))


FAST_CELL = ["--methods", "fuchi", "--concepts", "circle", "--seeds", "0", "--attacks", "none", "--steps", "2",
             "--set", "fuchi.epochs=1"]


def test_a_one_byte_change_in_the_world_is_refused_before_the_first_cell(tmp_path, world_copy):
    weights = world_copy / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    _flip_last_byte(weights)
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:  # the edit left a valid weights file
        assert list(f.keys())
    res = _run("run", "--world", str(world_copy), *FAST_CELL, "--out", str(tmp_path / "out"))
    _one_line_exit_2(res, str(weights), "differs from", "MANIFEST.json", "make world", "--no-verify-world")
    assert not (tmp_path / "out").exists()

    # the explicit escape lets the run go on, and what each cell's spec records says so (make bench's test shows
    # the record reaching run_spec.json: the same line of run_bench writes both values)
    from dataclasses import replace

    from bench.run.grid import _check_worlds
    from bench.run.plan import world_track

    track = world_track(world_copy)
    with pytest.raises(InputError, match="differs from"):
        _check_worlds(track)
    assert _check_worlds(replace(track, verify_world=False)) == SKIPPED
    res = _run("run", "--world", str(world_copy), *FAST_CELL, "--out", str(tmp_path / "out"), "--no-verify-world",
               "--dry-run")
    assert res.returncode == 0, res.stderr


def test_a_missing_world_file_is_named(world_copy):
    from bench.world.manifest import verify_worlds

    assert verify_worlds([world_copy / "model", world_copy / "judge"]) == [world_copy]
    (world_copy / "judge" / "judge.safetensors").unlink()
    with pytest.raises(InputError, match=r"judge\.safetensors is missing: a corrupted clone"):
        verify_worlds([world_copy / "model"])
