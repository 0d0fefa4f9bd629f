"""Run records: spec hashing, atomic complete-or-absent cells, cleanup after a kill, metrics."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.api.judge import Judge, scene_labels
from bench.core.errors import ConfigError, RecordError
from bench.core.protocol import EvalProtocol
from bench.core.records import CELL_FILES, RunSpec, clean_partial, is_complete, scan_cells, write_cell
from bench.metrics.formulas import bootstrap_ci, composite, summary


def _spec(**kw):
    base = dict(model="m", model_sha256="a" * 64, method="fuchi", method_config={"lr": 1e-5}, method_version="1",
                concept_set="cw@1", concept_set_sha256="b" * 64, concept="circle", erase_seed=0,
                eval_seeds=(0, 1), sampler={"steps": 25}, judge="j@1", metrics_version="1")
    base.update(kw)
    return RunSpec(**base)


def test_spec_hash_is_canonical_and_sensitive():
    a, b = _spec(), _spec(method_config={"lr": 1e-5})
    assert a.hash == b.hash and len(a.cell_id) == 16
    assert _spec(method_config={"lr": 2e-5}).hash != a.hash
    assert _spec(eval_seeds=(0, 2)).hash != a.hash
    assert RunSpec.from_dict(a.to_dict()) == a


def test_cells_are_complete_or_absent(tmp_path):
    spec = _spec()
    folder = write_cell(tmp_path, spec, {"ua": 1}, [{"x": 1}], {"t": 1}, {"env": 1},
                        extra_files={"samples.safetensors": b"x"})
    assert is_complete(folder) and sorted(p.name for p in folder.iterdir()) == sorted(CELL_FILES)
    assert json.loads((folder / "run_spec.json").read_text())["hash"] == spec.hash
    # what a kill -9 leaves behind (a temp folder), and a folder of an older layout (no checksums)
    (tmp_path / "cells" / "deadbeef.tmp-123").mkdir()
    broken = tmp_path / "cells" / "0123456789abcdef"
    broken.mkdir()
    (broken / "run_spec.json").write_text("{}")
    with pytest.raises(RecordError, match="cell 0123456789abcdef: no checksums.json"):
        scan_cells(tmp_path)  # named, never silently skipped or used
    removed = clean_partial(tmp_path)
    assert len(removed) == 2 and is_complete(folder)
    assert [c["spec"]["hash"] for c in scan_cells(tmp_path)] == [spec.hash]


def test_metrics_are_pure_and_intervals_sane():
    hits = [1, 0, 1, 1, 0, 1, 1, 1]
    seeds = [0, 0, 1, 1, 2, 2, 3, 3]
    assert summary(hits, seeds) == summary(hits, seeds)
    lo, hi = bootstrap_ci(hits, seeds)
    assert 0 <= lo <= 0.75 <= hi <= 1
    assert bootstrap_ci([1] * 8, seeds) == (1.0, 1.0)
    assert composite(1.0, [1.0, 1.0]) == 1.0 and composite(0.0, [1.0]) == 0.0
    assert composite(0.5, [1.0]) == pytest.approx(2 / 3)


def test_protocol_validation():
    with pytest.raises(ConfigError, match="at least one seed"):
        EvalProtocol(seeds=())
    with pytest.raises(ConfigError, match="repeat"):
        EvalProtocol(seeds=(1, 1))


# -- portable run folders: a cell is keyed on content, never on where its inputs lie ---------------


def _folder_images(root, name="cat"):
    """``from_folder``'s record of the images in ``root/<name>/`` (what a spec's ``images`` holds)."""
    from types import SimpleNamespace

    from bench.run.sources import from_folder

    return from_folder(SimpleNamespace(images=str(root)), SimpleNamespace(name=name), EvalProtocol(few_shot_images=2))[1]


def test_cell_id_ignores_how_paths_are_spelled(tiny_model_dir, concept_images, tmp_path, monkeypatch):
    import shutil

    from bench.core.records import HASH_EXCLUDES, hash_key, model_fingerprint

    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(tiny_model_dir, copy)
    for root in (tmp_path / "a", tmp_path / "b"):
        shutil.copytree(concept_images, root / "cat")
    monkeypatch.chdir(tiny_model_dir.parent)
    spelled = [str(tiny_model_dir), tiny_model_dir.name, f"./{tiny_model_dir.name}/", str(copy)]
    specs = [_spec(model=m, model_sha256=model_fingerprint(m), images=_folder_images(tmp_path / r))
             for m, r in zip(spelled, "abab", strict=True)]
    assert len({s.model for s in specs}) == 4 and len({s.images["folder"] for s in specs}) == 2
    assert len({s.cell_id for s in specs}) == 1  # absolute, relative, copied: one cell
    assert "model" in HASH_EXCLUDES and "model" not in hash_key(specs[0].to_dict())
    assert "folder" not in hash_key(specs[0].to_dict())["images"] and specs[0].images["sha256"]
    # content still counts: other weights, other images, another judge version are other cells
    assert _spec(model_sha256="c" * 64).cell_id != _spec().cell_id
    (tmp_path / "b" / "cat" / "cat_0.png").write_bytes((concept_images / "cat_1.png").read_bytes())
    assert _spec(images=_folder_images(tmp_path / "b")).cell_id != specs[0].cell_id
    assert _spec(judge="j@2").cell_id != _spec().cell_id


class _BrightJudge(Judge):
    """Brightness as detection, pooled pixels as features: a cheap judge for a real tiny grid."""

    id, version = "bright-judge", "1"

    def detect(self, images, concept):
        return (images.mean(dim=(1, 2, 3)) > 0.5) & ~self.reject(images)

    def reject(self, images):
        return images.mean(dim=(1, 2, 3)) < 0.02

    def labels(self, images):
        return {"scene": scene_labels(self.reject(images))}

    def features(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)


def _clone(root, tiny_model_dir, concept_images):
    """A checkout elsewhere: its own copy of the model, concept set and few-shot images."""
    import shutil

    import yaml

    shutil.copytree(tiny_model_dir, root / "model")
    shutil.copytree(concept_images, root / "images" / "cat")
    (root / "concepts.yaml").write_text(yaml.safe_dump({"name": "tiny", "version": "1", "concepts": [
        {"name": "cat", "templates": ["a photo of a {}"], "retain_in_domain": ["dog"]}, {"name": "dog"}]}))
    return root


def _clone_bench(root):
    from bench.core.protocol import SamplerSpec
    from bench.run.plan import Bench, Track

    track = Track(model=str(root / "model"), concept_set=str(root / "concepts.yaml"), judge="bright",
                  second_judge=None, images=str(root / "images"), sampler=SamplerSpec(steps=1, guidance=5.0),
                  device="cpu")
    return Bench(track=track, methods=["uce"], concepts=["cat"], protocol=EvalProtocol(seeds=(0,), few_shot_images=2))


class _NoWork:
    def run(self, *args, **kwargs):
        raise AssertionError("a shared cell was computed again")


def test_a_clone_elsewhere_shares_the_cells(tiny_model_dir, concept_images, tmp_path, monkeypatch):
    import shutil

    import bench.run.grid
    from bench.core.records import verify_cells
    from bench.run.grid import run_bench

    monkeypatch.setattr(bench.run.grid, "load_judge", lambda track, cs, spec=None: _BrightJudge())
    first = _clone(tmp_path / "one", tiny_model_dir, concept_images)
    cells = run_bench(_clone_bench(first), first / "runs", progress=False)
    metrics = {c.name: (c / "metrics.json").read_bytes() for c in cells}
    second = _clone(tmp_path / "two" / "checkout", tiny_model_dir, concept_images)
    shutil.copytree(first / "runs", second / "runs")  # a copied runs/ ...
    monkeypatch.chdir(second)  # ... used from the other clone, paths spelled relative
    bench_two = _clone_bench(second)
    bench_two.track = replace(bench_two.track, model="model", images="images", concept_set="concepts.yaml")
    again = run_bench(bench_two, Path("runs"), progress=False, executor=_NoWork())
    assert [c.name for c in again] == [c.name for c in cells] == [c.name for c in (second / "runs" / "cells").iterdir()]
    assert {c.name: (second / "runs" / "cells" / c.name / "metrics.json").read_bytes() for c in cells} == metrics
    assert not any(verify_cells(second / "runs").values())
