"""A built world checked against its own ``MANIFEST.json`` before a run loads it.

``make world`` writes the sha256 of every file it exports into the world's MANIFEST. A run whose
model or judge folder lies in such a world compares every listed file with it before the first
cell, so a corrupted clone or a hand-edited weights file is refused by name instead of measured.
``--no-verify-world`` skips the check, and every cell's run spec records which was done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.core.errors import InputError
from bench.core.records import file_sha256

if TYPE_CHECKING:
    from bench.model.generation import ReferencePack

MANIFEST_NAME = "MANIFEST.json"
# the original model's references a world ships (``python -m bench.world reference``; ``ReferencePack``)
REFERENCE_PACK = "reference/references.safetensors"
# what a cell's run spec records (``RunSpec.world_check``)
VERIFIED, SKIPPED = "verified against MANIFEST.json", "not verified (--no-verify-world)"


def world_of(path: str | os.PathLike) -> Path | None:
    """The built world a track folder belongs to: the folder itself or its parent when it holds a
    ``MANIFEST.json`` that lists files (``make world``'s layout: WORLD/model, WORLD/judge, ...)."""
    path = Path(path).expanduser()
    try:
        if not path.exists():
            return None
        for folder in (path, path.parent):
            manifest = folder / MANIFEST_NAME
            if manifest.is_file() and manifest_files(manifest):
                return folder
    except OSError:  # a hub id or a name too long for the file system: no world folder
        return None
    return None


def manifest_files(manifest: Path) -> dict[str, str]:
    """``{relative path: sha256}`` that a world's MANIFEST lists (empty when it lists none)."""
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{manifest} cannot be read ({e}); restore it (git checkout) or rebuild the world "
                         "(make world)") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {name: entry["sha256"] for name, entry in files.items()
            if isinstance(entry, dict) and isinstance(entry.get("sha256"), str)}


def world_problems(world: Path) -> list[str]:
    """Every file of ``world``'s MANIFEST that is missing or whose bytes differ, one line each."""
    problems = []
    for name, expected in sorted(manifest_files(world / MANIFEST_NAME).items()):
        path = world / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif file_sha256(path) != expected:
            problems.append(f"{path} differs from {world / MANIFEST_NAME} (sha256 {file_sha256(path)[:12]}, "
                            f"listed {expected[:12]})")
    return problems


def verify_worlds(paths: Iterable[str | os.PathLike | None]) -> list[Path]:
    """Check every world the given track folders lie in; returns those worlds. One ``InputError``
    names the first bad file (and how many more) and what to do."""
    worlds = []
    for path in paths:
        world = world_of(path) if path else None
        if world is not None and world not in worlds:
            worlds.append(world)
    for world in worlds:
        problems = world_problems(world)
        if problems:
            more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
            raise InputError(f"{problems[0]}{more}: a corrupted clone or an edit; restore the world (git checkout "
                             f"-- {world}) or rebuild it (make world), or pass --no-verify-world to run on it as it is")
    return worlds


def shipped_references(model: str | os.PathLike) -> ReferencePack | None:
    """The reference pack of the world ``model`` lies in, when that world ships one and its MANIFEST lists it."""
    from bench.model.generation import ReferencePack

    world = world_of(model)
    if world is None or REFERENCE_PACK not in manifest_files(world / MANIFEST_NAME):
        return None
    return ReferencePack(world / REFERENCE_PACK)


def add_to_manifest(world: Path, rel: str) -> None:
    """List (or re-list) ``world/rel`` in the world's MANIFEST with its sha256 and size."""
    from bench.core.io import temp_path

    manifest = world / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    path = world / rel
    data.setdefault("files", {})[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    data["files"] = dict(sorted(data["files"].items()))
    tmp = temp_path(manifest)
    tmp.write_text(json.dumps(data, indent=2) + "\n")  # the layout make world writes
    os.replace(tmp, manifest)
