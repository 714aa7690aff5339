"""What the SMS fallback costs: SMS count and bytes per cluster per month.

    .venv/bin/python bench/sms_budget.py [--scenario lam-thao phu-tho stress]
                                         [--after 900] [--per-day 3] [--days 365]
                                         [--data-blocked-mtbf 90d]

For each shipped scenario, builds its fault schedule (``fleet_sim``,
the same episodes the simulator injects) over ``--days`` and replays, per
cluster, the agent's own SMS decision (``edge_agent.sms.should_send``, with a
persisted record as the agent keeps it) at every change of the cluster's
faults and at ``after_s`` into every spell of lost data:

- SMS can go only while the data link is down and the SIM is ready and
  registered: a network outage (``network.outage``) or ``modem.data_blocked``;
  a dead SIM, no cell, a dead modem or no power send nothing;
- the faults texted are those the agent would hold then (the concurrent
  amplifier, power and controller faults; ``stream_lost`` during an outage
  once confirmed; ``no_bearer`` while data is blocked), so one SMS goes per
  change of those, capped at ``--per-day`` in any 24 h;
- bytes are the length of the real ``LOA1`` text for that device and faults.

``--data-blocked-mtbf`` adds a ``modem.data_blocked`` random fault (none of the
shipped scenarios has one; the field sees it) as a second line per scenario.
A schedule replay, not a run: it prints figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.config import SmsConfig
from edge_agent.sms import DAY, SmsRecord, should_send
from fleet_protocol import Fault, FaultCode, ModemState, RegState, SimState
from fleet_protocol.sms import encode_fault_sms, sms_key
from fleet_sim.scenario import (
    LINK_CUTTING,
    RandomRule,
    bundled,
    load_scenario,
    parse_duration,
)
from fleet_sim.timeline import OUTAGE, build_schedule

#: Scenario fault → the agent fault it shows up as (those not listed raise nothing
#: the agent could text while its link is down).
AS_FAULT = {
    "amp.line_open": FaultCode.AMP_LINE_OPEN,
    "amp.output_short": FaultCode.AMP_OUTPUT_SHORT,
    "amp.no_response": FaultCode.AMP_NO_RESPONSE,
    "amp.over_temp": FaultCode.AMP_OVER_TEMP,
    "amp.mains_fail": FaultCode.MAINS_FAIL,
    "amp.battery_low": FaultCode.BATTERY_LOW,
    "modem.weak_signal": FaultCode.WEAK_SIGNAL,
    "modem.data_blocked": FaultCode.NO_BEARER,
    "controller.disk_full": FaultCode.CONTROLLER_DISK_FULL,
    "controller.overheat": FaultCode.CONTROLLER_OVERHEAT,
}
SMS_CAPABLE_CUTS = frozenset({OUTAGE, "modem.data_blocked"})
CONFIRM_S = 120.0


def replay(scenario_name: str, cfg: SmsConfig, days: float, blocked_mtbf: float | None) -> dict:
    sc = load_scenario(bundled(scenario_name))
    if blocked_mtbf is not None:
        rule = RandomRule(
            fault="modem.data_blocked",
            mtbf=blocked_mtbf,
            duration=(6 * 3600.0, 5 * 86400.0),
            communes=(),
            phase="all",
        )
        sc = dataclasses.replace(sc, random_faults=(*sc.random_faults, rule))
    sc = dataclasses.replace(
        sc, time=dataclasses.replace(sc.time, backfill_days=days, horizon_days=0)
    )
    start = 1_800_000_000.0
    origin = start - days * 86400.0
    episodes = [e for e in build_schedule(sc, start) if e.end > origin and e.start < start]
    key = sms_key(b"bench", "x")
    modem = ModemState(sim=SimState.READY, registration=RegState.HOME)
    per_cluster: list[int] = []
    sizes: list[int] = []
    clusters = [c for c in sc.clusters if not c.silent]
    by_device: dict[str, list] = {c.device_id: [] for c in clusters}
    for e in episodes:
        by_device.setdefault(e.device, []).append(e)
    for c in clusters:
        eps = by_device[c.device_id]
        points = sorted(
            {max(origin, e.start) for e in eps}
            | {e.end for e in eps if e.end < start}
            | {max(origin, e.start) + cfg.after_s for e in eps}
            | {max(origin, e.start) + CONFIRM_S for e in eps}
        )
        record = SmsRecord()
        sent = 0
        down_since: float | None = None
        for t in points:
            if not origin <= t < start:
                continue
            active = {e.name for e in eps if e.start <= t < e.end}
            cut = (OUTAGE in active) or any(n in LINK_CUTTING for n in active)
            if not cut:
                down_since, record.last_key = None, None
                continue
            if down_since is None:
                down_since = min(
                    (
                        e.start
                        for e in eps
                        if e.start <= t < e.end and (e.name == OUTAGE or e.name in LINK_CUTTING)
                    ),
                    default=t,
                )
            blocked = any(n in LINK_CUTTING and n not in SMS_CAPABLE_CUTS for n in active)
            if blocked:
                continue
            faults = [
                Fault.of(AS_FAULT[n], t, "")
                for n in sorted(active)
                if n in AS_FAULT
                and t - max(e.start for e in eps if e.name == n and e.start <= t) >= CONFIRM_S
            ]
            if OUTAGE in active and t - down_since >= CONFIRM_S:
                faults.append(Fault.of(FaultCode.STREAM_LOST, down_since, ""))
            record.sent = [s for s in record.sent if t - s < DAY]
            if should_send(
                now=t, down_since=down_since, modem=modem, faults=faults, record=record, cfg=cfg
            ):
                continue
            text = encode_fault_sms(
                c.device_id, 10**6, t, [(f.code, f.since) for f in faults], (999_000, 10**6), key
            )
            sizes.append(len(text))
            sent += 1
            record.sent.append(t)
            record.last_key = ",".join(sorted(f.code.value for f in faults))
        per_cluster.append(sent)
    months = days / 30.0
    total = sum(per_cluster)
    return {
        "scenario": scenario_name + (" + data_blocked" if blocked_mtbf else ""),
        "clusters": len(clusters),
        "sms_per_cluster_month": total / len(clusters) / months,
        "max_cluster_month": max(per_cluster) / months if per_cluster else 0.0,
        "bytes_per_cluster_month": sum(sizes) / len(clusters) / months,
        "median_sms_chars": statistics.median(sizes) if sizes else 0,
        "max_sms_chars": max(sizes) if sizes else 0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", nargs="+", default=["lam-thao", "phu-tho", "stress"])
    p.add_argument("--after", type=float, default=900.0, help="sms.after_s")
    p.add_argument("--per-day", type=int, default=3, help="sms.max_per_day")
    p.add_argument("--days", type=float, default=365.0)
    p.add_argument("--data-blocked-mtbf", default="90d")
    args = p.parse_args(argv)
    cfg = SmsConfig(
        number="+84912000000",
        key_file=Path("/dev/null"),
        after_s=args.after,
        max_per_day=args.per_day,
    )
    mtbf = parse_duration(args.data_blocked_mtbf, "--data-blocked-mtbf")
    print(f"machine: {platform.node()} {platform.machine()} Python {platform.python_version()}")
    print(f"sms.after_s={args.after:g} s, sms.max_per_day={args.per_day}, over {args.days:g} days")
    head = f"{'scenario':28} {'clusters':>8} {'SMS/cl/mo':>10} {'max/cl/mo':>10}"
    print(head + f" {'bytes/cl/mo':>12} {'median chars':>12} {'max chars':>9}")
    for name in args.scenario:
        for extra in (None, mtbf):
            r = replay(name, cfg, args.days, extra)
            print(
                f"{r['scenario']:28} {r['clusters']:>8} {r['sms_per_cluster_month']:>10.2f}"
                f" {r['max_cluster_month']:>10.2f} {r['bytes_per_cluster_month']:>12.0f}"
                f" {r['median_sms_chars']:>12} {r['max_sms_chars']:>9}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
