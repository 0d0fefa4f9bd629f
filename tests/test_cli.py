"""The command line, through a subprocess as a user runs it."""

import json
import subprocess
import sys

from safetensors import safe_open


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_methods_lists_every_method_with_defaults():
    out = _run("methods")
    assert out.returncode == 0, out.stderr
    for name in ("fuchi", "lora_eraser", "full_finetune"):
        assert f"{name} (v" in out.stdout
    assert "fuchi@paper_era" in out.stdout and "lr=1e-05" in out.stdout
    data = json.loads(_run("methods", "--json").stdout)
    assert data["fuchi"]["defaults"]["beta2"] == 0.98 and data["lora_eraser"]["defaults"]["lora_rank"] == 4


def test_erase_writes_edit_and_record(tmp_path, tiny_model_dir, concept_images):
    out = tmp_path / "edit"
    res = _run("erase", "--method", "fuchi", "--model", str(tiny_model_dir), "--concept", "cat",
               "--images", str(concept_images), "--out", str(out), "--seed", "1")
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "erase.json").read_text())
    assert record["method"] == "fuchi" and record["concept"]["name"] == "cat" and record["seed"] == 1
    assert record["config"]["lr"] == 1e-5 and record["trainable_params"] == 12608
    assert record["storage_bytes"] > 0 and record["seconds"] > 0
    assert record["environment"]["packages"]["torch"]
    with safe_open(str(out / "edit.safetensors"), "pt") as f:
        assert len(list(f.keys())) == record["edited_parameters"]
    again = _run("erase", "--method", "fuchi", "--model", str(tiny_model_dir), "--concept", "cat",
                 "--images", str(concept_images), "--out", str(out))
    assert again.returncode == 2 and "already holds an erase record" in again.stderr


def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_model_dir, concept_images):
    res = _run("erase", "--method", "lora_erasr", "--model", str(tiny_model_dir), "--concept", "cat",
               "--images", str(concept_images), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "did you mean 'lora_eraser'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_dry_run_prints_the_sd_grid_without_weights():
    res = _run("run", "--track", "sd", "--model", "CompVis/stable-diffusion-v1-4", "--methods", "fuchi,lora_eraser",
               "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "'steps': 50" in res.stdout or '"steps": 50' in res.stdout
    assert "golf ball" in res.stdout and "14 cells" in res.stdout and "judge imagenet" in res.stdout


def test_attack_seeds_flag_reaches_the_protocol_and_bad_values_exit_2():
    import argparse

    from bench.cli.main import build_parser

    bad = _run("run", "--methods", "fuchi", "--attack-seeds", "0", "--dry-run")
    assert bad.returncode == 2 and "attack_seeds must be >= 1, got 0" in bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    from bench.cli.main import bench_from_args

    args = build_parser().parse_args(["run", "--methods", "fuchi", "--attack-seeds", "8"])
    assert isinstance(args, argparse.Namespace) and bench_from_args(args).protocol.attack_seeds == 8
