"""The monthly B2 report: due on the configured day, on the fleet simulator's clock, by real SMTP.

The collector app (real factory) runs its report scheduler on a
``FleetClock`` backfilling a few days at high speed, so the configured day and
hour pass during the test; the report must arrive once, with an XLSX whose
totals equal the API's B2 for the same date. ``report send`` on the CLI
and the dashboard's "send now" go through the same path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import openpyxl
import pytest
from aiohttp.test_utils import TestClient, TestServer

from collector import cli
from collector.alerts import report as monthly
from collector.alerts.report import due_period, period_end
from collector.alerts.service import CLOCK
from collector.app import create_app
from collector.auth import hash_password, new_secret, secret_hash
from collector.b2.dates import zone
from collector.config import CollectorConfig
from collector.correlation import CorrelationConfig
from collector.exports.as_xlsx import FIRST_DATA_ROW
from collector.ingest import Ingestor
from collector.metrics import IngestStats
from collector.model import InventoryDevice
from collector.store.base import Role
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import FaultCode, Kind, encode, topic
from fleet_sim.timeline import FleetClock
from tests.collector.conftest import make_config, presence, state
from tests.support.receivers import SmtpReceiver, smtp_receiver

TZ = zone("Asia/Ho_Chi_Minh")
DEVICES = {
    "dev-a1": ("xa-01", "Sơn Vi", None),
    "dev-a2": ("xa-01", "Sơn Vi", FaultCode.SIM_ABSENT),
    "dev-b1": ("xa-02", "Cao Xá", FaultCode.STREAM_LOST),
    "dev-b2": ("xa-02", "Cao Xá", None),
    "dev-c1": ("xa-03", "Tứ Xã", None),  # never reports
}


async def seed(repo: SQLiteRepository, cfg: CollectorConfig, at: float) -> str:
    """Inventory and history from ``at`` on; returns an admin API token."""
    await repo.upsert_inventory(
        [
            InventoryDevice(device_id=d, commune_code=c, commune_name=n, position=i)
            for i, (d, (c, n, _)) in enumerate(DEVICES.items())
        ],
        remove_missing=False,
    )
    ingestor = Ingestor(repo, cfg.ingest, IngestStats())
    for device, (_, _, fault) in DEVICES.items():
        if device == "dev-c1":
            continue
        for seq, msg in enumerate(
            [
                presence(device, 1, True, at),
                state(device, 2, at + 60, commune=None, faults=(fault,) if fault else ()),
            ],
            start=1,
        ):
            kind = Kind.PRESENCE if seq == 1 else Kind.STATE
            incoming = ingestor.prepare(topic(device, kind), encode(msg), received_at=msg.ts)
            assert incoming is not None
            await repo.write_batch([incoming], late_after_s=cfg.ingest.late_after_s)
    ticket = await repo.open_ticket("dev-a2", actor="t", at=at + 120, note="", cause=None)
    await repo.start_ticket(
        ticket.id, actor="t", at=at + 180, contractor="VT", technician="", note=""
    )
    await repo.add_user(
        "admin", role=Role.ADMIN, communes=frozenset(), password_hash=hash_password("p" * 10)
    )
    token = new_secret()
    await repo.add_token("admin", token_hash=secret_hash(token), label="test", at=at)
    return token


def schedule_window(now: float) -> tuple[float, float]:
    """(clock start, due moment): a due moment a day or more ago whose month also
    holds the clock start, and no other report due between start and now."""
    for hours in range(20, 24 * 8):
        due = now - hours * 3600
        start = due - 12 * 3600
        d, s, n = (dt.datetime.fromtimestamp(x, TZ) for x in (due, start, now))
        if d.day > 28 or s.month != d.month:
            continue
        if n.month != d.month and (n.day, n.hour) >= (d.day, d.hour):
            continue
        return start, due
    raise AssertionError("no schedule window found")  # cannot happen: 8 days searched


def xlsx_totals(data: bytes) -> list[Any]:
    sheet = openpyxl.load_workbook(io.BytesIO(data)).active
    rows = list(sheet.iter_rows(min_row=FIRST_DATA_ROW, values_only=True))
    total = next(r for r in rows if r[0] in ("", None) and r[1])
    return list(total[2:7])


async def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def smtp(tmp_path: Path) -> AsyncIterator[SmtpReceiver]:
    async with smtp_receiver(tmp_path / "smtp") as s:
        yield s


async def test_monthly_report_arrives_on_schedule_on_the_fleet_clock(
    tmp_path: Path, smtp: SmtpReceiver
) -> None:
    now = time.time()
    start, due = schedule_window(now)
    due_local = dt.datetime.fromtimestamp(due, TZ)
    cfg = make_config(
        None,
        tmp_path,
        alerts={
            "enabled": True,
            "public_url": "https://loa.test",
            "evaluate_interval_s": 3600.0,
            "deliver_interval_s": 0.1,
            "email": smtp.settings(),
            "monthly_report": {
                "enabled": True,
                "day": due_local.day,
                "hour": due_local.hour,
                "recipients": ["vanphong@huyen.test", "truongphong@huyen.test"],
                "tick_s": 0.05,
            },
        },
    )
    object.__setattr__(cfg, "ingest_enabled", False)
    repo = await SQLiteRepository.open(cfg.db.path, synchronous="normal")
    await repo.migrate()
    token = await seed(repo, cfg, start - 60 * 86400)
    await repo.close()
    # The simulator's clock: from `start` to the wall clock in about 6 real seconds.
    backfill = now - start
    clock = FleetClock(backfill_s=backfill, acceleration=1 + backfill / 6.0, start=now)
    sim_at_receipt: list[float] = []
    app = create_app(cfg)
    app[CLOCK] = clock
    async with TestClient(TestServer(app)) as client:
        await wait_for(lambda: len(smtp.messages) >= 2, 30, "the scheduled report")
        sim_at_receipt.append(clock.now())
        await wait_for(lambda: clock.live, 30, "the fleet clock to catch up")
        await asyncio.sleep(0.3)  # a few more scheduler ticks, live: nothing more is sent
        assert sorted(m["To"] for m in smtp.messages) == [
            "truongphong@huyen.test",
            "vanphong@huyen.test",
        ]
        # Not before the configured day and hour (the schedule has hour granularity).
        assert sim_at_receipt[0] >= due_local.replace(minute=0, second=0, microsecond=0).timestamp()
        expected = period_end(due_period(due, TZ, day=due_local.day, hour=due_local.hour) or "", TZ)
        mail = smtp.messages[0]
        assert expected.strftime("%-d/%-m/%Y") in mail["Subject"]
        body = mail.get_body(("plain",)).get_content()
        attachment = next(mail.iter_attachments())
        assert attachment.get_filename() == f"b2-{expected.date().isoformat()}.xlsx"
        data = attachment.get_content()
        resp = await client.get(
            "/api/v1/reports/b2",
            params={"as_of": expected.date().isoformat(), "format": "json"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status == 200
        api = await resp.json()
        t = api["total"]
        assert xlsx_totals(data) == [
            t["total"],
            t["working"],
            t["broken"]["total"],
            t["broken"]["in_repair"],
            t["broken"]["not_repaired"],
        ]
        # Four clusters reported before the period; the fifth never reported and was
        # listed only now, so it does not count in last month's B2 (issue 16).
        assert t["total"] == 4 and t["broken"]["in_repair"] == 1
        assert api["summary"] in body  # the summary sentence is the body
        assert "https://loa.test/b2?as_of=" in body
        log = await app[cli_key()].store.report_log()
        assert [(e["trigger"], e["actor"]) for e in log] == [("schedule", "system")]
        assert log[0]["deliveries"].count("sent:") == 2


def cli_key() -> Any:
    from collector.alerts.service import ALERTS

    return ALERTS


async def test_report_send_from_the_cli_is_delivered_and_logged(
    tmp_path: Path, smtp: SmtpReceiver
) -> None:
    cfg = make_config(None, tmp_path)
    repo = await SQLiteRepository.open(cfg.db.path, synchronous="normal")
    await repo.migrate()
    await seed(repo, cfg, time.time() - 90 * 86400)
    s = smtp.settings()
    conf = tmp_path / "collector.toml"
    conf.write_text(
        f'[db]\npath = "{cfg.db.path}"\nsynchronous = "normal"\n'
        f'[alerts.email]\nhost = "{s["host"]}"\nport = {s["port"]}\nca_file = "{s["ca_file"]}"\n'
        f'username = "{s["username"]}"\npassword = "{s["password"]}"\n',
        encoding="utf-8",
    )
    rc = await asyncio.to_thread(
        cli.main,
        ["report", "send", "--config", str(conf), "--as-of", "2026-10-31", "--to", "a@huyen.test",
         "--actor", "chanh-van-phong"],
    )  # fmt: skip
    assert rc == 0
    assert [m["To"] for m in smtp.messages] == ["a@huyen.test"]
    assert "31/10/2026" in smtp.messages[0]["Subject"]
    from collector.store.alerts import SQLiteAlertStore

    log = await SQLiteAlertStore(repo).report_log()
    assert [(e["trigger"], e["actor"], e["recipients"]) for e in log] == [
        ("cli", "chanh-van-phong", ["a@huyen.test"])
    ]
    assert log[0]["deliveries"] == "sent:a@huyen.test"
    audit = [a for a in await repo.audit_log() if a["action"] == "report.send"]
    assert len(audit) == 1
    bad = await asyncio.to_thread(
        cli.main, ["report", "send", "--config", str(conf), "--to", "not-an-address"]
    )
    assert bad == 1 and len(smtp.messages) == 1
    await repo.close()


def test_due_period_is_pure_and_catches_up() -> None:
    at = dt.datetime(2026, 12, 2, 7, 59, tzinfo=TZ).timestamp()
    assert due_period(at, TZ, day=2, hour=8) is None
    assert due_period(at + 60, TZ, day=2, hour=8) == "2026-11"
    assert due_period(at + 20 * 86400, TZ, day=2, hour=8) == "2026-11"  # down on the 2nd
    jan = dt.datetime(2027, 1, 5, tzinfo=TZ).timestamp()
    assert due_period(jan, TZ, day=2, hour=8) == "2026-12"
    assert period_end("2026-12", TZ).date() == dt.date(2026, 12, 31)
    assert period_end("2027-02", TZ).date() == dt.date(2027, 2, 28)
    with pytest.raises(ValueError, match="YYYY-MM"):
        period_end("2026-13", TZ)


async def test_monthly_report_infers_causes_with_the_configured_rules(tmp_path: Path) -> None:
    """Two clusters on one cell fall silent together while another cell stays up: the
    default ``[correlation]`` calls it the network; a district that set ``min_group = 3``
    gets "unknown" in its emailed report too, as on its dashboard."""
    cfg = make_config(None, tmp_path)
    repo = await SQLiteRepository.open(cfg.db.path, synchronous="normal")
    try:
        await repo.migrate()
        cells = {"dev-x1": 10, "dev-x2": 10, "dev-y1": 20}
        await repo.upsert_inventory(
            [
                InventoryDevice(
                    device_id=d, commune_code="xa-01", commune_name="Sơn Vi", position=i
                )
                for i, d in enumerate(cells)
            ],
            remove_missing=False,
        )
        ingestor = Ingestor(repo, cfg.ingest, IngestStats())
        at = time.time() - 7200
        for device, cell in cells.items():
            report = state(device, 2, at)
            report = msgspec.structs.replace(
                report,
                modem=msgspec.structs.replace(report.modem, tac="1A2B", cell_id=f"{cell:07X}"),
            )
            msgs: list[Any] = [presence(device, 1, True, at - 60), report]
            if cell == 10:
                msgs.append(presence(device, 3, False, at + 120))
            for msg in msgs:
                kind = Kind.STATE if msg is report else Kind.PRESENCE
                incoming = ingestor.prepare(topic(device, kind), encode(msg), received_at=msg.ts)
                assert incoming is not None
                await repo.write_batch([incoming], late_after_s=cfg.ingest.late_after_s)
        as_of = dt.datetime.fromtimestamp(at + 3600, TZ)

        async def causes(correlation: CorrelationConfig) -> dict[str, tuple[str, str | None]]:
            built = await monthly.build(
                repo, as_of=as_of, settings=cfg.report, lang="vi", correlation=correlation
            )
            by = built.table.causes_by_device
            return {d: (by[d]["cause"], by[d]["rule"]) for d in ("dev-x1", "dev-x2")}

        assert await causes(CorrelationConfig()) == {
            d: ("unstable_network", "cell_outage") for d in ("dev-x1", "dev-x2")
        }
        assert await causes(CorrelationConfig(min_group=3)) == {
            d: ("unknown", "lone_silence") for d in ("dev-x1", "dev-x2")
        }
    finally:
        await repo.close()
