"""Ray's cost on one machine: the same grid with ``--executor local`` and ``--executor ray``, side by side.

    python -m bench.devtools.scaleout [--methods fuchi,lora_eraser,full_finetune] [--workers 2] [--out runs/scaleout]

Runs the ConceptWorld grid (test concepts, attacks off unless ``--attacks``) twice into fresh
folders under ``--out``: first in this process with torch at every CPU thread, then on Ray with
``--workers`` actors of ``CPUs / workers`` threads each (a Ray instance started for the run).
Prints and writes ``scaleout.json``: both wall times (model and actor start-up included), their
ratio, Ray's scheduling overhead per task, and in how many cells every recorded number agrees.
The two sides run torch at different thread counts, which changes float sums in the last digits:
judge-feature numbers (KID, diversity) may differ there while every verdict agrees. At equal thread
counts every number is identical (``tests/test_executors.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

FEATURES = ("kid_retain", "fid_retain", "diversity_")  # from judge features: float sums, not verdicts


def _numbers(folder: Path, verdicts_only: bool = False) -> dict:
    """A cell's recorded numbers, wall-clock and memory readings left out (they differ on every run);
    ``verdicts_only`` also leaves out the ones computed from judge features."""
    metrics = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if "seconds" not in k and "memory" not in k
            and not (verdicts_only and k.startswith(FEATURES))}


def main(argv: list[str] | None = None) -> int:
    from bench.cli.main import bench_from_args
    from bench.core.io import write_json
    from bench.run.executors import RayExecutor
    from bench.run.grid import run_bench

    ap = argparse.ArgumentParser(prog="python -m bench.devtools.scaleout", description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="fuchi,lora_eraser,full_finetune")
    ap.add_argument("--concepts", default=None)
    ap.add_argument("--seeds", default=None)
    ap.add_argument("--attacks", default="none")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="runs/scaleout")
    args = ap.parse_args(argv)
    for key in ("steps", "guidance", "set", "model", "concept_set", "judge", "images"):
        setattr(args, key, None)
    args.untuned = False
    bench = bench_from_args(args)
    out = Path(args.out)
    cpus = os.cpu_count() or 1
    threads = max(1, cpus // args.workers)
    folders = {"local": out / "local", "ray": out / "ray"}
    for f in folders.values():
        shutil.rmtree(f, ignore_errors=True)

    torch.set_num_threads(cpus)
    t0 = time.perf_counter()
    local = run_bench(bench, folders["local"])
    local_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    executor = RayExecutor(workers=args.workers, threads=threads)
    try:
        remote = run_bench(bench, folders["ray"], executor=executor)
    finally:
        executor.close()
    ray_s = time.perf_counter() - t0

    pairs = list(zip(local, remote, strict=True))
    same = [a.name for a, b in pairs if a.name == b.name and _numbers(a) == _numbers(b)]
    verdicts = [a.name for a, b in pairs if a.name == b.name and _numbers(a, True) == _numbers(b, True)]
    result = {"cells": len(local), "methods": bench.methods, "attacks": list(bench.attacks), "cpus": cpus,
              "local": {"threads": cpus, "wall_s": local_s},
              "ray": {"workers": args.workers, "threads_per_worker": threads, "wall_s": ray_s, **executor.summary()},
              "ratio_ray_over_local": ray_s / local_s, "cells_with_identical_numbers": len(same),
              "cells_with_identical_verdict_numbers": len(verdicts)}
    write_json(out / "scaleout.json", result)
    print(f"local ({cpus} threads): {local_s:.1f} s | ray ({args.workers} workers x {threads} thread(s)): "
          f"{ray_s:.1f} s | ratio {ray_s / local_s:.3f} | scheduling overhead per task: median "
          f"{result['ray']['overhead_median_s']:.3f} s, mean {result['ray']['overhead_mean_s']:.3f} s over "
          f"{result['ray']['tasks']} tasks | every number identical in {len(same)}/{len(local)} cells, every number "
          f"but the judge-feature ones ({', '.join(FEATURES)}) in {len(verdicts)}/{len(local)} -> {out / 'scaleout.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
