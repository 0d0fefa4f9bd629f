"""One driver per run folder: a lock file holding the holder's PID, host and process start time.

A second ``bench run`` on a folder in use gets one clear error naming the holder. A lock left by
a killed run (its process is gone, or the PID now belongs to another process) is detected and
taken over. A lock held on another host cannot be checked from here and is reported as held.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.core.errors import RunLockedError

LOCK_NAME = ".bench-run.lock"


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (None: no such process)."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return -1.0  # alive, start time unknown


def _me() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": _start_time(pid), "since": time.time()}


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the process recorded in a lock still runs (assumed so on another host)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    started = _start_time(pid)
    if started is None:
        return False
    recorded = holder.get("started")
    if started < 0 or not isinstance(recorded, (int, float)):
        return True
    return abs(started - recorded) < 1.0  # the same PID reused by a newer process is not the holder


def _describe(holder: dict[str, Any]) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return f"PID {holder.get('pid')} on host {holder.get('host')} (since {when})"


def _try_create(path: Path, me: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    return True


def _read_holder(path: Path) -> dict[str, Any] | None:
    """The lock's content; None when it vanished; {} when unreadable (a half-written or foreign file)."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def acquire(folder: Path) -> Path:
    """Take the run folder's lock or raise ``RunLockedError``; a stale lock is taken over."""
    path = Path(folder) / LOCK_NAME
    me = _me()
    for _ in range(3):
        if _try_create(path, me):
            return path
        holder = _read_holder(path)
        if holder is None:
            continue  # released meanwhile: try again
        mine = holder.get("pid") == me["pid"] and holder.get("host") == me["host"]
        if holder and holder_alive(holder):
            if mine:
                raise RunLockedError(f"run folder {folder} is already driven by this process")
            raise RunLockedError(f"run folder {folder} is in use by another bench run: {_describe(holder)}; "
                                 f"wait for it, or stop it (if it is dead on another host, delete {path})")
        # stale: the holder was killed. Replace the lock atomically, then check we won any race.
        tmp = path.with_name(f"{LOCK_NAME}.{me['pid']}.tmp")
        tmp.write_text(json.dumps(me))
        os.replace(tmp, path)
        if (_read_holder(path) or {}).get("pid") == me["pid"]:
            return path
    raise RunLockedError(f"run folder {folder}: could not take its lock {path} (another run keeps taking it)")


def release(path: Path) -> None:
    """Remove the lock if it is still ours."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[Path]:
    """``with run_lock(out): ...``: this process drives ``out`` for the block."""
    path = acquire(folder)
    try:
        yield path
    finally:
        release(path)
