"""Where a grid's cells run: in this process (``local``) or on actors of a Ray cluster (``ray``).

Both executors hand the same ``CellJob``s to the same ``CellWorker``; only the outer loop differs,
so a grid gives the same cell folders and numbers either way (see the README, "Running on a
cluster").

Ray, in four decisions:

1. **Actors, not tasks**: each actor loads the pipeline, the judges and the concept set once and
   runs many cells (on SD a pipeline load costs more than a fast erase). One actor per GPU
   (``num_gpus=1``) where the cluster has GPUs, else actors of ``num_cpus=k`` with torch capped at
   ``k`` threads. The driver hands a cell to whichever actor is free, one at a time.
2. **The original model's images and attacks are their own tasks**, one per concept, run before
   any cell of that concept: every cell then finds them in the reference cache, so they are
   computed once per (prompt, seed), exactly as the first cell of a local run computes them (same
   calls, same batches). Letting the first cell compute them while the others wait would idle every
   other actor of that concept for a whole cell (erase and attacks included); a reference task
   idles them only for the reference itself.
3. **Actors write cell folders straight into the run folder**, which must be on storage every
   node sees (the path the driver was given). Cells are written atomically (temporary name,
   rename), so two writers never leave half a file, and the driver's copy of the grid is the run
   folder itself: nothing is lost when the driver dies. Each actor checks on start that it sees the
   driver's run folder and the same model bytes (the same path on every node).
4. **Faults**: an actor killed mid-cell is restarted by Ray (``max_restarts``) and its cell retried
   (``max_task_retries``); the half-written temporary folder it left is removed by the driver when
   the grid ends (and by the next run's start). A driver killed mid-run takes its actors with it
   and leaves only complete cells; the same command finishes the grid.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

from bench.api.judge import Judge
from bench.core.errors import BenchError, ConfigError, InputError
from bench.run.plan import Track
from bench.run.worker import CellJob, CellWorker, Grid

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install -e '.[ray]'"
RETRIES = 2  # restarts of a dead actor, and retries of the cell it was running


class WorkerError(BenchError, RuntimeError):
    """A worker died more often than it may be restarted; complete cells are kept."""


class LocalExecutor:
    """Every cell in this process, one after another, on one pipeline (the default)."""

    name = "local"

    def run(self, grid: Grid, jobs: list[CellJob], progress: bool = True,
            judges: tuple[Judge, Judge | None] | None = None) -> None:
        """``judges``: the driver's, already loaded (this process reuses them instead of loading twice)."""
        from tqdm.auto import tqdm

        worker = CellWorker(grid.bench.track, judges)
        for job in tqdm(jobs, desc="cells", disable=not progress):
            failure = worker.run(grid, job, progress)
            if failure and progress:
                tqdm.write(f"cell {job.spec.cell_id} failed, recorded: {failure}")

    def close(self) -> None:
        pass

    def shape(self, track: Track) -> tuple[int, int]:
        """(workers, torch threads per worker) this executor runs ``track``'s cells on."""
        import torch

        return 1, torch.get_num_threads()


class _Actor:
    """The body of a Ray actor: a ``CellWorker`` and the checks a remote node must pass."""

    def __init__(self, track: Track, threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.worker = CellWorker(track)
        self.checked: set[tuple[str, str]] = set()

    def _check(self, grid: Grid) -> None:
        """The run folder and the model this node sees are the driver's (once per grid folder)."""
        from bench.core.lock import LOCK_NAME
        from bench.core.records import model_fingerprint

        key = (str(grid.out), grid.model_sha)
        if key in self.checked:
            return
        host = socket.gethostname()
        if not (Path(grid.out) / LOCK_NAME).is_file():
            raise InputError(f"worker on {host} does not see the run folder {grid.out} the driver holds: "
                             "the run folder must be on storage every node shares, at the same path")
        if model_fingerprint(self.worker.track.model) != grid.model_sha:
            raise InputError(f"worker on {host}: the model at {self.worker.track.model} differs from the "
                             "driver's (sha256 of its files): every node needs the same weights at that path")
        self.checked.add(key)

    def reference(self, grid: Grid, job: CellJob) -> float:
        self._check(grid)
        t0 = time.perf_counter()
        self.worker.reference(grid, job)
        return time.perf_counter() - t0

    def run(self, grid: Grid, job: CellJob) -> tuple[str | None, float]:
        self._check(grid)
        t0 = time.perf_counter()
        failure = self.worker.run(grid, job)
        return failure, time.perf_counter() - t0

    def pid(self) -> int:
        return os.getpid()


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


class RayExecutor:
    """Cells on Ray actors that load the pipeline once; one progress bar over cells on the driver.

    ``address``: None starts a Ray instance on this machine for the run (stopped at ``close``);
    ``auto`` or ``HOST:PORT`` joins a running cluster (``ray start --head``). ``workers``: actors
    (default: the cluster's GPUs, or its CPUs over ``threads``); ``threads``: torch threads per
    CPU actor (default: the cluster's CPUs over ``workers``, at least 1).
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        if threads is not None and threads < 1:
            raise ConfigError(f"--worker-threads must be >= 1, got {threads}")
        self.ray = import_ray()
        self.started = False
        if not self.ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            try:
                self.ray.init(address=address, **kw)
            except ConnectionError as e:
                raise InputError(f"cannot reach a Ray cluster at {address!r}: {e}") from None
            self.started = True
        resources = self.ray.cluster_resources()
        self.gpus, self.cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        self.workers, self.threads = workers, threads
        self._pool: tuple[Track, list[Any]] | None = None
        self._pids: dict[Any, int] = {}
        self._running: dict[Any, tuple[str, CellJob, Any, float]] = {}  # task -> (kind, job, actor, sent)
        self.overheads: list[float] = []  # per task: round trip on the driver minus the actor's own time
        self.references_only = False  # run each concept's reference task and no cell (bench.run.shipped)

    # -- the actor pool -------------------------------------------------------------------------
    def _size(self, track: Track) -> tuple[int, int, int]:
        """(actors, GPUs per actor, CPUs per actor) for ``track`` on this cluster."""
        if self.gpus and track.device != "cpu":
            n = self.workers or self.gpus
            if n > self.gpus:
                raise ConfigError(f"--workers {n}: the Ray cluster has {self.gpus} GPU(s), one per worker")
            return n, 1, 1
        threads = self.threads or max(1, self.cpus // (self.workers or self.cpus))
        n = self.workers or max(1, self.cpus // threads)
        if n * threads > self.cpus:  # Ray would hold the extra actors back forever
            raise ConfigError(f"--workers {n} x --worker-threads {threads} needs {n * threads} CPUs; the Ray "
                              f"cluster has {self.cpus}")
        return n, 0, threads

    def shape(self, track: Track) -> tuple[int, int]:
        """(workers, torch threads per worker; 0 on GPUs) this executor runs ``track``'s cells on."""
        n, gpus, cpus = self._size(track)
        return n, 0 if gpus else cpus

    def actors(self, track: Track) -> list[Any]:
        """The pool for ``track`` (created on first use, kept for later grids on the same track)."""
        if self._pool is not None and self._pool[0] == track:
            return self._pool[1]
        self._kill_pool()
        n, gpus, cpus = self._size(track)
        cls = self.ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES)(_Actor)
        pool = [cls.options(num_gpus=gpus, num_cpus=cpus).remote(track, None if gpus else cpus) for _ in range(n)]
        from ray.exceptions import RayActorError

        try:  # waits for every actor to start: a node that cannot load the track fails here
            self._pids = dict(zip(pool, self.ray.get([a.pid.remote() for a in pool]), strict=True))
        except RayActorError as e:
            for a in pool:
                self.ray.kill(a)
            raise WorkerError(f"a Ray worker could not load the track ({track.model}): {e}") from None
        self._pool = (track, pool)
        return pool

    def busy(self) -> list[int]:
        """Process ids of the actors measuring a cell now, as started (a restarted actor has another)."""
        return [self._pids[actor] for kind, _, actor, _ in list(self._running.values()) if kind == "cell"]

    def _kill_pool(self) -> None:
        if self._pool is not None:
            for a in self._pool[1]:
                self.ray.kill(a)
            self._pool = None

    def close(self) -> None:
        self._kill_pool()
        if self.started:
            self.ray.shutdown()
            self.started = False

    # -- one grid -------------------------------------------------------------------------------
    def run(self, grid: Grid, jobs: list[CellJob], progress: bool = True, judges: Any = None) -> None:
        """Reference tasks first (one per concept), then cells whose concept's reference is done,
        each to the next free actor. ``judges`` (the driver's) stay here: each actor loads its own."""
        from tqdm.auto import tqdm

        idle = deque(self.actors(grid.bench.track))
        first: dict[str, CellJob] = {}
        for job in jobs:
            first.setdefault(job.concept, job)
        references = deque(first.values())  # a concept's reference runs with its first cell's spec
        cells, ready = deque([] if self.references_only else jobs), set()
        running = self._running
        running.clear()
        with tqdm(total=len(cells), desc=f"cells on {len(idle)} ray workers", disable=not progress) as bar:
            while references or cells or running:
                while idle and (references or any(j.concept in ready for j in cells)):
                    if references:
                        kind, job = "reference", references.popleft()
                    else:
                        kind, job = "cell", next(j for j in cells if j.concept in ready)
                        cells.remove(job)
                    actor = idle.popleft()
                    call = actor.reference if kind == "reference" else actor.run
                    running[call.remote(grid, job)] = (kind, job, actor, time.perf_counter())
                (done,), _ = self.ray.wait(list(running), num_returns=1)
                kind, job, actor, sent = running.pop(done)
                idle.append(actor)
                result = self._result(done, kind, job)
                took = result if kind == "reference" else result[1]
                self.overheads.append(time.perf_counter() - sent - took)
                if kind == "reference":
                    ready.add(job.concept)
                    continue
                bar.update()
                if result[0] and progress:
                    tqdm.write(f"cell {job.spec.cell_id} failed, recorded: {result[0]}")

    def _result(self, ref: Any, kind: str, job: CellJob) -> Any:
        """The task's value; a worker's error as itself (a ``BenchError`` stays one line)."""
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return self.ray.get(ref)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, BenchError):  # bad input seen by a worker: the one-line error
                raise cause from None
            raise
        except RayActorError as e:
            raise WorkerError(f"the worker running the {kind} of {job.method}/{job.concept} died {RETRIES + 1} "
                              f"times ({type(e).__name__}); complete cells are kept, rerun to finish the grid") from None

    def summary(self) -> dict[str, Any]:
        """Scheduling overhead per task (seconds): the driver's round trip minus the actor's work."""
        o = self.overheads
        return {"tasks": len(o), "overhead_median_s": statistics.median(o) if o else None,
                "overhead_mean_s": statistics.fmean(o) if o else None}


def build_executor(name: str = "local", address: str | None = None, workers: int | None = None,
                   threads: int | None = None) -> LocalExecutor | RayExecutor:
    """The executor ``--executor`` names (``--address``/``--workers``/``--worker-threads`` are Ray's)."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor {name!r}: choose one of {', '.join(EXECUTORS)}")
    if name == "local":
        if address is not None or workers is not None or threads is not None:
            raise ConfigError("--address, --workers and --worker-threads need --executor ray")
        return LocalExecutor()
    return RayExecutor(address, workers, threads)
