"""Runs are data: a frozen spec, hashed, and a self-describing folder per (method, concept) cell.

A cell folder is built under a temporary name and renamed into place only when every file is
written, so a cell either exists complete or not at all: a ``kill -9`` at any moment loses at
most the cell in flight, and a rerun redoes exactly the missing cells.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import InputError
from bench.io import write_json

CELL_FILES = ("run_spec.json", "metrics.json", "per_image.jsonl", "timing.json", "environment.json",
              "samples.safetensors")
SPEC_VERSION = 1


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_json(data: Any) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def model_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the pipeline's config files and weights (names + bytes), cached per file stat."""
    folder = Path(folder)
    if not folder.is_dir():
        return hashlib.sha256(str(folder).encode()).hexdigest()  # a hub id: its name is what we know
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".json", ".safetensors", ".txt"}):
        h.update(str(path.relative_to(folder)).encode())
        h.update(_file_sha256(path).encode())
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


@dataclass(frozen=True)
class RunSpec:
    """Everything that changes a cell's result. Equal specs -> equal hash -> the same folder."""

    model: str
    model_sha256: str
    method: str  # "name" or "name@variant"
    method_config: dict[str, Any]
    method_version: str
    concept_set: str  # "name@version"
    concept_set_sha256: str
    concept: str
    erase_seed: int
    eval_seeds: tuple[int, ...]
    sampler: dict[str, Any]
    judge: str  # "id@version"
    metrics_version: str
    images: dict[str, Any] = field(default_factory=dict)  # where the few-shot images came from
    protocol: dict[str, Any] = field(default_factory=dict)  # prompts per concept, few-shot settings
    dtype: str = "auto"  # the pipeline's precision (auto = fp32)
    attacks: dict[str, Any] = field(default_factory=dict)  # robustness attacks: name -> version, config
    second_judge: str | None = None  # "id@version" of the second opinion (agreement per head)
    spec_version: int = SPEC_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eval_seeds"] = list(self.eval_seeds)
        return d

    @property
    def hash(self) -> str:
        return sha256_json(self.to_dict())

    @property
    def cell_id(self) -> str:
        return self.hash[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        d = dict(d)
        d["eval_seeds"] = tuple(d["eval_seeds"])
        return cls(**d)


def cell_dir(root: Path, spec: RunSpec) -> Path:
    return root / "cells" / spec.cell_id


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in CELL_FILES)


def write_cell(root: Path, spec: RunSpec, metrics: dict[str, Any], per_image: list[dict[str, Any]],
               timing: dict[str, Any], environment: dict[str, Any], extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a complete cell folder atomically (temp folder, then rename)."""
    final = cell_dir(root, spec)
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_json(tmp / "run_spec.json", {**spec.to_dict(), "hash": spec.hash})
    write_json(tmp / "metrics.json", metrics)
    write_json(tmp / "timing.json", timing)
    write_json(tmp / "environment.json", environment)
    for name, data in (extra_files or {}).items():
        (tmp / name).write_bytes(data)
    with open(tmp / "per_image.jsonl", "w", encoding="utf-8") as f:
        for row in per_image:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # an incomplete leftover of an older layout: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def clean_partial(root: Path) -> list[Path]:
    """Remove temp folders and incomplete cells left by a killed run; returns what was removed."""
    removed = []
    cells = root / "cells"
    if not cells.is_dir():
        return removed
    for d in cells.iterdir():
        if d.is_dir() and (".tmp-" in d.name or not is_complete(d)):
            shutil.rmtree(d)
            removed.append(d)
    return removed


def scan_cells(root: Path) -> list[dict[str, Any]]:
    """Every complete cell under ``root``: its spec and metrics (the report's only input)."""
    out = []
    cells = root / "cells"
    if not cells.is_dir():
        return out
    for d in sorted(cells.iterdir()):
        if ".tmp-" in d.name or not is_complete(d):
            continue
        try:
            spec = json.loads((d / "run_spec.json").read_text())
            metrics = json.loads((d / "metrics.json").read_text())
            timing = json.loads((d / "timing.json").read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"corrupt run record in {d}: {e}") from None
        out.append({"folder": str(d), "spec": spec, "metrics": metrics, "timing": timing})
    return out
