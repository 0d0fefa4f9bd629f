"""Frozen, JSON-serialisable hyper-parameter configs (one dataclass per method).

Unknown keys and wrong types are errors, never silently corrected: a typo in a sweep must
not quietly run the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
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


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse CLI ``key=value`` pairs; values are read as JSON when they parse, else as strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"config override {pair!r} must look like key=value")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out
