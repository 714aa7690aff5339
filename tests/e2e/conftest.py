"""End-to-end fixtures: a real ``loa-collector serve`` process on a real Mosquitto,
a simulated fleet publishing real wire messages as device users, and headless
Chromium driven by Playwright.

Chromium is Debian's (``apt-get install chromium``, listed in scripts/setup.sh);
Playwright's own browser download is not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from collector.b2.demo import demo_inventory
from collector.inventory import inventory_to_csv
from collector.model import InventoryDevice
from fleet_protocol import (
    PROTOCOL_VERSION,
    AmpState,
    Fault,
    FaultCode,
    Kind,
    Message,
    ModemState,
    Presence,
    PresenceStatus,
    RegState,
    SimState,
    StateReport,
    StreamState,
    encode,
    topic,
)
from tests.collector.conftest import device_client
from tests.support.mosquitto import COLLECTOR_USER, Broker, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN = ("admin", "admin-password-1")
BIN = Path(sys.executable).parent


def e2e_inventory() -> list[InventoryDevice]:
    """The first four clusters of two Lâm Thao communes (real names, with coordinates)."""
    picked: list[InventoryDevice] = []
    seen: dict[str, int] = {}
    for d in demo_inventory():
        if len(seen) == 2 and d.commune_code not in seen:
            break
        seen[d.commune_code] = seen.get(d.commune_code, 0) + 1
        if seen[d.commune_code] <= 4:
            picked.append(d)
    return [replace(d, position=i) for i, d in enumerate(picked)]


@dataclass
class Fleet:
    """Simulated agents: each device publishes as its own MQTT user, seq persisted here."""

    broker: Broker
    devices: list[InventoryDevice]
    seqs: dict[str, int] = field(default_factory=dict)

    def _next(self, device: str) -> int:
        self.seqs[device] = self.seqs.get(device, 0) + 1
        return self.seqs[device]

    async def send(self, device: str, *messages: Message) -> None:
        async with asyncio.timeout(15):
            while True:  # the broker reloads its password file on SIGHUP: retry briefly
                try:
                    async with device_client(self.broker, device) as client:
                        for m in messages:
                            kind = Kind.PRESENCE if isinstance(m, Presence) else Kind.STATE
                            await client.publish(topic(device, kind), encode(m), qos=1)
                    return
                except aiomqtt.MqttError:  # not authorised until the reload
                    await asyncio.sleep(0.2)

    def report(
        self, device: str, faults: tuple[FaultCode, ...] = (), rssi: float = -71.0
    ) -> StateReport:
        now = time.time()
        commune = next(d.commune_code for d in self.devices if d.device_id == device)
        return StateReport(
            v=PROTOCOL_VERSION,
            device=device,
            seq=self._next(device),
            ts=now,
            commune=commune,
            modem=ModemState(
                sim=SimState.ABSENT if FaultCode.SIM_ABSENT in faults else SimState.READY,
                registration=RegState.HOME,
                operator="Viettel",
                rssi_dbm=rssi,
                rsrp_dbm=rssi - 18,
                sinr_db=12.0,
                csq=int((rssi + 113) / 2),
            ),
            amp=AmpState(power=True, temperature_c=43.5),
            stream=StreamState(receiving=FaultCode.STREAM_LOST not in faults),
            faults=[Fault.of(code, now - 120, f"simulated {code}") for code in faults],
        )

    def online(self, device: str) -> Presence:
        return Presence(
            v=PROTOCOL_VERSION,
            device=device,
            seq=self._next(device),
            ts=time.time(),
            status=PresenceStatus.ONLINE,
        )


@dataclass
class Collector:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _run(*args: str) -> None:
    result = subprocess.run(
        [str(BIN / "loa-collector"), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"loa-collector {' '.join(args)}: {result.stderr}"


def _spawn(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    """``loa-collector serve`` with its output in ``log`` (the fixture waits for health)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "loa-collector"), "serve", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def _wait_healthy(c: Collector, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            if c.proc.poll() is not None:
                raise AssertionError(f"collector exited: {c.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(c.url + "/healthz", timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status == 200 and (await r.json())["broker_connected"]:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(f"collector not healthy after {timeout} s: {c.log_tail()}")
            await asyncio.sleep(0.2)


@pytest.fixture
def inventory() -> list[InventoryDevice]:
    return e2e_inventory()


@pytest.fixture
async def collector(
    broker: Broker, tmp_path: Path, inventory: list[InventoryDevice]
) -> AsyncIterator[Collector]:
    """``loa-collector serve`` as a subprocess, with an admin and the inventory."""
    port = free_port()
    cfg = tmp_path / "collector.toml"
    cfg.write_text(
        f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
username = "{COLLECTOR_USER}"
password = "{Broker.password(COLLECTOR_USER)}"
client_id = "loa-collector-e2e"
max_backoff_s = 1.0

[db]
path = "{tmp_path / "collector.db"}"
synchronous = "normal"

[repairs]
auto_open_after_s = 0.0

[http]
host = "127.0.0.1"
port = {port}
secure_cookies = false
""",
        encoding="utf-8",
    )
    _run("db", "migrate", "--config", str(cfg))
    (tmp_path / "pw").write_text(ADMIN[1] + "\n", encoding="utf-8")
    _run(
        "users",
        "add",
        ADMIN[0],
        "--role",
        "admin",
        "--password-file",
        str(tmp_path / "pw"),
        "--config",
        str(cfg),
    )
    (tmp_path / "inventory.csv").write_bytes(inventory_to_csv(inventory))
    _run("inventory", "import", str(tmp_path / "inventory.csv"), "--config", str(cfg))
    log = tmp_path / "collector.log"
    proc = _spawn(cfg, log)
    c = Collector(f"http://127.0.0.1:{port}", proc, log)
    try:
        await _wait_healthy(c)
        yield c
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def fleet(broker: Broker, inventory: list[InventoryDevice]) -> Iterator[Fleet]:
    broker.add_user(*(d.device_id for d in inventory))
    yield Fleet(broker, inventory)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Debian Chromium under Playwright (async API: tests run in an event loop)."""
    playwright_api = pytest.importorskip("playwright.async_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium missing in CI: scripts/test.sh should have installed it")
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def sign_in(page: Any, collector: Collector, *, tap: bool = False) -> None:
    """Sign in as the admin through the login form; wait for the overview."""
    await page.goto("/login")
    await page.fill('input[name="name"]', ADMIN[0])
    await page.fill('input[name="password"]', ADMIN[1])
    submit = 'button[type="submit"]'
    await (page.tap(submit) if tap else page.click(submit))
    await page.wait_for_url(collector.url + "/")
