"""Atomic file writes: a reader never sees half a file, a kill never leaves one."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from bench.core.errors import InputError


def temp_path(path: str | os.PathLike) -> Path:
    """A temporary name beside ``path`` that no other process (on any host sharing the folder) uses:
    two writers racing on one file each write their own, and the last rename wins whole."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def write_json(path: str | os.PathLike, data: Any) -> Path:
    path = Path(path)
    tmp = temp_path(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and prove it is writable, or raise one clear error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = temp_path(path / ".write-probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InputError(f"output folder {path} cannot be written: {e.strerror or e}") from None
    return path


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Append one JSON line to ``path`` in one write (several processes may append to one log)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
