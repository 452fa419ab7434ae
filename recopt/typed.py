"""Build frozen dataclasses from plain mappings, collecting every problem instead of stopping at the first.

Used by recopt.config: each problem is one line naming its dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any


def build_dataclass(cls: type, raw: Any, key: str, problems: list[str]) -> Any:
    """Build dataclass `cls` from `raw`, appending every problem found; None if it cannot be built."""
    if not isinstance(raw, Mapping):
        problems.append(f"{key or '<root>'}: expected a mapping, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for extra in sorted(set(raw) - set(fields)):
        problems.append(f"{_join(key, extra)}: unknown key (allowed: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        full = _join(key, name)
        if name not in raw:
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                values[name] = f.default_factory()  # type: ignore[misc]
                continue
            problems.append(f"{full}: missing key")
            continue
        values[name] = _coerce(hints[name], raw[name], full, problems)
    if len(values) < len(fields) or any(v is None and not _optional(hints[n]) for n, v in values.items()):
        return None
    return cls(**values)


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _coerce(hint: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value == "???":  # Hydra's mandatory-value marker, never filled in
        problems.append(f"{key}: required, no value given (set it, e.g. `{key}=...`)")
        return None
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key, problems)
    if value is None:
        problems.append(f"{key}: must not be null")
        return None
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, key, problems)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: expected a list, got {value!r}")
            return []
        return [_coerce(args[0], v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return {}
        return {k: _coerce(args[1], v, _join(key, k), problems) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
        if not math.isfinite(value):
            problems.append(f"{key}: must be a finite number, got {value!r}")
            return value
        return float(value)
    if hint is str and not isinstance(value, str):
        problems.append(f"{key}: expected a string, got {value!r}")
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def check_value(problems: list[str], key: str, value: Any, *, low: float | None = None,
           high: float | None = None, low_open: bool = False, choices: tuple[str, ...] | None = None) -> None:
    """Append a problem when `value` is outside its allowed range or set."""
    if choices is not None:
        if value not in choices:
            problems.append(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return  # already reported as a type or finiteness problem
    if low is not None and (value <= low if low_open else value < low):
        problems.append(f"{key}: {value!r} must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        problems.append(f"{key}: {value!r} must be <= {high}")


def check_unique(problems: list[str], key: str, values: list[Any]) -> None:
    """Append a problem for every value listed more than once (a grid of runs must not repeat one)."""
    seen: set[Any] = set()
    for i, v in enumerate(values):
        if v in seen:
            problems.append(f"{key}[{i}]: {v!r} is listed twice; each value is one run — remove the repeat")
        seen.add(v)
