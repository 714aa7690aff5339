"""The fleet simulator: many virtual speaker clusters, each running the real agent.

    loa-sim fleet --scenario lam-thao --broker mqtt://127.0.0.1:1883 \\
                  --password-file device-passwords [--shard 1/2] [--duration 600]
    loa-sim fleet --scenario lam-thao --inventory inventory.csv   # the collector's inventory
    loa-sim fleet --scenario my.toml --check                      # validate, print a summary

Each cluster runs ``edge_agent``'s ``Agent`` (probes, diagnosis, SQLite
outbox, MQTT uplink, recovery ladder) against in-process simulated hardware
(``fleet_sim.cluster``). A scenario (TOML, ``docs/scenarios.md``;
bundled ones in ``fleet_sim/scenarios``: ``lam-thao``, ``phu-tho``,
``stress``) gives:

``[scenario]``
    ``name``, ``district``, ``province``; ``prefix`` of device ids
    (``<prefix>-<commune slug>-<NN>``); ``seed`` of every random draw;
    ``stream_url`` (``{commune}`` is the commune's slug).
``[time]``
    ``backfill_days`` of history to produce before now, at ``acceleration``
    simulated seconds per real second, polling every ``backfill_step_s``
    simulated seconds; ``horizon_days`` of random faults after the start.
``[agent]``
    live ``poll_s``, ``system_poll_s``, ``stream_poll_s``; ``heartbeat_s``,
    ``full_report_s``; diagnosis ``confirm_s``, ``clear_s``; the modem's
    ``flap_period_s``; ``outbox_max_bytes``; ``keepalive_s``.
``[defaults]``
    ``dialects`` and ``amp_profiles`` (a name, or a table of name = weight),
    ``contractor``.
``[[communes]]``
    ``code``, ``name`` (with diacritics), ``kind`` (xã, phường, thị trấn),
    ``slug``, ``clusters``, ``never_reporting`` (in the inventory, never
    started), and optionally ``dialects``, ``amp_profiles``, ``contractor``,
    ``district`` (default ``[scenario] district``).
``[[faults]]``
    ``fault`` (``modem.*``, ``amp.*``, ``stream.lost``, ``controller.off``,
    ``controller.disk_full``, ``controller.overheat``) on ``cluster``,
    ``clusters`` or ``commune`` (+ ``count``), from ``start`` (``"-40d"``,
    ``"10m"``, or an ISO date-time) for ``duration`` (omitted: for good).
``[[random_faults]]``
    ``fault`` episodes on each cluster (of ``communes``, default all), mean
    ``mtbf`` apart, lasting ``duration = [shortest, longest]``, in ``phase``
    ``all``, ``backfill`` or ``live``.
``[[outages]]``
    no data link for ``cluster``/``clusters``/``commune`` from ``start`` for
    ``duration``.

A bad scenario fails at start with the field named: ``faults[2].fault: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import io
import logging
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from fleet_sim.scenario import Scenario, ScenarioError, load_scenario
from fleet_sim.timeline import build_schedule

log = logging.getLogger("loa.fleet")

#: Inventory columns written by ``--inventory`` (collector.inventory's English keys).
INVENTORY_COLUMNS = (
    "device_id",
    "commune_code",
    "commune_name",
    "commune_kind",
    "district",
    "province",
    "address",
    "contractor",
    "sim_iccid",
)


def inventory_csv(scenario: Scenario) -> bytes:
    """The scenario's clusters as an inventory CSV (UTF-8, English header keys), in order."""
    from fleet_sim.cluster import sim_identity

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(INVENTORY_COLUMNS)
    for i, c in enumerate(scenario.clusters):
        commune = scenario.commune(c.commune)
        n = int(c.device_id.rsplit("-", 1)[1])
        w.writerow(
            (
                c.device_id,
                commune.code,
                commune.name,
                commune.kind,
                commune.district,
                scenario.province,
                f"Cụm loa số {n}, {commune.kind} {commune.name}",
                commune.contractor,
                sim_identity(scenario.seed, c.device_id, i)[1],
            )
        )
    return out.getvalue().encode("utf-8")


def with_time(
    scenario: Scenario, *, backfill_days: float | None, acceleration: float | None
) -> Scenario:
    """The scenario with its ``[time]`` overridden (command-line flags); validated again."""
    t = scenario.time
    t = dataclasses.replace(
        t,
        backfill_days=t.backfill_days if backfill_days is None else backfill_days,
        acceleration=t.acceleration if acceleration is None else acceleration,
    )
    if t.backfill_days < 0 or t.acceleration < 1:
        raise ScenarioError("time", "backfill days must be >= 0 and acceleration >= 1")
    if t.backfill_days > 0 and t.acceleration <= 1:
        raise ScenarioError("time.acceleration", "backfilling needs an acceleration above 1")
    if t.backfill_days == 0:
        t = dataclasses.replace(t, acceleration=1.0)
    return dataclasses.replace(scenario, time=t)


def summary(scenario: Scenario) -> str:
    """A few lines describing the scenario and its schedule (``--check``)."""
    import time

    start = time.time()
    episodes = build_schedule(scenario, start)
    by_name = Counter(e.name for e in episodes)
    hit_now: dict[str, set[str]] = {}
    for e in episodes:
        if e.active(start):
            hit_now.setdefault(e.name, set()).add(e.device)
    affected = set().union(*hit_now.values()) if hit_now else set()
    reporting = sum(1 for c in scenario.clusters if not c.silent)
    dialects = Counter(c.dialect for c in scenario.clusters)
    profiles = Counter(c.amp_profile for c in scenario.clusters)
    from fleet_sim.runner import CPU_PER_READ_S, backfill_reads_per_s

    load = backfill_reads_per_s(scenario, reporting)
    lines = [
        f"{scenario.name}: {len(scenario.communes)} communes, {len(scenario.clusters)} clusters"
        f" ({reporting} reporting)",
        f"time: backfill {scenario.time.backfill_days:g} d at x{scenario.time.acceleration:g},"
        f" step {scenario.time.backfill_step_s:g} s"
        + (f": {load:.0f} probe reads/s, about {load * CPU_PER_READ_S:.1f} cores" if load else ""),
        "dialects: " + ", ".join(f"{k} {v}" for k, v in dialects.most_common()),
        "amplifiers: " + ", ".join(f"{k} {v}" for k, v in profiles.most_common()),
        "episodes: " + (", ".join(f"{k} {v}" for k, v in by_name.most_common()) or "none"),
        f"at the start: {len(affected)} clusters under a fault or outage: "
        + (", ".join(f"{k} {len(v)}" for k, v in sorted(hit_now.items())) or "none"),
    ]
    return "\n".join(lines)


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit() or not 1 <= int(k) <= int(n):
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N with 1 <= K <= N")
    return int(k), int(n)


def _passwords(args: argparse.Namespace) -> dict[str, str] | str | None:
    if args.password_file:
        table: dict[str, str] = {}
        text = Path(args.password_file).read_text(encoding="utf-8")
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            user, sep, pw = line.partition(":")
            if not sep or not user:
                raise ScenarioError(
                    f"--password-file line {n}", "expected device:password", path=args.password_file
                )
            table[user] = pw
        return table
    template: str | None = args.password_template
    return template


async def run_fleet(args: argparse.Namespace, scenario: Scenario) -> int:
    from fleet_sim.cluster import BrokerTarget
    from fleet_sim.runner import Fleet

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pw = _passwords(args)
    if isinstance(pw, str):
        template = pw
        passwords: object = lambda d: template.format(device=d)  # noqa: E731
    else:
        passwords = pw
    with contextlib.ExitStack() as stack:
        if args.state_dir:
            state_dir = Path(args.state_dir)
        else:
            # tmpfs when there is one: the outboxes fsync every commit, which
            # costs nothing there and would wear nothing out either.
            shm = Path("/dev/shm")
            base = str(shm) if shm.is_dir() and shm.stat().st_mode & 0o002 else None
            state_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="loa-fleet-", dir=base))
            )
        fleet = Fleet(
            scenario,
            broker=BrokerTarget(args.broker, Path(args.ca_file) if args.ca_file else None),
            state_dir=state_dir,
            passwords=passwords,  # type: ignore[arg-type]
            shard=args.shard,
            progress_s=args.progress,
            status_file=Path(args.status_file) if args.status_file else None,
        )
        if args.duration:
            loop.call_later(args.duration, stop.set)
        await fleet.run(stop)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    return 0


def _fleet(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # A thousand agents each logging their faults would drown the fleet's own lines.
        for name in ("edge_agent", "firmware_shims", "pymodbus"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        scenario = with_time(
            load_scenario(args.scenario),
            backfill_days=args.backfill_days,
            acceleration=args.acceleration,
        )
        if args.check:
            print(summary(scenario))
            return 0
        if args.inventory:
            data = inventory_csv(scenario)
            if args.inventory == "-":
                sys.stdout.buffer.write(data)
            else:
                Path(args.inventory).write_bytes(data)
            return 0
        if not args.broker:
            print("loa-sim fleet: --broker URL is required to run", file=sys.stderr)
            return 2
        return asyncio.run(run_fleet(args, scenario))
    except ScenarioError as exc:
        print(f"loa-sim fleet: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"loa-sim fleet: {exc}", file=sys.stderr)
        return 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", required=True, help="scenario TOML, or a bundled name")
    p.add_argument("--broker", help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--ca-file", help="CA bundle for mqtts://")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--password-file", help="device:password lines (mosquitto_passwd's input)")
    pw.add_argument(
        "--password-template", help="every device's password, {device} replaced: 'pw-{device}'"
    )
    p.add_argument("--state-dir", help="outboxes and password files (default: a temporary dir)")
    p.add_argument("--shard", type=_shard, default=(1, 1), help="run every N-th cluster: K/N")
    p.add_argument("--backfill-days", type=float, help="override [time] backfill_days")
    p.add_argument("--acceleration", type=float, help="override [time] acceleration")
    p.add_argument("--duration", type=float, help="stop after this many real seconds")
    p.add_argument("--progress", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--status-file", help="write the fleet's status JSON here at each progress line")
    p.add_argument("--inventory", metavar="OUT", help="write the inventory CSV ('-': stdout)")
    p.add_argument("--check", action="store_true", help="validate and summarise the scenario")
    p.add_argument("-v", "--verbose", action="store_true", help="the agents' own log lines too")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``loa-sim fleet`` and ``loa-sim demo``."""
    p = subparsers.add_parser("fleet", help="run many simulated clusters with the real agent")
    add_arguments(p)
    p.set_defaults(func=_fleet)
    from fleet_sim import demo

    demo.add_parser(subparsers)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loa-sim fleet", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return _fleet(parser.parse_args(argv))


__all__ = ["add_parser", "inventory_csv", "load_scenario", "main", "summary", "with_time"]
