"""The amplifier probe: reads a profile's registers over Modbus and decodes them.

Two layers:

- a *bus* moves register words: ``ModbusBus`` over pymodbus 3.16's async
  clients (``ModbusBus.tcp`` for Modbus TCP, ``ModbusBus.rtu`` for RTU on a
  serial port), or ``EngineBus`` straight over simulator engines with no
  sockets (a fleet simulator runs a thousand amplifiers in one process this
  way). One ``ModbusBus`` per physical bus: every exchange on it, from any
  probe or from the technician CLI, goes through its ``asyncio.Lock`` and
  keeps the profile's silence between frames. Each exchange has a timeout; a
  failed exchange closes the connection and the next one reconnects.
- ``AmpProbe`` implements ``Probe[AmpReading]`` for one amplifier (one unit
  address) on a bus.

Errors a bus raises are firmware_shims.errors exceptions naming the unit and
endpoint (``"read input 100+9 on unit 1 on 127.0.0.1:5020: no answer in 1.0 s"``):
``ProbeTimeout`` (no answer), ``PortUnavailable`` (cannot connect or open
the port), ``ProtocolGarbage`` (an answer that makes no sense) and
``DeviceException`` (the amplifier answered with a Modbus exception).

``AmpProbe.read`` never raises for those: a silent or unreachable amplifier
gives ``responding=False`` and the error; a Modbus exception reply gives
``responding=True`` (it did answer) with the error and no values. A failure is
logged once, and the recovery once.

Example::

    profile = load_profile("generic")
    probe = AmpProbe.rtu(profile, "/dev/ttyUSB0", unit=3)
    reading = await probe.read()
    words = await probe.read_registers(100, 9, input=True)
    await probe.aclose()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from firmware_shims.amp.codec import to_reading
from firmware_shims.amp.engine import AmpEngine, ExceptionReply, NoAnswer
from firmware_shims.amp.profile import Function, Profile
from firmware_shims.errors import PortUnavailable, ProbeTimeout, ProtocolGarbage, ShimError
from firmware_shims.readings import AmpReading
from fleet_protocol import AmpState

log = logging.getLogger(__name__)

# pymodbus logs every timeout and connection failure at ERROR with a frame dump;
# the probe turns those into one project exception and logs once per outage.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

#: Names of the standard Modbus exception codes, for messages.
EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target did not respond",
}


class DeviceException(ShimError):
    """The amplifier answered with a Modbus exception; ``code`` is its number."""

    def __init__(self, where: str, code: int, *, command: str | None = None) -> None:
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(where, f"Modbus exception {code} ({name})", command=command)


class RegisterBus(Protocol):
    """Moves register words to and from unit addresses; raises ShimError subclasses."""

    #: What the bus is, for messages: ``127.0.0.1:5020``, ``/dev/ttyUSB0``.
    endpoint: str

    async def read(self, address: int, count: int, *, input: bool, unit: int) -> list[int]: ...

    async def write(self, address: int, values: Sequence[int], *, unit: int) -> None: ...

    async def aclose(self) -> None: ...


def _command(address: int, count: int, *, input: bool) -> str:
    return f"read {'input' if input else 'holding'} {address}+{count}"


class ModbusBus:
    """One Modbus bus (a TCP endpoint or a serial port), shared by every user of it.

    Use ``ModbusBus.tcp`` or ``ModbusBus.rtu``. Safe to share between tasks:
    exchanges are serialised by one lock and separated by ``frame_gap_s``.
    Connects lazily on the first exchange, and again after any failure.
    """

    def __init__(
        self,
        endpoint: str,
        connect: Callable[[], AsyncModbusTcpClient | AsyncModbusSerialClient],
        *,
        timeout_s: float,
        frame_gap_s: float,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.frame_gap_s = frame_gap_s
        self.lock = asyncio.Lock()
        self._new_client = connect
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._last_frame = float("-inf")
        self._closed = False

    @classmethod
    def tcp(
        cls, host: str, port: int = 502, *, timeout_s: float = 1.0, frame_gap_s: float = 0.0
    ) -> ModbusBus:
        """A Modbus TCP endpoint."""

        def client() -> AsyncModbusTcpClient:
            # retries=0 and no automatic reconnect: this class owns both policies.
            return AsyncModbusTcpClient(
                host,
                port=port,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
                name=f"{host}:{port}",
            )

        return cls(f"{host}:{port}", client, timeout_s=timeout_s, frame_gap_s=frame_gap_s)

    @classmethod
    def rtu(
        cls,
        port: str,
        *,
        baudrate: int = 9600,
        parity: str = "N",
        bytesize: int = 8,
        stopbits: int = 1,
        timeout_s: float = 1.0,
        frame_gap_s: float = 0.02,
    ) -> ModbusBus:
        """Modbus RTU on a serial port (RS-485 adapter, or a simulator's pty link)."""

        def client() -> AsyncModbusSerialClient:
            return AsyncModbusSerialClient(
                port,
                baudrate=baudrate,
                parity=parity,
                bytesize=bytesize,
                stopbits=stopbits,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
                name=port,
            )

        return cls(port, client, timeout_s=timeout_s, frame_gap_s=frame_gap_s)

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _exchange(
        self,
        command: str,
        unit: int,
        call: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        where = f"unit {unit} on {self.endpoint}"
        async with self.lock:
            if self._closed:
                raise PortUnavailable(where, "bus closed", command=command)
            wait = self._last_frame + self.frame_gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                # Connect and exchange each get timeout_s; the outer bound only
                # guards against the library itself hanging.
                async with asyncio.timeout(2 * self.timeout_s + 0.5):
                    if self._client is None or not self._client.connected:
                        self._drop()
                        self._client = self._new_client()
                        if not await self._client.connect():
                            raise PortUnavailable(where, "cannot connect", command=command)
                    response = await call(self._client)
            except PortUnavailable:
                self._drop()
                raise
            except (TimeoutError, ModbusIOException) as exc:
                self._drop()
                raise ProbeTimeout(
                    where, f"no answer in {self.timeout_s:.1f} s", command=command
                ) from exc
            except (ConnectionException, OSError) as exc:
                self._drop()
                raise PortUnavailable(where, f"connection failed: {exc}", command=command) from exc
            except ModbusException as exc:
                self._drop()
                raise ProtocolGarbage(where, str(exc), command=command) from exc
            finally:
                self._last_frame = time.monotonic()
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise DeviceException(where, code, command=command)
        return response

    async def read(self, address: int, count: int, *, input: bool, unit: int) -> list[int]:
        """``count`` words from ``address`` (input registers if ``input``, else holding)."""
        command = _command(address, count, input=input)

        async def call(client: Any) -> Any:
            if input:
                return await client.read_input_registers(address, count=count, device_id=unit)
            return await client.read_holding_registers(address, count=count, device_id=unit)

        response = await self._exchange(command, unit, call)
        words = list(response.registers)
        if len(words) != count:
            raise ProtocolGarbage(
                f"unit {unit} on {self.endpoint}",
                f"asked for {count} registers, got {len(words)}",
                command=command,
            )
        return words

    async def write(self, address: int, values: Sequence[int], *, unit: int) -> None:
        """Write holding registers with function 10h."""
        command = f"write holding {address}+{len(values)}"

        async def call(client: Any) -> Any:
            return await client.write_registers(address, list(values), device_id=unit)

        await self._exchange(command, unit, call)

    async def aclose(self) -> None:
        """Close the connection; later exchanges raise PortUnavailable."""
        async with self.lock:
            self._closed = True
            self._drop()


class EngineBus:
    """A bus straight onto simulator engines, keyed by unit: no sockets, no waiting.

    Answers exactly as the Modbus server in ``firmware_shims.amp.sim`` would,
    except that ``no_response`` fails at once instead of after a timeout.
    """

    def __init__(self, engines: Mapping[int, AmpEngine], *, name: str = "simulator") -> None:
        self.endpoint = name
        self.engines = dict(engines)

    def _engine(self, unit: int, command: str) -> AmpEngine:
        engine = self.engines.get(unit)
        if engine is None:
            raise ProbeTimeout(f"unit {unit} on {self.endpoint}", "no answer", command=command)
        return engine

    async def read(self, address: int, count: int, *, input: bool, unit: int) -> list[int]:
        command = _command(address, count, input=input)
        where = f"unit {unit} on {self.endpoint}"
        engine = self._engine(unit, command)
        try:
            return engine.read(Function.INPUT if input else Function.HOLDING, address, count)
        except NoAnswer as exc:
            raise ProbeTimeout(where, "no answer", command=command) from exc
        except ExceptionReply as exc:
            raise DeviceException(where, exc.code, command=command) from exc

    async def write(self, address: int, values: Sequence[int], *, unit: int) -> None:
        command = f"write holding {address}+{len(values)}"
        where = f"unit {unit} on {self.endpoint}"
        engine = self._engine(unit, command)
        try:
            engine.write(address, values)
        except NoAnswer as exc:
            raise ProbeTimeout(where, "no answer", command=command) from exc
        except ExceptionReply as exc:
            raise DeviceException(where, exc.code, command=command) from exc

    async def aclose(self) -> None:
        return None


class AmpProbe:
    """``Probe[AmpReading]`` for one amplifier (``unit``) of ``profile`` on ``bus``.

    ``owns_bus``: ``aclose`` also closes the bus (set by the ``tcp``/``rtu``/
    ``in_process`` constructors; leave False when the bus is shared).
    """

    def __init__(
        self,
        profile: Profile,
        bus: RegisterBus,
        *,
        unit: int | None = None,
        name: str = "amp",
        owns_bus: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.profile = profile
        self.bus = bus
        self.unit = profile.link.unit if unit is None else unit
        self.owns_bus = owns_bus
        self.clock = clock
        self._spans = profile.spans()
        self._failing: str | None = None

    @classmethod
    def tcp(
        cls,
        profile: Profile,
        host: str,
        port: int = 502,
        *,
        unit: int | None = None,
        timeout_s: float | None = None,
        frame_gap_s: float | None = None,
        name: str = "amp",
    ) -> AmpProbe:
        """A probe with its own Modbus TCP connection; link defaults from the profile."""
        link = profile.link
        bus = ModbusBus.tcp(
            host,
            port,
            timeout_s=link.timeout_s if timeout_s is None else timeout_s,
            # Modbus TCP devices need no inter-frame silence unless the profile's
            # gap is for the device itself (a gateway in front of RS-485 adds it).
            frame_gap_s=0.0 if frame_gap_s is None else frame_gap_s,
        )
        return cls(profile, bus, unit=unit, name=name, owns_bus=True)

    @classmethod
    def rtu(
        cls,
        profile: Profile,
        port: str,
        *,
        unit: int | None = None,
        baudrate: int | None = None,
        timeout_s: float | None = None,
        frame_gap_s: float | None = None,
        name: str = "amp",
    ) -> AmpProbe:
        """A probe with its own serial port; link defaults from the profile."""
        link = profile.link
        bus = ModbusBus.rtu(
            port,
            baudrate=link.baudrate if baudrate is None else baudrate,
            parity=link.parity,
            bytesize=link.bytesize,
            stopbits=link.stopbits,
            timeout_s=link.timeout_s if timeout_s is None else timeout_s,
            frame_gap_s=link.frame_gap_s if frame_gap_s is None else frame_gap_s,
        )
        return cls(profile, bus, unit=unit, name=name, owns_bus=True)

    @classmethod
    def in_process(
        cls,
        engine: AmpEngine,
        *,
        unit: int = 1,
        name: str = "amp",
        clock: Callable[[], float] = time.time,
    ) -> AmpProbe:
        """A probe reading straight from a simulator engine (no sockets)."""
        bus = EngineBus({unit: engine}, name=f"simulator {engine.profile.name}")
        return cls(engine.profile, bus, unit=unit, name=name, owns_bus=True, clock=clock)

    def _note(self, error: ShimError | None) -> None:
        """Log a failure once when it starts (or changes kind), and the recovery once."""
        if error is None:
            if self._failing is not None:
                log.info(
                    "%s: amplifier answering again (unit %s on %s)",
                    self.name,
                    self.unit,
                    self.bus.endpoint,
                )
                self._failing = None
            return
        kind = type(error).__name__
        if self._failing != kind:
            log.warning("%s: %s", self.name, error)
            self._failing = kind

    async def read(self) -> AmpReading:
        """Read every polled register and decode; never raises for hardware failure."""
        words: dict[int, int] = {}
        ts = self.clock()
        try:
            for span in self._spans:
                got = await self.bus.read(
                    span.address, span.count, input=span.function is Function.INPUT, unit=self.unit
                )
                words.update(zip(range(span.address, span.address + span.count), got, strict=True))
        except DeviceException as exc:
            self._note(exc)
            return AmpReading(
                ts=ts, state=AmpState(responding=True), error=str(exc), registers=words
            )
        except ShimError as exc:
            self._note(exc)
            return AmpReading(
                ts=ts, state=AmpState(responding=False), error=str(exc), registers=words
            )
        self._note(None)
        return to_reading(self.profile, ts, words)

    async def read_registers(self, address: int, count: int, *, input: bool) -> list[int]:
        """Raw words for the technician CLI, through the bus's lock; raises ShimError."""
        return await self.bus.read(address, count, input=input, unit=self.unit)

    async def write_registers(self, address: int, values: Sequence[int]) -> None:
        """Write holding registers (function 10h) through the bus's lock; raises ShimError."""
        await self.bus.write(address, values, unit=self.unit)

    async def aclose(self) -> None:
        if self.owns_bus:
            await self.bus.aclose()
