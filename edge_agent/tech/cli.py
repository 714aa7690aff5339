"""``loa-agent status|diag|at|modbus|outbox|events``: the technician's commands.

Each command asks the running agent over its control socket (so AT and Modbus
requests go through the daemon's port locks and never open a port a second
time). With no agent running, ``diag``, ``at`` and ``modbus`` open the hardware
themselves from the config file or flags (``--port``, ``--dialect``,
``--amp-tcp``, ``--amp-port``, ``--profile``, ``--unit``), and ``status``,
``outbox`` and ``events`` read the outbox database read-only.

Output is plain words for a person (Vietnamese by default, ``--lang en`` or
``LOA_LANG=en`` for English; colour on a terminal unless ``NO_COLOR``), or
``--json`` for scripts. Exit codes: 0 healthy, 1 faults found (or the device
answered with an error), 2 could not run. Every command has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from edge_agent.config import (
    AgentConfig,
    AmpConfig,
    DiagnosisConfig,
    ModemConfig,
    StreamConfig,
    SystemConfig,
    load_config,
)
from edge_agent.errors import ConfigError
from edge_agent.tech import checks, client, direct, outboxfile
from edge_agent.tech.checks import Finding, Grade, grade_signal
from edge_agent.tech.client import DaemonUnreachable, NoDaemon, OpFailed, TechError
from edge_agent.tech.render import Painter, ago, duration, label, table, use_colour, when, width
from edge_agent.tech.wire import reading_from_json, state_from_json
from firmware_shims.errors import ProbeTimeout, ShimError
from firmware_shims.readings import AmpReading, ModemReading, StreamReading, SystemReading
from fleet_protocol import Fault, FaultCode, ModemState, fault_info

DEFAULT_CONFIG = Path("/etc/loa-agent/agent.toml")
DEFAULT_SOCKET = Path("/run/loa-agent/control.sock")
OK, FAULTS_FOUND, CANNOT_RUN = 0, 1, 2
MAX_AT_LEN = 256


class UsageError(TechError):
    """The command cannot run as asked (missing port, refused command...)."""


# --- context --------------------------------------------------------------------------


@dataclass
class Ctx:
    """What every command needs: parsed flags, the config if any, output streams."""

    args: argparse.Namespace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    cfg: AgentConfig | None = None
    cfg_error: str | None = None

    def __post_init__(self) -> None:
        path: Path = self.args.config
        if path.exists() or path != DEFAULT_CONFIG:
            try:
                self.cfg = load_config(path)
            except ConfigError as exc:
                self.cfg_error = f"bad config: {exc}"
        self.lang: str = self.args.lang
        self.json: bool = self.args.json
        self.paint = Painter(use_colour(self.out) and not self.json)

    @property
    def socket(self) -> Path:
        if self.args.socket is not None:
            return Path(self.args.socket)
        if self.cfg is not None and self.cfg.control.socket is not None:
            return self.cfg.control.socket
        return DEFAULT_SOCKET

    @property
    def diagnosis(self) -> DiagnosisConfig:
        return self.cfg.diagnosis if self.cfg is not None else DiagnosisConfig()

    def L(self, key: str) -> str:
        return label(key, self.lang)

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def emit_json(self, data: Any) -> None:
        print(json.dumps(data, ensure_ascii=False, indent=2, default=str), file=self.out)

    def warn(self, text: str) -> None:
        print(f"loa-agent: {text}", file=self.err)

    # --- hardware for direct mode ---------------------------------------------------

    def modem_config(self) -> ModemConfig | None:
        a = self.args
        base = self.cfg.modem if self.cfg is not None else None
        port = getattr(a, "port", None)
        if port is None and base is None:
            return None
        mc = base if base is not None else ModemConfig(port=str(port))
        changes: dict[str, Any] = {}
        if port is not None:
            changes["port"] = port
        if getattr(a, "dialect", None):
            changes["dialect"] = a.dialect
        if getattr(a, "baud", None):
            changes["baud"] = a.baud
        mc = dataclasses.replace(mc, **changes)
        from firmware_shims.modem.dialects import get_dialect

        try:
            get_dialect(mc.dialect)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return mc

    def amp_config(self) -> AmpConfig | None:
        a = self.args
        base = self.cfg.amp if self.cfg is not None else None
        tcp, port = getattr(a, "amp_tcp", None), getattr(a, "amp_port", None)
        if tcp is None and port is None and base is None:
            return None
        ac = base or AmpConfig()
        changes: dict[str, Any] = {}
        if tcp is not None:
            host, _, p = tcp.rpartition(":")
            if not host or not p.isdigit() or not 0 < int(p) < 65536:
                raise UsageError(f"--amp-tcp {tcp!r}: expected HOST:PORT")
            changes.update(transport="tcp", address=tcp)
        elif port is not None:
            changes.update(transport="rtu", port=port)
        if getattr(a, "profile", None):
            changes["profile"] = a.profile
        if getattr(a, "unit", None) is not None:
            if not 0 <= a.unit <= 247:
                raise UsageError(f"--unit {a.unit}: a Modbus unit id is 0..247")
            changes["unit"] = a.unit
        if getattr(a, "amp_baud", None):
            changes["baud"] = a.amp_baud
        ac = dataclasses.replace(ac, **changes)
        from firmware_shims.amp.profile import ProfileError, load_profile

        try:
            load_profile(ac.profile)
        except (ProfileError, OSError) as exc:
            raise UsageError(f"amplifier profile: {exc}") from None
        return ac

    def hardware_flags_given(self) -> bool:
        a = self.args
        return any(
            getattr(a, n, None) is not None for n in ("port", "amp_tcp", "amp_port", "dialect")
        )


async def _daemon(ctx: Ctx, op: str, *, deadline: float, **args: Any) -> Any:
    return await client.call(ctx.socket, op, deadline=deadline, **args)


def _no_daemon_hint(ctx: Ctx, what: str) -> str:
    extra = f" ({ctx.cfg_error})" if ctx.cfg_error else ""
    return f"no agent is running at {ctx.socket}, and {what}{extra}"


# --- shared pieces of text ------------------------------------------------------------


def _signal_text(ctx: Ctx, s: ModemState) -> str:
    parts = []
    if s.rsrp_dbm is not None:
        parts.append(f"RSRP {s.rsrp_dbm:.0f} dBm")
    if s.rsrq_db is not None:
        parts.append(f"RSRQ {s.rsrq_db:.0f} dB")
    if s.sinr_db is not None:
        parts.append(f"SINR {s.sinr_db:.0f} dB")
    if s.rssi_dbm is not None:
        parts.append(f"RSSI {s.rssi_dbm:.0f} dBm")
    g = grade_signal(rsrp_dbm=s.rsrp_dbm, rsrq_db=s.rsrq_db, rssi_dbm=s.rssi_dbm)
    style = {
        Grade.EXCELLENT: "green",
        Grade.GOOD: "green",
        Grade.FAIR: "yellow",
        Grade.POOR: "red",
        Grade.NONE: "red",
    }.get(g)
    word = ctx.paint(g.label(ctx.lang), style) if style else g.label(ctx.lang)
    return (", ".join(parts) + ": " if parts else "") + word


def _modem_line(ctx: Ctx, s: ModemState | None) -> str:
    if s is None:
        return ctx.L("not_configured")
    if not s.responding:
        return ctx.paint(ctx.L("not_responding"), "red")
    tech = s.access_tech.value
    reg = ctx.L(f"reg.{s.registration.value}") + (f" ({tech.upper()})" if tech != "unknown" else "")
    sim_word = ctx.L(f"sim.{s.sim.value}")
    sim = sim_word if s.sim.value == "ready" else ctx.paint(sim_word, "red")
    return " · ".join([f"SIM {sim}", s.operator or s.mccmnc or "-", reg, _signal_text(ctx, s)])


def _amp_line(ctx: Ctx, reading: AmpReading | None, state: Any = None) -> str:
    s = reading.state if reading is not None else state
    if s is None:
        return ctx.L("not_configured")
    if not s.responding:
        err = f" ({reading.error})" if reading is not None and reading.error else ""
        return ctx.paint(ctx.L("not_responding"), "red") + err
    parts = []
    if s.power is not None:
        parts.append(ctx.L("on") if s.power else ctx.paint(ctx.L("off"), "yellow"))
    if s.volume is not None:
        parts.append(f"{ctx.L('volume')} {s.volume}")
    if s.temperature_c is not None:
        parts.append(f"{ctx.L('temperature')} {s.temperature_c:.0f} °C")
    if s.mains_v is not None:
        parts.append(f"{ctx.L('mains')} {s.mains_v:.0f} V")
    if s.battery_v is not None:
        parts.append(f"{ctx.L('battery')} {s.battery_v:.1f} V")
    if s.flags:
        parts.append(f"{ctx.L('flags')}: {', '.join(s.flags)}")
    if reading is not None and reading.error:
        parts.append(ctx.paint(reading.error, "red"))
    return ", ".join(parts) or ctx.L("responding")


def _stream_line(ctx: Ctx, s: Any) -> str:
    if s is None:
        return ctx.L("not_configured")
    head = ctx.L("receiving") if s.receiving else ctx.paint(ctx.L("not_receiving"), "red")
    tail = [x for x in (s.source, s.detail) if x]
    return head + (f" ({'; '.join(tail)})" if tail else "")


def _system_line(ctx: Ctx, s: Any) -> str:
    if s is None:
        return "-"
    parts = []
    for key, value, unit in (
        ("cpu", s.cpu_pct, "%"),
        ("memory", s.mem_pct, "%"),
        ("disk", s.disk_pct, "%"),
        ("soc_temp", s.soc_temp_c, "°C"),
    ):
        if value is not None:
            parts.append(f"{ctx.L(key)} {value:.0f} {unit}")
    if s.uptime_s is not None:
        parts.append(f"{ctx.L('boot_uptime')} {duration(s.uptime_s, ctx.lang)}")
    return ", ".join(parts) or "-"


def _finding_lines(ctx: Ctx, found: list[Finding], now: float) -> list[str]:
    lines = []
    for f in found:
        mark = ctx.paint(
            "✗" if f.severity == "critical" else "!",
            "red" if f.severity == "critical" else "yellow",
        )
        cause = ""
        if f.cause:
            from fleet_protocol import B2Cause

            severity = ctx.L(f"severity.{f.severity}")
            cause = f" [{severity}; {B2Cause(f.cause).label(ctx.lang)}]"
        since = ""
        if f.since is not None and f.source == "agent":
            since = f" — {ago(f.since, now, ctx.lang)}"
        title = ctx.paint.severity(f.title(ctx.lang), f.severity)
        ev = f" ({f.evidence})" if f.evidence else ""
        lines.append(f"  {mark} {title}{ev}{cause}{since}")
        remedy = f.remedy(ctx.lang)
        if remedy:
            lines.append(f"      → {remedy}")
    return lines


def _fault_from_json(d: dict[str, Any]) -> Fault | None:
    try:
        return Fault.of(FaultCode(d["code"]), float(d["since"]), str(d.get("evidence", "")))
    except (KeyError, ValueError, TypeError):
        return None


# --- status ---------------------------------------------------------------------------


async def cmd_status(ctx: Ctx) -> int:
    deadline = ctx.args.timeout or 5.0
    now = time.time()
    try:
        st = await _daemon(ctx, "status", deadline=deadline)
    except NoDaemon:
        return await _status_offline(ctx, now)
    faults = [f for f in (_fault_from_json(d) for d in st.get("faults") or []) if f]
    found = checks.findings((), faults)
    link = st.get("link") or {}
    if not link.get("connected"):
        # Nothing the agent finds reaches the district while its link is down.
        detail = f"{link.get('endpoint')}: {link.get('last_error') or 'not connected'}"
        found.append(Finding("broker_unreachable", "warning", None, detail, source="agent"))
    modem = _state(st, "modem")
    if ctx.json:
        out = dict(st)
        out["source"] = "agent"
        out["running"] = True
        if modem is not None:
            out["signal"] = grade_signal(
                rsrp_dbm=modem.rsrp_dbm, rsrq_db=modem.rsrq_db, rssi_dbm=modem.rssi_dbm
            ).value
        out["faults"] = [f.to_json(ctx.lang) for f in found]
        ctx.emit_json(out)
        return FAULTS_FOUND if found else OK
    if link.get("connected"):
        broker = f"{ctx.L('connected_since')} {ago(link.get('connected_since'), now, ctx.lang)}"
        broker = ctx.paint(broker, "green")
    else:
        since = link.get("disconnected_since")
        broker = ctx.paint(ctx.L("disconnected"), "red")
        if since:
            broker += f" {ago(since, now, ctx.lang)}"
        if link.get("last_error"):
            broker += f"; {ctx.L('last_error')}: {link['last_error']}"
    if link.get("endpoint"):
        broker += f" [{link['endpoint']}]"
    if link.get("connected") and link.get("subscription_qos") == 0:
        broker += "; " + ctx.paint(ctx.L("qos0_subscription"), "yellow")
    ob = st.get("outbox") or {}
    outbox = f"{ob.get('depth', 0)} {ctx.L('messages')}, {_size(ob.get('bytes', 0))}"
    if ob.get("oldest"):
        outbox += f", {ctx.L('oldest')} {ago(ob['oldest'], now, ctx.lang)}"
    amp = _state(st, "amp")
    rows = [
        [ctx.L("device"), f"{st.get('device')}  ({ctx.L('commune')}: {st.get('commune') or '-'})"],
        [
            ctx.L("uptime"),
            f"{duration(st.get('uptime_s'), ctx.lang)} (loa-agent {st.get('version')})",
        ],
        [ctx.L("broker"), broker],
        [
            ctx.L("modem"),
            _modem_line(ctx, modem) if "modem" in _roles(st) else ctx.L("not_configured"),
        ],
        [
            ctx.L("amp"),
            _amp_line(ctx, None, amp) if "amp" in _roles(st) else ctx.L("not_configured"),
        ],
        [ctx.L("stream"), _stream_line(ctx, _state(st, "stream"))],
        [ctx.L("system"), _system_line(ctx, _state(st, "system"))],
        [ctx.L("outbox"), outbox],
    ]
    ctx.say(table([[ctx.paint(r[0], "bold"), r[1]] for r in rows]))
    ctx.say()
    if found:
        ctx.say(ctx.paint(f"{ctx.L('faults')} ({len(found)})", "bold"))
        for line in _finding_lines(ctx, found, now):
            ctx.say(line)
    else:
        ctx.say(ctx.paint(ctx.L("no_faults"), "green"))
    rec = st.get("recovery") or []
    if rec:
        ctx.say()
        ctx.say(ctx.paint(ctx.L("recovery"), "bold"))
        ctx.say(
            table(
                [
                    [
                        when(a.get("ts")),
                        str(a.get("action")),
                        "ok" if a.get("ok") else ctx.paint("failed", "red"),
                        str(a.get("detail", "")),
                    ]
                    for a in rec[-5:]
                ],
                indent=2,
            )
        )
    return FAULTS_FOUND if found else OK


def _roles(st: dict[str, Any]) -> set[str]:
    """Roles the daemon polls (its pollers are named after them)."""
    return set((st.get("pollers") or {}).keys()) | set((st.get("readings") or {}).keys())


def _state(st: dict[str, Any], role: str) -> Any:
    r = (st.get("readings") or {}).get(role)
    if not isinstance(r, dict):
        return None
    try:
        return state_from_json(role, {k: v for k, v in r.items() if k != "ts"})
    except ValueError:
        return None


def _size(n: int | None) -> str:
    n = n or 0
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} kB"
    return f"{n / 1024 / 1024:.1f} MB"


async def _status_offline(ctx: Ctx, now: float) -> int:
    if ctx.cfg is None:
        raise UsageError(_no_daemon_hint(ctx, "no config names the outbox (give --config)"))
    try:
        ob = await asyncio.to_thread(outboxfile.summary, ctx.cfg.outbox.path)
    except outboxfile.OutboxFileError as exc:
        raise UsageError(f"no agent is running at {ctx.socket}, and {exc}") from None
    if ctx.json:
        ctx.emit_json(
            {
                "source": "outbox_file",
                "running": False,
                "device": ctx.cfg.device.id,
                "commune": ctx.cfg.device.commune,
                "outbox": ob,
            }
        )
        return FAULTS_FOUND
    ctx.say(ctx.paint(f"loa-agent: no agent is running at {ctx.socket}", "red"))
    ctx.say(f"{ctx.L('source')}: {ctx.L('from_file')} {ob['path']}")
    rows = [
        [
            ctx.L("device"),
            f"{ctx.cfg.device.id}  ({ctx.L('commune')}: {ctx.cfg.device.commune or '-'})",
        ],
        [ctx.L("outbox"), _outbox_headline(ctx, ob, now)],
    ]
    ctx.say(table(rows))
    return FAULTS_FOUND


def _outbox_headline(ctx: Ctx, ob: dict[str, Any], now: float) -> str:
    text = f"{ob.get('depth', 0)} {ctx.L('messages')}, {_size(ob.get('bytes'))}"
    if ob.get("oldest"):
        text += f", {ctx.L('oldest')} {ago(ob['oldest'], now, ctx.lang)}"
    return text


# --- diag -----------------------------------------------------------------------------


@dataclass
class Readings:
    modem: ModemReading | None = None
    amp: AmpReading | None = None
    system: SystemReading | None = None
    stream: StreamReading | None = None
    #: role → why it could not be read (not configured, daemon refused...)
    missing: dict[str, str] = field(default_factory=dict)
    #: faults the daemon holds active (debounced over time); empty in direct mode
    active: list[Fault] = field(default_factory=list)
    #: (ok, detail) of the broker link, when the network was checked
    broker: tuple[bool, str] | None = None
    source: str = "agent"


_ROLES_FOR = {
    "modem": ("modem",),
    "network": ("modem",),
    "amp": ("amp",),
    "system": ("system",),
    "stream": ("modem", "stream"),
    "all": ("modem", "amp", "system", "stream"),
}


async def _read_via_daemon(
    ctx: Ctx, roles: tuple[str, ...], target: str, deadline: float
) -> Readings:
    got = Readings(source="agent")

    async def one(role: str) -> None:
        try:
            data = await _daemon(
                ctx, "tech.read", deadline=deadline + 2.0, role=role, timeout=deadline
            )
        except OpFailed as exc:
            got.missing[role] = ctx.L("not_configured") if exc.code == "unavailable" else exc.error
            return
        try:
            setattr(got, role, reading_from_json(role, data))
        except ValueError as exc:
            got.missing[role] = str(exc)

    async def status() -> None:
        st = await _daemon(ctx, "status", deadline=deadline)
        got.active = [f for f in (_fault_from_json(d) for d in st.get("faults") or []) if f]
        if target in ("network", "all"):
            link = st.get("link") or {}
            if link.get("connected"):
                got.broker = (True, f"{link.get('endpoint')}: connected")
            else:
                got.broker = (
                    False,
                    f"{link.get('endpoint')}: {link.get('last_error') or 'not connected'}",
                )

    await asyncio.gather(status(), *(one(r) for r in roles))
    return got


async def _read_direct(ctx: Ctx, roles: tuple[str, ...], target: str, deadline: float) -> Readings:
    got = Readings(source="direct")
    mc = ctx.modem_config() if "modem" in roles else None
    ac = ctx.amp_config() if "amp" in roles else None
    stream_cfg: StreamConfig | None = ctx.cfg.stream if ctx.cfg is not None else None
    system_cfg = ctx.cfg.system if ctx.cfg is not None else SystemConfig()

    async def modem() -> None:
        if mc is None:
            got.missing["modem"] = ctx.L("not_configured") + " (--port/--dialect or [modem])"
            return
        got.modem = await direct.read_modem(mc, deadline_s=deadline)

    async def amp() -> None:
        if ac is None:
            got.missing["amp"] = ctx.L("not_configured") + " (--amp-tcp/--amp-port or [amp])"
            return
        got.amp = await direct.read_amp(ac, deadline_s=deadline)

    async def system() -> None:
        got.system = await direct.read_system(system_cfg)

    async def stream() -> None:
        if stream_cfg is None:
            got.missing["stream"] = ctx.L("not_configured") + " ([stream])"
            return
        got.stream = await direct.read_stream(stream_cfg, deadline_s=deadline)

    async def broker() -> None:
        if ctx.cfg is None:
            return
        b = ctx.cfg.broker
        got.broker = await direct.broker_reachable(b.host, b.port, timeout_s=min(deadline, 5.0))

    jobs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
        "modem": modem,
        "amp": amp,
        "system": system,
        "stream": stream,
    }
    tasks = [jobs[r]() for r in roles]
    if target in ("network", "all"):
        tasks.append(broker())
    await asyncio.gather(*tasks)
    return got


def _target_result(ctx: Ctx, target: str, rd: Readings, found: list[Finding]) -> dict[str, Any]:
    mine = [
        f
        for f in found
        if f.code in checks.TARGET_CODES[target]
        or (target == "network" and f.code == "broker_unreachable")
    ]
    if target == "modem":
        res = checks.modem_result(rd.modem, mine, ctx.lang)
    elif target == "network":
        m = checks.modem_result(rd.modem, [], ctx.lang)
        res = {
            k: m[k]
            for k in (
                "registration",
                "operator",
                "access_tech",
                "rssi_dbm",
                "rsrp_dbm",
                "rsrq_db",
                "sinr_db",
                "signal",
            )
        }
        res["broker"] = (
            {"ok": rd.broker[0], "detail": rd.broker[1]} if rd.broker is not None else None
        )
        res["faults"] = [f.to_json(ctx.lang) for f in mine]
    else:
        reading = getattr(rd, target)
        state = reading.state if reading is not None else None
        res = {
            "state": _builtins(state),
            "faults": [f.to_json(ctx.lang) for f in mine],
        }
        if isinstance(reading, AmpReading):
            res["error"] = reading.error
    res["checked"] = target not in rd.missing and not (
        target == "network" and "modem" in rd.missing
    )
    res["missing"] = rd.missing.get("modem" if target == "network" else target)
    res["ok"] = not mine
    return res


def _builtins(state: Any) -> Any:
    """Every field of a wire section, defaults included (stable keys for scripts)."""
    if state is None:
        return None
    import msgspec

    return {f: msgspec.to_builtins(getattr(state, f)) for f in state.__struct_fields__}


async def cmd_diag(ctx: Ctx) -> int:
    target: str = ctx.args.target
    deadline = ctx.args.timeout or 8.0
    roles = _ROLES_FOR[target]
    try:
        rd = await _read_via_daemon(ctx, roles, target, deadline)
        if ctx.hardware_flags_given():
            ctx.warn("an agent is running: asked it (hardware flags are ignored)")
    except NoDaemon:
        if ctx.cfg is None and not ctx.hardware_flags_given() and target != "system":
            raise UsageError(
                _no_daemon_hint(
                    ctx,
                    "no config or flags say where the hardware is"
                    " (give --config, or --port/--dialect, --amp-tcp/--amp-port)",
                )
            ) from None
        rd = await _read_direct(ctx, roles, target, deadline)
    targets = checks.TARGETS if target == "all" else (target,)
    # The stream's loss is judged only with the modem's view of the network.
    fresh = checks.diagnose_now(
        modem=rd.modem, amp=rd.amp, system=rd.system, stream=rd.stream, params=ctx.diagnosis
    )
    scope = set().union(*(checks.TARGET_CODES[t] for t in targets))
    fresh = [f for f in fresh if f.code in scope]
    active = [f for f in rd.active if f.code in scope]
    found = checks.findings(fresh, active)
    if rd.broker is not None and not rd.broker[0] and ("network" in targets):
        found.append(Finding("broker_unreachable", "warning", None, rd.broker[1]))
    results = {t: _target_result(ctx, t, rd, found) for t in targets}
    unchecked = [t for t in targets if not results[t]["checked"]]
    if target != "all" and unchecked:
        raise UsageError(f"cannot check {target}: {results[target]['missing']}")
    now = time.time()
    if ctx.json:
        if target == "all":
            out: dict[str, Any] = dict(results)
            out["faults"] = [f.to_json(ctx.lang) for f in found]
            out["ok"] = not found
        else:
            out = results[target]
        out["source"] = rd.source
        out["target"] = target
        out["checked_at"] = now
        ctx.emit_json(out)
        return FAULTS_FOUND if found else OK
    src = ctx.L("from_agent") if rd.source == "agent" else ctx.L("direct")
    ctx.say(f"{ctx.L('source')}: {src} — {when(now)}")
    col = max(width(ctx.L(t)) for t in targets) + 2
    for t in targets:
        res = results[t]
        if not res["checked"]:
            head = ctx.paint(str(res["missing"]), "dim")
        elif t == "modem":
            head = _modem_line(ctx, rd.modem.state if rd.modem else None)
        elif t == "network":
            head = _modem_line(ctx, rd.modem.state if rd.modem else None)
            if rd.broker is not None:
                word = (
                    ctx.L("reachable") if rd.broker[0] else ctx.paint(ctx.L("unreachable"), "red")
                )
                head += f"; {ctx.L('broker')}: {word} ({rd.broker[1]})"
        elif t == "amp":
            head = _amp_line(ctx, rd.amp)
        elif t == "stream":
            head = _stream_line(ctx, rd.stream.state if rd.stream else None)
        else:
            head = _system_line(ctx, rd.system.state if rd.system else None)
        name = ctx.L(t)
        ctx.say(ctx.paint(name, "bold") + " " * (col - width(name)) + head)
        codes = {x["code"] for x in res["faults"]}
        mine = [f for f in found if f.code in codes]
        if mine:
            for line in _finding_lines(ctx, mine, now):
                ctx.say(line)
        elif res["checked"]:
            ctx.say("  " + ctx.paint("✓ " + ctx.L("ok"), "green"))
    if rd.modem is not None and rd.modem.errors and target in ("modem", "all"):
        ctx.say()
        ctx.say(table([[cmd, err] for cmd, err in rd.modem.errors.items()], indent=2))
    return FAULTS_FOUND if found else OK


# --- at -------------------------------------------------------------------------------


async def cmd_at(ctx: Ctx) -> int:
    from firmware_shims.modem.at import is_read_only

    command = " ".join(ctx.args.line).strip()
    if (
        not command.upper().startswith("AT")
        or len(command) > MAX_AT_LEN
        or any(c in command for c in "\r\n")
    ):
        raise UsageError(
            f"{command[:40]!r} is not one AT command line (AT..., at most {MAX_AT_LEN} chars)"
        )
    if not is_read_only(command) and not ctx.args.unsafe:
        raise UsageError(f"{command!r} changes the modem's state; add --unsafe to send it anyway")
    answer_timeout = ctx.args.timeout or 2.0
    try:
        res = await _daemon(
            ctx,
            "at",
            # The daemon may first wait for its own poll to release the port.
            deadline=answer_timeout + 8.0,
            command=command,
            timeout=answer_timeout,
            force=bool(ctx.args.unsafe),
        )
        source = "agent"
    except OpFailed as exc:
        if exc.code == "unavailable":
            raise UsageError(f"the running agent has no modem configured: {exc.error}") from None
        if "no answer" in exc.error:
            raise UsageError(f"timeout: the modem did not answer: {exc.error}") from None
        raise UsageError(exc.error) from None
    except NoDaemon:
        mc = ctx.modem_config()
        if mc is None:
            raise UsageError(
                _no_daemon_hint(ctx, "no modem port is known (give --port, or --config)")
            ) from None
        try:
            resp = await direct.at_command(mc, command, timeout_s=answer_timeout)
        except ProbeTimeout as exc:
            raise UsageError(f"timeout: the modem did not answer: {exc}") from None
        except ShimError as exc:
            raise UsageError(str(exc)) from None
        res = {"command": resp.command, "lines": list(resp.lines), "final": resp.final}
        source = "direct"
    ok = res.get("final") == "OK"
    if ctx.json:
        ctx.emit_json({**res, "ok": ok, "source": source})
    else:
        for line in res.get("lines", []):
            ctx.say(line)
        ctx.say(ctx.paint(str(res.get("final")), "green" if ok else "red"))
    return OK if ok else FAULTS_FOUND


# --- modbus ---------------------------------------------------------------------------


async def cmd_modbus(ctx: Ctx) -> int:
    a = ctx.args
    if not 0 <= a.address <= 65535:
        raise UsageError(f"address {a.address}: must be 0..65535")
    if not 1 <= a.count <= 125:
        raise UsageError(f"count {a.count}: must be 1..125")
    deadline = a.timeout or 3.0
    device_error = False
    try:
        res = await _daemon(
            ctx, "modbus", deadline=deadline + 5.0, address=a.address, count=a.count, input=a.input
        )
        words = list(res["words"])
        source = "agent"
    except OpFailed as exc:
        if exc.code == "unavailable":
            raise UsageError(
                f"the running agent has no amplifier configured: {exc.error}"
            ) from None
        if "Modbus exception" not in exc.error:
            raise UsageError(exc.error) from None
        words, source, device_error, error = [], "agent", True, exc.error
    except NoDaemon:
        ac = ctx.amp_config()
        if ac is None:
            raise UsageError(
                _no_daemon_hint(ctx, "no amplifier is known (give --amp-tcp or --amp-port)")
            ) from None
        from firmware_shims.amp.probe import DeviceException

        source = "direct"
        try:
            words = await direct.modbus_read(
                ac, a.address, a.count, input=a.input, deadline_s=deadline
            )
        except DeviceException as exc:
            words, device_error, error = [], True, str(exc)
        except ShimError as exc:
            raise UsageError(str(exc)) from None
    kind = "input" if a.input else "holding"
    if ctx.json:
        ctx.emit_json(
            {
                "address": a.address,
                "count": a.count,
                "input": a.input,
                "words": words,
                "ok": not device_error,
                "error": error if device_error else None,
                "source": source,
            }
        )
    elif device_error:
        ctx.say(ctx.paint(error, "red"))
    else:
        rows = [[ctx.L("address"), "hex", "dec"]]
        rows += [[f"{kind} {a.address + i}", f"0x{w:04x}", str(w)] for i, w in enumerate(words)]
        ctx.say(table(rows))
    return FAULTS_FOUND if device_error else OK


# --- outbox and events ----------------------------------------------------------------


async def cmd_outbox(ctx: Ctx) -> int:
    deadline = ctx.args.timeout or 5.0
    now = time.time()
    try:
        info = await _daemon(ctx, "outbox", deadline=deadline)
        kinds = await _daemon(ctx, "tech.outbox", deadline=deadline)
        ob = {**info, "kinds": kinds.get("kinds", {}), "source": "agent"}
    except NoDaemon:
        if ctx.cfg is None:
            raise UsageError(
                _no_daemon_hint(ctx, "no config names the outbox (give --config)")
            ) from None
        try:
            ob = await asyncio.to_thread(outboxfile.summary, ctx.cfg.outbox.path)
        except outboxfile.OutboxFileError as exc:
            raise UsageError(f"no agent is running at {ctx.socket}, and {exc}") from None
        ob["source"] = "outbox_file"
    if ctx.json:
        ctx.emit_json(ob)
        return OK
    src = ctx.L("from_agent") if ob["source"] == "agent" else ctx.L("from_file")
    ctx.say(f"{ctx.L('source')}: {src} — {ob.get('path')}")
    ctx.say(table([[ctx.paint(ctx.L("outbox"), "bold"), _outbox_headline(ctx, ob, now)]]))
    if ob.get("evicted") or ob.get("refused"):
        ctx.say(f"  evicted {ob.get('evicted', 0)}, refused {ob.get('refused', 0)}")
    if ob.get("kinds"):
        rows = [[ctx.L("kind"), ctx.L("count"), ctx.L("bytes"), ctx.L("oldest_h")]]
        for kind, k in ob["kinds"].items():
            rows.append(
                [kind, str(k["count"]), _size(k["bytes"]), ago(k.get("oldest"), now, ctx.lang)]
            )
        ctx.say(table(rows, indent=2))
    return OK


def _event_text(ctx: Ctx, e: dict[str, Any]) -> tuple[str, str]:
    etype = str(e.get("type", "?"))
    fault = e.get("fault") if isinstance(e.get("fault"), dict) else None
    if fault is not None:
        try:
            info = fault_info(fault["code"])
            title = info.title_en if ctx.lang == "en" else info.title_vi
        except (KeyError, ValueError):
            title = str(fault.get("code"))
        detail = f"{title}: {fault.get('evidence', '')}".rstrip(": ")
        style = "red" if etype == "fault_raised" else "green"
        return ctx.paint(etype, style), detail
    parts = [str(x) for x in (e.get("action"), e.get("detail")) if x]
    if "undecodable" in e:
        parts = [f"seq {e.get('seq')}: undecodable ({e['undecodable']})"]
    return etype, " ".join(parts)


async def cmd_events(ctx: Ctx) -> int:
    n = ctx.args.n
    if n < 1:
        raise UsageError(f"-n {n}: must be at least 1")
    deadline = ctx.args.timeout or 5.0
    try:
        events = await _daemon(ctx, "events", deadline=deadline, limit=n)
        source = "agent"
    except NoDaemon:
        if ctx.cfg is None:
            raise UsageError(
                _no_daemon_hint(ctx, "no config names the outbox (give --config)")
            ) from None
        try:
            events = await asyncio.to_thread(outboxfile.pending_events, ctx.cfg.outbox.path, n)
        except outboxfile.OutboxFileError as exc:
            raise UsageError(f"no agent is running at {ctx.socket}, and {exc}") from None
        source = "outbox_file"
    if ctx.json:
        ctx.emit_json({"source": source, "events": events})
        return OK
    if source == "outbox_file":
        ctx.say(f"{ctx.L('source')}: {ctx.L('from_file')} (only events not yet sent)")
    rows = [[ctx.L("time"), ctx.L("event"), ctx.L("detail")]]
    for e in events:
        etype, detail = _event_text(ctx, e)
        rows.append([when(e.get("ts")), etype, detail])
    ctx.say(table(rows))
    return OK


# --- parsers --------------------------------------------------------------------------

COMMANDS: dict[str, Callable[[Ctx], Coroutine[Any, Any, int]]] = {
    "status": cmd_status,
    "diag": cmd_diag,
    "at": cmd_at,
    "modbus": cmd_modbus,
    "outbox": cmd_outbox,
    "events": cmd_events,
}


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the parsed technician command; returns the exit code (0, 1 or 2)."""
    err_stream = err or sys.stderr
    # The probes log a failing device once; here the output already says it, in words.
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger("firmware_shims").propagate = False
    try:
        ctx = Ctx(args, out=out or sys.stdout, err=err_stream)
        if ctx.cfg_error and args.config != DEFAULT_CONFIG:
            ctx.warn(ctx.cfg_error)
        return asyncio.run(COMMANDS[args.tech](ctx))
    except (UsageError, DaemonUnreachable) as exc:
        print(f"loa-agent {args.tech}: {exc}", file=err_stream)
        return CANNOT_RUN
    except TechError as exc:
        print(f"loa-agent {args.tech}: {exc}", file=err_stream)
        return CANNOT_RUN
    except KeyboardInterrupt:
        return CANNOT_RUN


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"agent.toml (default {DEFAULT_CONFIG})"
    )
    p.add_argument(
        "--socket", type=Path, help="the agent's control socket (default from the config)"
    )
    p.add_argument("--json", action="store_true", help="JSON for scripts (stable keys)")
    p.add_argument(
        "--lang",
        choices=("vi", "en"),
        default=os.environ.get("LOA_LANG", "vi")
        if os.environ.get("LOA_LANG") in ("vi", "en")
        else "vi",
        help="language of the words (default vi, or $LOA_LANG)",
    )
    p.add_argument("--timeout", type=float, help="seconds to wait (each command has a default)")
    return p


def _hardware() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("hardware, used only when no agent is running")
    g.add_argument("--port", help="modem AT port, e.g. /dev/ttyUSB2")
    g.add_argument(
        "--dialect",
        help="modem dialect: generic, quectel, quectel-eg21, quectel-ec200, quectel-eg800k,"
        " simcom, simcom-a7670, simcom-a7672",
    )
    g.add_argument("--baud", type=int, help="modem baud rate")
    g.add_argument("--amp-tcp", metavar="HOST:PORT", help="amplifier over Modbus TCP")
    g.add_argument("--amp-port", metavar="PATH", help="amplifier over Modbus RTU on this port")
    g.add_argument("--amp-baud", type=int, help="RTU baud rate")
    g.add_argument("--profile", help="amplifier register profile (generic, pa1250d or a path)")
    g.add_argument("--unit", type=int, help="amplifier Modbus unit id")
    return p


def add_parser(subparsers: Any) -> None:
    """Register the technician subcommands on ``loa-agent``'s subparsers."""
    common, hw = _common(), _hardware()

    def add(
        name: str, help: str, parents: list[argparse.ArgumentParser]
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = subparsers.add_parser(name, help=help, parents=parents)
        p.set_defaults(func=run, tech=name)
        return p

    add("status", "one screen: link, modem, amplifier, stream, faults, outbox", [common])
    d = add("diag", "run the checks now, with explanations and remedies", [common, hw])
    d.add_argument("target", nargs="?", default="all", choices=[*checks.TARGETS, "all"])
    at = add("at", "send one AT command to the modem (read-only unless --unsafe)", [common, hw])
    at.add_argument("line", nargs="+", metavar="COMMAND", help="e.g. 'AT+CSQ'")
    at.add_argument("--unsafe", action="store_true", help="allow a command that changes state")
    mb = add("modbus", "read amplifier registers", [common, hw])
    mb.add_argument("action", choices=["read"])
    mb.add_argument("address", type=int)
    mb.add_argument("count", type=int)
    mb.add_argument("--input", action="store_true", help="input registers (default holding)")
    add("outbox", "messages waiting to be sent: depth, bytes, oldest, by kind", [common])
    ev = add("events", "the latest fault and recovery events", [common])
    ev.add_argument("-n", type=int, default=20, help="how many (default 20)")


def main(argv: list[str] | None = None) -> int:
    """``loa-agent`` with only the technician subcommands (tests, scripts)."""
    parser = argparse.ArgumentParser(prog="loa-agent")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


__all__ = ["COMMANDS", "add_parser", "main", "run"]
