"""Frozen, JSON-serialisable hyper-parameter configs (one dataclass per method).

Unknown keys and wrong types are errors, never silently corrected: a typo in a sweep must
not quietly run the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from typing import Any, TypeVar

from bench.core.errors import ConfigError

C = TypeVar("C", bound="MethodConfig")


def _check_type(cls_name: str, name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{cls_name}.{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None) and value is None:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(cls_name, name, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{cls_name}.{name} must be {annotation}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{cls_name}.{name} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_check_type(cls_name, name, v, item) for v in value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{cls_name}.{name} must be a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an integer past the float range (JSON reads 1 followed by 400 zeros so)
            raise ConfigError(f"{cls_name}.{name} must be a finite number, got an integer of "
                              f"{value.bit_length()} bits, past the float range") from None
        if not math.isfinite(value):
            raise ConfigError(f"{cls_name}.{name} must be a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{cls_name}.{name} must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{cls_name}.{name} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{cls_name}.{name} must be a string, got {value!r}")
        return value
    return value


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config: ``from_dict``/``to_dict``/``to_json`` and validation.

    Subclasses declare typed fields with defaults and override ``validate`` for ranges.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _check_type(type(self).__name__, f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for values out of range."""

    def _require(self, ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{type(self).__name__}: {message}")

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None = None) -> C:
        data = dict(data or {})
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                raise ConfigError(
                    f"{cls.__name__} has no field {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                    + f" (fields: {', '.join(names)})"
                )
        return cls(**data)

    def replace(self: C, **changes: Any) -> C:
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal configs give equal strings and hashes."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


MAX_VALUE_CHARS = 10_000  # a config value longer than this is a mistake (a pasted file), never a setting


def parse_value(where: str, raw: str) -> Any:
    """A CLI value: JSON when it parses (``1e-5``, ``true``, ``[1, 2]``), else the plain string
    (``fast``). Refused as one ``ConfigError``: an empty value, one over ``MAX_VALUE_CHARS``, and
    JSON nested too deeply to read."""
    if not raw.strip():
        raise ConfigError(f"{where}: the value is empty; write {where}VALUE, e.g. 1e-5 or true")
    if len(raw) > MAX_VALUE_CHARS:
        raise ConfigError(f"{where}: the value is {len(raw):,} characters; at most {MAX_VALUE_CHARS:,}")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ConfigError(f"{where}: the value is nested too deeply to read") from None
    except ValueError:  # not JSON (JSONDecodeError), or an integer too long for int() (a plain string then)
        return raw


def _key(where: str, key: str) -> str:
    key = key.strip()
    if not key:
        raise ConfigError(f"{where}: the key is empty; write KEY=VALUE, e.g. lr=1e-5")
    if not re.fullmatch(r"[A-Za-z0-9_@.\-]+", key):
        raise ConfigError(f"{where}: the key {key!r} is not a config name (letters, digits and _ . @ -)")
    return key


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse CLI ``key=value`` pairs (``parse_value``); a key given twice is an error."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"config override {pair!r} must look like key=value")
        raw_key, raw = pair.split("=", 1)
        key = _key(f"--set {pair!r}", raw_key)
        if key in out:
            raise ConfigError(f"--set {key}=... is given twice; keep one value")
        out[key] = parse_value(f"--set {key}=", raw)
    return out


def parse_grid(pairs: list[str]) -> dict[str, list[Any]]:
    """Parse ``--grid key=v1,v2,...`` pairs (each value as ``parse_value`` reads it). Empty items,
    repeated values and a key given twice are errors: each names what to write instead."""
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        raw_key, sep, values = pair.partition("=")
        if not sep or not values.strip():
            raise ConfigError(f"--grid {pair!r}: use key=v1,v2,..., e.g. --grid lr=1e-5,2e-5")
        key = _key(f"--grid {pair!r}", raw_key)
        if key in grid:
            raise ConfigError(f"--grid {key}=... is given twice; list every value once: --grid {key}=v1,v2,...")
        items = values.split(",")
        if any(not v.strip() for v in items):
            raise ConfigError(f"--grid {pair!r}: an item is empty (two commas, or one at an end); "
                              f"write {key}=v1,v2,...")
        parsed = [parse_value(f"--grid {key}=", v.strip()) for v in items]
        seen = [json.dumps(v, sort_keys=True) for v in parsed]
        repeated = sorted({v for v in seen if seen.count(v) > 1})
        if repeated:
            raise ConfigError(f"--grid {key}: the value {repeated[0]} is listed twice; list each value once")
        grid[key] = parsed
    return grid
