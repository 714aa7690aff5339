"""``AtPort``: one async AT channel per modem, shared by the poller and technicians.

``await port.command("AT+CSQ", timeout=2.0) -> AtResponse`` sends one command
and frames its answer. Callers may rely on:

- **one exchange at a time**: every ``command`` takes ``port.lock`` (one
  ``asyncio.Lock`` per port). Hold the lock yourself (``async with
  port.lock:``) and call ``exchange`` to run several commands back to back
  with nothing in between (a poll, a technician's session).
- **a timeout on every exchange**: no answer (or no final result code) in
  ``timeout`` seconds raises ``ProbeTimeout("AT+CSQ on /dev/ttyUSB2: no
  answer in 2.0 s")``; nothing waits forever.
- **a gap** of ``gap`` seconds between the end of one exchange and the next
  command, as slow modem firmware needs.
- **noise and URCs are not answers**: bytes outside printable ASCII are
  dropped (counted in ``garbage_bytes``), lines left over from earlier
  exchanges are drained before sending (``stale_lines``), unsolicited result
  codes go to ``urcs`` (the last 50), and while the modem echoes, result codes
  that arrive before our own echo are a late answer to an earlier command and
  are skipped.
- **re-enumeration**: when the device path vanishes (a USB modem resetting)
  ``command`` raises ``PortUnavailable``; when the path comes back (or now
  names another device) the next ``command`` reopens it.
- **our errors only**: pyserial and OS errors become ``PortUnavailable``
  naming the port and the command.

``AtPort(path)`` talks to a serial device through pyserial-asyncio-fast.
``AtPort.for_engine(engine)`` has the same interface but talks to an
in-process simulator engine (``firmware_shims.modem.sim.ModemEngine``)
without a pty, so one process can drive a thousand simulated modems.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import serial
import serial_asyncio_fast

from firmware_shims.errors import PortUnavailable, ProbeTimeout
from firmware_shims.modem.at import AtResponse, Framer, is_final, is_urc

log = logging.getLogger(__name__)

_LINE_SPLIT = re.compile(rb"[\r\n]")
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
#: A partial line longer than this is noise, not an answer.
_MAX_LINE = 4096


class _Chunk(Protocol):
    @property
    def delay(self) -> float: ...

    @property
    def data(self) -> bytes: ...


class AtEngine(Protocol):
    """What ``AtPort.for_engine`` needs from a simulator engine."""

    def feed(self, data: bytes) -> Sequence[_Chunk]: ...

    def tick(self) -> Sequence[_Chunk]: ...


class _Lines:
    """Bytes in, printable lines out; counts the noise it drops."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque()
        self.partial = bytearray()
        self.garbage_bytes = 0
        self.arrived = asyncio.Event()
        self.closed: BaseException | None = None
        #: Armed while a text-entry command (AT+CMGS) waits for the modem's "> ".
        self.want_prompt = False
        self.prompted = False

    def feed(self, data: bytes) -> None:
        self.partial += data
        *complete, rest = _LINE_SPLIT.split(bytes(self.partial))
        self.partial = bytearray(rest)
        if len(self.partial) > _MAX_LINE:
            self.garbage_bytes += len(self.partial)
            self.partial.clear()
        for raw in complete:
            clean = _NOT_PRINTABLE.sub(b"", raw)
            self.garbage_bytes += len(raw) - len(clean)
            text = clean.decode("ascii").strip()
            if text:
                self.lines.append(text)
        if self.want_prompt and _NOT_PRINTABLE.sub(b"", bytes(self.partial)).strip() == b">":
            # The prompt ends with a space, not a line end: it is its own signal.
            self.partial.clear()
            self.prompted = True
            self.arrived.set()
        if self.lines:
            self.arrived.set()

    def take_prompt(self) -> bool:
        """Whether the prompt arrived (once); disarms it."""
        if self.prompted:
            self.prompted = self.want_prompt = False
            return True
        return False

    def close(self, exc: BaseException | None) -> None:
        self.closed = exc or ConnectionError("port closed")
        self.arrived.set()

    def pop(self) -> str | None:
        if self.lines:
            return self.lines.popleft()
        self.arrived.clear()
        return None


class _Channel(Protocol):
    where: str

    @property
    def is_open(self) -> bool: ...

    async def open(self) -> None: ...

    def changed(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    async def readline(self) -> str: ...

    def drain(self) -> list[str]: ...

    def arm_prompt(self, on: bool) -> None: ...

    @property
    def garbage_bytes(self) -> int: ...

    async def aclose(self) -> None: ...


class _SerialProtocol(asyncio.Protocol):
    def __init__(self, lines: _Lines) -> None:
        self.lines = lines
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.lines.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lines.close(exc)
        if not self.lost.done():
            self.lost.set_result(None)


class _SerialChannel:
    """A serial device through pyserial-asyncio-fast."""

    def __init__(self, path: Path, baudrate: int) -> None:
        self.path = path
        self.where = str(path)
        self.baudrate = baudrate
        self._lines = _Lines()
        self._garbage_before = 0
        self._transport: Any = None
        self._protocol: _SerialProtocol | None = None
        self._device: tuple[int, int] | None = None

    @property
    def is_open(self) -> bool:
        return self._transport is not None and self._lines.closed is None

    @property
    def garbage_bytes(self) -> int:
        return self._garbage_before + self._lines.garbage_bytes

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_rdev, st.st_ino)

    def changed(self) -> bool:
        return self._identity() != self._device

    async def open(self) -> None:
        device = self._identity()
        if device is None:
            raise PortUnavailable(
                self.where, "device path does not exist (unplugged or re-enumerating)"
            )
        try:
            # Opening a tty is a quick local syscall; doing it inline avoids
            # the executor thread serial_asyncio_fast would start for it.
            ser = serial.Serial(str(self.path), self.baudrate, timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortUnavailable(self.where, f"cannot open: {exc}") from exc
        self._garbage_before += self._lines.garbage_bytes
        self._lines = _Lines()
        loop = asyncio.get_running_loop()
        protocol = _SerialProtocol(self._lines)
        try:
            transport, _ = await serial_asyncio_fast.connection_for_serial(
                loop, lambda: protocol, ser
            )
        except (serial.SerialException, OSError) as exc:
            ser.close()
            raise PortUnavailable(self.where, f"cannot attach: {exc}") from exc
        self._transport, self._protocol, self._device = transport, protocol, device

    def write(self, data: bytes) -> None:
        if not self.is_open:
            raise PortUnavailable(self.where, "port is closed")
        try:
            self._transport.write(data)
        except (serial.SerialException, OSError) as exc:
            raise PortUnavailable(self.where, f"write failed: {exc}") from exc

    async def readline(self) -> str:
        """The next line; "" when an armed ``> `` prompt arrived instead."""
        while True:
            line = self._lines.pop()
            if line is not None:
                return line
            if self._lines.take_prompt():
                return ""
            if self._lines.closed is not None:
                raise PortUnavailable(self.where, f"port closed: {self._lines.closed}")
            await self._lines.arrived.wait()

    def drain(self) -> list[str]:
        out = list(self._lines.lines)
        self._lines.lines.clear()
        self._lines.arrived.clear()
        return out

    def arm_prompt(self, on: bool) -> None:
        self._lines.want_prompt, self._lines.prompted = on, False

    async def aclose(self) -> None:
        transport, protocol = self._transport, self._protocol
        self._transport = self._protocol = None
        if transport is None or protocol is None:
            return
        transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await protocol.lost
        if not protocol.lost.done():
            transport.abort()


class _EngineChannel:
    """An in-process simulator engine: writes are fed to it, its output is
    released to the reader when each chunk's delay has passed."""

    def __init__(self, engine: AtEngine, name: str, tick_interval: float) -> None:
        self.engine = engine
        self.where = name
        self.tick_interval = tick_interval
        self._lines = _Lines()
        self._due: collections.deque[tuple[float, bytes]] = collections.deque()
        self._last_due = 0.0
        self._open = False

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def garbage_bytes(self) -> int:
        return self._lines.garbage_bytes

    async def open(self) -> None:
        self._open = True

    def changed(self) -> bool:
        return False

    def _schedule(self, chunks: Sequence[_Chunk]) -> None:
        now = asyncio.get_running_loop().time()
        for c in chunks:
            due = max(now + c.delay, self._last_due)
            self._last_due = due
            self._due.append((due, c.data))

    def _pump(self) -> float | None:
        """Release what is due; return seconds until the next pending chunk."""
        self._schedule(self.engine.tick())
        now = asyncio.get_running_loop().time()
        while self._due and self._due[0][0] <= now:
            self._lines.feed(self._due.popleft()[1])
        return self._due[0][0] - now if self._due else None

    def write(self, data: bytes) -> None:
        if not self._open:
            raise PortUnavailable(self.where, "port is closed")
        self._schedule(self.engine.feed(data))

    async def readline(self) -> str:
        while True:
            wait = self._pump()
            line = self._lines.pop()
            if line is not None:
                return line
            if self._lines.take_prompt():
                return ""
            await asyncio.sleep(min(wait, self.tick_interval) if wait else self.tick_interval)

    def drain(self) -> list[str]:
        self._pump()
        out = list(self._lines.lines)
        self._lines.lines.clear()
        return out

    def arm_prompt(self, on: bool) -> None:
        self._lines.want_prompt, self._lines.prompted = on, False

    async def aclose(self) -> None:
        self._open = False


class AtPort:
    """An async AT channel to one modem (see the module docstring for guarantees)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        baudrate: int = 115200,
        gap: float = 0.02,
        _channel: _Channel | None = None,
    ) -> None:
        self._channel: _Channel = _channel or _SerialChannel(Path(path), baudrate)
        self.where = self._channel.where
        self.gap = gap
        #: serialises exchanges on this port (poller, technician passthrough, recovery)
        self.lock = asyncio.Lock()
        self.stale_lines = 0
        self.reopens = 0
        self.urcs: collections.deque[str] = collections.deque(maxlen=50)
        self._echo = False
        self._last_end = 0.0
        self._ever_opened = False

    @classmethod
    def for_engine(
        cls, engine: AtEngine, *, name: str = "sim", gap: float = 0.0, tick_interval: float = 0.02
    ) -> AtPort:
        """An AtPort talking to an in-process simulator engine (no pty, no thread)."""
        return cls(name, gap=gap, _channel=_EngineChannel(engine, name, tick_interval))

    @property
    def garbage_bytes(self) -> int:
        """Noise bytes dropped so far."""
        return self._channel.garbage_bytes

    async def command(self, cmd: str, *, timeout: float = 2.0) -> AtResponse:
        """Send ``cmd`` and return its framed answer (takes ``lock``).

        Raises ProbeTimeout (no answer in ``timeout`` s) or PortUnavailable
        (device missing, closed, or failing), both naming the port and command.
        """
        async with self.lock:
            return await self.exchange(cmd, timeout=timeout)

    async def _ensure_open(self, cmd: str) -> None:
        ch = self._channel
        if ch.is_open and not ch.changed():
            return
        if ch.is_open:
            await ch.aclose()
        try:
            await ch.open()
        except PortUnavailable as exc:
            raise PortUnavailable(ch.where, exc.detail, command=cmd) from exc
        if self._ever_opened:
            self.reopens += 1
            log.info("modem port %s reopened", ch.where)
        self._ever_opened = True
        # After a (re)open we do not know whether the modem echoes.
        self._echo = False

    async def exchange(self, cmd: str, *, timeout: float = 2.0) -> AtResponse:
        """Like ``command`` but without taking ``lock``: the caller must hold it."""
        command = cmd.strip()
        if not command or any(c in command for c in "\r\n"):
            raise ValueError(f"not a single AT command line: {cmd!r}")
        loop = asyncio.get_running_loop()
        wait = self._last_end + self.gap - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            await self._ensure_open(command)
            for line in self._channel.drain():
                if is_urc(line):
                    self.urcs.append(line)
                else:
                    self.stale_lines += 1
            framer = Framer(command, expect_echo=self._echo)
            self._channel.write(command.encode("ascii", "replace") + b"\r")
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        resp = framer.feed(await self._channel.readline())
                        if resp is not None:
                            break
            except TimeoutError:
                if framer.stale:
                    # Result codes but never our echo: echo was switched off.
                    self._echo = False
                self.stale_lines += len(framer.stale)
                raise ProbeTimeout(
                    self.where, f"no answer in {timeout:g} s", command=command
                ) from None
        except PortUnavailable as exc:
            await self._channel.aclose()
            if exc.command is None:
                raise PortUnavailable(exc.where, exc.detail, command=command) from exc
            raise
        finally:
            self._last_end = loop.time()
        self.stale_lines += len(framer.stale)
        self.urcs.extend(resp.urcs)
        up = command.upper().replace(" ", "")
        self._echo = resp.echoed and up not in ("ATE0", "ATE")
        if up == "ATE1":
            self._echo = True
        return resp

    async def exchange_text(
        self, cmd: str, body: bytes, *, timeout: float = 2.0, result_timeout: float = 60.0
    ) -> AtResponse:
        """A text-entry command (``AT+CMGS="+84..."``): send ``cmd``, wait for the
        ``> `` prompt, send ``body`` and Ctrl-Z, frame the answer. The caller holds ``lock``.

        A modem that refuses at once (``+CMS ERROR: 330`` instead of the prompt)
        gives that answer without ``body`` being sent. No prompt within
        ``timeout`` sends ESC (which aborts text entry) and raises ProbeTimeout;
        no final code within ``result_timeout`` after Ctrl-Z raises ProbeTimeout.
        """
        command = cmd.strip()
        if not command or any(c in command for c in "\r\n"):
            raise ValueError(f"not a single AT command line: {cmd!r}")
        if any(b in body for b in b"\r\n\x1a\x1b"):
            raise ValueError("a text body may not hold CR, LF, Ctrl-Z or ESC")
        loop = asyncio.get_running_loop()
        wait = self._last_end + self.gap - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        ch = self._channel
        try:
            await self._ensure_open(command)
            for line in ch.drain():
                if is_urc(line):
                    self.urcs.append(line)
                else:
                    self.stale_lines += 1
            ch.arm_prompt(True)
            ch.write(command.encode("ascii", "replace") + b"\r")
            echoed = False
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        line = await ch.readline()
                        if line == "":
                            break
                        if line.strip().upper() == command.upper():
                            echoed = True
                        elif is_final(line) and (echoed or not self._echo):
                            return AtResponse(command=command, lines=(), final=line.strip())
                        elif is_urc(line, command):
                            self.urcs.append(line)
                        else:
                            self.stale_lines += 1
            except TimeoutError:
                ch.write(b"\x1b")
                raise ProbeTimeout(
                    self.where, f"no '> ' prompt in {timeout:g} s", command=command
                ) from None
            finally:
                ch.arm_prompt(False)
            # The modem echoes the text it was given: a line equal to it is that echo.
            framer = Framer(body.decode("latin-1"))
            ch.write(body + b"\x1a")
            try:
                async with asyncio.timeout(result_timeout):
                    while True:
                        resp = framer.feed(await ch.readline())
                        if resp is not None:
                            break
            except TimeoutError:
                raise ProbeTimeout(
                    self.where, f"no result in {result_timeout:g} s after the text", command=command
                ) from None
        except PortUnavailable as exc:
            await ch.aclose()
            if exc.command is None:
                raise PortUnavailable(exc.where, exc.detail, command=command) from exc
            raise
        finally:
            self._last_end = loop.time()
        self.urcs.extend(resp.urcs)
        return dataclasses.replace(resp, command=command)

    async def aclose(self) -> None:
        """Close the device; a later ``command`` reopens it."""
        async with self.lock:
            await self._channel.aclose()


__all__ = ["AtEngine", "AtPort"]
