"""Run records: spec hashing, atomic complete-or-absent cells, cleanup after a kill, metrics."""

import json

import pytest

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
