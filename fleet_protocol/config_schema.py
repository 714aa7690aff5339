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
``Annotated[T, Parse(fn)]`` gives a field its own parser: ``fn(value)``
returns the field's value or raises ``ValueError(reason)``, reported as that
field's error like any other.

It is the one typed loader of the project's TOML and tables: the agent's and
the collector's configs, the amplifier profiles, the fleet scenarios and the
inventory's rows (spreadsheet cells, read with ``Parse`` fields;
:func:`convert_fields` reports every bad field of a row, not only the first).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import (
    Annotated,
    Any,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

T = TypeVar("T")


class ConfigFieldError(ValueError):
    """A bad value: ``field`` is the dotted key (``""`` for the whole document)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclasses.dataclass(frozen=True)
class Parse:
    """``Annotated[T, Parse(fn)]``: the field is ``fn(value)``; ``ValueError`` is its error."""

    fn: Callable[[Any], Any]


def _type_name(tp: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, key: str) -> Any:
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Annotated:
        parse = next((m for m in tp.__metadata__ if isinstance(m, Parse)), None)
        if parse is None:
            return _convert(value, get_args(tp)[0], key)
        try:
            return parse.fn(value)
        except ValueError as exc:
            raise ConfigFieldError(key, str(exc)) from None
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
    kwargs, errors = convert_fields(cls, data, prefix)
    if errors:
        raise errors[0]
    return cls(**kwargs)


def convert_fields(
    cls: type[Any], data: dict[str, Any], prefix: str = ""
) -> tuple[dict[str, Any], list[ConfigFieldError]]:
    """Each field of dataclass ``cls`` converted from ``data``, and *every* problem.

    The keyword arguments hold the fields that converted (a bad or missing one
    is left out), so a caller reporting all of a row's errors still has the
    good values for its checks across rows.
    """
    hints = get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    errors: list[ConfigFieldError] = []
    for k in data:
        if k not in names:
            where = f"{prefix}.{k}" if prefix else k
            what = "unknown setting" if prefix else "unknown setting or section"
            errors.append(ConfigFieldError(where, f"{what} (known: {', '.join(sorted(names))})"))
    kwargs: dict[str, Any] = {}
    for f in fields:
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            try:
                kwargs[f.name] = _convert(data[f.name], hints[f.name], key)
            except ConfigFieldError as exc:
                errors.append(exc)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(ConfigFieldError(key, "required but missing"))
    return kwargs, errors
