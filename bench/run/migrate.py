"""Upgrade a run folder to the current run spec version (``python -m bench migrate --runs DIR``).

Each cell's ``run_spec.json`` gains what the current version records (``SPEC_VERSION`` in
``bench.core.records`` says what changed), is hashed again, and the cell is renamed to its new id, its
checksums rewritten; a sweep manifest (``sweep.json``) is pointed at the new ids. Nothing measured
changes: every other file of a cell is carried over byte for byte.

A cell moves atomically: its copy is written under a temporary name and renamed into place before the
old folder goes, so a kill leaves either the old cell or the new one (or both, which the next migrate
resolves). A cell that fails verification, or whose upgrade needs something that is gone (the image
folder a version-1 folder source read), is left as it is and named with the reason. Running it again
changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.errors import InputError, RecordError
from bench.core.io import temp_path, write_json
from bench.core.records import (
    CHECKSUMS,
    SPEC_VERSION,
    RunSpec,
    cell_name,
    file_checksums,
    sha256_json,
    spec_hash,
    verify_cell,
)
from bench.report.curves import MANIFEST, read_manifest

CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".ckpt"}


@dataclass
class MigrateReport:
    """What a migrate did: cells moved (old id -> new id), cells already current, cells left with why."""

    migrated: list[tuple[str, str]] = field(default_factory=list)  # (old cell name, new id)
    current: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell name, reason)
    manifest: bool = False  # the sweep manifest was rewritten

    def lines(self) -> list[str]:
        """One line per cell that moved or could not be migrated."""
        out = [f"migrated  cell {old} -> {new}" for old, new in self.migrated]
        out += [f"FAILED    cell {name}: {reason}; left as it is" for name, reason in self.failed]
        if self.manifest:
            out.append(f"rewrote   {MANIFEST} (its points name the new cell ids)")
        return out

    def summary(self) -> str:
        """The one-line summary: counts, and what to do next."""
        text = (f"migrate: {len(self.migrated)} migrated, {len(self.current)} already current, "
                f"{len(self.failed)} failed")
        if self.failed:
            return text + " (reasons above)"
        return text + ("" if self.migrated or self.manifest else ": nothing to do")


def _v1_hash(spec: dict[str, Any]) -> str:
    """A version-1 cell's hash: sha256 over its whole spec, paths included (the rule before version 2)."""
    return sha256_json({k: v for k, v in spec.items() if k != "hash"})


def _folder_images_sha256(images: dict[str, Any]) -> str:
    """``images.sha256`` of a version-1 folder-source record, from the folder it names (as it is now)."""
    from bench.run.sources import images_sha256

    folder, first, n = images.get("folder"), int(images.get("first", 0)), int(images.get("n", 0))
    if not folder or not Path(folder).is_dir():
        raise RecordError(f"its few-shot image folder {folder} is gone, so the images' content digest cannot "
                          "be computed")
    digest = images_sha256(Path(folder), first, n)
    if digest is None:
        raise RecordError(f"its few-shot image folder {folder} holds fewer than the {first + n} images it read, "
                          "so the images' content digest cannot be computed")
    return digest


def _judge_ref(ref: str) -> str:
    """A judge ref without a path: an open_clip judge's checkpoint path becomes the file's sha256."""
    name, _, version = ref.partition("@")
    path = Path(version).expanduser()
    if not name.startswith("openclip-") or not (
            path.is_file() or "/" in version or "\\" in version or path.suffix in CHECKPOINT_SUFFIXES):
        return ref
    from bench.judges.clip import checkpoint_version

    if not path.is_file():
        raise RecordError(f"its judge {ref} names the checkpoint file {version}, which is gone, so the judge "
                          "cannot be keyed on its content")
    return f"{name}@{checkpoint_version(version)}"


def _upgrade_v1(spec: dict[str, Any]) -> dict[str, Any]:
    """A version-1 spec as version 2 records it (``SPEC_VERSION``): content digests where a path was the
    only identity. Raises ``RecordError`` where what the digest needs is gone."""
    out = {k: v for k, v in spec.items() if k != "hash"}
    images = out.get("images") or {}
    if images.get("source") == "folder" and "sha256" not in images:
        out["images"] = {**images, "sha256": _folder_images_sha256(images)}
    for key in ("judge", "second_judge"):
        if isinstance(out.get(key), str):
            out[key] = _judge_ref(out[key])
    out["spec_version"] = 2
    return out


UPGRADES = {1: _upgrade_v1}  # spec version -> the step to the next one
OLD_HASHES = {1: _v1_hash}  # spec version -> how its cells were named


def upgraded_spec(folder: Path) -> RunSpec | None:
    """The current spec of the cell in ``folder``, or None if it is current already (named by its hash).

    Raises ``RecordError`` with the reason a cell cannot be migrated: it fails verification, its name is
    not its hash, it comes from a newer version, or an upgrade step needs something that is gone."""
    problems = verify_cell(folder)
    if problems:
        raise RecordError(f"fails verification ({'; '.join(problems)})")
    try:
        spec = json.loads((folder / "run_spec.json").read_text())
    except (OSError, ValueError) as e:
        raise RecordError(f"run_spec.json is unreadable ({e})") from None
    version = spec.get("spec_version", 1)
    rule = {**OLD_HASHES, SPEC_VERSION: spec_hash}.get(version)
    if rule is None:
        raise RecordError(f"its spec is version {version!r}; this bench reads 1 to {SPEC_VERSION}")
    if rule(spec) != spec.get("hash") or folder.name != rule(spec)[:16]:
        raise RecordError(f"its name and recorded hash are not its spec's version-{version} hash")
    if version == SPEC_VERSION:
        return None
    while version < SPEC_VERSION:
        spec, version = UPGRADES[version](spec), version + 1
    try:
        return RunSpec.from_dict(spec)
    except (TypeError, KeyError, ValueError) as e:
        raise RecordError(f"its upgraded spec does not fit version {SPEC_VERSION} ({e})") from None


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a file that is carried over unchanged (no second copy of the samples), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _results(folder: Path) -> dict[str, str]:
    """The recorded sha256 of every file of a verified cell but its spec: what it measured."""
    digests = json.loads((folder / CHECKSUMS).read_text())["sha256"]
    return {name: digest for name, digest in digests.items() if name != "run_spec.json"}


def move_cell(folder: Path, spec: RunSpec) -> None:
    """Rewrite the cell in ``folder`` as ``spec``'s cell beside it: a copy under a temp name with the new
    ``run_spec.json`` and checksums, renamed into place, then the old folder removed. Where the new cell
    is there already with the same files (a migrate killed before it removed the old folder), the old
    folder is removed; with other files, ``RecordError``."""
    final = folder.parent / spec.cell_id
    if final.exists():
        if verify_cell(final):
            raise RecordError(f"its new name {final.name} is taken by a folder that fails verification; "
                              "delete that folder")
        if _results(folder) != _results(final):
            raise RecordError(f"cell {final.name} (the same spec but for its paths) is there already with other "
                              "results; delete one of the two")
        shutil.rmtree(folder)
        return
    tmp = temp_path(final)
    try:
        shutil.copytree(folder, tmp, copy_function=_link_or_copy)
        write_json(tmp / "run_spec.json", {**spec.to_dict(), "hash": spec.hash})
        write_json(tmp / CHECKSUMS, file_checksums(tmp))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder)


def rewrite_manifest(runs: Path, renamed: dict[str, str]) -> bool:
    """Point the sweep manifest's cells at their new ids; False when there is none or nothing changes."""
    manifest = read_manifest(runs)
    if not manifest or not renamed:
        return False
    changed = False
    for entry in manifest["methods"].values():
        for point in entry.get("points", []):
            new = [renamed.get(name, name) for name in point.get("cells", [])]
            changed |= new != point.get("cells", [])
            point["cells"] = new
    if changed:
        write_json(Path(runs) / MANIFEST, manifest)
    return changed


def migrate_runs(runs: Path) -> MigrateReport:
    """Upgrade every cell under ``runs/cells`` to the current spec version, and the sweep manifest.

    The manifest is rewritten first, from the planned renames: a migrate killed halfway leaves it naming
    cells the next migrate moves into place. Raises ``InputError`` when ``runs`` is no run folder."""
    from bench.core.lock import run_lock

    runs = Path(runs)
    cells = runs / "cells"
    if not cells.is_dir():
        raise InputError(f"no run folder at {runs} (no cells/ inside)")
    report = MigrateReport()
    with run_lock(runs):
        plans: dict[Path, RunSpec] = {}
        for folder in sorted(d for d in cells.iterdir() if d.is_dir() and ".tmp-" not in d.name):
            try:
                spec = upgraded_spec(folder)
            except RecordError as e:
                report.failed.append((cell_name(folder), str(e)))
                continue
            if spec is None:
                report.current.append(folder.name)
            else:
                plans[folder] = spec
        report.manifest = rewrite_manifest(runs, {f.name: s.cell_id for f, s in plans.items()})
        for folder, spec in plans.items():
            name = cell_name(folder)
            try:
                move_cell(folder, spec)
            except (RecordError, OSError) as e:
                report.failed.append((name, str(e)))
                continue
            report.migrated.append((name, spec.cell_id))
    return report
