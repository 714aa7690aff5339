"""A reconnect storm: N agents, one Mosquitto, kill -9 and restart; old backoff vs new.

    .venv/bin/python bench/reconnect_storm.py [--agents 2000] [--runs 3] [--down-s 5]
        [--workers 2] [--policies old,new]

Starts a real Mosquitto from deploy/'s config (tests/support/mosquitto.py: the
plain listener, password auth for every device, the production ACL) and N
simulated agents in ``--workers`` processes. Each agent is a bare aiomqtt
client running the uplink's own reconnect logic: ``edge_agent.uplink.Dialer``
(address choice and ``backoff``), the same exceptions taken as failures, the
same "refused" distinction, the same connect timeout and the same mqtt_compat
fixes; a session counts as established after its SUBACK, as the uplink's does
after SUBACK and the birth PUBACK. (Not the whole ``Uplink``: its SQLite
outbox per agent would make 2,000 agents cost more than the broker.) Once all
are connected the broker is killed with SIGKILL, stays down ``--down-s``
seconds (a restart that has to load its persistence), and is started again on
the same port. Printed per policy, medians over the runs:

- seconds from the broker being back until every agent is connected again;
- reconnect times (after the broker is back) p50 / p90 / p99 / max;
- connection attempts per second: peak while the broker is back (these reach
  Mosquitto), and while it was down (refused by the kernel): in all, and in
  the outage's last second (what a broker coming back meets);
- the broker's CPU (percent of one core, peak over 1 s) and RSS peak, from
  /proc of the mosquitto pid, between the restart and the last reconnect.

"old" is the policy before issue 19 (``min(2.5, uniform(0, 2 ** min(10, n)))``);
"new" is the ``Dialer`` with the default config (full jitter, cap 300 s, the
window at most twice the time down). On a small machine 2,000 agents do not
overload Mosquitto, so the old policy gets them back sooner here; what matters
for 100,000 agents is how the attempt rate scales with N (printed per 1,000
agents) and how it falls, or not, the longer the broker is away (``--down-s``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.uplink import Dialer  # noqa: E402
from fleet_protocol import Kind, topic  # noqa: E402
from fleet_protocol.agent_config import BrokerConfig  # noqa: E402
from fleet_protocol.mqtt_compat import (  # noqa: E402
    close_half_open,
    consume_disconnect,
    fail_fast_before_connack,
    or_disconnect,
)
from tests.support.mosquitto import COLLECTOR_USER, MOSQUITTO, MOSQUITTO_PASSWD, Broker  # noqa: E402

DEFAULTS = BrokerConfig(url="mqtt://127.0.0.1")
CONNECT_TIMEOUT_S = DEFAULTS.connect_timeout_s
CONNECT_SLACK_S = 2.0  # edge_agent.uplink._CONNECT_SLACK_S
#: paho's "failed to receive on socket" at every broker kill, times N: not news here.
QUIET = logging.getLogger("reconnect_storm.mqtt")
QUIET.setLevel(logging.CRITICAL)
#: backoff_max_s before issue 19.
OLD_CAP_S = 2.5


class OldDialer(Dialer):
    """The backoff before issue 19: the draw clamped at the cap (2.5 s), no time bound."""

    def failed(self, *, refused: bool = False) -> float:
        self.failures += 1
        window = self.base ** min(10, self.failures)
        return min(self.refused_cap if refused else self.cap, self.rng() * window)


def device(i: int) -> str:
    return f"storm-{i:06d}"


# --- the agents (worker processes) ---------------------------------------------------


@dataclass
class AgentLog:
    attempts: list[float] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)


async def _agent(
    dev: str, dialer: Dialer, log: AgentLog, connected: Synchronized[int], start_after: float
) -> None:
    """The uplink's connect loop (edge_agent.uplink.Uplink.run), without the outbox."""
    await asyncio.sleep(start_after)
    qos = 1
    while True:
        refused = False
        host, port = dialer.endpoint
        client = aiomqtt.Client(
            host,
            port,
            username=dev,
            password=Broker.password(dev),
            identifier=dev,
            clean_session=False,
            keepalive=600,
            timeout=CONNECT_TIMEOUT_S,
            logger=QUIET,
        )
        fail_fast_before_connack(client)
        log.attempts.append(time.monotonic())
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S + CONNECT_SLACK_S):
                await client.__aenter__()
        except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
            refused = isinstance(exc, MqttConnectError) or "SSL" in str(exc).upper()
            close_half_open(client)
        else:
            up = False
            try:
                try:
                    await or_disconnect(
                        client, client.subscribe(topic(dev, Kind.CMD), qos=qos, timeout=20.0)
                    )
                except (aiomqtt.MqttError, TimeoutError):
                    # As the uplink: a QoS 1 SUBSCRIBE refused (a cluster node holding
                    # the session is down) -> QoS 0 from the next attempt on.
                    qos = 0
                    raise
                dialer.established()
                log.connects.append(time.monotonic())
                with connected.get_lock():
                    connected.value += 1
                up = True
                async for _ in client.messages:
                    pass
            except (aiomqtt.MqttError, TimeoutError, OSError):
                pass
            finally:
                if up:
                    with connected.get_lock():
                        connected.value -= 1
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
                    async with asyncio.timeout(2.0):
                        await client.__aexit__(None, None, None)
                consume_disconnect(client)
        await asyncio.sleep(dialer.failed(refused=refused))


async def _worker_main(
    ids: list[int],
    url: str,
    policy: str,
    seed: int,
    connected: Synchronized[int],
    stop: Any,
    results: Any,
) -> None:
    rng = random.Random(seed).random
    cls = OldDialer if policy == "old" else Dialer
    cap = OLD_CAP_S if policy == "old" else DEFAULTS.backoff_max_s
    logs = {i: AgentLog() for i in ids}
    # Staggered first connections (setup, not measured): ~1,000 per second.
    tasks = [
        asyncio.create_task(
            _agent(
                device(i),
                cls(
                    [url],
                    device(i),
                    base=DEFAULTS.backoff_base_s,
                    cap=cap,
                    refused_cap=DEFAULTS.refused_backoff_max_s,
                    rng=rng,
                ),
                logs[i],
                connected,
                k / 1000,
            ),
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


# --- the broker and the measurements (main process) ----------------------------------


def _users(broker: Broker, n: int) -> None:
    """Every agent's password in one mosquitto_passwd run (add_user is one per call)."""
    passwd = broker.layout.config_dir / "passwd"
    users = [COLLECTOR_USER, *(device(i) for i in range(n))]
    passwd.write_text("".join(f"{u}:{Broker.password(u)}\n" for u in users))
    subprocess.run([MOSQUITTO_PASSWD, "-U", str(passwd)], check=True, capture_output=True)


class ProcSampler:
    """CPU (percent of one core over the last second) and RSS of one pid, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self.samples: list[tuple[float, float]] = []  # (monotonic, cpu seconds)
        self.cpu_peak = 0.0
        self.rss_peak_mib = 0.0

    def sample(self) -> None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / self.tick
        now = time.monotonic()
        self.samples.append((now, cpu))
        old = [s for s in self.samples if now - s[0] >= 1.0]
        if old:
            t0, c0 = old[-1]
            self.cpu_peak = max(self.cpu_peak, 100 * (cpu - c0) / (now - t0))
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                self.rss_peak_mib = max(self.rss_peak_mib, int(line.split()[1]) / 1024)


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


def run_once(policy: str, n: int, workers: int, down_s: float, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="storm-") as tmp:
        broker = Broker(Path(tmp) / "broker")
        _users(broker, n)
        broker.start()
        ctx = mp.get_context("fork")
        stop = ctx.Event()
        results = ctx.Queue()
        counters = [ctx.Value("i", 0) for _ in range(workers)]
        procs = [
            ctx.Process(
                target=_worker,
                args=(
                    list(range(w, n, workers)),
                    broker.url,
                    policy,
                    seed * 100 + w,
                    counters[w],
                    stop,
                    results,
                ),
                name=f"agents-{w}",
            )
            for w in range(workers)
        ]
        for p in procs:
            p.start()

        def connected() -> int:
            return sum(c.value for c in counters)

        try:
            _wait(lambda: connected() == n, 120, f"{n} agents connected at start")
            t_kill = time.monotonic()
            broker.kill9()
            _wait(lambda: connected() == 0, 30, "every agent saw the broker die")
            time.sleep(max(0.0, t_kill + down_s - time.monotonic()))  # the outage itself
            broker.start()
            t_up = time.monotonic()
            assert broker.proc is not None
            sampler = ProcSampler(broker.proc.pid)
            deadline = t_up + 170
            while connected() < n:
                sampler.sample()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {connected()}/{n} back after 170 s")
                time.sleep(0.05)
            t_all = time.monotonic()
            for _ in range(5):  # the broker's CPU settles after the last CONNACK
                sampler.sample()
                time.sleep(0.1)
        finally:
            stop.set()
            logs: dict[int, tuple[list[float], list[float]]] = {}
            for _ in procs:
                with contextlib.suppress(Exception):
                    logs.update(results.get(timeout=60))
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
                    p.join()
            broker.stop()
    back = [min(c for c in con if c > t_kill) - t_up for att, con in logs.values()]
    attempts = [a for att, _ in logs.values() for a in att]
    while_up = [a - t_up for a in attempts if t_up <= a <= t_all]
    per_s: dict[int, int] = {}
    for a in while_up:
        per_s[int(a)] = per_s.get(int(a), 0) + 1
    return {
        "all_back_s": t_all - t_up,
        "p50": _pct(back, 50),
        "p90": _pct(back, 90),
        "p99": _pct(back, 99),
        "max": max(back),
        "attempts_per_s_peak": max(per_s.values(), default=0),
        "attempts_while_down": sum(1 for a in attempts if t_kill <= a < t_up),
        "attempts_last_s_down": sum(1 for a in attempts if t_up - 1.0 <= a < t_up),
        "attempts_per_agent": (len(while_up) + sum(1 for a in attempts if t_kill <= a < t_up)) / n,
        "cpu_peak_pct": sampler.cpu_peak,
        "rss_peak_mib": sampler.rss_peak_mib,
    }


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


ROWS = [
    ("all agents back (s after broker up)", "all_back_s", "{:.2f}"),
    ("reconnect p50 (s)", "p50", "{:.2f}"),
    ("reconnect p90 (s)", "p90", "{:.2f}"),
    ("reconnect p99 (s)", "p99", "{:.2f}"),
    ("reconnect max (s)", "max", "{:.2f}"),
    ("attempts/s at broker, peak", "attempts_per_s_peak", "{:.0f}"),
    ("  per 1,000 agents", "per_1000", "{:.0f}"),
    ("attempts while down (refused)", "attempts_while_down", "{:.0f}"),
    ("attempts/s in the outage's last second", "attempts_last_s_down", "{:.0f}"),
    ("attempts per agent, kill to all back", "attempts_per_agent", "{:.1f}"),
    ("broker CPU peak (% of a core, 1 s)", "cpu_peak_pct", "{:.0f}"),
    ("broker RSS peak (MiB)", "rss_peak_mib", "{:.1f}"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--agents", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--down-s", type=float, default=5.0, help="how long the broker stays down")
    ap.add_argument("--workers", type=int, default=2, help="agent processes")
    ap.add_argument("--policies", default="old,new")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.agents + 512  # the agents' sockets, and the broker's (it inherits this)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        print(f"fd limit {hard} is below the {need} needed", file=sys.stderr)
        return 2
    policies = args.policies.split(",")
    out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True)
    version = (out.stdout + out.stderr).splitlines()[:1]
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, "
        f"{' '.join(version)}; {args.agents} agents in {args.workers} processes; "
        f"broker down {args.down_s:.1f} s; {args.runs} run(s), medians shown"
    )
    print(
        "old: min(2.5, uniform(0, 2 ** min(10, n)));  "
        f"new: uniform(0, min({DEFAULTS.backoff_max_s:.0f}, "
        f"{DEFAULTS.backoff_base_s:g} ** n, 2 x time down))"
    )
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in policies}
    for r in range(args.runs):
        for p in policies:
            res = run_once(p, args.agents, args.workers, args.down_s, seed=r + 1)
            res["per_1000"] = res["attempts_per_s_peak"] * 1000 / args.agents
            runs[p].append(res)
            print(
                f"  run {r + 1} {p}: all back {res['all_back_s']:.2f} s, "
                f"peak {res['attempts_per_s_peak']:.0f} attempts/s, "
                f"CPU {res['cpu_peak_pct']:.0f}%",
                flush=True,
            )
    print(f"\n{'median of runs':40}" + "".join(f"{p:>12}" for p in policies))
    for label, key, fmt in ROWS:
        cells = "".join(
            f"{fmt.format(statistics.median(x[key] for x in runs[p])):>12}" for p in policies
        )
        print(f"{label:40}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
