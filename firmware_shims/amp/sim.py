"""``loa-sim amp``: a Modbus amplifier simulator over TCP, or RTU on a pty pair.

Command line::

    loa-sim amp --profile NAME (--tcp HOST:PORT | --rtu-link PATH)
                [--unit N] [--fault NAME]... [--control SOCKET] [--seed N]

- ``--profile``: a shipped profile name (``generic``, ``pa1250d``) or a path
  to a profile TOML file.
- ``--tcp HOST:PORT``: serve Modbus TCP; port 0 picks a free port (the ready
  line says which).
- ``--rtu-link PATH``: serve Modbus RTU on a pseudo-terminal; PATH becomes a
  symlink to the terminal a client opens (as it would ``/dev/ttyUSB0``). Two
  ptys are bridged in-process, the server on one and the client on the other,
  so client and server both see an ordinary serial port.
- ``--unit``: the Modbus unit address answered (default: the profile's);
  requests to other units get no answer, as on a real RS-485 bus.
- ``--fault``: start with a fault; repeatable. Faults: ``over_temp``,
  ``output_short``, ``line_open``, ``mains_fail``, ``battery_low`` (the
  amplifier's bits and measurements show them), ``no_response`` (stops
  answering), ``exception_reply`` (answers every request with Modbus exception
  4, device failure).
- ``--control``: the fault-control socket (firmware_shims.control protocol);
  default ``PATH.ctl`` with ``--rtu-link``, required with ``--tcp``.

When it is serving, it prints one line to stdout and flushes it::

    READY {"profile": "generic", "unit": 1, "tcp": "127.0.0.1:40123", "rtu_link": null,
           "control": "/tmp/x/amp.ctl", "pid": 1234}

It stops cleanly on SIGTERM or SIGINT (closing the port, removing the link
symlink and control socket) and exits 0.

Python API for tests
====================

``amp_simulator(...)`` starts the simulator as a subprocess and is an async
context manager that waits until it is serving (the READY line) and stops it
on exit (SIGTERM, then SIGKILL after ``stop_timeout``)::

    from firmware_shims.amp.sim import amp_simulator

    async with amp_simulator(profile="generic", rtu_link=tmp_path / "amp0") as sim:
        probe = AmpProbe.rtu(load_profile("generic"), str(sim.rtu_link))
        await sim.set_fault("over_temp")        # at runtime, clients stay connected
        await sim.clear_fault("over_temp")      # or clear_fault() for all
        ...

    async with amp_simulator(tcp="127.0.0.1:0", control_socket=tmp_path / "amp.ctl") as sim:
        host, port = sim.tcp

It raises ``SimulatorError`` (with the simulator's stderr) if the simulator
exits or is not ready within ``ready_timeout``. ``serve_amp`` runs the same
simulator inside the current event loop (no subprocess) for code that wants it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import termios
import tty
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_shims import control
from firmware_shims.amp.engine import FAULTS, AmpEngine, ExceptionReply, NoAnswer
from firmware_shims.amp.profile import Function, ProfileError, load_profile

log = logging.getLogger(__name__)

READY_PREFIX = "READY "


class SimulatorError(RuntimeError):
    """The simulator could not start, or exited before it was ready."""


# ---------------------------------------------------------------------------
# pty bridge


class PtyLink:
    """Two pseudo-terminals bridged in-process; ``link`` is a symlink to the client end.

    The bridge holds both slave ends open itself, so a client closing and
    reopening the link (a reconnect) never hangs up the pair.
    """

    def __init__(self, link: Path) -> None:
        self.link = link
        self._fds: list[int] = []
        self.server_master, self.server_slave = self._pty()
        self.client_master, self.client_slave = self._pty()
        self.server_port = os.ttyname(self.server_slave)
        self.client_port = os.ttyname(self.client_slave)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self.client_port)
        tmp.replace(link)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _pty(self) -> tuple[int, int]:
        master, slave = os.openpty()
        self._fds += [master, slave]
        # Raw from the start: no echo, no line discipline, even before a client
        # opens the terminal and sets its own mode.
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        return master, slave

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(
            self.server_master, self._pump, self.server_master, self.client_master
        )
        self._loop.add_reader(
            self.client_master, self._pump, self.client_master, self.server_master
        )

    @staticmethod
    def _pump(src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except OSError:  # EAGAIN after a spurious wakeup, or EIO during close
            return
        # If the far end is not reading and its buffer is full, the bytes are
        # dropped, as on a real line.
        with contextlib.suppress(OSError):
            os.write(dst, data)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.server_master)
            self._loop.remove_reader(self.client_master)
            self._loop = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        with contextlib.suppress(OSError):
            if os.readlink(self.link) == self.client_port:
                self.link.unlink()


# ---------------------------------------------------------------------------
# the pymodbus server around engines


def _blocks(engine: AmpEngine, function: Function) -> list[SimData]:
    span = engine.address_range(function)
    if span is None:
        return [SimData(0, count=1, datatype=DataType.INVALID)]
    return [SimData(span.start, count=len(span), datatype=DataType.REGISTERS)]


def _device(unit: int, engine: AmpEngine) -> SimDevice:
    """A pymodbus device whose every read and write is answered by ``engine``."""

    async def action(
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        try:
            if function_code in (3, 4) and set_values is None:
                fn = Function.INPUT if function_code == 4 else Function.HOLDING
                words = engine.read(fn, address, count)
                offset = address - start_address
                registers[offset : offset + count] = words
            elif function_code in (6, 16) and set_values is not None:
                engine.write(address, [int(v) for v in set_values])
            else:
                return ExcCodes.ILLEGAL_FUNCTION
        except NoAnswer:
            return None  # the reply is dropped on its way out (see _Silencer)
        except ExceptionReply as exc:
            return ExcCodes(exc.code)
        return None

    return SimDevice(
        unit,
        simdata=(
            [SimData(0, datatype=DataType.BITS)],
            [SimData(0, datatype=DataType.BITS)],
            _blocks(engine, Function.HOLDING),
            _blocks(engine, Function.INPUT),
        ),
        action=action,
    )


class _Silencer:
    """pymodbus trace hooks that swallow replies from silent or absent units.

    pymodbus calls ``trace_pdu(True, pdu)`` and then ``trace_packet(True,
    bytes)`` synchronously for each reply, so the decision made on the PDU
    (which unit it is from) applies to the bytes that follow.
    """

    def __init__(self, engines: Mapping[int, AmpEngine]) -> None:
        self.engines = engines
        self._drop = False

    def pdu(self, sending: bool, pdu: Any) -> Any:
        if sending:
            engine = self.engines.get(pdu.dev_id)
            self._drop = engine is None or "no_response" in engine.faults
        return pdu

    def packet(self, sending: bool, data: bytes) -> bytes:
        if sending and self._drop:
            self._drop = False
            return b""
        return data


@dataclass
class Serving:
    """A running simulator server inside this process."""

    engines: Mapping[int, AmpEngine]
    server: ModbusTcpServer | ModbusSerialServer
    tcp: tuple[str, int] | None
    link: PtyLink | None

    async def aclose(self) -> None:
        await self.server.shutdown()  # type: ignore[no-untyped-call]
        if self.link is not None:
            self.link.close()


async def serve_amp(
    engines: Mapping[int, AmpEngine],
    *,
    tcp: tuple[str, int] | None = None,
    rtu_link: Path | None = None,
) -> Serving:
    """Serve ``engines`` (by unit) over Modbus TCP or RTU on a pty link, in this loop."""
    if (tcp is None) == (rtu_link is None):
        raise ValueError("give exactly one of tcp and rtu_link")
    silencer = _Silencer(engines)
    devices = [_device(unit, engine) for unit, engine in engines.items()]
    if tcp is not None:
        tcp_server = ModbusTcpServer(
            devices, address=tcp, trace_pdu=silencer.pdu, trace_packet=silencer.packet
        )
        try:
            await tcp_server.serve_forever(background=True)
        except RuntimeError as exc:
            raise SimulatorError(f"cannot listen on {tcp[0]}:{tcp[1]}") from exc
        listener = cast(asyncio.Server, tcp_server.transport)
        host, port = listener.sockets[0].getsockname()[:2]
        return Serving(engines, tcp_server, (str(host), int(port)), None)
    assert rtu_link is not None
    link = PtyLink(rtu_link)
    try:
        profile = next(iter(engines.values())).profile
        rtu_server = ModbusSerialServer(
            devices,
            port=link.server_port,
            baudrate=profile.link.baudrate,
            parity=profile.link.parity,
            bytesize=profile.link.bytesize,
            stopbits=profile.link.stopbits,
            trace_pdu=silencer.pdu,
            trace_packet=silencer.packet,
        )
        link.start()
        try:
            await rtu_server.serve_forever(background=True)
        except RuntimeError as exc:
            raise SimulatorError(f"cannot open {link.server_port}") from exc
    except BaseException:
        link.close()
        raise
    return Serving(engines, rtu_server, None, link)


# ---------------------------------------------------------------------------
# command line


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def add_parser(subparsers: Any) -> None:
    """Register ``loa-sim amp`` on the ``loa-sim`` subcommand parsers."""
    p = subparsers.add_parser(
        "amp",
        help="Modbus amplifier simulator (TCP, or RTU on a pty)",
        description=__doc__.split("\n\n", 1)[0],
    )
    p.add_argument("--profile", required=True, help="profile name or TOML path")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", type=_host_port, metavar="HOST:PORT", help="serve Modbus TCP")
    where.add_argument("--rtu-link", type=Path, metavar="PATH", help="serve RTU; PATH -> pty")
    p.add_argument("--unit", type=int, help="unit address (default: the profile's)")
    p.add_argument(
        "--fault", action="append", default=[], choices=FAULTS, help="start with a fault"
    )
    p.add_argument("--control", type=Path, help="control socket (default PATH.ctl for RTU)")
    p.add_argument("--seed", type=int, default=0, help="varies the simulated drifts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``loa-sim amp`` (after argument parsing)."""
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        print(f"loa-sim amp: {exc}", file=sys.stderr)
        return 2
    unit = profile.link.unit if args.unit is None else args.unit
    if not 1 <= unit <= 247:
        print(f"loa-sim amp: --unit {unit}: must be 1..247", file=sys.stderr)
        return 2
    if args.control is None:
        if args.tcp is not None:
            print("loa-sim amp: --control SOCKET is required with --tcp", file=sys.stderr)
            return 2
        args.control = args.rtu_link.with_name(args.rtu_link.name + ".ctl")
    engine = AmpEngine(profile, faults=args.fault, seed=args.seed)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(_main(engine, unit, args))
    except SimulatorError as exc:
        print(f"loa-sim amp: {exc}", file=sys.stderr)
        return 1


async def _main(engine: AmpEngine, unit: int, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine.faults.on_change = lambda active: log.info("faults now: %s", sorted(active) or "none")
    control_path: Path = args.control
    serving = await serve_amp({unit: engine}, tcp=args.tcp, rtu_link=args.rtu_link)
    try:
        ctl = await control.serve(control_path, engine.faults)
        try:
            ready = {
                "profile": engine.profile.name,
                "unit": unit,
                "tcp": f"{serving.tcp[0]}:{serving.tcp[1]}" if serving.tcp else None,
                "rtu_link": str(args.rtu_link) if args.rtu_link else None,
                "control": str(control_path),
                "pid": os.getpid(),
            }
            print(READY_PREFIX + json.dumps(ready), flush=True)
            log.info("serving %s", ready)
            await stop.wait()
            log.info("stopping")
        finally:
            ctl.close()
            await ctl.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                control_path.unlink()
    finally:
        await serving.aclose()
    return 0


# ---------------------------------------------------------------------------
# subprocess API for tests


@dataclass
class RunningSim:
    """A ``loa-sim amp`` subprocess that is serving."""

    process: asyncio.subprocess.Process
    profile: str
    unit: int
    #: (host, port) when serving TCP.
    tcp: tuple[str, int] | None
    #: The link symlink when serving RTU.
    rtu_link: Path | None
    control: Path

    async def set_fault(self, fault: str) -> list[str]:
        """Inject ``fault`` now; returns the active faults."""
        return await self._ctl("set", fault)

    async def clear_fault(self, fault: str | None = None) -> list[str]:
        """Clear ``fault`` (or every fault); returns the active faults."""
        return await self._ctl("clear", fault)

    async def faults(self) -> list[str]:
        return await self._ctl("list", None)

    async def _ctl(self, op: str, fault: str | None) -> list[str]:
        reply = await control.asend(self.control, op, fault)
        if not reply.get("ok"):
            raise SimulatorError(f"control {op} {fault or ''}: {reply.get('error')}")
        return list(reply["faults"])


@contextlib.asynccontextmanager
async def amp_simulator(
    *,
    profile: str | Path = "generic",
    tcp: str | None = None,
    rtu_link: Path | str | None = None,
    unit: int | None = None,
    faults: Iterable[str] = (),
    control_socket: Path | str | None = None,
    seed: int = 0,
    ready_timeout: float = 15.0,
    stop_timeout: float = 5.0,
) -> AsyncIterator[RunningSim]:
    """Run ``loa-sim amp`` as a subprocess while the context is open (see module doc)."""
    ctl = control_socket
    argv = [sys.executable, "-m", "firmware_shims.cli", "amp", "--profile", str(profile)]
    if tcp is not None:
        argv += ["--tcp", tcp]
    if rtu_link is not None:
        argv += ["--rtu-link", str(rtu_link)]
    if unit is not None:
        argv += ["--unit", str(unit)]
    for f in faults:
        argv += ["--fault", f]
    if ctl is not None:
        argv += ["--control", str(ctl)]
    argv += ["--seed", str(seed)]
    # The child imports this very checkout, whatever the caller's cwd.
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as errfile:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=errfile,
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
        )

        def stderr_text() -> str:
            errfile.seek(0)
            return errfile.read().decode(errors="replace")[-4000:]

        try:
            assert proc.stdout is not None
            try:
                async with asyncio.timeout(ready_timeout):
                    while True:
                        line = await proc.stdout.readline()
                        if not line:
                            await proc.wait()
                            raise SimulatorError(
                                f"loa-sim amp exited with {proc.returncode} before ready:\n"
                                + stderr_text()
                            )
                        text = line.decode(errors="replace").strip()
                        if text.startswith(READY_PREFIX):
                            ready = json.loads(text[len(READY_PREFIX) :])
                            break
            except TimeoutError:
                raise SimulatorError(
                    f"loa-sim amp not ready in {ready_timeout:.0f} s:\n" + stderr_text()
                ) from None
            tcp_at = None
            if ready["tcp"]:
                host, _, port = ready["tcp"].rpartition(":")
                tcp_at = (host, int(port))
            yield RunningSim(
                process=proc,
                profile=ready["profile"],
                unit=ready["unit"],
                tcp=tcp_at,
                rtu_link=Path(ready["rtu_link"]) if ready["rtu_link"] else None,
                control=Path(ready["control"]),
            )
        finally:
            await _stop(proc, stop_timeout)


async def _stop(proc: asyncio.subprocess.Process, timeout: float) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    # Read what is left so the pipe transport closes cleanly.
    if proc.stdout is not None:
        with contextlib.suppress(Exception):
            await proc.stdout.read()
