"""Amplifier register maps as data: the profile TOML format, its loader and validator.

A profile says, for one amplifier model, which Modbus registers to read, what
every register, byte and bit means, and how the link is set up. Profiles ship
in ``firmware_shims/profiles/<name>.toml``; ``load_profile("generic")`` loads a
shipped one, ``load_profile(Path("site/amp.toml"))`` any file.

Format
======

::

    [profile]
    name = "generic"                 # the name the profile is known by
    description = "..."              # one line for people
    source = "..."                   # where the register map comes from

    [link]                           # defaults for the bus; a site config may override
    baudrate = 9600                  # RS-485 bits per second
    parity = "N"                     # "N", "E" or "O"
    bytesize = 8                     # 7 or 8
    stopbits = 1                     # 1 or 2
    frame_gap_ms = 20                # silence kept between two frames on the bus
    timeout_s = 1.0                  # longest wait for one answer
    max_read = 125                   # most registers read in one request (1..125)
    unit = 1                         # default Modbus unit (slave) address, 1..247

    [simulator]                      # what `loa-sim amp` shows when healthy (optional)
    output_level = 70.0              # nominal output level, in the output register's unit
    load_ohm = 125.0                 # nominal speaker-line impedance
    firmware = 103                   # value of the firmware quantity

    [[registers]]
    name = "temperature"             # unique in the profile: [a-z][a-z0-9_]*
    function = "input"               # "input" (FC 04) or "holding" (FC 03, written by FC 10)
    address = 103                    # protocol address on the wire, 0..65535
    count = 1                        # 1, or 2 for a 32-bit value (high word first)
    meaning = "heatsink temperature" # what it is, for people
    poll = true                      # read on every poll (default true)
    writable = false                 # may be written (holding registers only)
    # a whole-register value: (optional when bits or fields are given)
    quantity = "temperature_c"       # canonical quantity it gives (see QUANTITIES)
    scale = 0.1                      # value = raw * scale + offset
    offset = 0.0
    signed = false                   # raw is two's complement
    unit = "°C"                      # unit of the scaled value, for people

    [[registers.fields]]             # a value packed into some bits of the register
    name = "volume"                  # unique in the profile
    shift = 8                        # lowest bit of the field
    width = 8                        # number of bits
    quantity = "volume"              # optional; scale, offset, signed, unit, meaning as above

    [[registers.bits]]               # a single-bit meaning
    bit = 3                          # 0 = least significant bit of the register's value
    name = "over_temp"               # unique in the profile
    meaning = "heatsink over temperature"
    flag = "over_temp"               # canonical flag it raises (see FLAGS), or
    quantity = "power"               # a boolean quantity it gives (only "power")
    invert = false                   # true when the bit is active low

A register's raw value is its word, or for ``count = 2`` the 32-bit number
with the first word high; ``bit`` and ``shift`` count from its least
significant bit. A register has either a whole-register value (``quantity``/``scale``/... on the
register itself), or ``fields``, or only ``bits``; ``bits`` may be combined with
``fields`` as long as they do not overlap. Every bit, field and register name is
unique within the profile, and input and holding registers may not share an
address (a reading keeps raw words by address alone). When several registers
give the same quantity (a PA amplifier with several output modules), the
decoder combines them: ``power`` is on if any module is on, temperature and
output level take the highest, mains and battery voltage the lowest, and
flags are the union.

Callers may rely on: ``load_profile`` either returns a fully validated, frozen
``Profile`` or raises ``ProfileError`` whose ``field`` names the offending
entry as a path (``registers[3].bits[1].flag``) and whose message says what
was wrong and which file.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fleet_protocol import FaultCode

PROFILES_DIR: Final = Path(__file__).resolve().parent.parent / "profiles"


class ProfileError(ValueError):
    """A profile file that cannot be used; ``field`` is the dotted path of the bad entry."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        self.source = source
        self.field = field
        self.reason = reason
        super().__init__(f"{source}: {field}: {reason}")


class Function(enum.StrEnum):
    """Modbus register table: input registers (FC 04) or holding registers (FC 03/10)."""

    INPUT = "input"
    HOLDING = "holding"


#: Canonical flags a bit may raise, with what they mean. Fault flags map to fault codes.
FLAGS: Final[Mapping[str, str]] = {
    "over_temp": "over temperature: the amplifier has muted or shut down to cool",
    "output_short": "output short circuit (speaker line shorted)",
    "over_current": "output over current",
    "line_open": "speaker line open (no load)",
    "mains_fail": "mains supply absent or too low",
    "battery_low": "backup battery low",
    "overload": "output overload",
    "amp_fault": "amplifier self-check failed",
    "mute": "output muted",
    "playing": "a programme is playing",
    "clip": "output clipping",
    "output_limit": "output limiter active",
    "thermal_limit": "output reduced to keep temperature down",
    "sleep": "amplifier in sleep mode",
    "battery_mode": "running on the backup battery",
}

#: The fault code each fault flag stands for; flags not listed here are status only.
FLAG_FAULTS: Final[Mapping[str, FaultCode]] = {
    "over_temp": FaultCode.AMP_OVER_TEMP,
    "output_short": FaultCode.AMP_OUTPUT_SHORT,
    "over_current": FaultCode.AMP_OUTPUT_SHORT,
    "line_open": FaultCode.AMP_LINE_OPEN,
    "mains_fail": FaultCode.MAINS_FAIL,
    "battery_low": FaultCode.BATTERY_LOW,
    "overload": FaultCode.AMP_FAULT,
    "amp_fault": FaultCode.AMP_FAULT,
}

#: Canonical quantities a register or field may give. The first six are AmpState fields.
QUANTITIES: Final[Mapping[str, str]] = {
    "power": "amplifier powered on (boolean)",
    "volume": "volume setting, 0..255 in the device's own steps",
    "output_level": "output level (RMS volts, or VU steps), in the register's unit",
    "temperature_c": "amplifier temperature, °C",
    "mains_v": "mains supply voltage, V",
    "battery_v": "backup battery voltage, V",
    "load_ohm": "speaker line impedance, Ω",
    "uptime_s": "seconds since the amplifier started",
    "firmware": "firmware version number",
    "source": "selected input source number",
}

#: Quantities that are fields of fleet_protocol.AmpState.
STATE_QUANTITIES: Final = frozenset(
    {"power", "volume", "output_level", "temperature_c", "mains_v", "battery_v"}
)

_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_PROFILE_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


@dataclass(frozen=True, slots=True)
class Link:
    """Bus defaults for the model."""

    #: RS-485 bits per second.
    baudrate: int = 9600
    #: "N", "E" or "O".
    parity: str = "N"
    #: Data bits, 7 or 8.
    bytesize: int = 8
    #: Stop bits, 1 or 2.
    stopbits: int = 1
    #: Silence kept between two frames on the bus, seconds.
    frame_gap_s: float = 0.02
    #: Longest wait for one answer, seconds.
    timeout_s: float = 1.0
    #: Most registers read in one request.
    max_read: int = 125
    #: Default unit (slave) address.
    unit: int = 1


@dataclass(frozen=True, slots=True)
class Bit:
    """One bit of a register and what it means."""

    #: Bit index, 0 = least significant bit of the register's raw value.
    bit: int
    #: Unique name within the profile.
    name: str
    #: What the bit means, for people.
    meaning: str
    #: Canonical flag raised while the bit is active, or None.
    flag: str | None = None
    #: Boolean quantity the bit gives ("power"), or None.
    quantity: str | None = None
    #: The bit is active when 0.
    invert: bool = False


@dataclass(frozen=True, slots=True)
class Field:
    """A value held in ``width`` bits of a register starting at bit ``shift``."""

    #: Unique name within the profile.
    name: str
    #: Lowest bit of the field.
    shift: int
    #: Number of bits.
    width: int
    #: What the value is, for people.
    meaning: str = ""
    #: Canonical quantity it gives, or None.
    quantity: str | None = None
    #: value = raw * scale + offset.
    scale: float = 1.0
    #: See scale.
    offset: float = 0.0
    #: Raw value is two's complement over ``width`` bits.
    signed: bool = False
    #: Unit of the scaled value, for people.
    unit: str = ""

    def value(self, raw_word: int) -> float:
        """The scaled value of this field in the register's raw value."""
        raw = (raw_word >> self.shift) & ((1 << self.width) - 1)
        if self.signed and raw >= 1 << (self.width - 1):
            raw -= 1 << self.width
        # Rounded so that 1362 * 0.01 reads 13.62, not 13.620000000000001.
        return round(raw * self.scale + self.offset, 9)

    def raw(self, value: float) -> int:
        """The raw bits (already shifted) that encode ``value``, clamped to the field."""
        raw = round((value - self.offset) / self.scale)
        lo, hi = (
            (-(1 << (self.width - 1)), (1 << (self.width - 1)) - 1)
            if self.signed
            else (0, (1 << self.width) - 1)
        )
        raw = max(lo, min(hi, raw)) & ((1 << self.width) - 1)
        return raw << self.shift


@dataclass(frozen=True, slots=True)
class Register:
    """One register (or a 32-bit pair) and everything it holds."""

    #: Unique name within the profile.
    name: str
    #: Input or holding table.
    function: Function
    #: Protocol address on the wire.
    address: int
    #: 1, or 2 for a 32-bit value, high word first.
    count: int
    #: What it is, for people.
    meaning: str
    #: Read on every poll.
    poll: bool
    #: May be written (holding registers only).
    writable: bool
    #: Values packed in the register (a whole-register value is one full-width field).
    fields: tuple[Field, ...]
    #: Single-bit meanings.
    bits: tuple[Bit, ...]

    @property
    def addresses(self) -> range:
        return range(self.address, self.address + self.count)


@dataclass(frozen=True, slots=True)
class SimDefaults:
    """What the simulator shows for this model when healthy."""

    #: Nominal output level, in the output register's unit.
    output_level: float = 70.0
    #: Nominal speaker-line impedance, Ω.
    load_ohm: float = 125.0
    #: Value of the firmware quantity.
    firmware: float = 100.0


@dataclass(frozen=True, slots=True)
class Span:
    """One read request: ``count`` registers from ``address`` in table ``function``."""

    function: Function
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated amplifier register map. Build with ``load_profile`` or ``parse_profile``."""

    name: str
    description: str
    source: str
    link: Link
    simulator: SimDefaults
    registers: tuple[Register, ...]

    def register(self, name: str) -> Register:
        """The register called ``name``; KeyError if there is none."""
        for r in self.registers:
            if r.name == name:
                return r
        raise KeyError(name)

    def spans(self, max_read: int | None = None) -> tuple[Span, ...]:
        """The reads one poll makes: polled registers grouped into contiguous runs.

        Registers are merged only when they touch (no gap), so a read never asks
        for an address the device does not define; runs are cut at ``max_read``
        (default ``link.max_read``) registers.
        """
        limit = max_read or self.link.max_read
        out: list[Span] = []
        for fn in (Function.INPUT, Function.HOLDING):
            regs = sorted(
                (r for r in self.registers if r.poll and r.function is fn),
                key=lambda r: r.address,
            )
            start = count = 0
            for r in regs:
                if count and r.address == start + count and count + r.count <= limit:
                    count += r.count
                    continue
                if count:
                    out.append(Span(fn, start, count))
                start, count = r.address, r.count
            if count:
                out.append(Span(fn, start, count))
        return tuple(out)


class _Reader:
    """Pulls typed values out of a TOML table, raising ProfileError with the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, reason: str) -> ProfileError:
        return ProfileError(self.source, path, reason)

    def table(self, data: Mapping[str, Any], path: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(path, f"must be a table, got {type(data).__name__}")
        for key in data:
            if key not in allowed:
                where = f"{path}.{key}" if path else key
                raise self.fail(where, f"unknown key; allowed: {', '.join(sorted(allowed))}")
        return data

    def get(
        self,
        data: Mapping[str, Any],
        path: str,
        key: str,
        kind: type | tuple[type, ...],
        default: Any = ...,
    ) -> Any:
        where = f"{path}.{key}" if path else key
        if key not in data:
            if default is ...:
                raise self.fail(where, "missing")
            return default
        value = data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds:
            kinds = (*kinds, int)
        # TOML booleans are ints in Python; never accept one where a number is meant.
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(where, f"must be {_kind_name(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise self.fail(where, f"must be {_kind_name(kinds)}, got {value!r}")
        if float in kinds and isinstance(value, int):
            value = float(value)
        return value

    def int_in(
        self, data: Mapping[str, Any], path: str, key: str, lo: int, hi: int, default: Any = ...
    ) -> int:
        value = self.get(data, path, key, int, default)
        if not lo <= value <= hi:
            raise self.fail(f"{path}.{key}", f"must be {lo}..{hi}, got {value}")
        return int(value)

    def name(self, data: Mapping[str, Any], path: str, seen: dict[str, str]) -> str:
        value: str = self.get(data, path, "name", str)
        if not _NAME_RE.match(value):
            raise self.fail(
                f"{path}.name", f"{value!r} must match [a-z][a-z0-9_]* (at most 48 characters)"
            )
        if value in seen:
            raise self.fail(f"{path}.name", f"{value!r} already used by {seen[value]}")
        seen[value] = path
        return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    if float in kinds:
        return "a number"
    names = {
        int: "an integer",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


_VALUE_KEYS = {"quantity", "scale", "offset", "signed", "unit"}


def _field(
    r: _Reader, data: Mapping[str, Any], path: str, name: str, shift: int, width: int
) -> Field:
    quantity = r.get(data, path, "quantity", str, None)
    if quantity is not None:
        if quantity not in QUANTITIES:
            raise r.fail(
                f"{path}.quantity", f"unknown quantity {quantity!r}; known: {', '.join(QUANTITIES)}"
            )
        if quantity == "power":
            raise r.fail(f"{path}.quantity", "'power' is a boolean: give it with a bit")
    scale = r.get(data, path, "scale", float, 1.0)
    if scale == 0:
        raise r.fail(f"{path}.scale", "must not be 0")
    return Field(
        name=name,
        shift=shift,
        width=width,
        meaning=r.get(data, path, "meaning", str, ""),
        quantity=quantity,
        scale=scale,
        offset=r.get(data, path, "offset", float, 0.0),
        signed=r.get(data, path, "signed", bool, False),
        unit=r.get(data, path, "unit", str, ""),
    )


def _register(r: _Reader, data: Any, path: str, seen: dict[str, str]) -> Register:
    data = r.table(
        data,
        path,
        {"name", "function", "address", "count", "meaning", "poll", "writable", "fields", "bits"}
        | _VALUE_KEYS,
    )
    name = r.name(data, path, seen)
    fn_text = r.get(data, path, "function", str)
    try:
        function = Function(fn_text)
    except ValueError:
        raise r.fail(f"{path}.function", f"must be 'input' or 'holding', got {fn_text!r}") from None
    address = r.int_in(data, path, "address", 0, 65535)
    count = r.int_in(data, path, "count", 1, 2, 1)
    if address + count - 1 > 65535:
        raise r.fail(f"{path}.address", "register runs past address 65535")
    meaning = r.get(data, path, "meaning", str)
    poll = r.get(data, path, "poll", bool, True)
    writable = r.get(data, path, "writable", bool, False)
    if writable and function is not Function.HOLDING:
        raise r.fail(f"{path}.writable", "only holding registers can be written")
    width = 16 * count

    used: dict[int, str] = {}

    def claim(lo: int, n: int, where: str) -> None:
        for b in range(lo, lo + n):
            if b in used:
                raise r.fail(where, f"bit {b} already used by {used[b]}")
            used[b] = where

    fields: list[Field] = []
    raw_fields = r.get(data, path, "fields", list, [])
    has_value = any(k in data for k in _VALUE_KEYS)
    if raw_fields and has_value:
        key = next(k for k in _VALUE_KEYS if k in data)
        raise r.fail(f"{path}.{key}", "a register with fields gives its values in the fields")
    for i, fd in enumerate(raw_fields):
        fpath = f"{path}.fields[{i}]"
        fd = r.table(fd, fpath, {"name", "shift", "width", "meaning"} | _VALUE_KEYS)
        fname = r.name(fd, fpath, seen)
        shift = r.int_in(fd, fpath, "shift", 0, width - 1)
        fwidth = r.int_in(fd, fpath, "width", 1, width - shift)
        claim(shift, fwidth, fpath)
        fields.append(_field(r, fd, fpath, fname, shift, fwidth))

    bits: list[Bit] = []
    for i, bd in enumerate(r.get(data, path, "bits", list, [])):
        bpath = f"{path}.bits[{i}]"
        bd = r.table(bd, bpath, {"bit", "name", "meaning", "flag", "quantity", "invert"})
        bname = r.name(bd, bpath, seen)
        index = r.int_in(bd, bpath, "bit", 0, width - 1)
        claim(index, 1, bpath)
        flag = r.get(bd, bpath, "flag", str, None)
        if flag is not None and flag not in FLAGS:
            raise r.fail(f"{bpath}.flag", f"unknown flag {flag!r}; known: {', '.join(FLAGS)}")
        quantity = r.get(bd, bpath, "quantity", str, None)
        if quantity is not None and quantity != "power":
            raise r.fail(f"{bpath}.quantity", f"a bit can only give 'power', got {quantity!r}")
        if flag is not None and quantity is not None:
            raise r.fail(f"{bpath}", "give either 'flag' or 'quantity', not both")
        bits.append(
            Bit(
                bit=index,
                name=bname,
                meaning=r.get(bd, bpath, "meaning", str),
                flag=flag,
                quantity=quantity,
                invert=r.get(bd, bpath, "invert", bool, False),
            )
        )

    if not fields and not bits:
        # A plain register: its whole width is one value (possibly documented only).
        fields.append(_field(r, data, path, name, 0, width))
    return Register(
        name=name,
        function=function,
        address=address,
        count=count,
        meaning=meaning,
        poll=poll,
        writable=writable,
        fields=tuple(fields),
        bits=tuple(bits),
    )


def parse_profile(data: Mapping[str, Any], source: str = "<profile>") -> Profile:
    """Validate a profile already parsed from TOML; ``source`` names it in errors."""
    r = _Reader(source)
    data = r.table(data, "", {"profile", "link", "simulator", "registers"})
    head = r.table(r.get(data, "", "profile", dict), "profile", {"name", "description", "source"})
    name = r.get(head, "profile", "name", str)
    if not _PROFILE_NAME_RE.match(name):
        raise r.fail("profile.name", f"{name!r} must match [a-z0-9][a-z0-9_-]*")

    ld = r.table(
        r.get(data, "", "link", dict, {}),
        "link",
        {
            "baudrate",
            "parity",
            "bytesize",
            "stopbits",
            "frame_gap_ms",
            "timeout_s",
            "max_read",
            "unit",
        },
    )
    parity = r.get(ld, "link", "parity", str, "N")
    if parity not in ("N", "E", "O"):
        raise r.fail("link.parity", f"must be 'N', 'E' or 'O', got {parity!r}")
    baudrate = r.int_in(ld, "link", "baudrate", 300, 1_000_000, 9600)
    bytesize = r.int_in(ld, "link", "bytesize", 7, 8, 8)
    stopbits = r.int_in(ld, "link", "stopbits", 1, 2, 1)
    gap_ms = r.get(ld, "link", "frame_gap_ms", float, 20.0)
    if not 0 <= gap_ms <= 5000:
        raise r.fail("link.frame_gap_ms", f"must be 0..5000, got {gap_ms}")
    timeout_s = r.get(ld, "link", "timeout_s", float, 1.0)
    if not 0.05 <= timeout_s <= 30:
        raise r.fail("link.timeout_s", f"must be 0.05..30, got {timeout_s}")
    link = Link(
        baudrate=baudrate,
        parity=parity,
        bytesize=bytesize,
        stopbits=stopbits,
        frame_gap_s=gap_ms / 1000.0,
        timeout_s=timeout_s,
        max_read=r.int_in(ld, "link", "max_read", 1, 125, 125),
        unit=r.int_in(ld, "link", "unit", 1, 247, 1),
    )

    sd = r.table(
        r.get(data, "", "simulator", dict, {}),
        "simulator",
        {"output_level", "load_ohm", "firmware"},
    )
    simulator = SimDefaults(
        output_level=r.get(sd, "simulator", "output_level", float, 70.0),
        load_ohm=r.get(sd, "simulator", "load_ohm", float, 125.0),
        firmware=r.get(sd, "simulator", "firmware", float, 100.0),
    )

    seen: dict[str, str] = {}
    raw_regs = r.get(data, "", "registers", list)
    if not raw_regs:
        raise r.fail("registers", "a profile needs at least one register")
    registers = tuple(_register(r, d, f"registers[{i}]", seen) for i, d in enumerate(raw_regs))

    owner: dict[int, str] = {}
    for i, reg in enumerate(registers):
        for a in reg.addresses:
            if a in owner:
                raise r.fail(
                    f"registers[{i}].address",
                    f"address {a} already used by {owner[a]} (input and holding registers "
                    "share one address space in a reading)",
                )
            owner[a] = reg.name
    for i, reg in enumerate(registers):
        if reg.count > link.max_read:
            raise r.fail(
                "link.max_read",
                f"{link.max_read} is less than registers[{i}] ({reg.name}) needs: {reg.count}",
            )
    if not any(reg.poll for reg in registers):
        raise r.fail("registers", "no register has poll = true: a poll would read nothing")

    return Profile(
        name=name,
        description=r.get(head, "profile", "description", str, ""),
        source=r.get(head, "profile", "source", str, ""),
        link=link,
        simulator=simulator,
        registers=registers,
    )


def shipped_profiles() -> tuple[str, ...]:
    """Names of the profiles shipped in firmware_shims/profiles/."""
    return tuple(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a shipped profile by name, or a profile file by path.

    Raises ProfileError naming the field (``field`` is ``$`` for an unreadable
    file or bad TOML syntax).
    """
    if isinstance(name_or_path, str) and _PROFILE_NAME_RE.match(name_or_path):
        path = PROFILES_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ProfileError(
                name_or_path,
                "$",
                f"no such profile; shipped: {', '.join(shipped_profiles())}",
            )
    else:
        path = Path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(str(path), "$", f"cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(str(path), "$", f"not valid TOML: {exc}") from exc
    return parse_profile(data, str(path))
