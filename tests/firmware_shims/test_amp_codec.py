"""Register words <-> amplifier state: table-driven decode cases and round trips."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_shims.amp.codec import decode, encode, to_reading
from firmware_shims.amp.profile import load_profile
from fleet_protocol import AmpState

DATA = Path(__file__).parent / "data"
STATE_FIELDS = ("power", "volume", "output_level", "temperature_c", "mains_v", "battery_v")


def _cases() -> list[Any]:
    doc = tomllib.loads((DATA / "amp_decode_cases.toml").read_text(encoding="utf-8"))
    return [pytest.param(c, id=c["id"]) for c in doc["case"]]


@pytest.mark.parametrize("case", _cases())
def test_decode(case: dict[str, Any]) -> None:
    profile = load_profile(case["profile"])
    words = {int(a): w for a, w in case["words"].items()}
    d = decode(profile, words)
    want = case["state"]
    assert d.state.responding is True
    for name in STATE_FIELDS:
        got = getattr(d.state, name)
        if name in want:
            assert got == pytest.approx(want[name]), name
        else:
            assert got is None, name
    assert set(d.state.flags) == set(want["flags"])
    assert d.state.flags == sorted(d.state.flags)
    for name, value in case.get("values", {}).items():
        assert d.values[name] == pytest.approx(value), name
    for name in case.get("values_absent", []):
        assert name not in d.values
    for text in case.get("errors", []):
        assert any(text in e for e in d.errors), d.errors
    if not case.get("errors"):
        assert d.errors == ()


def test_reading_keeps_raw_words_and_errors() -> None:
    profile = load_profile("generic")
    r = to_reading(profile, 1_700_000_000.0, {101: 30000, 102: 230})
    assert r.registers == {101: 30000, 102: 230}
    assert r.error is not None and "temperature_c" in r.error
    assert r.state.mains_v == 230.0
    ok = to_reading(profile, 1_700_000_000.0, {102: 230})
    assert ok.error is None


_generic_values = st.fixed_dictionaries(
    {
        "power": st.booleans(),
        "volume": st.integers(0, 100),
        "temperature_c": st.integers(-400, 1500).map(lambda t: t / 10),
        "mains_v": st.integers(0, 300).map(float),
        "battery_v": st.integers(0, 2000).map(lambda v: v / 100),
        "output_level": st.integers(0, 1200).map(lambda v: v / 10),
    }
)
_generic_flags = st.sets(
    st.sampled_from(
        ["playing", "clip", "over_temp", "output_short", "line_open", "mains_fail", "battery_low"]
    )
)


@given(_generic_values, _generic_flags)
def test_generic_round_trip(values: dict[str, Any], flags: set[str]) -> None:
    profile = load_profile("generic")
    d = decode(profile, encode(profile, values, flags))
    for name, v in values.items():
        assert getattr(d.state, name) == pytest.approx(v), name
    assert set(d.state.flags) == flags
    assert d.errors == ()


@given(st.dictionaries(st.integers(0, 200), st.integers(-(2**20), 2**20), max_size=40))
def test_decode_never_raises_and_stays_on_the_wire(words: dict[int, int]) -> None:
    """Whatever words arrive, the state is one the wire protocol accepts."""
    profile = load_profile("generic")
    state = decode(profile, words).state
    assert msgspec.json.decode(msgspec.json.encode(state), type=AmpState) == state
