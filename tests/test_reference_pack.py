"""The original model's references a world ships (``python -m bench.world reference``): a run that reads
them gives the numbers of a run that computes them, number for number; the pack is verified with the
world, and read only where every key it depends on matches."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.core.protocol import EvalProtocol
from bench.core.records import file_sha256
from bench.run.plan import Bench, Track

ATTACKS = ("paraphrase", "unlearndiffatk", "ringabell", "noised_start")
FAST = {"unlearndiffatk": {"iterations": 2, "timesteps": 2, "prompts": 1},
        "ringabell": {"population": 8, "generations": 3, "prompts": 1}, "noised_start": {"images": 1}}


def _world(tiny_model_dir: Path, root: Path) -> Path:
    """A world folder around the tiny model: model/ and a MANIFEST listing its files."""
    world = root / "world"
    shutil.copytree(tiny_model_dir, world / "model")
    files = {p.relative_to(world).as_posix(): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
             for p in sorted((world / "model").rglob("*")) if p.is_file()}
    (world / "MANIFEST.json").write_text(json.dumps({"name": "tiny", "files": files}, indent=2) + "\n")
    return world


def _bench(world: Path, **track: object) -> Bench:
    t = replace(Track(model=str(world / "model")), sampler=replace(Track().sampler, steps=3), second_judge=None,
                **track)
    return Bench(track=t, methods=["fuchi", "uce"], concepts=["circle"], protocol=EvalProtocol(seeds=(0, 1)),
                 method_overrides={"fuchi": {"epochs": 1}}, attacks=ATTACKS, attack_overrides=FAST)


def _assert_same(a: list[Path], b: list[Path]) -> None:
    """The same cells (hashes), every recorded number and every image's verdicts; wall-clock readings aside."""
    assert [x.name for x in a] == [y.name for y in b] and len(a) == 2
    for x, y in zip(a, b, strict=True):
        ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (x, y))
        keep = [k for k in ma if "seconds" not in k and "memory" not in k]
        assert {k: ma[k] for k in keep} == {k: mb.get(k) for k in keep}, x.name
        assert (x / "per_image.jsonl").read_text() == (y / "per_image.jsonl").read_text(), x.name


def _computed(folder: Path) -> list[str]:
    """What a run computed on the original model (files it wrote under reference/)."""
    return sorted(p.relative_to(folder).as_posix() for p in (folder / "reference").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def shipped(tiny_model_dir, tmp_path_factory):
    """A world, a run that computed its references, and the pack made of them (with the CLI)."""
    from bench.cli.world import main
    from bench.run.grid import run_bench

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("shipped")
    world = _world(tiny_model_dir, root)
    computed = run_bench(_bench(world), root / "computed", progress=False)
    assert main(["reference", "--world", str(world), "--from", str(root / "computed")]) == 0
    return world, root, computed


def test_a_run_reading_the_pack_equals_one_computing_it(shipped):
    from bench.run.grid import run_bench

    world, root, computed = shipped
    assert _computed(root / "computed")  # images, attack references and the original model's attacks
    read = run_bench(_bench(world), root / "read", progress=False)
    assert _computed(root / "read") == []  # every reference came from the pack: nothing computed
    _assert_same(computed, read)
    again = run_bench(_bench(world, shipped_references=False), root / "again", progress=False)
    assert _computed(root / "again") == _computed(root / "computed")  # --no-shipped-references computes them
    _assert_same(computed, again)


def test_the_pack_is_listed_and_verified_with_the_world(shipped):
    from bench.core.errors import InputError
    from bench.run.grid import run_bench
    from bench.world.manifest import REFERENCE_PACK, manifest_files, world_problems

    world, root, _ = shipped
    assert manifest_files(world / "MANIFEST.json")[REFERENCE_PACK] == file_sha256(world / REFERENCE_PACK)
    assert world_problems(world) == []
    broken = root / "broken"
    shutil.copytree(world, broken)
    with open(broken / REFERENCE_PACK, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00")
    with pytest.raises(InputError, match="references.safetensors differs"):
        run_bench(_bench(broken), root / "broken-run", progress=False)


def test_another_protocol_finds_nothing_and_computes_its_own(shipped):
    from bench.run.grid import run_bench

    world, root, _ = shipped
    bench = _bench(world)
    bench = replace(bench, methods=["uce"], protocol=EvalProtocol(seeds=(0, 1, 2)))
    run_bench(bench, root / "other", progress=False)
    computed = _computed(root / "other")
    assert any(name.startswith("reference/attacks/") for name in computed), computed


def test_packing_a_run_on_another_model_is_refused(shipped, tmp_path):
    from bench.cli.world import main
    from bench.model.tiny import build_tiny_pipeline

    world, root, _ = shipped
    model = tmp_path / "other-model"
    build_tiny_pipeline(seed=1).save_pretrained(model, safe_serialization=True)
    other_world = _world(model, tmp_path)
    assert main(["reference", "--world", str(other_world), "--from", str(root / "computed")]) == 2
