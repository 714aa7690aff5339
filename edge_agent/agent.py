"""The agent daemon: probes → diagnosis → outbox → uplink, in one TaskGroup.

``Agent(cfg).run(stop)`` runs until ``stop`` is set, then shuts down in
order: stop polling, store a final state report and an ``agent_stop`` event,
let the uplink flush them and publish a retained ``offline`` presence
(bounded by ``shutdown_timeout``), close the ports and the outbox.

Tasks (named as systemd and ``status`` show them): ``probe[modem]``,
``probe[amp]``, ``probe[system]``, ``probe[stream]``, ``diagnosis``,
``heartbeat``, ``recovery``, ``uplink``, ``control``, ``watchdog``.

Data flows one way. Pollers only store readings and wake ``diagnosis``;
``diagnosis`` runs the pure ``diagnose`` over the retained history, stores
fault raised/cleared events and, on a meaningful change, a state report in the
outbox; the uplink only sends what the outbox holds.

What it talks to is given to the constructor: ``probes`` (default: built from
the config's ``[modem]``, ``[amp]``, ``[system]`` and ``[stream]``), the
``uplink`` factory (default ``Uplink``) and the ``clock`` that stamps every
message. The fleet simulator passes simulated hardware, a switchable link and
its own clock this way, and runs the agent's code unchanged.

The agent never imports aiohttp or any collector-side library: its memory
floor matters on a 512 MB controller (``tests/edge_agent/test_footprint.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from edge_agent import reports
from edge_agent.clock import Stamper, kernel_clock_synced
from edge_agent.config import AgentConfig
from edge_agent.control import ControlRequestError, ControlServer
from edge_agent.diagnosis import History, LinkSample, diagnose, retain
from edge_agent.outbox import Outbox, Priority
from edge_agent.poller import Poller
from edge_agent.probes import StreamProbe, SystemProbe
from edge_agent.recovery import Action, RecoveryLadder
from edge_agent.remote import RemoteCommands, config_version
from edge_agent.sdnotify import Notifier
from edge_agent.uplink import Uplink
from firmware_shims.errors import ShimError
from firmware_shims.readings import AmpReading, ModemReading, StreamReading, SystemReading
from fleet_protocol import (
    Command,
    EventType,
    Fault,
    Kind,
    Message,
    Reply,
    to_builtins,
)

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
Reading = ModemReading | AmpReading | SystemReading | StreamReading
Role = Literal["modem", "amp", "system", "stream"]


@dataclass(frozen=True, slots=True)
class ProbeSlot:
    """One probe the agent polls: its role, the probe (``read()``/``aclose()``), how often."""

    role: Role
    #: ``firmware_shims.modem.probe.ModemProbe`` for "modem" (soft reset, AT op),
    #: ``firmware_shims.amp.probe.AmpProbe`` for "amp" (Modbus op); any probe otherwise.
    probe: Any
    interval_s: float


class UplinkFactory(Protocol):
    """Builds the agent's uplink once the outbox is open (``Uplink`` itself is one)."""

    def __call__(
        self,
        cfg: AgentConfig,
        outbox: Outbox,
        on_command: Callable[[Command], Awaitable[None]],
        *,
        clock: Callable[[], float],
        stamper: Stamper | None,
    ) -> Uplink: ...


def build_probes(cfg: AgentConfig) -> list[ProbeSlot]:
    """The probes ``cfg`` configures, on the real ports (nothing is opened yet)."""
    slots: list[ProbeSlot] = []
    if cfg.modem is not None:
        from firmware_shims.modem.port import AtPort
        from firmware_shims.modem.probe import ModemProbe

        port = AtPort(cfg.modem.port, baudrate=cfg.modem.baud)
        modem = ModemProbe(port, cfg.modem.dialect, timeout=cfg.modem.timeout_s)
        slots.append(ProbeSlot("modem", modem, cfg.modem.poll_s))
    if cfg.amp is not None:
        from firmware_shims.amp.probe import AmpProbe, ModbusBus
        from firmware_shims.amp.profile import load_profile

        a = cfg.amp
        profile = load_profile(a.profile)
        if a.transport == "tcp":
            host, _, port_s = a.address.rpartition(":")
            bus = ModbusBus.tcp(host, int(port_s), timeout_s=a.timeout_s)
        else:
            link = profile.link
            bus = ModbusBus.rtu(
                a.port,
                baudrate=a.baud,
                parity=a.parity,
                bytesize=link.bytesize,
                stopbits=link.stopbits,
                timeout_s=a.timeout_s,
                frame_gap_s=link.frame_gap_s,
            )
        slots.append(ProbeSlot("amp", AmpProbe(profile, bus, unit=a.unit, owns_bus=True), a.poll_s))
    slots.append(ProbeSlot("system", SystemProbe(cfg.system.disk_path), cfg.system.poll_s))
    if cfg.stream is not None:
        s = cfg.stream
        probe = StreamProbe(
            url=s.url,
            min_bytes=s.min_bytes,
            timeout_s=s.timeout_s,
            player_state_file=s.player_state_file,
            player_state_max_age_s=s.player_state_max_age_s,
        )
        slots.append(ProbeSlot("stream", probe, s.poll_s))
    return slots


class Agent:
    """One agent process. Build with the config; ``await run(stop)``.

    ``probes`` (default ``build_probes(cfg)`` when ``run`` starts), ``uplink``
    and ``clock`` are what the agent talks to and reads the time from.
    """

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        probes: Sequence[ProbeSlot] | None = None,
        uplink: UplinkFactory = Uplink,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        shutdown_timeout: float = 10.0,
        stamper: Stamper | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        #: The agent.toml this agent runs (its hash is the config version reported).
        self.config_path = config_path
        self.config_version = config_version(config_path)
        #: Stamps every message with boot id, seconds since boot and clock sync
        #: status (edge_agent.clock). By default only on the system clock: a
        #: simulated clock is the truth by construction.
        if stamper is None and clock is time.time:
            trust = cfg.system.clock_sync == "trust"
            stamper = Stamper(synced=(lambda: True) if trust else kernel_clock_synced)
        self.stamper = stamper
        self.notifier = notifier or Notifier(None)
        self.shutdown_timeout = shutdown_timeout
        self.clock = clock
        self._probes = None if probes is None else tuple(probes)
        self._uplink_factory = uplink
        self.started = clock()
        self.device = cfg.device.id
        self.faults: list[Fault] = []
        self.history: dict[str, deque[Reading]] = {
            r: deque() for r in ("modem", "amp", "system", "stream")
        }
        #: The data link as it was at each stream reading (diagnosis tells a dead
        #: bearer from a silent station by it).
        self.link_history: deque[LinkSample] = deque()
        self.events: deque[dict[str, Any]] = deque(maxlen=100)
        self.reports_sent = 0
        #: Consecutive failed outbox writes (a full or failing SD card); logged once.
        self.store_failures = 0
        self.heartbeats_sent = 0
        self._dirty = asyncio.Event()
        self._last_snapshot: reports.Snapshot | None = None
        self._last_state = time.monotonic()
        self._last_full = time.monotonic()
        self.pollers: list[Poller[Any]] = []
        self.modem: Any = None  # firmware_shims.modem.probe.ModemProbe when configured
        self.amp: Any = None  # firmware_shims.amp.probe.AmpProbe when configured
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.ladder: RecoveryLadder | None = None
        self.control: ControlServer | None = None
        self.sms: Any = None  # edge_agent.sms.SmsFallback when [sms] is configured
        self.remote: RemoteCommands | None = None
        self.tunnel: Any = None  # edge_agent.tunnel.Tunnel when [tunnel] is configured
        self.config: Any = None  # edge_agent.remote_config.ConfigManager with a config file
        self.upgrade: Any = None  # edge_agent.upgrade.UpgradeManager when [upgrade] is set
        #: Set when a pushed config or an upgrade needs a fresh process (the CLI re-execs
        #: ``restart_into``, or this same command when it is None).
        self.restart_requested = False
        self.restart_into: Path | None = None
        self._restart = asyncio.Event()

    # --- building ------------------------------------------------------------------

    def _build_probes(self) -> None:
        for slot in self._probes if self._probes is not None else build_probes(self.cfg):
            if slot.role == "modem":
                self.modem = slot.probe
            elif slot.role == "amp":
                self.amp = slot.probe
            self._add_poller(slot.probe, slot.interval_s, slot.role)

    def _add_poller(self, probe: Any, interval: float, role: str) -> None:
        def on_reading(reading: Reading) -> None:
            hist = self.history[role]
            hist.append(reading)
            # Kept by time span (the horizon, anchored by one older reading), not by count.
            for _ in range(retain(hist, self.cfg.diagnosis)):
                hist.popleft()
            if role == "stream":
                up = self.uplink is None or self.uplink.connected
                self.link_history.append(LinkSample(ts=reading.ts, up=up))
                for _ in range(retain(self.link_history, self.cfg.diagnosis)):
                    self.link_history.popleft()
            self._dirty.set()

        self.pollers.append(Poller(probe, interval, on_reading))

    # --- storing messages ----------------------------------------------------------

    def _now(self) -> float:
        """The device clock that stamps every message (a simulated one in the fleet)."""
        return round(self.clock(), 3)

    async def _store(self, kind: Kind, build: Callable[[int], Message], priority: Priority) -> None:
        assert self.outbox is not None
        stamper = self.stamper
        stamped = build if stamper is None else lambda seq: stamper(build(seq))
        try:
            item = await self.outbox.put(kind, stamped, priority)
        except Exception as exc:
            self.store_failures += 1
            if self.store_failures == 1:
                log.exception("cannot store a %s message: %s", kind.value, exc)
            return
        if self.store_failures:
            log.info("outbox writable again after %d failed writes", self.store_failures)
            self.store_failures = 0
        if item is not None and kind == Kind.EVENT:
            self.events.append(msgspec.json.decode(item.payload))

    async def _event(
        self,
        type_: EventType,
        *,
        fault: Fault | None = None,
        action: str | None = None,
        detail: str | None = None,
    ) -> None:
        priority = Priority.FAULT if fault is not None else Priority.EVENT
        await self._store(
            Kind.EVENT,
            lambda seq: reports.event(
                self.device,
                seq,
                type_,
                fault=fault,
                action=action,
                detail=detail,
                ts=self._now(),
            ),
            priority,
        )

    def snapshot(self) -> reports.Snapshot:
        def last(role: str) -> Any:
            h = self.history[role]
            return h[-1].state if h else None

        return reports.Snapshot(
            modem=last("modem"),
            amp=last("amp"),
            stream=last("stream"),
            system=last("system"),
            faults=tuple(self.faults),
        )

    async def _state_report(self, *, heartbeat: bool = False, full: bool = True) -> None:
        assert self.outbox is not None
        snap = self.snapshot()
        depth = self.outbox.depth
        if full:
            await self._store(
                Kind.STATE,
                lambda seq: reports.full_report(
                    self.device,
                    self.cfg.device.commune,
                    seq,
                    snap,
                    outbox_depth=depth,
                    heartbeat=heartbeat,
                    ts=self._now(),
                    agent_version=AGENT_VERSION,
                    config_version=self.config_version,
                ),
                Priority.HEARTBEAT if heartbeat else Priority.REPORT,
            )
            self._last_snapshot = snap
            self._last_full = time.monotonic()
            self.reports_sent += 1
        else:
            await self._store(
                Kind.STATE,
                lambda seq: reports.heartbeat(
                    self.device, seq, snap.faults, outbox_depth=depth, ts=self._now()
                ),
                Priority.HEARTBEAT,
            )
        if heartbeat:
            self.heartbeats_sent += 1
        self._last_state = time.monotonic()

    # --- tasks ---------------------------------------------------------------------

    def _all_polled(self) -> bool:
        return all(p.polls or p.failures for p in self.pollers)

    async def evaluate(self) -> list[Fault]:
        """Diagnose now, store events for raised/cleared faults and a report if meaningful."""
        hist = History(
            modem=[r for r in self.history["modem"] if isinstance(r, ModemReading)],
            amp=[r for r in self.history["amp"] if isinstance(r, AmpReading)],
            system=[r for r in self.history["system"] if isinstance(r, SystemReading)],
            stream=[r for r in self.history["stream"] if isinstance(r, StreamReading)],
            link=list(self.link_history),
        )
        new = diagnose(hist, self.clock(), self.cfg.diagnosis, self.faults)
        old_codes = {f.code: f for f in self.faults}
        new_codes = {f.code for f in new}
        self.faults = new
        for f in new:
            if f.code not in old_codes:
                log.warning("fault raised: %s (%s): %s", f.code.value, f.cause.value, f.evidence)
                await self._event(EventType.FAULT_RAISED, fault=f)
        for code, f in old_codes.items():
            if code not in new_codes:
                log.info("fault cleared: %s", code.value)
                await self._event(EventType.FAULT_CLEARED, fault=f)
        if self.ladder is not None:
            self.ladder.update(new)
        if self._all_polled():
            reason = reports.change_reason(self._last_snapshot, self.snapshot(), self.cfg.reports)
            if reason is not None:
                log.debug("state report: %s", reason)
                await self._state_report()
        return new

    async def _diagnosis_loop(self) -> None:
        while True:
            # Readings confirm and clear faults; the tick keeps reports and the
            # recovery ladder moving when a poller is stuck.
            tick = max(1.0, min(self.cfg.diagnosis.confirm_s, self.cfg.diagnosis.clear_s) / 4)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._dirty.wait()
            self._dirty.clear()
            await self.evaluate()

    async def _heartbeat_loop(self) -> None:
        r = self.cfg.reports
        while True:
            due = self._last_state + r.heartbeat_s
            await asyncio.sleep(max(0.05, due - time.monotonic()))
            if time.monotonic() < self._last_state + r.heartbeat_s:
                continue  # a state report went out meanwhile
            if not self._all_polled():
                await asyncio.sleep(1.0)  # a first poll is still running (a slow stream check)
                continue
            full = time.monotonic() - self._last_full >= r.full_report_s
            await self._state_report(heartbeat=True, full=full)

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _recovery_event(self, a: Action) -> None:
        await self._event(
            EventType.RECOVERY, action=a.action, detail=("" if a.ok else "failed: ") + a.detail
        )

    async def recovery_event(self, a: Action) -> None:
        """Store a recovery event (the ladder's, or a remote soft reset / power cycle)."""
        await self._recovery_event(a)

    def request_restart(self, into: Path | None = None) -> None:
        """Stop in order, then let the CLI start again (``into``: another loa-agent)."""
        self.restart_requested = True
        self.restart_into = into
        self._restart.set()

    def healthy(self) -> bool:
        """Connected, every probe polled, and a message acknowledged by the broker."""
        up = self.uplink
        return bool(up and up.connected and up.published > 0 and self._all_polled())

    async def _config_event(self, what: str, detail: str) -> None:
        type_ = EventType.CONFIG_APPLIED if what == "applied" else EventType.CONFIG_ROLLED_BACK
        await self._event(type_, action="config", detail=detail)

    async def _upgrade_event(self, what: str, detail: str) -> None:
        type_ = EventType.UPGRADE_APPLIED if what == "applied" else EventType.UPGRADE_ROLLED_BACK
        await self._event(type_, action="upgrade", detail=detail)

    async def _tunnel_event(self, what: str, detail: str) -> None:
        type_ = EventType.TUNNEL_OPENED if what == "opened" else EventType.TUNNEL_CLOSED
        await self._event(type_, action="tunnel", detail=detail)

    async def store_reply(self, build: Callable[[int], Reply]) -> None:
        """Store a command's Reply in the outbox (sent like any message, after PUBACK deleted)."""
        await self._store(Kind.REPLY, build, Priority.REPORT)

    async def _soft_reset(self) -> str:
        resp = await self.modem.soft_reset()
        return f"{resp.command}: {resp.final}"

    # --- status, commands, control ops -------------------------------------------

    def status(self) -> dict[str, Any]:
        """The agent's current state (``status`` op and ``status`` command)."""
        up = self.uplink
        ob = self.outbox
        readings: dict[str, Any] = {}
        for role, hist in self.history.items():
            if hist:
                readings[role] = {"ts": hist[-1].ts, **to_builtins(hist[-1].state)}
        return {
            "device": self.device,
            "commune": self.cfg.device.commune,
            "version": AGENT_VERSION,
            "config_version": self.config_version,
            "started": self.started,
            "uptime_s": round(self.clock() - self.started, 1),
            "link": {
                "endpoint": up.endpoint if up else None,
                "connected": bool(up and up.connected),
                "connected_since": up.connected_since if up else None,
                "disconnected_since": up.disconnected_since if up else None,
                "last_error": up.last_error if up else None,
                "connects": up.connects if up else 0,
                "published": up.published if up else 0,
                "subscription_qos": up.subscription_qos if up else None,
            },
            "readings": readings,
            "faults": [to_builtins(f) for f in self.faults],
            "outbox": self._outbox_info() if ob else None,
            "pollers": {
                p.name: {
                    "interval_s": p.interval,
                    "polls": p.polls,
                    "failures": p.failures,
                    "skipped": p.skipped,
                    "last_error": p.last_error,
                }
                for p in self.pollers
            },
            "recovery": [asdict(a) for a in (self.ladder.history if self.ladder else ())][-10:],
            "reports": {"state": self.reports_sent, "heartbeats": self.heartbeats_sent},
            "sms": self.sms.status() if self.sms is not None else None,
            "remote": self.remote.info() if self.remote else None,
            "tunnel": self.tunnel.info() if self.tunnel else None,
            "config": self.config.info() if self.config else None,
            "upgrade": self.upgrade.info() if self.upgrade else None,
        }

    def _outbox_info(self) -> dict[str, Any]:
        ob = self.outbox
        assert ob is not None
        return {
            "depth": ob.depth,
            "handed": ob.handed_count,
            "collector_confirms": bool(self.uplink and self.uplink.confirming),
            "bytes": ob.bytes,
            "max_bytes": ob.max_bytes,
            "oldest": ob.oldest,
            "next_seq": ob.next_seq,
            "evicted": ob.evicted,
            "refused": ob.refused,
            "path": str(ob.path),
        }

    async def diag(self) -> dict[str, Any]:
        faults = await self.evaluate()
        modem_raw: dict[str, Any] = {}
        if self.history["modem"]:
            last = self.history["modem"][-1]
            assert isinstance(last, ModemReading)
            modem_raw = {"raw": dict(last.raw), "errors": dict(last.errors)}
        amp_raw: dict[str, Any] = {}
        if self.history["amp"]:
            a = self.history["amp"][-1]
            assert isinstance(a, AmpReading)
            amp_raw = {"registers": {str(k): v for k, v in a.registers.items()}, "error": a.error}
        return {
            "faults": [to_builtins(f) for f in faults],
            "modem": modem_raw,
            "amp": amp_raw,
        }

    async def _op_status(self, _req: dict[str, Any]) -> Any:
        return self.status()

    async def _op_diag(self, _req: dict[str, Any]) -> Any:
        return await self.diag()

    async def _op_outbox(self, _req: dict[str, Any]) -> Any:
        return self._outbox_info()

    async def _op_events(self, req: dict[str, Any]) -> Any:
        limit = req.get("limit", 20)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ControlRequestError("'limit' must be a positive integer")
        return list(self.events)[-limit:]

    async def _op_at(self, req: dict[str, Any]) -> Any:
        from firmware_shims.modem.at import is_read_only

        if self.modem is None:
            raise ControlRequestError("no modem configured", code="unavailable")
        cmd = req.get("command")
        timeout = req.get("timeout", 2.0)
        if not isinstance(cmd, str) or not cmd.upper().startswith("AT") or len(cmd) > 256:
            raise ControlRequestError("'command' must be an AT command line (at most 256 chars)")
        if not isinstance(timeout, int | float) or not 0 < timeout <= 60:
            raise ControlRequestError("'timeout' must be 0..60 s")
        if not is_read_only(cmd) and req.get("force") is not True:
            raise ControlRequestError(
                f'{cmd!r} changes the modem\'s state; send "force": true to run it anyway'
            )
        try:
            resp = await self.modem.command(cmd, timeout=float(timeout))
        except ShimError as exc:
            raise ControlRequestError(str(exc), code="failed") from None
        return {"command": resp.command, "lines": list(resp.lines), "final": resp.final}

    async def _op_modbus(self, req: dict[str, Any]) -> Any:
        if self.amp is None:
            raise ControlRequestError("no amplifier configured", code="unavailable")
        address, count = req.get("address"), req.get("count", 1)
        if not isinstance(address, int) or not 0 <= address <= 65535:
            raise ControlRequestError("'address' must be 0..65535")
        if not isinstance(count, int) or not 1 <= count <= 125:
            raise ControlRequestError("'count' must be 1..125")
        try:
            words = await self.amp.read_registers(address, count, input=bool(req.get("input")))
        except ShimError as exc:
            raise ControlRequestError(str(exc), code="failed") from None
        return {"address": address, "words": list(words)}

    async def on_command(self, cmd: Command) -> None:
        """Answer a remote command (``edge_agent.remote``) with a Reply stored in the outbox."""
        assert self.remote is not None
        await self.remote.on_command(cmd)

    def control_ops(self) -> dict[str, Any]:
        """The operations the control socket serves (the remote commands reuse them)."""
        from edge_agent.tech.ops import daemon_ops

        return {
            "status": self._op_status,
            "diag": self._op_diag,
            "outbox": self._op_outbox,
            "events": self._op_events,
            "at": self._op_at,
            "modbus": self._op_modbus,
            **daemon_ops(self),
        }

    # --- lifecycle -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then shut down in order (see the module docstring)."""
        cfg = self.cfg
        self.outbox = await Outbox.open(
            cfg.outbox.path, device=self.device, max_bytes=cfg.outbox.max_bytes
        )
        try:
            self._build_probes()
            self.uplink = self._uplink_factory(
                cfg, self.outbox, self.on_command, clock=self.clock, stamper=self.stamper
            )
            self.ladder = RecoveryLadder(
                cfg.recovery,
                soft_reset=self._soft_reset if self.modem is not None else None,
                emit=self._recovery_event,
            )
            if cfg.sms is not None and self.modem is not None:
                from edge_agent.sms import SmsFallback

                self.sms = SmsFallback(cfg.sms, self)
            self.remote = RemoteCommands(
                self,
                hook_command=cfg.recovery.hook_command,
                hook_timeout_s=cfg.recovery.hook_timeout_s,
                soft_reset=self._soft_reset if self.modem is not None else None,
                clock=self.clock,
            )
            if cfg.tunnel is not None:
                from edge_agent import tunnel

                self.tunnel = tunnel.Tunnel(cfg.tunnel, self._tunnel_event, clock=self.clock)
                tunnel.register(self.remote, self.tunnel)
            if self.config_path is not None:
                from edge_agent import remote_config

                self.config = remote_config.ConfigManager(
                    self.config_path,
                    cfg,
                    restart=self.request_restart,
                    emit=self._config_event,
                    healthy=self.healthy,
                    clock=self.clock,
                )
                remote_config.register(self.remote, self.config)
            if cfg.upgrade is not None:
                from edge_agent import upgrade

                self.upgrade = upgrade.UpgradeManager(
                    cfg.upgrade,
                    cfg,
                    version=AGENT_VERSION,
                    restart=self.request_restart,
                    emit=self._upgrade_event,
                    healthy=self.healthy,
                    clock=self.clock,
                )
                upgrade.register(self.remote, self.upgrade)
            if cfg.control.socket is not None:
                self.control = ControlServer(cfg.control.socket)
                # The daemon's ops and the technician commands' (fresh readings, port
                # counters, outbox kinds).
                for op, handler in self.control_ops().items():
                    self.control.register(op, handler)
                await self.control.start()
            await self._event(
                EventType.AGENT_START,
                detail=f"loa-agent {AGENT_VERSION}, probes: "
                + ", ".join(p.name for p in self.pollers),
            )
            await self._supervise(stop)
        finally:
            await self._close()

    async def _supervise(self, stop: asyncio.Event) -> None:
        assert self.uplink is not None and self.ladder is not None
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(p.run(), name=f"probe[{p.name}]") for p in self.pollers]
            workers.append(tg.create_task(self._diagnosis_loop(), name="diagnosis"))
            workers.append(tg.create_task(self._heartbeat_loop(), name="heartbeat"))
            workers.append(tg.create_task(self.ladder.run(), name="recovery"))
            if self.sms is not None:
                workers.append(tg.create_task(self.sms.run(), name="sms"))
            interval = self.notifier.watchdog_interval
            if interval is not None:
                workers.append(tg.create_task(self._watchdog_loop(interval), name="watchdog"))
            uplink = tg.create_task(self.uplink.run(), name="uplink")
            if self.config is not None:
                workers.append(tg.create_task(self.config.watch(), name="config-trial"))
                await self.config.announce()
            if self.upgrade is not None:
                workers.append(tg.create_task(self.upgrade.watch(), name="upgrade-trial"))
                await self.upgrade.announce()
            self.notifier.ready(f"polling {', '.join(p.name for p in self.pollers)}")
            log.info("loa-agent %s started as %s", AGENT_VERSION, self.device)
            stopping = asyncio.create_task(stop.wait())
            restarting = asyncio.create_task(self._restart.wait())
            try:
                await asyncio.wait({stopping, restarting}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                restarting.cancel()

            log.info("stopping: flushing the outbox")
            self.notifier.stopping()
            for t in workers:
                t.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if self.tunnel is not None:
                await self.tunnel.aclose()  # its tunnel_closed event goes out with the rest
            await self._state_report()
            await self._event(
                EventType.AGENT_STOP, detail="restart" if self.restart_requested else "SIGTERM"
            )
            self.uplink.stop()
            done, _ = await asyncio.wait({uplink}, timeout=self.shutdown_timeout)
            if not done:
                assert self.outbox is not None
                log.warning(
                    "uplink not flushed within %.0f s; %d message(s) stay in the outbox",
                    self.shutdown_timeout,
                    self.outbox.depth,
                )
                uplink.cancel()

    async def _close(self) -> None:
        if self.control is not None:
            await self.control.aclose()
        for p in self.pollers:
            try:
                async with asyncio.timeout(5.0):
                    await p.probe.aclose()
            except Exception as exc:
                log.warning("closing probe[%s]: %s", p.name, exc)
        if self.outbox is not None:
            await self.outbox.aclose()


__all__ = ["AGENT_VERSION", "Agent", "ProbeSlot", "UplinkFactory", "build_probes"]
