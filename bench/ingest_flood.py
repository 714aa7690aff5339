"""Collector memory under a hostile flood: RSS before, during and after.

    .venv/bin/python bench/ingest_flood.py [--messages 50000] [--runs 3] [--qos 1]
        [--collector-src /work/main]

Starts a real Mosquitto (deploy/'s config) and the real collector
(``loa-collector serve``) as a child process, lets it settle, then one device
with valid credentials floods its own topics with ``--messages`` bad messages
(a mix of malformed JSON, wrong schema, 1,500-deep nesting, 70 KiB oversize
payloads, a payload naming another device, and -- at QoS 1 -- replays of a
stored seq with other content), at QoS 1 or 0. The collector's resident set
size (VmRSS from /proc) is sampled before, during (peak) and after (once
ingest has taken everything and a few seconds passed), and its flow control
reported (how often it paused reading the broker, the most messages queued). The broker's own
per-client queue cap (``max_queued_bytes``) may drop part of such a flood
before the collector sees it; "received" says how much arrived. Prints each run and
the median, and the machine. ``--collector-src`` runs the collector from
another checkout (e.g. one before the fix) for a side-by-side figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import aiomqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_protocol import Kind, encode, topic  # noqa: E402
from tests.collector.conftest import state  # noqa: E402
from tests.support.mosquitto import COLLECTOR_USER, Broker, free_port  # noqa: E402

DEVICE = "dev-flood"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


NESTED = True


def hostile(i: int) -> tuple[str, bytes]:
    t = topic(DEVICE, Kind.STATE)
    kind = i % 6
    if kind == 2 and not NESTED:
        kind = 0
    if kind == 0:
        return t, b'{"v":1,"device":"dev-flood","seq":' + str(i).encode() + b',"ts":'
    if kind == 1:
        return t, b'{"v":1,"device":"dev-flood","seq":"x%d","ts":1700000000}' % i
    if kind == 2:
        return topic(DEVICE, Kind.PRESENCE), b'{"a":' * 1500 + b"1" + b"}" * 1500
    if kind == 3:
        return t, b'{"pad":"' + b"x" * (70 * 1024) + b'"}'
    if kind == 4:
        return t, encode(state("dev-other", i))
    # A replay: seq 1 again, each time with other content.
    return t, encode(state(DEVICE, 1, rssi=-60.0 - (i % 40)))


async def flood(broker: Broker, n: int, qos: int) -> None:
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=DEVICE,
        password=broker.password(DEVICE),
        identifier=f"{DEVICE}-bench",
        max_inflight_messages=100,
    ) as c:
        c.pending_calls_threshold = 10000
        await c.publish(topic(DEVICE, Kind.STATE), encode(state(DEVICE, 1)), qos=1)
        sem = asyncio.Semaphore(100)

        async def one(i: int) -> None:
            async with sem:
                t, p = hostile(i)
                await c.publish(t, p, qos=qos, timeout=60)

        await asyncio.gather(*(one(i) for i in range(n)))


def metric(port: int, name: str, token: str) -> float:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    total = 0.0
    with urllib.request.urlopen(req, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name):
                total += float(line.rsplit(" ", 1)[1])
    return total


def start_collector(
    root: Path, broker: Broker, src: Path
) -> tuple[subprocess.Popen[bytes], int, str]:
    """Migrate a database, add an admin token, start ``loa-collector serve``."""
    http_port = free_port()
    cfg = root / "collector.toml"
    cfg.write_text(
        f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
username = "{COLLECTOR_USER}"
password = "{broker.password(COLLECTOR_USER)}"
client_id = "loa-collector-flood"
[db]
path = "{root / "collector.db"}"
synchronous = "normal"
[http]
port = {http_port}
secure_cookies = false
"""
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    run = [sys.executable, "-m", "collector.cli"]
    conf = ["--config", str(cfg)]
    # cwd too: ``python -m`` puts the working directory first on sys.path.
    subprocess.run(
        [*run, "db", "migrate", *conf], check=True, env=env, capture_output=True, cwd=src
    )
    subprocess.run(
        [*run, "users", "add", "bench", "--role", "admin", "--password-stdin", *conf],
        check=True,
        env=env,
        cwd=src,
        capture_output=True,
        input=b"bench-pass-1234567\n",
    )
    tok = subprocess.run(
        [*run, "users", "token", "bench", *conf],
        check=True,
        env=env,
        cwd=src,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    with (root / "collector.log").open("wb") as log:
        proc = subprocess.Popen([*run, "serve", *conf], env=env, stdout=log, stderr=log, cwd=src)
    return proc, http_port, tok


async def one_run(n: int, qos: int, src: Path) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory(prefix="loa-flood-") as tmp:
        root = Path(tmp)
        broker = Broker(root / "broker")
        broker.add_user(DEVICE)
        broker.start()
        proc, http_port, tok = start_collector(root, broker, src)
        try:
            for _ in range(200):
                with contextlib.suppress(OSError):
                    if metric(http_port, "loa_ingest_connected", tok) == 1:
                        break
                await asyncio.sleep(0.1)
            await asyncio.sleep(3.0)
            before = rss_mib(proc.pid)
            peak = before
            done = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss_mib(proc.pid))
                    await asyncio.sleep(0.1)

            sampler = asyncio.create_task(sample())
            await flood(broker, n, qos)
            # Wait until ingest has taken everything the broker passed on (the broker's
            # per-client byte cap may drop part of a flood this large): no progress for 3 s.
            last, still = -1.0, 0
            while still < 15:
                # (handled = taken in whole; older collectors count received only)
                seen = metric(http_port, "loa_ingest_handled_total", tok) or metric(
                    http_port, "loa_ingest_received_total", tok
                )
                still = still + 1 if seen == last else 0
                last = seen
                await asyncio.sleep(0.2)
            done.set()
            await sampler
            await asyncio.sleep(5.0)
            after = rss_mib(proc.pid)
            received = metric(http_port, "loa_ingest_received_total", tok)
            # Flow control (0 from a collector that has none).
            pauses = metric(http_port, "loa_ingest_read_pauses_total", tok)
            queued = metric(http_port, "loa_ingest_queued_peak", tok)
            print(f"  reading paused {pauses:.0f} times; at most {queued:.0f} messages queued")
            return before, peak, after, received
        finally:
            proc.terminate()
            proc.wait(20)
            broker.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--qos", type=int, choices=(0, 1), default=1)
    ap.add_argument("--collector-src", type=Path, default=ROOT, help="checkout to run it from")
    ap.add_argument(
        "--no-nested",
        action="store_true",
        help="leave out the deeply nested messages (a collector before the fix dies on them)",
    )
    args = ap.parse_args()
    global NESTED
    NESTED = not args.no_nested
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print(f"python {platform.python_version()}; {args.messages} hostile messages at QoS {args.qos}")
    print(f"collector from {args.collector_src}; nested messages: {NESTED}")
    rows = []
    for i in range(args.runs):
        before, peak, after, received = await one_run(args.messages, args.qos, args.collector_src)
        rows.append((before, peak, after))
        print(
            f"run {i + 1}: RSS before {before:.1f} MiB, during (peak) {peak:.1f} MiB, "
            f"after {after:.1f} MiB (+{after - before:.1f}); {received:.0f} received"
        )
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print(
        f"median: before {med[0]:.1f} MiB, peak {med[1]:.1f} MiB, after {med[2]:.1f} MiB "
        f"(after - before {med[2] - med[0]:+.1f} MiB)"
    )


if __name__ == "__main__":
    asyncio.run(main())
