"""``--executor ray``: the same grid on Ray actors gives the same cells and numbers as one process,
also when a worker is killed mid-cell; without Ray, one line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.core.protocol import EvalProtocol
from bench.report.cells import load_cells
from bench.run.grid import run_bench
from bench.run.plan import Bench, Track

# wall-clock and memory readings differ between any two runs; every other number must not
VOLATILE = ("seconds", "memory")


def _bench(model: Path) -> Bench:
    """2 methods x 2 concepts on the tiny pipeline, with every attack (cut to a few steps)."""
    track = replace(Track(model=str(model)), sampler=replace(Track().sampler, steps=3))
    return Bench(track=track, methods=["fuchi", "uce"], concepts=["circle", "zorbo"],
                 protocol=EvalProtocol(seeds=(0,)), method_overrides={"fuchi": {"epochs": 1}},
                 attacks=("paraphrase", "inversion", "soft_prefix"),
                 attack_overrides={"inversion": {"steps": 10}, "soft_prefix": {"iterations": 5}})


def _numbers(folder: Path) -> tuple[dict, list[str]]:
    metrics = json.loads((folder / "metrics.json").read_text())
    kept = {k: v for k, v in metrics.items() if not any(word in k for word in VOLATILE)}
    return kept, (folder / "per_image.jsonl").read_text().splitlines()


def assert_same_grid(a: list[Path], b: list[Path]) -> None:
    assert [x.name for x in a] == [y.name for y in b] and len(a) == 4  # same cell hashes
    for x, y in zip(a, b, strict=True):
        ma, rows_a = _numbers(x)
        mb, rows_b = _numbers(y)
        assert ma == mb, x.name  # every recorded number, bit for bit (JSON floats round-trip exactly)
        assert rows_a == rows_b, x.name  # every image's verdicts
        assert not list((x.parent).glob("*.tmp-*")) and not list((y.parent).glob("*.tmp-*"))


@pytest.fixture(scope="module")
def local_grid(tiny_model_dir, tmp_path_factory):
    """The grid in this process, torch at one thread (as each Ray actor below)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("local")
        return run_bench(_bench(tiny_model_dir), out, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_grid_equals_local_grid(local_grid, ray_cluster, tiny_model_dir, tmp_path):
    from bench.run.executors import RayExecutor

    executor = RayExecutor(workers=2, threads=1)
    try:
        cells = run_bench(_bench(tiny_model_dir), tmp_path, progress=False, executor=executor)
        assert len(executor.overheads) == 6  # 2 reference tasks (one per concept) + 4 cells
    finally:
        executor.close()
    assert_same_grid(local_grid, cells)
    again = run_bench(_bench(tiny_model_dir), tmp_path, progress=False)  # complete: nothing left to run
    assert again == cells


@pytest.mark.slow  # kills a Ray actor mid-cell and waits for its restart (make test-slow)
def test_worker_killed_mid_cell_loses_nothing(local_grid, ray_cluster, tiny_model_dir, tmp_path):
    """SIGKILL to an actor while it measures a cell: Ray restarts it and retries that cell."""
    from bench.run.executors import RayExecutor

    executor = RayExecutor(workers=2, threads=1)
    executor.actors(_bench(tiny_model_dir).track)
    killed: list[int] = []

    def kill_first_busy_worker() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            busy = executor.busy()
            if busy:
                time.sleep(0.5)  # inside the cell's work, not at its first line
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_busy_worker, daemon=True)
    killer.start()
    try:
        cells = run_bench(_bench(tiny_model_dir), tmp_path, progress=False, executor=executor)
        killer.join(timeout=5)
        assert killed, "no worker was caught measuring a cell"
        assert len(executor.overheads) == 6  # every task returned once: the killed cell was retried, not lost
    finally:
        executor.close()
    assert_same_grid(local_grid, cells)


def test_ray_missing_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    from bench.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["run", "--methods", "fuchi", "--concepts", "circle", "--attacks", "none", "--executor", "ray",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install -e '.[ray]'" in err[0]
    assert not (tmp_path / "out").exists()  # refused before any work


def test_ray_flags_need_the_ray_executor(capsys, tmp_path):
    from bench.cli.main import main

    code = main(["run", "--methods", "fuchi", "--concepts", "circle", "--workers", "2", "--out", str(tmp_path)])
    assert code == 2 and "--executor ray" in capsys.readouterr().err


def test_more_workers_than_the_cluster_holds_is_refused(ray_cluster, tiny_model_dir):
    from bench.core.errors import ConfigError
    from bench.run.executors import RayExecutor

    executor = RayExecutor(workers=3, threads=1)  # the test cluster has 2 CPUs
    try:
        with pytest.raises(ConfigError, match="needs 3 CPUs; the Ray cluster has 2"):
            executor.actors(_bench(tiny_model_dir).track)
    finally:
        executor.close()


def test_sweep_and_tune_hand_every_cell_to_the_executor(tiny_model_dir, tmp_path, monkeypatch):
    """The executor given to ``run_sweep``/``tune`` runs every cell they need (what --executor does)."""
    import bench.run.tune as tune_module
    from bench.run.executors import LocalExecutor
    from bench.run.sweep import run_sweep
    from bench.run.tune import TuneSpec, tune

    class Recording(LocalExecutor):
        def __init__(self) -> None:
            super().__init__()
            self.jobs: list = []

        def run(self, grid, jobs, progress=True, judges=None):
            self.jobs += jobs
            super().run(grid, jobs, progress, judges)

    bench = replace(_bench(tiny_model_dir), methods=["uce"], concepts=["circle"], attacks=(), attack_overrides={})
    executor = Recording()
    manifest = run_sweep(bench, tmp_path / "sweep", points=2, progress=False, executor=executor)
    cells = [c for point in manifest["methods"]["uce"]["points"] for c in point["cells"]]
    assert sorted(j.spec.cell_id for j in executor.jobs) == sorted(cells) and len(cells) == 2

    monkeypatch.setattr(tune_module, "tuned_path", lambda track: tmp_path / "tuned.json")
    executor = Recording()
    chosen = tune(bench.track, "uce", ["ring"], tmp_path / "tune", bench.protocol,
                  TuneSpec(grid={"erase_scale": [0.5, 1.0]}), executor)
    assert [j.spec.method_config["erase_scale"] for j in executor.jobs] == [0.5, 1.0]
    assert len(chosen["grid"]) == 2 and (tmp_path / "tuned.json").is_file()
    judges = {c["spec"]["judge"] for c in load_cells(tmp_path / "tune")}
    assert len(judges) == 1 and chosen["judge"] == judges.pop()  # the record names the judge that scored it
