from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from fleet_protocol.config_schema import ConfigFieldError, Parse, build, convert_fields


@dataclass(frozen=True, kw_only=True)
class Inner:
    poll_s: float = 30.0
    mode: Literal["rtu", "tcp"] = "rtu"


@dataclass(frozen=True, kw_only=True)
class Outer:
    id: str
    port: int = 1
    enabled: bool = True
    path: Path | None = None
    tags: tuple[str, ...] = ()
    inner: Inner = field(default_factory=Inner)


def test_builds_typed_values() -> None:
    cfg = build(Outer, {"id": "x", "path": "/tmp/a", "tags": ["a", "b"], "inner": {"poll_s": 5}})
    assert cfg == Outer(id="x", path=Path("/tmp/a"), tags=("a", "b"), inner=Inner(poll_s=5.0))
    assert build(Outer, {"id": "x", "path": ""}).path is None


@pytest.mark.parametrize(
    ("data", "field_name", "reason"),
    [
        ({}, "id", "required but missing"),
        ({"id": "x", "port": "1"}, "port", "expected an integer"),
        ({"id": "x", "port": True}, "port", "expected an integer"),
        ({"id": "x", "enabled": 1}, "enabled", "expected true or false"),
        ({"id": "x", "tags": "a"}, "tags", "expected a list"),
        ({"id": "x", "tags": ["a", 2]}, "tags[1]", "expected a string"),
        ({"id": "x", "inner": 3}, "inner", "expected a table"),
        ({"id": "x", "inner": {"poll_s": float("nan")}}, "inner.poll_s", "finite"),
        ({"id": "x", "inner": {"mode": "usb"}}, "inner.mode", "is not one of"),
        ({"id": "x", "inner": {"pol_s": 1}}, "inner.pol_s", "unknown setting"),
        ({"id": "x", "extra": 1}, "extra", "unknown setting or section"),
    ],
)
def test_bad_values_name_the_field(data: dict[str, Any], field_name: str, reason: str) -> None:
    with pytest.raises(ConfigFieldError) as info:
        build(Outer, data)
    assert info.value.field == field_name
    assert reason in info.value.reason


@dataclass(frozen=True, kw_only=True)
class Row:
    name: str
    span: Any = None


@dataclass(frozen=True, kw_only=True)
class Rows:
    rows: tuple[Row, ...] = ()


def test_any_passes_the_value_through_and_lists_of_tables_name_their_index() -> None:
    got = build(Rows, {"rows": [{"name": "a", "span": ["6h", 3]}, {"name": "b"}]})
    assert got.rows == (Row(name="a", span=["6h", 3]), Row(name="b"))
    with pytest.raises(ConfigFieldError) as err:
        build(Rows, {"rows": [{"name": "a"}, {"name": 7}]})
    assert err.value.field == "rows[1].name"
    with pytest.raises(ConfigFieldError) as err:
        build(Rows, {"rows": [{"name": "a", "colour": "red"}]})
    assert err.value.field == "rows[0].colour"


def _even(value: Any) -> int:
    if not isinstance(value, int) or value % 2:
        raise ValueError(f"{value!r} is not an even number")
    return value


@dataclass(frozen=True)
class Cells:
    a: Annotated[int, Parse(_even)]
    b: Annotated[int, Parse(_even)] = 0
    c: str = ""


def test_parse_fields_report_every_problem_of_a_row() -> None:
    assert build(Cells, {"a": 2, "b": 4}) == Cells(a=2, b=4)
    values, errors = convert_fields(Cells, {"a": 3, "b": 5, "c": 1, "d": 0})
    assert [e.field for e in errors] == ["d", "a", "b", "c"]
    assert "3 is not an even number" in str(errors[1]) and values == {}
    values, errors = convert_fields(Cells, {"b": 2, "c": "x"})
    assert values == {"b": 2, "c": "x"} and [str(e) for e in errors] == ["a: required but missing"]
    with pytest.raises(ConfigFieldError, match="a: 3 is not an even number"):
        build(Cells, {"a": 3, "b": 5})  # the first problem, as before
