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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fleet_protocol import FaultCode
from fleet_protocol.config_schema import ConfigFieldError, build

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


# --- the file as written: read by the shared typed-config builder ------------------------
#
# These mirror the TOML tables key for key; ``fleet_protocol.config_schema.build``
# checks every type and refuses unknown keys, naming the dotted field
# (``registers[1].bits[0].flag``). The rules between fields follow in ``_register``
# and ``parse_profile``.


@dataclass(frozen=True, kw_only=True)
class _HeadToml:
    name: str
    description: str = ""
    source: str = ""


@dataclass(frozen=True, kw_only=True)
class _LinkToml:
    baudrate: int = 9600
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1
    frame_gap_ms: float = 20.0
    timeout_s: float = 1.0
    max_read: int = 125
    unit: int = 1


@dataclass(frozen=True, kw_only=True)
class _FieldToml:
    name: str
    shift: int
    width: int
    meaning: str = ""
    quantity: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    signed: bool = False
    unit: str = ""


@dataclass(frozen=True, kw_only=True)
class _BitToml:
    bit: int
    name: str
    meaning: str
    flag: str | None = None
    quantity: str | None = None
    invert: bool = False


@dataclass(frozen=True, kw_only=True)
class _RegisterToml:
    name: str
    function: str
    address: int
    count: int = 1
    meaning: str
    poll: bool = True
    writable: bool = False
    fields: tuple[_FieldToml, ...] = ()
    bits: tuple[_BitToml, ...] = ()
    # A plain register's own value (None: not given; a register with fields
    # gives its values in the fields).
    quantity: str | None = None
    scale: float | None = None
    offset: float | None = None
    signed: bool | None = None
    unit: str | None = None


@dataclass(frozen=True, kw_only=True)
class _ProfileToml:
    profile: _HeadToml
    link: _LinkToml = field(default_factory=_LinkToml)
    simulator: SimDefaults = field(default_factory=SimDefaults)
    registers: tuple[_RegisterToml, ...]


_VALUE_KEYS = ("quantity", "scale", "offset", "signed", "unit")


class _Rules:
    """The cross-field rules, raising ProfileError with the field's path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.seen: dict[str, str] = {}

    def fail(self, path: str, reason: str) -> ProfileError:
        return ProfileError(self.source, path, reason)

    def within(self, path: str, value: int | float, lo: float, hi: float) -> None:
        if not lo <= value <= hi:
            raise self.fail(path, f"must be {lo}..{hi}, got {value}")

    def name(self, path: str, value: str) -> str:
        if not _NAME_RE.match(value):
            raise self.fail(
                f"{path}.name", f"{value!r} must match [a-z][a-z0-9_]* (at most 48 characters)"
            )
        if value in self.seen:
            raise self.fail(f"{path}.name", f"{value!r} already used by {self.seen[value]}")
        self.seen[value] = path
        return value


def _field(r: _Rules, raw: _FieldToml | _RegisterToml, path: str, shift: int, width: int) -> Field:
    quantity = raw.quantity
    if quantity is not None:
        if quantity not in QUANTITIES:
            raise r.fail(
                f"{path}.quantity", f"unknown quantity {quantity!r}; known: {', '.join(QUANTITIES)}"
            )
        if quantity == "power":
            raise r.fail(f"{path}.quantity", "'power' is a boolean: give it with a bit")
    scale = 1.0 if raw.scale is None else raw.scale
    if scale == 0:
        raise r.fail(f"{path}.scale", "must not be 0")
    return Field(
        name=raw.name,
        shift=shift,
        width=width,
        meaning=raw.meaning,
        quantity=quantity,
        scale=scale,
        offset=raw.offset or 0.0,
        signed=bool(raw.signed),
        unit=raw.unit or "",
    )


def _register(r: _Rules, raw: _RegisterToml, path: str) -> Register:
    r.name(path, raw.name)
    try:
        function = Function(raw.function)
    except ValueError:
        raise r.fail(
            f"{path}.function", f"must be 'input' or 'holding', got {raw.function!r}"
        ) from None
    r.within(f"{path}.address", raw.address, 0, 65535)
    r.within(f"{path}.count", raw.count, 1, 2)
    if raw.address + raw.count - 1 > 65535:
        raise r.fail(f"{path}.address", "register runs past address 65535")
    if raw.writable and function is not Function.HOLDING:
        raise r.fail(f"{path}.writable", "only holding registers can be written")
    width = 16 * raw.count

    used: dict[int, str] = {}

    def claim(lo: int, n: int, where: str) -> None:
        for b in range(lo, lo + n):
            if b in used:
                raise r.fail(where, f"bit {b} already used by {used[b]}")
            used[b] = where

    given = [k for k in _VALUE_KEYS if getattr(raw, k) is not None]
    if raw.fields and given:
        raise r.fail(f"{path}.{given[0]}", "a register with fields gives its values in the fields")
    fields: list[Field] = []
    for i, fd in enumerate(raw.fields):
        fpath = f"{path}.fields[{i}]"
        r.name(fpath, fd.name)
        r.within(f"{fpath}.shift", fd.shift, 0, width - 1)
        r.within(f"{fpath}.width", fd.width, 1, width - fd.shift)
        claim(fd.shift, fd.width, fpath)
        fields.append(_field(r, fd, fpath, fd.shift, fd.width))

    bits: list[Bit] = []
    for i, bd in enumerate(raw.bits):
        bpath = f"{path}.bits[{i}]"
        r.name(bpath, bd.name)
        r.within(f"{bpath}.bit", bd.bit, 0, width - 1)
        claim(bd.bit, 1, bpath)
        if bd.flag is not None and bd.flag not in FLAGS:
            raise r.fail(f"{bpath}.flag", f"unknown flag {bd.flag!r}; known: {', '.join(FLAGS)}")
        if bd.quantity is not None and bd.quantity != "power":
            raise r.fail(f"{bpath}.quantity", f"a bit can only give 'power', got {bd.quantity!r}")
        if bd.flag is not None and bd.quantity is not None:
            raise r.fail(f"{bpath}", "give either 'flag' or 'quantity', not both")
        bits.append(
            Bit(
                bit=bd.bit,
                name=bd.name,
                meaning=bd.meaning,
                flag=bd.flag,
                quantity=bd.quantity,
                invert=bd.invert,
            )
        )

    if not fields and not bits:
        # A plain register: its whole width is one value (possibly documented only).
        fields.append(_field(r, raw, path, 0, width))
    return Register(
        name=raw.name,
        function=function,
        address=raw.address,
        count=raw.count,
        meaning=raw.meaning,
        poll=raw.poll,
        writable=raw.writable,
        fields=tuple(fields),
        bits=tuple(bits),
    )


def parse_profile(data: Mapping[str, Any], source: str = "<profile>") -> Profile:
    """Validate a profile already parsed from TOML; ``source`` names it in errors."""
    r = _Rules(source)
    if not isinstance(data, dict):
        raise r.fail("$", f"must be a table, got {type(data).__name__}")
    try:
        raw = build(_ProfileToml, data)
    except ConfigFieldError as exc:
        raise r.fail(exc.field or "$", exc.reason) from None
    if not _PROFILE_NAME_RE.match(raw.profile.name):
        raise r.fail("profile.name", f"{raw.profile.name!r} must match [a-z0-9][a-z0-9_-]*")

    ld = raw.link
    if ld.parity not in ("N", "E", "O"):
        raise r.fail("link.parity", f"must be 'N', 'E' or 'O', got {ld.parity!r}")
    r.within("link.baudrate", ld.baudrate, 300, 1_000_000)
    r.within("link.bytesize", ld.bytesize, 7, 8)
    r.within("link.stopbits", ld.stopbits, 1, 2)
    r.within("link.frame_gap_ms", ld.frame_gap_ms, 0, 5000)
    r.within("link.timeout_s", ld.timeout_s, 0.05, 30)
    r.within("link.max_read", ld.max_read, 1, 125)
    r.within("link.unit", ld.unit, 1, 247)
    link = Link(
        baudrate=ld.baudrate,
        parity=ld.parity,
        bytesize=ld.bytesize,
        stopbits=ld.stopbits,
        frame_gap_s=ld.frame_gap_ms / 1000.0,
        timeout_s=ld.timeout_s,
        max_read=ld.max_read,
        unit=ld.unit,
    )
    simulator = raw.simulator
    if not raw.registers:
        raise r.fail("registers", "a profile needs at least one register")
    registers = tuple(_register(r, d, f"registers[{i}]") for i, d in enumerate(raw.registers))

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
        name=raw.profile.name,
        description=raw.profile.description,
        source=raw.profile.source,
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
