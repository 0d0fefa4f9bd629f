"""`make gpu-check`'s script (bench.devtools.gpucheck) in --tiny mode: the code path a GPU run takes, end to
end on a tiny random pipeline on the CPU, into a temporary folder. Its numbers are not checked, only that
they are there, finite and positive, that the table sets them beside the papers' times, and that an item
that fails is recorded while the run goes on."""

from __future__ import annotations

import json
import math

import pytest

from bench.devtools import gpucheck


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    rc = gpucheck.main(["--tiny", "--device", "cpu", "--out", str(out), "--archs", "sd15",
                        "--methods", "uce,fuchi,no_such_method", "--attacks", "soft_prefix,paraphrase,no_such_attack",
                        "--budget-s", "120"])
    data = json.loads((out / "gpu-check.json").read_text())
    return rc, data, (out / "gpu-check.md").read_text()


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tiny_run_records_every_phase(tiny_run):
    rc, data, _ = tiny_run
    assert rc == 0
    meta = data["meta"]
    assert meta["tiny"] and meta["finished"] and meta["device"] == "cpu" and meta["peak_bf16_tflops"] is None
    arch = data["archs"]["sd15"]
    assert _positive(arch["build_s"]) and _positive(arch["unet_flops_per_image_step"])
    assert {(r["dtype"], r["batch"]) for r in data["generation"]} == {(d, b) for d in ("bf16", "fp16") for b in (8, 32)}
    for r in data["generation"]:  # fp16 on a CPU may lack an op: then an error string, never a crash
        assert ("error" in r and isinstance(r["error"], str)) or (
            _positive(r["unet_step_s"]) and _positive(r["images_per_s"]) and _positive(r["unet_tflops"]))
    assert all("error" not in r for r in data["generation"] if r["dtype"] == "bf16")
    assert {r["method"] for r in data["references"] if r["method"]} >= {"fuchi", "lora_eraser", "esd", "uce"}


def test_erase_rows_say_what_was_run_and_published(tiny_run):
    _, data, _ = tiny_run
    rows = {r["method"]: r for r in data["erase"]}
    uce, fuchi = rows["uce"], rows["fuchi"]
    assert uce["done"] == "measured" and uce["as_published"] and _positive(uce["seconds_published"])
    # fuchi: 1 epoch first, extrapolated x 4; the 4 published epochs fit the budget, so they ran too
    assert fuchi["steps_published"] == 4 and fuchi["probes"][0]["overrides"] == {"epochs": 1}
    assert _positive(fuchi["extrapolated_s"]) and _positive(fuchi["seconds_run"])
    assert fuchi["done"] == "measured" and fuchi["steps_run"] == 4 and _positive(fuchi["seconds_published"])


def test_a_failing_item_is_recorded_and_the_run_goes_on(tiny_run):
    _, data, md = tiny_run
    bad = {r["method"]: r for r in data["erase"]}["no_such_method"]
    assert bad["done"] == "failed" and "no_such_method" in bad["error"] and "\n" not in bad["error"]
    attacks = {r["attack"]: r for r in data["attacks"]}
    assert "no_such_attack" in attacks["no_such_attack"]["error"]
    assert _positive(attacks["soft_prefix"]["s_per_step"]) and attacks["soft_prefix"]["steps_published"] == 40
    assert _positive(attacks["soft_prefix"]["est_s_per_concept"])
    assert attacks["paraphrase"]["steps_published"] == 0 and attacks["paraphrase"]["s_per_step"] is None
    assert "no_such_method" in md and "failed" in md


def test_table_sets_the_papers_times_beside(tiny_run):
    _, _, md = tiny_run
    assert "Tiny mode" in md
    for text in ("MACE", "Receler", "FMN", "not implemented here", "106 min", "59.6 min", "0.1 min", "137 min",
                 "100 min", "<= 10 s", "about 50 s (SD v2)", "about 30 s", "## Generation", "## Attacks"):
        assert text in md, text
    fuchi = next(line for line in md.splitlines() if line.startswith("| fuchi |"))
    assert "Fuchi & Takagi" in fuchi


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert gpucheck.main(["--tiny", "--archs", "sd99", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --archs") and err.count("\n") == 1
    assert gpucheck.main(["--tiny", "--budget-s", "-1", "--out", str(out)]) == 2
    assert not out.exists()


def test_plans_cover_the_registries():
    from bench.api.attack import attack_registry
    from bench.api.method import method_registry

    assert set(gpucheck.ERASE_PLAN) == set(method_registry().names())
    assert set(attack_registry().names()) - {"replay"} <= set(gpucheck.ATTACK_PLAN)  # replay needs a file


def test_extrapolation_weights_follow_the_published_counts():
    from bench.api.method import build_method

    def probes(spec):
        return gpucheck.ERASE_PLAN[spec.partition("@")[0]].probes(build_method(spec).config)

    assert probes("esd@x") == [({"iterations": 16}, 200 / 16)]
    assert probes("lora_eraser") == [({"ti_steps": 10, "steps": 4}, 10.0)]
    assert probes("advunlearn") == [({"iterations": 1, "warmup": 1}, 200.0), ({"iterations": 1, "warmup": 0}, 800.0)]


def test_peak_table():
    assert gpucheck._peak_flops("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert gpucheck._peak_flops("NVIDIA H100 PCIe")[0] == 756.0
    assert gpucheck._peak_flops("NVIDIA H200")[0] == 989.0
    assert gpucheck._peak_flops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert gpucheck._peak_flops("NVIDIA RTX A6000")[0] == pytest.approx(154.8)
    assert gpucheck._peak_flops("NVIDIA H100 NVL") == (None, "n/a")
    assert gpucheck._peak_flops("Tesla T4") == (None, "n/a")


def test_a_spent_budget_skips_new_items_and_says_so(tmp_path):
    import torch

    data = gpucheck.run(tmp_path, torch.device("cpu"), True, ["sd15"], ["uce"], ["paraphrase"], budget_s=1e-6,
                        erase_dtype="fp32", skip_when_spent=True)
    assert data["meta"]["finished"]
    assert all(r["error"] == "skipped: budget spent" for r in data["generation"] + data["attacks"])
    assert [(r["done"], r["error"]) for r in data["erase"]] == [("skipped", "budget spent")]
    assert json.loads((tmp_path / "gpu-check.json").read_text())["erase"][0]["done"] == "skipped"
