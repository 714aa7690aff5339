"""What probes return: one frozen reading per hardware role.

A probe is ``async read() -> Reading`` plus ``aclose()``. Readings wrap the wire
sections of ``fleet_protocol`` (so the agent sends what it read, without a
mapping layer) and add what diagnosis needs as evidence: the raw answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from fleet_protocol import AmpState, ModemState, StreamState, SystemState


@dataclass(frozen=True, slots=True)
class ModemReading:
    """One poll of the modem.

    ``errors`` maps an AT command to the error it got (``+CME ERROR: 13``, a
    timeout), so diagnosis can cite it: "+CME ERROR: 13 on AT+CPIN?".
    ``raw`` maps each command to its raw answer lines, for technicians.
    """

    ts: float
    state: ModemState
    errors: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AmpReading:
    """One poll of the amplifier; ``registers`` holds the raw words read, by address."""

    ts: float
    state: AmpState
    error: str | None = None
    registers: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SystemReading:
    ts: float
    state: SystemState


@dataclass(frozen=True, slots=True)
class StreamReading:
    ts: float
    state: StreamState


Reading = ModemReading | AmpReading | SystemReading | StreamReading
R_co = TypeVar("R_co", ModemReading, AmpReading, SystemReading, StreamReading, covariant=True)


class Probe(Protocol[R_co]):
    """The one contract per hardware role.

    ``read`` never raises for a hardware failure: a modem that does not answer
    gives a reading with ``responding=False`` and the error. It raises only for
    programming errors and cancellation. ``aclose`` releases ports and sockets.
    """

    name: str

    async def read(self) -> R_co: ...

    async def aclose(self) -> None: ...
