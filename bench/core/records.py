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

from bench.core.errors import InputError, RecordError
from bench.core.io import temp_path, write_json

CHECKSUMS = "checksums.json"  # sha256 of every other file, written last, inside the atomic rename
CELL_FILES = ("run_spec.json", "metrics.json", "per_image.jsonl", "timing.json", "environment.json",
              "samples.safetensors", CHECKSUMS)
# 1: the cell id hashed the whole spec, so a path spelled another way (``model`` absolute under make,
#    relative under --world), a clone in another folder or a folder image source elsewhere shared no cell.
# 2: the id hashes ``hash_key(spec)``: everything but the path-only fields (HASH_EXCLUDES), which stay in
#    run_spec.json as information; a folder image source records ``images.sha256`` (the content of the
#    images it read) and an open_clip judge's ref the sha256 of its checkpoint file instead of its path.
#    ``python -m bench migrate --runs DIR`` upgrades version-1 folders.
SPEC_VERSION = 2
# The spec fields a cell id leaves out: where something was found, never what it was (content keys it:
# ``model_sha256`` the pipeline's files, ``images.sha256`` a folder's images). A dotted name is a key inside
# a record (``images.folder``: the image folder's absolute path; ``images.notes``: notes naming files).
HASH_EXCLUDES = ("model", "images.folder", "images.notes", "world_check")


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def sha256_json(data: Any) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def hash_key(spec: dict[str, Any]) -> dict[str, Any]:
    """What a cell id covers: a spec dict without the ``HASH_EXCLUDES`` fields and its recorded ``hash``."""
    out = {k: v for k, v in spec.items() if k != "hash"}
    for name in HASH_EXCLUDES:
        top, _, key = name.partition(".")
        if not key:
            out.pop(top, None)
        elif isinstance(out.get(top), dict):
            out[top] = {k: v for k, v in out[top].items() if k != key}
    return out


def spec_hash(spec: dict[str, Any]) -> str:
    """A cell's hash from its spec dict: sha256 of ``hash_key(spec)`` (what ``RunSpec.hash`` is)."""
    return sha256_json(hash_key(spec))


def model_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the pipeline's config files and weights (names + bytes), cached per file stat."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return hashlib.sha256(str(folder).encode()).hexdigest()  # a hub id: its name is what we know
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".json", ".safetensors", ".txt"}):
        h.update(str(path.relative_to(folder)).encode())
        h.update(file_sha256(path).encode())
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, cached per (resolved path, size, mtime) for this process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = _sha256_file(path)
    return _FILE_HASHES[key]


@dataclass(frozen=True)
class RunSpec:
    """Everything that changes a cell's result. Equal content -> equal hash -> the same folder: the hash
    leaves out the path-only fields (``HASH_EXCLUDES``), so a clone elsewhere shares the cell."""

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
    # whether the built world's files were checked against its MANIFEST.json (bench.world.manifest); None:
    # no world folder (a user's model). Not hashed: a verified world is the content model_sha256 keys
    world_check: str | None = None
    spec_version: int = SPEC_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eval_seeds"] = list(self.eval_seeds)
        return d

    @property
    def hash(self) -> str:
        """sha256 of ``hash_key(self.to_dict())``: the spec's content, none of its path-only fields."""
        return spec_hash(self.to_dict())

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
    """Write a complete cell folder atomically (temp folder, checksums last, then rename).

    A write that fails (disk full, permission lost) removes the temp folder and raises one
    ``RecordError``: no partial cell is left, and a rerun redoes exactly this cell.
    """
    final = cell_dir(root, spec)
    tmp = temp_path(final)
    try:
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
        write_json(tmp / CHECKSUMS, file_checksums(tmp))
        if final.exists():  # an incomplete leftover of an older layout: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise RecordError(f"could not write cell {final.name} ({spec.method}, concept {spec.concept!r}) "
                              f"under {root}: {e.strerror or e}; no partial cell was kept, rerun to complete "
                              "the grid") from None
        raise
    return final


def file_checksums(folder: Path) -> dict[str, Any]:
    """``{"sha256": {file: digest}, "bytes": {file: size}}`` over every file of a cell but the checksums."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS)
    return {"algorithm": "sha256", "sha256": {n: _sha256_file(folder / n) for n in names},
            "bytes": {n: (folder / n).stat().st_size for n in names}}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_cell(folder: Path) -> list[str]:
    """What is wrong with a cell folder's files (empty: every file matches its recorded sha256)."""
    folder = Path(folder)
    try:
        recorded = json.loads((folder / CHECKSUMS).read_text())
        digests, sizes = recorded["sha256"], recorded["bytes"]
        if not isinstance(digests, dict) or not isinstance(sizes, dict):
            raise TypeError("not a mapping")
    except FileNotFoundError:
        return [f"no {CHECKSUMS} (incomplete, or written before records were verified)"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{CHECKSUMS} is unreadable ({type(e).__name__}: {e})"]
    problems = []
    for name in CELL_FILES:
        if name != CHECKSUMS and name not in digests:
            problems.append(f"{name} is not covered by {CHECKSUMS}")
    present = {p.name for p in folder.iterdir() if p.name != CHECKSUMS}
    for name in sorted(present - set(digests)):
        problems.append(f"unexpected file {name}")
    for name in sorted(digests):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != sizes.get(name):
            problems.append(f"{name} has {path.stat().st_size} bytes, {sizes.get(name)} were written (truncated or edited)")
        elif _sha256_file(path) != digests[name]:
            problems.append(f"{name} does not match its sha256 (edited)")
    return problems


def cell_name(folder: Path) -> str:
    """``<cell id> (<method>, concept '<name>')`` as far as the spec can be read."""
    try:
        spec = json.loads((Path(folder) / "run_spec.json").read_text())
        return f"{Path(folder).name} ({spec['method']}, concept {spec['concept']!r})"
    except (OSError, ValueError, KeyError, TypeError):
        return Path(folder).name


def verify_cells(root: Path) -> dict[Path, list[str]]:
    """Every cell folder under ``root`` (temp folders of a killed run aside) -> its problems."""
    cells = Path(root) / "cells"
    if not cells.is_dir():
        return {}
    return {d: verify_cell(d) for d in sorted(cells.iterdir()) if d.is_dir() and ".tmp-" not in d.name}


def require_verified(root: Path) -> None:
    """Raise one ``RecordError`` naming every cell whose files were truncated or edited."""
    bad = {d: p for d, p in verify_cells(root).items() if p}
    if bad:
        listed = "; ".join(f"cell {cell_name(d)}: {', '.join(p)}" for d, p in bad.items())
        raise RecordError(f"{len(bad)} run record(s) under {root} fail verification, not used: {listed}; "
                          f"delete those cell folders to recompute them (bench verify --runs {root} lists them)")


def cell_status(metrics: dict[str, Any]) -> str:
    """``ok`` for a measured cell, else why it has no numbers (``diverged``)."""
    return str(metrics.get("status", "ok"))


def write_failed_cell(root: Path, spec: RunSpec, status: str, stage: str, reason: str, info: dict[str, Any],
                      timing: dict[str, Any], environment: dict[str, Any]) -> Path:
    """A cell that produced no numbers (a diverged method), recorded like any other: atomically, so a
    rerun skips it and the report shows it, counted in no mean."""
    from safetensors.torch import save

    metrics = {"status": status, "stage": stage, "reason": reason, "method": spec.method,
               "concept": spec.concept, **info}
    return write_cell(root, spec, metrics, [], timing, environment, extra_files={"samples.safetensors": save({})})


def clean_partial(root: Path) -> list[Path]:
    """Remove temp folders and files left by a killed run or worker, and cells of an older layout
    (no checksums, so never verified: they are recomputed); returns what was removed.

    Call it only while no process writes into ``root`` (the driver, holding the run lock, before
    it hands out cells and after every cell has returned)."""
    removed = []
    cells = root / "cells"
    if cells.is_dir():
        for d in cells.iterdir():
            if d.is_dir() and (".tmp-" in d.name or not (d / CHECKSUMS).exists()):
                shutil.rmtree(d)
                removed.append(d)
    reference = root / "reference"
    if reference.is_dir():
        for f in reference.rglob("*.tmp*"):
            if f.is_file():
                f.unlink(missing_ok=True)
                removed.append(f)
    return removed


def scan_cells(root: Path) -> list[dict[str, Any]]:
    """Every cell under ``root``, verified: its spec and metrics (the report's only input).

    A cell whose files were truncated or edited by hand is an error naming it, never used.
    """
    out = []
    cells = root / "cells"
    if not cells.is_dir():
        return out
    require_verified(root)
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
