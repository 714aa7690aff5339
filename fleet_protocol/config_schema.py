"""Typed configuration: frozen dataclasses built from parsed TOML, field by field.

The agent's and the collector's configs (and any other TOML the project reads
into dataclasses) are declared as frozen dataclasses with a comment per field;
``build(cls, data)`` checks every value against the field's type hint and
raises ``ConfigFieldError`` naming the dotted key (``modem.timeout_s``) and what
was wrong. Unknown keys are refused, so a typo never becomes a default
silently. Pure: reading the file is the caller's job.

Supported hints: ``bool``, ``int``, ``float`` (finite), ``str``, ``Path``,
``Literal[...]``, ``tuple[T, ...]``, ``T | None`` (``""`` means None),
nested dataclasses (TOML tables) and ``Any`` (the value as parsed, for a
field with its own syntax: a duration "6h" or a number, a name or a table of
weights), which the caller then reads with its own parser.

It is the one typed loader of the project's TOML: the agent's and the
collector's configs, the amplifier profiles and the fleet scenarios.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigFieldError(ValueError):
    """A bad value: ``field`` is the dotted key (``""`` for the whole document)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


def _type_name(tp: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, key: str) -> Any:
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value == "" and type(None) in get_args(tp):
            return None  # "" is how TOML says "not set" for optional values
        return _convert(value, args[0], key)
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigFieldError(key, f"{value!r:.60} is not one of {allowed}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigFieldError(key, f"expected a list, got {type(value).__name__}")
        return tuple(_convert(v, get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigFieldError(key, f"expected a table [{key}], got {type(value).__name__}")
        return build(typing.cast(type[Any], tp), value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigFieldError(key, f"expected true or false, got {value!r:.60}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigFieldError(key, f"expected an integer, got {value!r:.60}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigFieldError(key, f"expected a number, got {value!r:.60}")
        if not math.isfinite(value):
            raise ConfigFieldError(key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp in (str, Path):
        if not isinstance(value, str):
            raise ConfigFieldError(key, f"expected a {_type_name(tp)}, got {value!r:.60}")
        return Path(value) if tp is Path else value
    raise ConfigFieldError(key, f"unsupported type {tp!r}")  # a programming error


def build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """An instance of dataclass ``cls`` from ``data``; raises ConfigFieldError.

    ``prefix`` is the dotted key of ``data`` itself (for nested tables).
    """
    hints = get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else k
            what = "unknown setting" if prefix else "unknown setting or section"
            raise ConfigFieldError(where, f"{what} (known: {', '.join(sorted(names))})")
    kwargs: dict[str, Any] = {}
    for f in fields:
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigFieldError(key, "required but missing")
    return cls(**kwargs)
