"""A name -> object registry with lazy ``"module:attr"`` entries and entry-point plugins.

Duplicate names are rejected (two plugins must not silently shadow each other) and a typo
gets a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from bench.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Holds named entries; a string entry ``"pkg.module:Attr"`` is imported on first ``get``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._origin: dict[str, str] = {}

    def register(self, name: str, obj: T | str, origin: str = "code") -> None:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"invalid {self.kind} name {name!r}: use letters, digits, '_' or '-'")
        if name in self._entries:
            raise ConfigError(
                f"duplicate {self.kind} name {name!r}: already registered by {self._origin[name]}, "
                f"now again by {origin}"
            )
        if isinstance(obj, str) and ":" not in obj:
            raise ConfigError(f"lazy {self.kind} entry {obj!r} must look like 'package.module:attr'")
        self._entries[name] = obj
        self._origin[name] = origin

    def load_entry_points(self, group: str) -> None:
        """Register every entry point of ``group`` (installed plugins) lazily."""
        for ep in entry_points(group=group):
            self.register(ep.name, ep.value, origin=f"entry point {ep.value!r} ({group})")

    def get(self, name: str) -> T:
        if name not in self._entries:
            hint = difflib.get_close_matches(name, list(self._entries), n=1, cutoff=0.5)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r}{suggestion} (known: {known})")
        entry = self._entries[name]
        if isinstance(entry, str):
            obj = load_target(entry, f"{self.kind} {name!r}")
            self._entries[name] = obj
            return obj
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def load_target(target: str, what: str) -> Any:
    """The object a lazy ``"package.module:attr"`` entry names; a one-line ``ConfigError`` if it cannot load."""
    module_name, attr = target.split(":", 1)
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{what} could not be loaded from {target!r}: {e}") from e


def named_registry(kind: str, entries: dict[str, str], group: str) -> Registry:
    """A registry of lazy ``"package.module:attr"`` entries by name, plus the entry points of ``group``."""
    reg: Registry = Registry(kind)
    for name, target in entries.items():
        reg.register(name, target, origin=target.split(":")[0].replace(".", "/") + ".py")
    reg.load_entry_points(group)
    return reg


def package_registry(kind: str, package: str, attr: str, group: str, skip: tuple[str, ...] = ()) -> Registry:
    """A registry of every module of ``package`` (lazily ``package.module:attr``, never imported
    here) plus the entry points of ``group``: one file adds an entry, nothing lists it twice."""
    pkg = importlib.import_module(package)
    reg: Registry = Registry(kind)
    folder = package.replace(".", "/")
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_") and mod.name not in skip:
            reg.register(mod.name, f"{package}.{mod.name}:{attr}", origin=f"{folder}/{mod.name}.py")
    reg.load_entry_points(group)
    return reg
