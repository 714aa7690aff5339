"""The simulated amplifier, without any I/O: registers, faults and a clock.

``AmpEngine`` computes what a real amplifier of a given profile would show at
time ``clock()``: temperature drifting towards its working point, mains
voltage wandering around 226 V, the battery floating at 13.6 V, output level
while a programme plays, uptime. Injected faults change those physical
values and raise the profile's matching bits; ``no_response`` and
``exception_reply`` change how the engine answers at all.

The Modbus server in ``firmware_shims.amp.sim`` and the in-process
``EngineBus`` of ``firmware_shims.amp.probe`` both answer from ``read`` and
``write``, so a fleet simulator can run a thousand engines in one process with
no sockets and see exactly what a TCP or RTU client would see.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from firmware_shims.amp.codec import Value, decode, encode
from firmware_shims.amp.profile import Function, Profile
from firmware_shims.control import FaultSet

#: Faults ``loa-sim amp`` can inject.
FAULTS: Final = (
    "over_temp",
    "output_short",
    "line_open",
    "mains_fail",
    "battery_low",
    "no_response",
    "exception_reply",
)

#: Flags each physical fault raises, where the profile has a bit for them.
FAULT_FLAGS: Final[dict[str, frozenset[str]]] = {
    "over_temp": frozenset({"over_temp", "thermal_limit"}),
    "output_short": frozenset({"output_short", "over_current"}),
    "line_open": frozenset({"line_open"}),
    "mains_fail": frozenset({"mains_fail", "battery_mode"}),
    "battery_low": frozenset({"battery_low"}),
}

#: Modbus exception codes the engine answers with.
ILLEGAL_ADDRESS: Final = 2
ILLEGAL_VALUE: Final = 3
DEVICE_FAILURE: Final = 4

#: What load_ohm reads with the speaker line open (the register's top value).
OPEN_LINE_OHM: Final = 65535.0


class NoAnswer(Exception):
    """The simulated amplifier stays silent (fault ``no_response``)."""


class ExceptionReply(Exception):
    """The simulated amplifier answers with Modbus exception ``code``."""

    def __init__(self, code: int, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"exception {code}: {detail}")


class AmpEngine:
    """One simulated amplifier of ``profile``.

    ``clock`` (seconds, monotonic) drives every time-dependent value, so tests
    and the fleet simulator may pass their own. ``seed`` varies the phase of
    the drifts between amplifiers. ``faults`` is a control.FaultSet over
    FAULTS; change it at any time and the next read shows the change.
    """

    def __init__(
        self,
        profile: Profile,
        *,
        faults: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
    ) -> None:
        self.profile = profile
        self.clock = clock
        self.faults = FaultSet(FAULTS, faults)
        self.started = clock()
        rng = random.Random(seed)
        self._phase = rng.uniform(0, 2 * math.pi)
        self.power = True
        self.volume = 80.0
        self.mute = False
        self.source = 0.0
        self._tables = {
            fn: {a for r in profile.registers if r.function is fn for a in r.addresses}
            for fn in Function
        }
        self._writable = {a for r in profile.registers if r.writable for a in r.addresses}

    def address_range(self, function: Function) -> range | None:
        """The lowest..highest address the profile defines in ``function``'s table."""
        table = self._tables[function]
        return range(min(table), max(table) + 1) if table else None

    def state(self) -> tuple[dict[str, Value], set[str]]:
        """The physical quantities and active flags right now."""
        t = self.clock() - self.started
        active = self.faults.active
        wave = math.sin(2 * math.pi * t / 900 + self._phase)
        sim = self.profile.simulator
        flags: set[str] = set()
        for fault in active:
            flags |= FAULT_FLAGS.get(fault, frozenset())

        mains = 0.0 if "mains_fail" in active else 226.0 + 6.0 * wave
        if "battery_low" in active:
            battery = 10.9
        elif "mains_fail" in active:
            battery = 12.4 - 0.3 * (1 - math.exp(-t / 3600))
        else:
            battery = 13.6 + 0.05 * wave
        muted_by_fault = bool(active & {"over_temp", "output_short"})
        playing = self.power and not self.mute and not muted_by_fault
        if self.mute:
            flags.add("mute")
        if playing:
            flags.add("playing")
        output = sim.output_level * (0.95 + 0.05 * wave) if playing else 0.0
        if "over_temp" in active:
            temperature = 92.0 + 2.0 * wave
        elif self.power:
            temperature = 28.0 + 14.0 * (1 - math.exp(-t / 600)) + 1.5 * wave
        else:
            temperature = 28.0 + 1.5 * wave
        if "output_short" in active:
            load = 0.0
        elif "line_open" in active:
            load = OPEN_LINE_OHM
        else:
            load = sim.load_ohm
        quantities: dict[str, Value] = {
            "power": self.power,
            "volume": self.volume,
            "source": self.source,
            "output_level": output,
            "temperature_c": temperature,
            "mains_v": mains,
            "battery_v": battery,
            "load_ohm": load,
            "uptime_s": float(int(t)),
            "firmware": sim.firmware,
        }
        return quantities, flags

    def words(self) -> dict[int, int]:
        """Every register word of the profile, as the amplifier shows it now."""
        quantities, flags = self.state()
        return encode(self.profile, quantities, flags)

    def _answering(self) -> None:
        if "no_response" in self.faults:
            raise NoAnswer("no_response fault")
        if "exception_reply" in self.faults:
            raise ExceptionReply(DEVICE_FAILURE, "exception_reply fault")

    def read(self, function: Function, address: int, count: int) -> list[int]:
        """``count`` words from ``address`` of ``function``'s table.

        Raises NoAnswer or ExceptionReply (ILLEGAL_ADDRESS for an address the
        profile does not define, DEVICE_FAILURE under ``exception_reply``).
        """
        self._answering()
        table = self._tables[function]
        missing = [a for a in range(address, address + count) if a not in table]
        if count < 1 or missing:
            raise ExceptionReply(
                ILLEGAL_ADDRESS, f"no {function} register at {missing[0] if missing else address}"
            )
        words = self.words()
        return [words[a] for a in range(address, address + count)]

    def write(self, address: int, values: Sequence[int]) -> None:
        """Write holding registers; settings (power, volume, mute, source) take effect at once."""
        self._answering()
        span = range(address, address + len(values))
        bad = [a for a in span if a not in self._writable]
        if not values or bad:
            raise ExceptionReply(
                ILLEGAL_ADDRESS, f"no writable register at {bad[0] if bad else address}"
            )
        if any(not 0 <= v <= 0xFFFF for v in values):
            raise ExceptionReply(ILLEGAL_VALUE, "value outside 0..65535")
        written = dict(zip(span, values, strict=True))
        # Only registers written whole take effect; decode them through the profile.
        whole = {
            a: w
            for r in self.profile.registers
            if r.writable and all(a in written for a in r.addresses)
            for a, w in ((a, written[a]) for a in r.addresses)
        }
        d = decode(self.profile, whole)
        names = {r.name for r in self.profile.registers if all(a in whole for a in r.addresses)}
        for r in self.profile.registers:
            if r.name not in names:
                continue
            for f in r.fields:
                if f.quantity == "volume":
                    self.volume = float(d.values[f.name])
                elif f.quantity == "source":
                    self.source = float(d.values[f.name])
            for b in r.bits:
                if b.quantity == "power":
                    self.power = bool(d.values[b.name])
                elif b.flag == "mute":
                    self.mute = bool(d.values[b.name])
