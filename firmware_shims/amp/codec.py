"""Pure translation between raw register words and amplifier readings, both ways.

``decode`` turns the words one poll read (address -> 16-bit word) into the
wire ``AmpState`` plus every named value of the profile; ``encode`` is its
inverse, used by the simulator to present its state through the same map.
Neither does I/O; both are total over their inputs: a word outside 0..65535 or
a value outside what ``AmpState`` allows becomes an entry in ``errors`` and the
quantity is left unknown, never an exception.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from firmware_shims.amp.profile import Profile, Register
from firmware_shims.readings import AmpReading
from fleet_protocol import AmpState

#: Valid ranges of the AmpState quantities (mirrors fleet_protocol.AmpState's constraints).
STATE_RANGES: dict[str, tuple[float, float]] = {
    "volume": (0, 255),
    "output_level": (0, 100000),
    "temperature_c": (-60, 250),
    "mains_v": (0, 1000),
    "battery_v": (0, 100),
}

#: How several registers giving one quantity combine (e.g. one per output module).
_COMBINE = {
    "temperature_c": max,
    "output_level": max,
    "volume": max,
    "mains_v": min,
    "battery_v": min,
}

Value = float | bool


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one set of register words means under a profile.

    ``values`` maps every field and bit name of the registers that were present
    to its scaled value (bits as booleans); ``quantities`` holds the canonical
    quantities (``power`` as bool, others as float); ``flags`` the canonical
    flags raised; ``errors`` what could not be decoded, naming the register.
    """

    state: AmpState
    values: Mapping[str, Value] = field(default_factory=dict)
    quantities: Mapping[str, Value] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    errors: tuple[str, ...] = ()


def register_value(register: Register, words: Mapping[int, int]) -> int | None:
    """The raw value of ``register`` (first word high), or None if a word is missing."""
    raw = 0
    for a in register.addresses:
        w = words.get(a)
        if w is None:
            return None
        raw = (raw << 16) | w
    return raw


def decode(profile: Profile, words: Mapping[int, int]) -> Decoded:
    """Decode the words read (address -> word); registers not present are left unknown."""
    values: dict[str, Value] = {}
    found: dict[str, list[Value]] = {}
    flags: set[str] = set()
    errors: list[str] = []
    for reg in profile.registers:
        bad = [a for a in reg.addresses if a in words and not 0 <= words[a] <= 0xFFFF]
        if bad:
            errors.append(
                f"register {reg.name} @{bad[0]}: word {words[bad[0]]} is not a 16-bit value"
            )
            continue
        raw = register_value(reg, words)
        if raw is None:
            continue
        for f in reg.fields:
            v = f.value(raw)
            values[f.name] = v
            if f.quantity is not None:
                found.setdefault(f.quantity, []).append(v)
        for b in reg.bits:
            on = bool(raw >> b.bit & 1) != b.invert
            values[b.name] = on
            if b.quantity is not None:
                found.setdefault(b.quantity, []).append(on)
            if on and b.flag is not None:
                flags.add(b.flag)

    quantities: dict[str, Value] = {}
    for q, vs in found.items():
        if q == "power":
            quantities[q] = any(vs)
        else:
            quantities[q] = _COMBINE.get(q, max)(float(v) for v in vs)

    state_values: dict[str, float] = {}
    for q, (lo, hi) in STATE_RANGES.items():
        if q not in quantities:
            continue
        v = float(quantities[q])
        if lo <= v <= hi:
            state_values[q] = v
        else:
            errors.append(f"{q} = {v:g} outside {lo:g}..{hi:g}; left unknown")
    power = quantities.get("power")
    volume = state_values.get("volume")
    state = AmpState(
        responding=True,
        power=None if power is None else bool(power),
        volume=None if volume is None else round(volume),
        output_level=state_values.get("output_level"),
        temperature_c=state_values.get("temperature_c"),
        mains_v=state_values.get("mains_v"),
        battery_v=state_values.get("battery_v"),
        flags=sorted(flags),
    )
    return Decoded(
        state=state,
        values=values,
        quantities=quantities,
        flags=frozenset(flags),
        errors=tuple(errors),
    )


def to_reading(profile: Profile, ts: float, words: Mapping[int, int]) -> AmpReading:
    """An AmpReading of words that were read successfully (``error`` lists decode problems)."""
    d = decode(profile, words)
    return AmpReading(
        ts=ts, state=d.state, error="; ".join(d.errors) or None, registers=dict(words)
    )


def encode(
    profile: Profile,
    quantities: Mapping[str, Value],
    flags: Collection[str],
    *,
    registers: Collection[str] | None = None,
) -> dict[int, int]:
    """The words that make ``decode`` give back ``quantities`` and ``flags``.

    Values are rounded to the register's resolution and clamped to what its
    bits can hold. Fields without a quantity, and quantities the profile has
    no register for, encode as zero or not at all. ``registers`` limits the
    output to the named registers.
    """
    out: dict[int, int] = {}
    power = bool(quantities.get("power", False))
    for reg in profile.registers:
        if registers is not None and reg.name not in registers:
            continue
        raw = 0
        for f in reg.fields:
            if f.quantity is not None and f.quantity in quantities:
                raw |= f.raw(float(quantities[f.quantity]))
        for b in reg.bits:
            on = (b.flag is not None and b.flag in flags) or (b.quantity == "power" and power)
            if on != b.invert:
                raw |= 1 << b.bit
        for i, a in enumerate(reversed(reg.addresses)):
            out[a] = (raw >> (16 * i)) & 0xFFFF
    return out
