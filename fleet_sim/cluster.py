"""One virtual speaker cluster: simulated hardware, its data link, and the real agent.

``ClusterSim`` owns a cluster's simulated modem (``ModemEngine``), amplifier
(``AmpEngine``), controller and stream, and its data ``Link``; it runs the
real ``edge_agent.agent.Agent`` against them, passing through the agent's
constructor only what a simulation must change:

- ``probes``: the real ``ModemProbe`` over ``AtPort.for_engine`` and
  ``AmpProbe.in_process`` (no pty, no socket, no thread), plus a simulated
  controller and stream probe; every probe stamps readings with the fleet's
  simulated clock;
- ``clock``: every message is stamped with the simulated clock (the device's
  clock) rather than the host's, so backfilled history carries past times;
- ``uplink``: the agent's own ``Uplink``, whose MQTT clients come from the
  cluster's ``Link`` and cannot connect while the link is down.

Diagnosis, the outbox (one SQLite file per cluster), the uplink's MQTT session,
reports and the recovery ladder are the agent's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiomqtt

from edge_agent.agent import Agent, ProbeSlot
from edge_agent.clock import Stamper
from edge_agent.config import (
    AgentConfig,
    BrokerConfig,
    ControlConfig,
    DeviceConfig,
    DiagnosisConfig,
    OutboxConfig,
    RecoveryConfig,
    ReportsConfig,
    SmsConfig,
    SystemConfig,
    validate,
)
from edge_agent.outbox import Outbox
from edge_agent.uplink import Uplink
from firmware_shims.amp.engine import AmpEngine
from firmware_shims.amp.probe import AmpProbe
from firmware_shims.amp.profile import load_profile
from firmware_shims.modem.port import AtPort
from firmware_shims.modem.probe import ModemProbe
from firmware_shims.modem.sim import ModemEngine, SimOptions
from firmware_shims.modem.smsc import SmsCentre
from firmware_shims.readings import StreamReading, SystemReading
from fleet_protocol import (
    Command,
    StreamState,
    SystemState,
    mqtt_compat,
)
from fleet_protocol.sms import sms_key
from fleet_sim.scenario import LINK_CUTTING, ClusterSpec, Scenario
from fleet_sim.timeline import OUTAGE, FleetClock

log = logging.getLogger("loa.fleet")

#: (MCC-MNC, weight): Viettel, Vinaphone, MobiFone (REFERENCE.md).
_OPERATORS = (("45204", 0.6), ("45202", 0.25), ("45201", 0.15))


def sim_identity(seed: int, device_id: str, index: int) -> tuple[str, str, str]:
    """(MCC-MNC, ICCID, IMSI) of a cluster's SIM: Vietnamese operators, ICCID 8984..."""
    u = random.Random(f"{seed}:{device_id}:sim").random()
    acc, mccmnc = 0.0, _OPERATORS[0][0]
    for op, w in _OPERATORS:
        acc += w
        if u < acc:
            mccmnc = op
            break
    return mccmnc, f"8984{mccmnc[3:]}{index:013d}", f"{mccmnc}{index:010d}"


def sim_phone(seed: int, device_id: str, index: int) -> str:
    """The phone number of a cluster's SIM (+84 and 9 digits, Viettel's 096 range)."""
    del seed, device_id
    return f"+8496{index:07d}"


def serving_cell(commune_code: str, cells: tuple[str, ...], n: int) -> str:
    """The hex cell id of the ``n``-th cluster (0-based) of a commune."""
    if cells:
        return cells[n % len(cells)]
    return f"{zlib.crc32(commune_code.encode()) & 0xFFFFFFF:X}"


@dataclass(frozen=True, slots=True)
class FleetSms:
    """The fleet's SMS side: a simulated SMS centre every cluster's modem is attached to,
    and the agents' SMS fallback settings (the district's number, a shared secret from
    which each device's key is derived as provisioning does)."""

    centre: SmsCentre
    secret: bytes
    number: str
    after_s: float = 900.0
    check_s: float = 60.0
    max_per_day: int = 3


#: A failing SIM answers +CME ERROR 13 for a few polls before the modem drops the
#: bearer (live only): long enough for the agent to report it.
SIM_LINK_GRACE_POLLS = 3
_DELAYED_CUT = frozenset({"modem.sim_failure"})


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    """Where the fleet's agents connect, and how they authenticate."""

    #: ``mqtt://host:port`` or ``mqtts://host:port``.
    url: str
    #: CA bundle for mqtts (None: the system store).
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Intervals:
    """Real seconds between polls per probe role, and the AT timeout, for one phase."""

    modem: float
    amp: float
    system: float
    stream: float

    @property
    def at_timeout(self) -> float:
        # Shorter than the modem poll (the agent's config rule), at most the usual 2 s.
        return min(2.0, self.modem * 0.5)

    def of(self, role: str) -> float:
        value = getattr(self, role)
        assert isinstance(value, float)
        return value


class Link:
    """A cluster's 4G data link as the simulator controls it.

    Taking it down shuts the live MQTT connection's socket the way a lost
    bearer ends it: no DISCONNECT reaches the broker, which then publishes the
    device's last will. While it is down, connection attempts fail at once with
    ENETUNREACH and cost nothing.
    """

    def __init__(self) -> None:
        self.up = True
        self.cuts = 0
        self._client: aiomqtt.Client | None = None

    def attach(self, client: aiomqtt.Client) -> None:
        self._client = client

    def set(self, up: bool, *, abrupt: bool = True) -> None:
        """Bring the link up or down; ``abrupt=False`` ends the session with a DISCONNECT.

        While backfilling the fleet takes links down politely: a last will
        published now would be stamped by the broker's (wall) clock, far after
        the simulated moment, and mark the device offline until the simulation
        catches up. Live, a cut is what a lost bearer is: abrupt.
        """
        if up == self.up:
            return
        self.up = up
        if not up:
            self.cuts += 1
            if abrupt:
                self.drop()
            else:
                self.hang_up()

    def client(self, *args: Any, **kwargs: Any) -> aiomqtt.Client:
        """The uplink's ``client_factory``: a client on this link; ENETUNREACH while down."""
        if not self.up:
            raise OSError(errno.ENETUNREACH, "no data link (simulated)")
        client = aiomqtt.Client(*args, **kwargs)
        self.attach(client)
        return client

    def drop(self) -> None:
        """Shut the current connection's socket (if any) without a DISCONNECT."""
        client, self._client = self._client, None
        mqtt_compat.drop(client)

    def hang_up(self) -> None:
        """End the current session with a DISCONNECT: the broker discards the last will."""
        client, self._client = self._client, None
        mqtt_compat.hang_up(client)


class SimSystemProbe:
    """The controller: quiet load, a slowly filling SD card, a boot id per power-up."""

    name = "system"

    def __init__(self, cluster: ClusterSim, clock: Callable[[], float]) -> None:
        self.cluster = cluster
        self.clock = clock

    async def read(self) -> SystemReading:
        c = self.cluster
        t = self.clock()
        rng = c.rng
        disk = 97.5 if "controller.disk_full" in c.active else c.disk_base + rng.uniform(0, 0.5)
        soc = 86.0 + rng.uniform(0, 2) if "controller.overheat" in c.active else c.soc_base
        state = SystemState(
            cpu_pct=round(rng.uniform(2, 12), 1),
            mem_pct=round(c.mem_base + rng.uniform(-1, 1), 1),
            disk_pct=round(disk, 1),
            soc_temp_c=round(soc + rng.uniform(-1.5, 1.5), 1),
            uptime_s=float(round(max(0.0, t - c.booted_at))),
            boot_id=c.boot_id,
        )
        return SystemReading(ts=t, state=state)

    async def aclose(self) -> None:
        return None


class SimStreamProbe:
    """The broadcast stream: received unless ``stream.lost`` is injected or the link is down."""

    name = "stream"

    def __init__(self, cluster: ClusterSim, clock: Callable[[], float]) -> None:
        self.cluster = cluster
        self.clock = clock
        self._receiving: bool | None = None
        self._since: float | None = None

    async def read(self) -> StreamReading:
        c = self.cluster
        t = self.clock()
        detail: str | None = None
        if "stream.lost" in c.active:
            detail = f"{c.stream_url}: no stream data in 15 s"
        elif not c.link.up:
            detail = f"{c.stream_url}: cannot connect: Network is unreachable"
        receiving = detail is None
        if receiving != self._receiving:
            self._receiving, self._since = receiving, t
        return StreamReading(
            ts=t,
            state=StreamState(
                receiving=receiving, since=self._since, source=c.stream_url, detail=detail
            ),
        )

    async def aclose(self) -> None:
        return None


class ClusterSim:
    """One cluster: engines, link, injected faults, and its agent's lifetime.

    ``apply(name, on)`` starts or ends one episode (a scenario fault name, or
    ``network.outage``); overlapping episodes of the same name are counted, so
    the fault ends with the last of them. ``start()``/``stop()`` run the agent;
    ``controller.off`` kills it abruptly (a power cut) and restarts it with a
    new boot id when the episode ends.
    """

    def __init__(
        self,
        spec: ClusterSpec,
        scenario: Scenario,
        *,
        index: int,
        clock: FleetClock,
        state_dir: Path,
        broker: BrokerTarget,
        password: str | None,
        phase_intervals: Callable[[], Intervals],
        sms: FleetSms | None = None,
    ) -> None:
        self.spec = spec
        self.device = spec.device_id
        self.clock = clock
        self.intervals = phase_intervals
        self.rng = random.Random(f"{scenario.seed}:{spec.device_id}")
        commune = scenario.commune(spec.commune)
        self.stream_url = scenario.stream_url.format(commune=commune.slug)[:512]
        mccmnc, iccid, imsi = sim_identity(scenario.seed, spec.device_id, index)
        self.modem_engine = ModemEngine(
            spec.dialect,
            options=SimOptions(
                flap_period=scenario.agent.flap_period_s,
                urc_rate=0.02,
                seed=self.rng.randrange(1 << 30),
            ),
            clock=clock,
            iccid=iccid,
            imsi=imsi,
            mccmnc=mccmnc,
        )
        self.modem_engine.cell_id = serving_cell(
            commune.code, commune.cells, int(spec.device_id.rsplit("-", 1)[1]) - 1
        )
        self.phone = sim_phone(scenario.seed, spec.device_id, index)
        self.amp_engine = AmpEngine(
            load_profile(spec.amp_profile), clock=clock, seed=self.rng.randrange(1 << 30)
        )
        self.link = Link()
        self.active: Counter[str] = Counter()
        self.disk_base = self.rng.uniform(18, 35)
        self.mem_base = self.rng.uniform(28, 42)
        self.soc_base = self.rng.uniform(44, 56)
        self.booted_at = clock() - self.rng.uniform(3600, 30 * 86400)
        self.boot_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        self.powered = True
        self.restarts = 0
        self.agent: Agent | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self.cfg = self._config(scenario, state_dir, broker, password)
        self._cut_at: dict[str, float] = {}
        a_ = scenario.agent
        self._grace = SIM_LINK_GRACE_POLLS * a_.poll_s + 2 * a_.confirm_s
        if sms is not None:
            sms.centre.attach(self.modem_engine, self.phone)
            key = state_dir / f"{self.device}.sms.key"
            key.write_text(sms_key(sms.secret, self.device).hex() + "\n", encoding="utf-8")
            key.chmod(0o600)
            # Set after validation: the fleet's agent builds its modem probe itself.
            self.cfg = replace(
                self.cfg,
                sms=SmsConfig(
                    number=sms.number,
                    key_file=key,
                    after_s=sms.after_s,
                    check_s=sms.check_s,
                    max_per_day=sms.max_per_day,
                    state_file=state_dir / f"{self.device}.sms.json",
                    timeout_s=self.intervals().at_timeout,
                ),
            )

    def _config(
        self, scenario: Scenario, state_dir: Path, broker: BrokerTarget, password: str | None
    ) -> AgentConfig:
        a = scenario.agent
        password_file: Path | None = None
        if password is not None:
            password_file = state_dir / f"{self.device}.password"
            password_file.write_text(password + "\n", encoding="utf-8")
            password_file.chmod(0o600)
        live = Intervals(a.poll_s, a.poll_s, a.system_poll_s, a.stream_poll_s)
        cfg = AgentConfig(
            device=DeviceConfig(id=self.device, commune=self.spec.commune),
            broker=BrokerConfig(
                url=broker.url,
                ca_file=broker.ca_file,
                password_file=password_file,
                keepalive_s=a.keepalive_s,
                # A local broker: give up on an attempt quickly and retry soon,
                # so a link restored while backfilling delivers within a second.
                connect_timeout_s=10.0,
                publish_timeout_s=20.0,
                backoff_max_s=1.0,
                refused_backoff_max_s=30.0,
            ),
            system=SystemConfig(poll_s=live.system, disk_path=state_dir, timeout_s=live.system / 2),
            reports=ReportsConfig(heartbeat_s=a.heartbeat_s, full_report_s=a.full_report_s),
            outbox=OutboxConfig(
                path=state_dir / f"{self.device}.outbox.sqlite", max_bytes=a.outbox_max_bytes
            ),
            diagnosis=DiagnosisConfig(
                confirm_s=a.confirm_s,
                clear_s=a.clear_s,
                weak_signal_confirm_s=max(a.confirm_s, min(600.0, 5 * a.confirm_s)),
            ),
            recovery=RecoveryConfig(enabled=True),
            control=ControlConfig(socket=None),
            log_level="WARNING",
        )
        return validate(cfg)

    # --- episodes ------------------------------------------------------------------

    def apply(self, name: str, on: bool) -> None:
        """Start (``on``) or end one episode of ``name`` (scenario fault or outage)."""
        before = self.active[name] > 0
        self.active[name] += 1 if on else -1
        if self.active[name] <= 0:
            del self.active[name]
        now = self.active[name] > 0
        if now == before:
            return
        group, _, fault = name.partition(".")
        if group == "modem":
            (self.modem_engine.faults.set if now else self.modem_engine.faults.clear)(fault)
        elif group == "amp":
            (self.amp_engine.faults.set if now else self.amp_engine.faults.clear)(fault)
        if name == "controller.off":
            self.powered = not now
        if name in _DELAYED_CUT:
            if now and self.clock.live:
                loop = asyncio.get_running_loop()
                self._cut_at[name] = loop.time() + self._grace
                loop.call_later(self._grace, self._relink)
            else:
                self._cut_at.pop(name, None)
        self.link.set(self.link_should_be_up(), abrupt=self.clock.live)

    def _relink(self) -> None:
        self.link.set(self.link_should_be_up(), abrupt=self.clock.live)

    def _cutting(self, name: str) -> bool:
        if name not in LINK_CUTTING:
            return False
        at = self._cut_at.get(name)
        return at is None or asyncio.get_running_loop().time() >= at

    def link_should_be_up(self) -> bool:
        return OUTAGE not in self.active and not any(self._cutting(n) for n in self.active)

    def injected(self) -> list[str]:
        return sorted(self.active)

    # --- the agent's lifetime --------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Run a fresh agent (a boot of the controller) unless powered off or running."""
        if self.running or not self.powered:
            return
        if self.agent is not None:  # a reboot: new boot id, uptime from now
            self.restarts += 1
            self.boot_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
            self.booted_at = self.clock()
        self.agent = Agent(
            self.cfg,
            probes=self.probes(),
            uplink=self.uplink,
            clock=self.clock,
            shutdown_timeout=5.0,
        )
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            self._run(self.agent, self._stop), name=f"agent[{self.device}]"
        )

    def probes(self) -> list[ProbeSlot]:
        """Fresh probes on this cluster's simulated hardware, for one boot of its agent."""
        iv = self.intervals()
        port = AtPort.for_engine(self.modem_engine, name=f"{self.device}:modem")
        modem = ModemProbe(port, self.spec.dialect, timeout=iv.at_timeout, clock=self.clock)
        return [
            ProbeSlot("modem", modem, iv.modem),
            ProbeSlot("amp", AmpProbe.in_process(self.amp_engine, clock=self.clock), iv.amp),
            ProbeSlot("system", SimSystemProbe(self, self.clock), iv.system),
            ProbeSlot("stream", SimStreamProbe(self, self.clock), iv.stream),
        ]

    def uplink(
        self,
        cfg: AgentConfig,
        outbox: Outbox,
        on_command: Callable[[Command], Awaitable[None]],
        *,
        clock: Callable[[], float],
        stamper: Stamper | None,
    ) -> Uplink:
        """The agent's uplink factory: the real ``Uplink`` over this cluster's ``Link``."""
        return Uplink(
            cfg, outbox, on_command, clock=clock, stamper=stamper, client_factory=self.link.client
        )

    def set_intervals(self, iv: Intervals) -> None:
        """Switch the running agent's pollers to ``iv`` (backfill → live); from the next poll."""
        agent = self.agent
        if agent is None:
            return
        for p in agent.pollers:
            p.interval = iv.of(p.name)
        if agent.modem is not None:
            agent.modem.timeout = iv.at_timeout

    async def _run(self, agent: Agent, stop: asyncio.Event) -> None:
        try:
            await agent.run(stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: agent failed", self.device)

    async def power_cut(self) -> None:
        """Kill the agent as a power cut does: no goodbye (live: the broker sends the last will)."""
        if self.clock.live:
            self.link.drop()
        else:
            self.link.hang_up()  # see Link.set
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self, timeout: float) -> None:
        """Stop the agent in order (final report, offline presence); cut it after ``timeout``."""
        task = self._task
        if task is None or task.done() or self._stop is None:
            return
        self._stop.set()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            await self.power_cut()

    def status(self) -> dict[str, Any]:
        agent = self.agent
        up = agent.uplink if agent is not None else None
        ob = agent.outbox if agent is not None else None
        return {
            "device": self.device,
            "running": self.running,
            "link": self.link.up,
            "connected": bool(up and up.connected),
            "published": up.published if up else 0,
            "outbox": ob.depth if ob is not None and self.running else None,
            "injected": self.injected(),
            "faults": [str(f.code) for f in agent.faults] if agent is not None else [],
            "polls": sum(p.polls for p in agent.pollers) if agent is not None else 0,
            "skipped": sum(p.skipped for p in agent.pollers) if agent is not None else 0,
        }


__all__ = [
    "BrokerTarget",
    "ClusterSim",
    "FleetSms",
    "Intervals",
    "Link",
    "SimStreamProbe",
    "SimSystemProbe",
    "serving_cell",
    "sim_identity",
    "sim_phone",
]
