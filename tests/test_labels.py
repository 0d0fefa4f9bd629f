"""Display labels come from a cell's run spec and reports/tuned/, never from metrics.json."""

from __future__ import annotations

import json

from bench.api.method import build_method
from bench.core.io import write_json
from bench.core.records import sha256_json
from bench.report.labels import cell_label, method_label, tuned_for_spec


def _spec(config: dict, concept_set: str = "conceptworld@2.1") -> dict:
    return {"method": "fuchi", "method_config": config, "concept_set": concept_set}


def test_label_from_config():
    defaults = build_method("fuchi").config.to_dict()
    tuned = build_method("fuchi", {"lr": 1e-2}).config.to_dict()
    other = build_method("fuchi", {"lr": 3e-3}).config.to_dict()
    assert method_label("fuchi", defaults, {"lr": 1e-2}) == "fuchi"
    assert method_label("fuchi", tuned, {"lr": 1e-2}) == "fuchi[tuned]"
    assert method_label("fuchi", tuned, None) == f"fuchi+{sha256_json(tuned)[:6]}"
    assert method_label("fuchi", other, {"lr": 1e-2}) == f"fuchi+{sha256_json(other)[:6]}"
    # a method that is no longer registered is named by its config's hash, not dropped
    assert method_label("gone", {"lr": 1.0}) == f"gone+{sha256_json({'lr': 1.0})[:6]}"


def test_a_cell_made_under_set_is_labelled_tuned_once_tuning_chose_its_config(tmp_path):
    """The stale-label case: the cell was made with --set fuchi.lr=0.01 before bench tune chose
    lr=0.01; at report time its label follows reports/tuned/, whatever was true when it ran."""
    spec = _spec(build_method("fuchi", {"lr": 1e-2}).config.to_dict())
    assert cell_label(spec, tuned_for_spec(spec, tmp_path)) == f"fuchi+{sha256_json(spec['method_config'])[:6]}"
    write_json(tmp_path / "conceptworld.json", {"methods": {"fuchi": {"overrides": {"lr": 1e-2}}}})
    assert cell_label(spec, tuned_for_spec(spec, tmp_path)) == "fuchi[tuned]"
    # the tuned file of another concept set does not apply
    assert cell_label(_spec(spec["method_config"], "styles@1.0"), tuned_for_spec(_spec({}, "styles@1.0"),
                                                                               tmp_path)).startswith("fuchi+")


def test_report_labels_cells_from_their_specs(tmp_path, monkeypatch):
    """load_cells derives labels; a stale label left in an old metrics.json is ignored."""
    import bench.report.cells as report

    folder = tmp_path / "runs" / "cells" / "abc"
    folder.mkdir(parents=True)
    (folder / "per_image.jsonl").write_text("")
    (folder / "environment.json").write_text("{}")
    config = build_method("fuchi", {"lr": 3e-3}).config.to_dict()
    cell = {"folder": str(folder), "spec": {**_spec(config), "model_sha256": "0" * 64},
            "metrics": {"method_label": "fuchi[tuned]", "status": "ok"}, "timing": {}}
    monkeypatch.setattr(report, "scan_cells", lambda root: [json.loads(json.dumps(cell))])
    (c,) = report.load_cells(tmp_path / "runs")
    assert c["label"] == f"fuchi+{sha256_json(config)[:6]}"


def test_a_report_of_any_protocol_but_the_full_one_says_it_is_not_the_leaderboard():
    from bench.core.protocol import PROTOCOLS, EvalProtocol, protocol_name
    from bench.report.labels import protocol_banner

    def cells(*protocols):
        return [{"spec": {"protocol": p.to_dict()}} for p in protocols]

    assert protocol_name(PROTOCOLS["full"].to_dict()) == "full" and protocol_banner(cells(EvalProtocol())) is None
    quick = protocol_banner(cells(PROTOCOLS["quick"], PROTOCOLS["quick"]))
    assert quick.startswith("Not the leaderboard") and "quick protocol (make bench)" in quick and "[0, 1, 2, 3]" in quick
    mixed = protocol_banner(cells(PROTOCOLS["full"], EvalProtocol(seeds=(0, 1))))
    assert "custom, full" in mixed and mixed.startswith("Not the leaderboard")
