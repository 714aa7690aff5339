"""Regenerate docs/screenshots/: every dashboard page at desktop and phone widths.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

Builds a demo district (the 200 Lâm Thao clusters of ``collector.b2.demo``)
with a year of history stored through the real ingest path (wire messages ->
``Ingestor.prepare`` -> ``write_batch``), repair tickets and users; serves it
with the real app factory on a free local port (ingest off: no broker needed);
and photographs each page with headless Debian Chromium under Playwright.
Deterministic apart from the clock: the history ends "now".
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from collector.app import create_app
from collector.auth import hash_password
from collector.b2.demo import CONTRACTORS, demo_inventory, demo_statuses
from collector.config import CollectorConfig, config_from_dict
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import Status
from collector.store.base import IncomingMessage, Role
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import (
    PROTOCOL_VERSION,
    AmpState,
    B2Cause,
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

DAY = 86400.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--font-render-hinting=none",
]
VIEWPORTS = {"desktop": (1366, 900), "phone": (390, 844)}
FAULT_OF = {
    B2Cause.NO_STATION_SIGNAL: FaultCode.STREAM_LOST,
    B2Cause.UNSTABLE_NETWORK: FaultCode.NETWORK_UNSTABLE,
    B2Cause.SIM_FAILURE: FaultCode.SIM_FAILURE,
}
ADMIN_PASSWORD = "demo-admin-password"


def _report(
    device: str, seq: int, ts: float, commune: str, fault: FaultCode | None, rng: random.Random
) -> StateReport:
    rssi = round(rng.gauss(-74, 6), 0)
    if fault is FaultCode.NETWORK_UNSTABLE:
        rssi -= 22
    faults = [Fault.of(fault, ts - 600, f"demo: {fault}")] if fault else []
    return StateReport(
        v=PROTOCOL_VERSION,
        device=device,
        seq=seq,
        ts=ts,
        commune=commune,
        heartbeat=True,
        modem=ModemState(
            sim=SimState.FAILURE if fault is FaultCode.SIM_FAILURE else SimState.READY,
            registration=RegState.HOME,
            operator="Viettel",
            rssi_dbm=max(-113.0, rssi),
            rsrp_dbm=max(-140.0, rssi - 19 + rng.uniform(-2, 2)),
            sinr_db=round(rng.uniform(3, 18), 1),
            csq=max(0, min(31, int((rssi + 113) / 2))),
        ),
        amp=AmpState(power=True, temperature_c=round(38 + 8 * rng.random(), 1)),
        stream=StreamState(receiving=fault is not FaultCode.STREAM_LOST),
        faults=faults,
    )


async def build_district(cfg: CollectorConfig, now: float) -> None:
    """Store the demo district with a year of history, tickets and users."""
    rng = random.Random(7)
    repo = await SQLiteRepository.open(Path(cfg.db.path), synchronous="normal")
    try:
        await repo.migrate()
        inventory = demo_inventory()
        await repo.upsert_inventory(inventory, remove_missing=False, actor="demo")
        for name, role, communes in (
            ("admin", Role.ADMIN, ()),
            ("huyen.lamthao", Role.DISTRICT_VIEWER, ()),
            ("xa.thachson", Role.COMMUNE_OFFICER, ("08422",)),
            ("ktv.viettel", Role.TECHNICIAN, ()),
        ):
            await repo.add_user(
                name,
                role=role,
                communes=frozenset(communes),
                password_hash=hash_password(ADMIN_PASSWORD),
            )
        ingestor = Ingestor(repo, cfg.ingest, IngestStats())
        messages: list[tuple[float, IncomingMessage]] = []
        broken_since: dict[str, float] = {}
        target = {s.device_id: s for s in demo_statuses(now)}

        def add(msg: Message, kind: Kind) -> None:
            incoming = ingestor.prepare(
                topic(msg.device, kind), encode(msg), received_at=msg.ts + 1
            )
            assert incoming is not None, msg
            messages.append((msg.ts, incoming))

        for d in inventory:
            s = target[d.device_id]
            if s.never_reported:
                continue
            seq = 0

            def nxt() -> int:
                nonlocal seq
                seq += 1
                return seq

            # Breakdowns spread over the year so the trend chart shows them accumulate.
            broke = None
            if s.status is Status.BROKEN:
                broke = now - rng.choice([3, 9, 20, 45, 80, 120, 170, 230, 300]) * DAY
                broken_since[d.device_id] = broke
            fault = FAULT_OF.get(s.cause) if s.cause else None
            start = now - 365 * DAY + rng.uniform(0, 5 * DAY)
            add(
                Presence(
                    v=PROTOCOL_VERSION,
                    device=d.device_id,
                    seq=nxt(),
                    ts=start,
                    status=PresenceStatus.ONLINE,
                ),
                Kind.PRESENCE,
            )
            times = [start + k * 7 * DAY for k in range(1, 52)]
            times += [now - 60 - h * 3 * 3600 for h in range(8 * 30, -1, -1)]
            silent_from = broke if s.cause is B2Cause.UNKNOWN else None
            for ts in sorted(t for t in times if t < now):
                if silent_from is not None and ts >= silent_from:
                    add(
                        Presence(
                            v=PROTOCOL_VERSION,
                            device=d.device_id,
                            seq=nxt(),
                            ts=silent_from,
                            status=PresenceStatus.OFFLINE,
                        ),
                        Kind.PRESENCE,
                    )
                    break
                active = fault if broke is not None and ts >= broke else None
                add(_report(d.device_id, nxt(), ts, d.commune_code, active, rng), Kind.STATE)
        messages.sort(key=lambda m: m[0])
        batch = [m for _, m in messages]
        for i in range(0, len(batch), 2000):
            await repo.write_batch(batch[i : i + 2000], late_after_s=cfg.ingest.late_after_s)
        # Tickets: the broken clusters the demo counts as in repair were started
        # with the commune's contractor; a few of them stalled (overdue); some
        # other broken ones have a ticket opened but not started.
        for n, (device_id, since) in enumerate(sorted(broken_since.items())):
            s = target[device_id]
            contractor = CONTRACTORS[n % 2]
            # Weekly reports: the fault has been reported within a week of the breakdown.
            opened = min(now - DAY, since + 8 * DAY)
            if s.in_repair:
                t = await repo.open_ticket(
                    device_id,
                    actor="xa.thachson",
                    at=opened,
                    note="Xã báo loa không phát",
                    cause=s.cause,
                )
                stalled = n % 3 == 0
                await repo.start_ticket(
                    t.id,
                    actor="ktv.viettel",
                    at=opened + (0.5 if stalled else 0.2) * DAY,
                    contractor=contractor,
                    technician="Nguyễn Văn An" if n % 2 else "Trần Thị Bình",
                    note="Đã nhận phiếu, hẹn kiểm tra tại chỗ",
                )
                if not stalled:
                    await repo.comment_ticket(
                        t.id, actor="ktv.viettel", at=now - DAY, note="Đang thay thiết bị"
                    )
            elif n % 3 == 0:
                await repo.open_ticket(
                    device_id,
                    actor="huyen.lamthao",
                    at=opened,
                    note="Đề nghị xã kiểm tra",
                    cause=s.cause,
                )
    finally:
        await repo.close()


async def shoot(base: str, out: Path) -> list[Path]:
    """Photograph every page at both widths; returns the files written."""
    from playwright.async_api import async_playwright

    written: list[Path] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for label, (width, height) in VIEWPORTS.items():
                context = await browser.new_context(
                    base_url=base,
                    viewport={"width": width, "height": height},
                    device_scale_factor=1,
                    locale="vi-VN",
                    timezone_id="Asia/Ho_Chi_Minh",
                )
                page = await context.new_page()
                await page.goto("/login")
                written.append(await _snap(page, out / f"login-{label}.png"))
                await page.fill('input[name="name"]', "admin")
                await page.fill('input[name="password"]', ADMIN_PASSWORD)
                await page.click('button[type="submit"]')
                await page.wait_for_url(base + "/")
                pages = [
                    ("overview", "/"),
                    ("commune", "/communes/08422"),
                    ("cluster", "/devices/lt-thachson-10?range=7d"),
                    ("b2", "/b2"),
                    ("repairs", "/repairs"),
                    ("users", "/users"),
                ]
                for name, path in pages:
                    await page.goto(path)
                    written.append(await _snap(page, out / f"{name}-{label}.png"))
                await page.goto("/?lang=en")
                written.append(await _snap(page, out / f"overview-en-{label}.png"))
                await page.goto("/?lang=vi")
                await context.close()
        finally:
            await browser.close()
    return written


async def _snap(page: Any, path: Path) -> Path:
    await page.wait_for_load_state("networkidle")
    await page.screenshot(path=str(path), full_page=True)
    return path


async def run(out: Path) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix="loa-shots-") as tmp:
        cfg = config_from_dict(
            {
                "db": {"path": str(Path(tmp) / "collector.db"), "synchronous": "normal"},
                "http": {"host": "127.0.0.1", "port": 0, "secure_cookies": False},
                "repairs": {"auto_open_after_s": 0.0},
            }
        )
        cfg = replace(cfg, ingest_enabled=False)
        await build_district(cfg, time.time())
        runner = web.AppRunner(create_app(cfg))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            return await shoot(f"http://127.0.0.1:{port}", out)
        finally:
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(run(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
