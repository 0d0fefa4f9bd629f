"""The reject-option audit (``bench.devtools.audit``) on a hand-written run folder of two cells."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bench.api.method import build_method
from bench.core.errors import InputError
from bench.devtools.audit import audit, grid_size, main

GROUPS = ["target"] * 8 + ["near_neighbour"] * 2 + ["in_domain"] * 2 + ["retain"]  # row 12 is not stored
SHOWN = {"target": list(range(8)), "near_neighbour": [8, 9], "in_domain": [10, 11]}
# cell name -> (method, concept, first pixel value, plan rows whose edited image the judge rejected)
CELLS = {"aaaa": ("esd@x", "red", 10, {0, 1, 2, 3, 4, 5, 8, 10, 11}), "bbbb": ("fuchi", "star", 130, {3, 9})}
ORIGINAL, ATTACK = 250, 245  # pixel values of images that must never be drawn


def value(cell: str, i: int) -> int:
    """The pixel value of the edited image of plan row ``i`` (each stored image is one flat colour)."""
    return CELLS[cell][2] + 10 * i


def prompt(cell: str, i: int) -> str:
    return f"prompt {cell} {i}"


def _row(cell: str, i: int, model: str, rejected: bool) -> dict:
    label = {"label": "none" if rejected else "valid", "p": 0.97}
    return {"model": model, "group": GROUPS[i], "judged_concept": CELLS[cell][1], "prompt": prompt(cell, i),
            "seed": i % 4, "detected": False, "rejected": rejected,
            "judge": {"object": {"label": "star", "p": 0.5}, "colour": {"label": "red", "p": 0.25}, "scene": label}}


def write_cell(folder: Path, cell: str) -> None:
    method, concept, _, rejected = CELLS[cell]
    folder.mkdir(parents=True)
    spec = {"method": method, "method_config": build_method(method).config.to_dict(), "concept": concept,
            "concept_set": "toyworld@1", "judge": "toy-judge@1"}
    (folder / "run_spec.json").write_text(json.dumps(spec))
    rows = []
    for i in range(len(GROUPS)):
        rows.append(_row(cell, i, "original", i == 6))  # a rejected original: never drawn
        rows.append(_row(cell, i, "edited", i in rejected or i == 12))  # row 12's image is not stored
    rows.append({"model": "edited", "group": "attack:prefix", "judged_concept": concept, "prompt": "attack",
                 "seed": 0, "detected": True, "rejected": True, "judge": {}, "index": 0})
    (folder / "per_image.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def images(idx: list[int], fill=None) -> torch.Tensor:
        return torch.stack([torch.full((3, 32, 32), fill or value(cell, i), dtype=torch.uint8) for i in idx])

    tensors = {"original": images(SHOWN["target"], ORIGINAL), "edited": images(SHOWN["target"]),
               "attack_prefix": images([0, 1], ATTACK)}
    for group in ("near_neighbour", "in_domain"):
        tensors[f"original_{group}"], tensors[f"edited_{group}"] = images(SHOWN[group], ORIGINAL), images(SHOWN[group])
    save_file(tensors, folder / "samples.safetensors", metadata={"rows": json.dumps(SHOWN)})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for cell in CELLS:
        write_cell(root / "cells" / cell, cell)
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_grids_csvs_and_summary(runs, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["--runs", str(runs), "--out", str(out), "--n", "32", "--seed", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("esd@x: 12 stored edited images, 9 rejected (75.0%) -> ")
    assert printed[1].startswith("fuchi: 12 stored edited images, 2 rejected (16.7%) -> ")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["n"] == 32 and summary["judge"] == "toy-judge@1"
    assert {k: (m["stored_edited"], m["rejected"], m["drawn"]) for k, m in summary["methods"].items()} == {
        "esd@x": (12, 9, 9), "fuchi": (12, 2, 2)}
    assert summary["methods"]["esd@x"]["share_rejected"] == pytest.approx(0.75)
    assert summary["methods"]["fuchi"]["judge"] == "toy-judge@1"

    for label, size in (("esd@x", (1042, 262)), ("fuchi", (262, 132))):  # 8 columns of 128 px, 2 px gaps
        grid = Image.open(out / f"{label}.png")
        assert grid.size == size == grid_size(summary["methods"][label]["drawn"])
        rows = read_csv(out / f"{label}.csv")
        assert list(rows[0]) == ["index", "cell", "concept", "group", "prompt", "seed", "object", "colour",
                                 "scene", "by_eye"]
        assert [r["index"] for r in rows] == [str(k) for k in range(len(rows))]
        assert all(r["by_eye"] == "" and r["scene"] == "none 0.97" and r["object"] == "star 0.50" for r in rows)
        cell = rows[0]["cell"]
        rejected = CELLS[cell][3]
        assert sorted(r["prompt"] for r in rows) == sorted(prompt(cell, i) for i in rejected)
        pixels = np.asarray(grid)
        for k, r in enumerate(rows):  # each tile is the rejected edited image its CSV row names
            i = int(r["prompt"].split()[-1])
            assert r["group"] == GROUPS[i] and r["concept"] == CELLS[cell][1] and r["seed"] == str(i % 4)
            y, x = 2 + (k // 8) * 130 + 100, 2 + (k % 8) * 130 + 100  # clear of the number in the corner
            assert (pixels[y, x] == value(cell, i)).all()


def test_n_limits_the_draw_and_the_seed_fixes_it(runs, tmp_path):
    def drawn(seed: int, name: str) -> list[str]:
        audit(runs, tmp_path / name, n=4, seed=seed, methods=["esd@x"])
        return [r["prompt"] for r in read_csv(tmp_path / name / "esd@x.csv")]

    first = drawn(0, "a")
    assert len(first) == 4 and first == drawn(0, "b")
    assert any(drawn(seed, f"s{seed}") != first for seed in (1, 2, 3))
    assert Image.open(tmp_path / "a" / "esd@x.png").size == (2 + 4 * 130, 132)
    assert not (tmp_path / "a" / "fuchi.png").exists()  # --methods keeps the named ones only


class StubJudge:
    """Rejects the darkest images (cell aaaa's rows 0-3), labels everything the same."""

    ref = "stub-judge@9"

    def reject(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.float32 and images.max() <= 1
        return images.mean((1, 2, 3)) < 45 / 255

    def describe(self, images: torch.Tensor) -> list[dict]:
        return [{"scene": {"label": "none", "p": 0.8}, "style": {"label": "dotted", "p": 0.61}} for _ in images]


def test_a_judge_rejudges_the_stored_pixels(runs, tmp_path):
    summary = audit(runs, tmp_path, judge=StubJudge())
    assert summary["judge"] == "stub-judge@9" and summary["rejudged"]
    assert {k: (m["rejected"], m["drawn"]) for k, m in summary["methods"].items()} == {"esd@x": (4, 4),
                                                                                       "fuchi": (0, 0)}
    rows = read_csv(tmp_path / "esd@x.csv")
    assert sorted(r["prompt"] for r in rows) == [prompt("aaaa", i) for i in range(4)]
    assert all(r["style"] == "dotted 0.61" and r["scene"] == "none 0.80" for r in rows)
    assert not (tmp_path / "fuchi.png").exists() and read_csv(tmp_path / "fuchi.csv") == []


def test_a_folder_without_cells_is_an_input_error(tmp_path, capsys):
    with pytest.raises(InputError, match="no cells/ inside"):
        audit(tmp_path / "empty", tmp_path / "out")
    assert main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: no run folder at ")
