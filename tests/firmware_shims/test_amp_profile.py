"""Amplifier profile format: shipped profiles load, bad profiles name the bad field."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from firmware_shims.amp.profile import (
    FLAG_FAULTS,
    FLAGS,
    Function,
    ProfileError,
    Span,
    load_profile,
    parse_profile,
    shipped_profiles,
)

DATA = Path(__file__).parent / "data"

BASE = """
[profile]
name = "test-amp"
description = "minimal valid profile"

[link]
baudrate = 19200
frame_gap_ms = 50

[simulator]
output_level = 50

[[registers]]
name = "status"
function = "input"
address = 100
meaning = "status bits"
  [[registers.bits]]
  bit = 0
  name = "on"
  meaning = "on"
  quantity = "power"
  [[registers.bits]]
  bit = 1
  name = "hot"
  meaning = "too hot"
  flag = "over_temp"

[[registers]]
name = "temperature"
function = "input"
address = 101
meaning = "temperature"
quantity = "temperature_c"
scale = 0.1
signed = true

[[registers]]
name = "level"
function = "holding"
address = 0
meaning = "volume (high byte)"
writable = true
  [[registers.fields]]
  name = "volume"
  shift = 8
  width = 8
  quantity = "volume"
"""


def _bad_cases() -> list[Any]:
    cases = tomllib.loads((DATA / "amp_bad_profiles.toml").read_text(encoding="utf-8"))["case"]
    return [pytest.param(c, id=c["id"]) for c in cases]


def _walk(doc: Any, path: list[Any]) -> tuple[Any, Any]:
    for key in path[:-1]:
        doc = doc[key]
    return doc, path[-1]


def test_base_profile_is_valid() -> None:
    p = parse_profile(tomllib.loads(BASE))
    assert p.name == "test-amp"
    assert p.link.baudrate == 19200
    assert p.link.frame_gap_s == pytest.approx(0.05)
    assert p.simulator.output_level == 50.0
    assert [r.name for r in p.registers] == ["status", "temperature", "level"]
    assert p.register("level").writable
    assert p.spans() == (Span(Function.INPUT, 100, 2), Span(Function.HOLDING, 0, 1))


@pytest.mark.parametrize("case", _bad_cases())
def test_bad_profile_names_the_field(case: dict[str, Any]) -> None:
    doc = tomllib.loads(BASE)
    if "delete" in case:
        parent, key = _walk(doc, case["delete"])
        del parent[key]
    else:
        parent, key = _walk(doc, case["set"])
        parent[key] = copy.deepcopy(case["value"])
    extra = case.get("also_set", [])
    for path, value in zip(extra[::2], extra[1::2], strict=True):
        parent, key = _walk(doc, path)
        parent[key] = value
    with pytest.raises(ProfileError) as err:
        parse_profile(doc, "bad.toml")
    assert err.value.field == case["field"], str(err.value)
    assert str(err.value).startswith(f"bad.toml: {case['field']}: ")


@pytest.mark.parametrize("name", ["generic", "pa1250d"])
def test_shipped_profiles_load(name: str) -> None:
    assert name in shipped_profiles()
    p = load_profile(name)
    assert p.name == name
    for reg in p.registers:
        for bit in reg.bits:
            assert bit.flag is None or bit.flag in FLAGS


def test_generic_profile_matches_the_board_map() -> None:
    p = load_profile("generic")
    holding = {r.name for r in p.registers if r.function is Function.HOLDING}
    assert holding == {"power_cmd", "volume", "mute_cmd", "source"}
    status = p.register("status")
    assert [b.flag or b.quantity for b in status.bits] == [
        "power", "playing", "clip", "over_temp", "output_short", "line_open", "mains_fail",
        "battery_low",
    ]  # fmt: skip
    assert p.register("temperature").fields[0].scale == pytest.approx(0.1)
    assert p.register("battery_voltage").fields[0].scale == pytest.approx(0.01)
    assert p.register("uptime").count == 2
    # One read of the contiguous input block and one of the holding block per poll.
    assert p.spans() == (Span(Function.INPUT, 100, 9), Span(Function.HOLDING, 0, 4))


def test_pa1250d_profile_follows_the_published_map() -> None:
    p = load_profile("pa1250d")
    assert p.link.frame_gap_s >= 0.3
    assert p.link.baudrate in (9600, 19200)
    assert (p.link.parity, p.link.bytesize, p.link.stopbits) == ("N", 8, 1)
    for n in range(1, 5):
        base = 30000 + 3 * (n - 1)
        assert p.register(f"m{n}_status").address == base
        assert p.register(f"m{n}_level").address == base + 1
        faults = p.register(f"m{n}_vu_faults")
        assert faults.address == base + 2
        assert {b.flag for b in faults.bits} == {
            "over_current", "mains_fail", "battery_low", "thermal_limit", "over_temp",
            "overload", "output_short", "amp_fault",
        }  # fmt: skip
        control = p.register(f"m{n}_control")
        assert control.address == 40000 + n - 1
        assert control.writable and not control.poll
    # Reads never span modules.
    assert p.spans() == tuple(Span(Function.INPUT, 30000 + 3 * i, 3) for i in range(4))


def test_every_fault_flag_has_a_fault_code() -> None:
    assert set(FLAG_FAULTS) <= set(FLAGS)
    assert {"over_temp", "output_short", "line_open", "mains_fail", "battery_low"} <= set(
        FLAG_FAULTS
    )


def test_unknown_profile_name_lists_shipped_ones() -> None:
    with pytest.raises(ProfileError, match="generic, pa1250d"):
        load_profile("no-such-amp")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "amp.toml"
    bad.write_text("[profile\nname = 1", encoding="utf-8")
    with pytest.raises(ProfileError, match="not valid TOML") as err:
        load_profile(bad)
    assert err.value.field == "$" and str(bad) in str(err.value)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.toml")


def test_profile_file_by_path(tmp_path: Path) -> None:
    path = tmp_path / "site-amp.toml"
    path.write_text(BASE, encoding="utf-8")
    assert load_profile(path).name == "test-amp"


def test_spans_respect_max_read() -> None:
    p = load_profile("generic")
    assert p.spans(max_read=4) == (
        Span(Function.INPUT, 100, 4),
        Span(Function.INPUT, 104, 4),  # the 32-bit uptime (106-107) is never split
        Span(Function.INPUT, 108, 1),
        Span(Function.HOLDING, 0, 4),
    )
