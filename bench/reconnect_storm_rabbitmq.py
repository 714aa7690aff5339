"""A reconnect storm against a 3-node RabbitMQ cluster: one node killed, then all three.

    .venv/bin/python bench/reconnect_storm_rabbitmq.py [--agents 2000] [--runs 3]
        [--runs-b 1] [--down-s 5] [--workers 2]

Starts a throwaway 3-node cluster from deploy/rabbitmq's config
(tests/support/rabbitmq.py: MQTT plugin, production policies, nodes joined
with ``join_cluster``) and N simulated agents in ``--workers`` processes. The
agents are bench/reconnect_storm.py's (imported, not copied): a bare aiomqtt
client (MQTT 3.1.1, ``clean_session=False``, client id = device id) running
the uplink's own reconnect logic, ``edge_agent.uplink.Dialer``, here given all
three nodes' MQTT addresses as ``[broker] urls`` would: each agent starts on
the node its id hashes to and moves to the next one when its node fails. A
session counts as established after its SUBACK.

Users: every device's user, password and permissions (exactly
``collector.broker_rabbitmq.device_permissions``) go in with one
``rabbitmqctl import_definitions`` of a generated definitions file (the
management plugin is not enabled in deploy/; one ``add_user`` +
``set_permissions`` + ``set_topic_permissions`` per device would be three
Erlang VM starts each, about 2,000 x 2.5 s).

Scenario A (``--runs`` times): a fresh set of agents connects; the node
holding the most of them (about a third) is killed with SIGKILL and started
again after ``--down-s`` seconds. Scenario B (``--runs-b`` times, default 1:
a whole-cluster restart takes a minute or more here): the same, but all three
nodes are killed together and started together. Printed, medians over runs:

- seconds from the kill (A) / the cluster start (B) until every agent that
  lost its connection is connected again, to any node;
- those agents' reconnect times p50 / p90 / p99 / max, from the same instant;
- connection attempts per second, peak (from the kill until all are back);
- per node: CPU of its beam.smp (percent of one core, peak over 1 s) and RSS
  peak, from /proc, from the kill until all are back and the node is ready;
- B: the cluster's start time (launch until every node answers
  ``rabbitmqctl await_startup``).

The machine is shared; its load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.reconnect_storm import (  # noqa: E402
    DEFAULTS,
    AgentLog,
    ProcSampler,
    _agent,
    _pct,
    device,
)
from collector.broker_rabbitmq import VHOST, Permissions, device_permissions  # noqa: E402
from edge_agent.uplink import Dialer  # noqa: E402
from tests.support.rabbitmq import Node, RabbitCluster  # noqa: E402

#: Agents started per second per worker at the beginning of a run (setup, not measured).
STAGGER_PER_S = 250


# --- users, in one definitions import ------------------------------------------------


def password_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def import_users(cluster: RabbitCluster, users: Mapping[str, Permissions]) -> float:
    """Create ``users`` (password ``cluster.password(user)``) with their vhost and topic
    permissions in one ``rabbitmqctl import_definitions``; returns the seconds it took."""
    defs: dict[str, Any] = {
        "users": [
            {
                "name": u,
                "password_hash": password_hash(cluster.password(u)),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
            for u in users
        ],
        "permissions": [
            {"user": u, "vhost": VHOST, "configure": p.configure, "write": p.write, "read": p.read}
            for u, p in users.items()
        ],
        "topic_permissions": [
            {
                "user": u,
                "vhost": VHOST,
                "exchange": "amq.topic",
                "write": p.topic_write,
                "read": p.topic_read,
            }
            for u, p in users.items()
        ],
    }
    path = cluster.root / f"users-{secrets.token_hex(3)}.json"
    path.write_text(json.dumps(defs))
    t0 = time.monotonic()
    cluster.ctl("import_definitions", str(path), timeout=600)
    return time.monotonic() - t0


# --- the agents (worker processes) ---------------------------------------------------


async def _worker_main(
    ids: list[int],
    urls: list[str],
    seed: int,
    connected: Synchronized[int],
    stop: Any,
    results: Any,
) -> None:
    rng = random.Random(seed).random
    logs = {i: AgentLog() for i in ids}
    dialers = {
        i: Dialer(
            urls,
            device(i),
            base=DEFAULTS.backoff_base_s,
            cap=DEFAULTS.backoff_max_s,
            refused_cap=DEFAULTS.refused_backoff_max_s,
            rng=rng,
        )
        for i in ids
    }
    tasks = [
        asyncio.create_task(
            _agent(device(i), dialers[i], logs[i], connected, k / STAGGER_PER_S),
            name=f"agent[{i}]",
        )
        for k, i in enumerate(ids)
    ]
    await asyncio.to_thread(stop.wait)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    results.put({i: (lg.attempts, lg.connects) for i, lg in logs.items()})


def _worker(*args: Any) -> None:
    asyncio.run(_worker_main(*args))


class Fleet:
    """N agents in ``workers`` processes, all given every node's MQTT address."""

    def __init__(self, n: int, workers: int, urls: list[str], seed: int) -> None:
        ctx = mp.get_context("fork")
        self.n = n
        self.stop = ctx.Event()
        self.results = ctx.Queue()
        self.counters = [ctx.Value("i", 0) for _ in range(workers)]
        self.procs = [
            ctx.Process(
                target=_worker,
                args=(
                    list(range(w, n, workers)),
                    urls,
                    seed * 100 + w,
                    self.counters[w],
                    self.stop,
                    self.results,
                ),
                name=f"agents-{w}",
            )
            for w in range(workers)
        ]
        for p in self.procs:
            p.start()

    def connected(self) -> int:
        return sum(c.value for c in self.counters)

    def finish(self) -> dict[int, tuple[list[float], list[float]]]:
        """Stop every agent; their attempt and connect times."""
        self.stop.set()
        logs: dict[int, tuple[list[float], list[float]]] = {}
        for _ in self.procs:
            with contextlib.suppress(Exception):
                logs.update(self.results.get(timeout=60))
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        return logs


# --- the cluster and the measurements (main process) ---------------------------------


def _wait(check: Callable[[], bool], timeout: float, what: str, tick: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        tick()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def connections_per_node(cluster: RabbitCluster) -> Counter[str]:
    """The broker's own count of client connections, per node name."""
    out = cluster.ctl(
        "list_mqtt_connections", "connection", "--no-table-headers", "--silent", timeout=120
    )
    # A connection's pid is <node.N.M.O>, e.g. <loa1a2b3cn1@localhost.1796326080.1200.0>.
    return Counter(
        line.strip().strip("<>").rsplit(".", 3)[0] for line in out.splitlines() if line.strip()
    )


class NodeSamplers:
    """ProcSampler per node; a node's sampler follows its pid across restarts."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.by_pid: dict[int, ProcSampler] = {}
        self.cpu: dict[str, float] = {n.name: 0.0 for n in nodes}
        self.rss: dict[str, float] = {n.name: 0.0 for n in nodes}

    def sample(self) -> None:
        for node in self.nodes:
            pid = node.pid
            if pid is None:
                continue
            s = self.by_pid.setdefault(pid, ProcSampler(pid))
            s.sample()
            self.cpu[node.name] = max(self.cpu[node.name], s.cpu_peak)
            self.rss[node.name] = max(self.rss[node.name], s.rss_peak_mib)


def _restart_in_thread(
    cluster: RabbitCluster, nodes: list[Node]
) -> tuple[threading.Thread, list[Any]]:
    """Launch ``nodes`` at once, then wait for each in a thread; [seconds, error] when done."""
    done: list[Any] = []

    def go() -> None:
        t0 = time.monotonic()
        try:
            for node in nodes:
                cluster.launch(node)
            for node in nodes:
                cluster.await_ready(node, timeout=300)
            done.append(time.monotonic() - t0)
        except BaseException as exc:  # reported by the main thread
            done.append(exc)

    t = threading.Thread(target=go, name="restart", daemon=True)
    t.start()
    return t, done


def run_once(
    cluster: RabbitCluster, scenario: str, n: int, workers: int, down_s: float, seed: int
) -> dict[str, Any]:
    urls = [f"mqtt://{cluster.host}:{node.mqtt_port}" for node in cluster.nodes]
    fleet = Fleet(n, workers, urls, seed)
    samplers = NodeSamplers(cluster.nodes)
    t_kill = t_ref = t_all = float("nan")
    try:
        _wait(lambda: fleet.connected() == n, 300, f"{n} agents connected", lambda: None)
        per_node = connections_per_node(cluster)
        if scenario == "A":
            victims = [max(cluster.nodes, key=lambda nd: per_node.get(nd.name, 0))]
        else:
            victims = list(cluster.nodes)
        lost = sum(per_node.get(v.name, 0) for v in victims)
        samplers.sample()
        t_kill = time.monotonic()
        pids = [v.pid for v in victims]
        for pid in pids:  # all at once, then reap
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        for v in victims:
            cluster.kill9(v)
        while time.monotonic() < t_kill + down_s:  # the outage itself
            samplers.sample()
            time.sleep(0.05)
        t_ref = time.monotonic()  # the restart is launched
        thread, done = _restart_in_thread(cluster, victims)
        deadline = t_ref + 400
        while fleet.connected() < n or thread.is_alive():
            samplers.sample()
            if fleet.connected() == n and t_all != t_all:  # first instant all are back
                t_all = time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {fleet.connected()}/{n} back after 400 s")
            time.sleep(0.05)
        if t_all != t_all:
            t_all = time.monotonic()
        if isinstance(done[0], BaseException):
            raise done[0]
        start_s = float(done[0])
        for _ in range(10):  # the nodes' CPU settles after the last CONNACK
            samplers.sample()
            time.sleep(0.1)
    finally:
        logs = fleet.finish()
    t0 = t_kill if scenario == "A" else t_ref
    back = [
        min(c for c in con if c > t_kill) - t0
        for _att, con in logs.values()
        if con and con[-1] > t_kill
    ]
    attempts = [a for att, _ in logs.values() for a in att if t_kill <= a <= t_all]
    per_s = Counter(int(a - t_kill) for a in attempts)
    return {
        "victims": [v.name for v in victims],
        "per_node": dict(per_node),
        "lost": lost,
        "reconnected": len(back),
        # From the agents' own logs: the last of them to connect again after the
        # kill (agents may be back before their node is: on another node, at
        # QoS 0, edge_agent.uplink), not when this loop first saw them all.
        "all_back_s": max(back, default=float("nan")),
        "all_back_after_restart_s": t0 + max(back, default=float("nan")) - t_ref,
        "p50": _pct(back, 50),
        "p90": _pct(back, 90),
        "p99": _pct(back, 99),
        "max": max(back, default=float("nan")),
        "attempts_per_s_peak": max(per_s.values(), default=0),
        "attempts_per_agent": len(attempts) / max(1, len(back)),
        "start_s": start_s,
        "node_start_s": {v.name: v.started_in for v in victims},
        "cpu": samplers.cpu,
        "rss": samplers.rss,
    }


def machine() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version}; ", "rabbitmq-server", "erlang-base"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, "
        f"{versions}"
    )


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


ROWS = [
    ("agents that lost their connection", "reconnected", "{:.0f}"),
    ("all back (s after kill A / start B)", "all_back_s", "{:.2f}"),
    ("all back (s after restart launched)", "all_back_after_restart_s", "{:.2f}"),
    ("reconnect p50 (s)", "p50", "{:.2f}"),
    ("reconnect p90 (s)", "p90", "{:.2f}"),
    ("reconnect p99 (s)", "p99", "{:.2f}"),
    ("reconnect max (s)", "max", "{:.2f}"),
    ("attempts/s, peak", "attempts_per_s_peak", "{:.0f}"),
    ("attempts per reconnected agent", "attempts_per_agent", "{:.1f}"),
    ("restarted node(s) ready (s)", "start_s", "{:.1f}"),
]


def _report(label: str, runs: list[dict[str, Any]], cluster: RabbitCluster) -> None:
    print(f"\n{label}: median of {len(runs)} run(s)")
    for name, key, fmt in ROWS:
        print(f"  {name:40}{fmt.format(statistics.median(r[key] for r in runs)):>10}")
    for i, node in enumerate(cluster.nodes, 1):
        cpu = statistics.median(r["cpu"][node.name] for r in runs)
        rss = statistics.median(r["rss"][node.name] for r in runs)
        killed = sum(node.name in r["victims"] for r in runs)
        note = f" (killed in {killed}/{len(runs)})" if label.startswith("A") else ""
        print(f"  node n{i} beam.smp CPU peak {cpu:5.0f}% of a core, RSS peak {rss:6.1f} MiB{note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--agents", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3, help="runs of scenario A (one node killed)")
    ap.add_argument("--runs-b", type=int, default=1, help="runs of scenario B (whole cluster)")
    ap.add_argument("--down-s", type=float, default=5.0, help="how long the node(s) stay down")
    ap.add_argument("--workers", type=int, default=2, help="agent processes")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.agents + 512  # the agents' sockets, and a node holding all of them
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        print(f"fd limit {hard} is below the {need} needed", file=sys.stderr)
        return 2
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {machine()}")
    print(f"before: {load()}")
    print(
        f"{args.agents} agents in {args.workers} processes, 3 nodes, down {args.down_s:.1f} s; "
        f"backoff: uniform(0, min({DEFAULTS.backoff_max_s:.0f}, "
        f"{DEFAULTS.backoff_base_s:g} ** rounds, 2 x time down))",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="storm-rmq-") as tmp:
        cluster = RabbitCluster(Path(tmp) / "rmq", 3)
        try:
            cluster.start(timeout=300)
            print(f"cluster of 3 started and joined in {cluster.started_in:.1f} s", flush=True)
            users = {device(i): device_permissions(device(i)) for i in range(args.agents)}
            took = import_users(cluster, users)
            print(
                f"{len(users)} users + permissions: one rabbitmqctl import_definitions, "
                f"{took:.1f} s",
                flush=True,
            )
            plan = [("A", r) for r in range(args.runs)] + [("B", r) for r in range(args.runs_b)]
            for scenario, r in plan:
                res = run_once(cluster, scenario, args.agents, args.workers, args.down_s, r + 1)
                results[scenario].append(res)
                names = {nd.name: f"n{i}" for i, nd in enumerate(cluster.nodes, 1)}
                spread = ", ".join(f"{names[k]} {v}" for k, v in sorted(res["per_node"].items()))
                print(
                    f"  {scenario} run {r + 1}: agents per node {spread}; killed "
                    f"{'+'.join(names[v] for v in res['victims'])} ({res['lost']} agents); "
                    f"all back {res['all_back_s']:.2f} s, p99 {res['p99']:.2f} s, "
                    f"peak {res['attempts_per_s_peak']:.0f} attempts/s, "
                    f"restart {res['start_s']:.1f} s (ready after "
                    + ", ".join(
                        f"{names[k]} {v:.1f} s" for k, v in res["node_start_s"].items() if v
                    )
                    + f"); {load()}",
                    flush=True,
                )
        finally:
            cluster.stop()
            left = cluster.leftovers()
            if left:
                print(f"LEFTOVER processes: {[p.pid for p in left]}", file=sys.stderr)
    if results["A"]:
        _report("A: one node killed -9, restarted after --down-s", results["A"], cluster)
    if results["B"]:
        _report("B: all three nodes killed -9, restarted together", results["B"], cluster)
        print("  (B: times from the cluster restart launch; 'restarted node(s) ready' is the")
        print("   cluster start time: all three launched until each passes await_startup)")
    print(f"after: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
