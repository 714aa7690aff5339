"""On-site findings through the real API: a finding on a ticket changes the B2
cause and its source, later disagreeing device evidence shows as a conflict, and
the audit log records who and when. A B2 recomputed for the same date says what
changed since it was first produced."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from collector.config import CollectorConfig
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import FaultCode
from tests.collector.conftest import make_config, presence, publish, state, wait_for
from tests.collector.test_api import Api, start_api
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(broker: Broker, tmp_path: Path, repo: SQLiteRepository) -> AsyncIterator[Api]:
    """On each engine (``repo``)."""
    cfg: CollectorConfig = make_config(broker, tmp_path, fleet={"heartbeat_grace_s": 3000.0})
    async for a in start_api(broker, tmp_path, cfg):
        yield a


async def _b2(api: Api, as_of: str = "") -> dict:  # type: ignore[type-arg]
    q = f"?as_of={quote(as_of)}" if as_of else ""
    status, data = await api.call("viewer", "GET", f"/api/v1/reports/b2{q}")
    assert status == 200, data
    return data  # type: ignore[no-any-return]


async def test_finding_changes_the_b2_cause_and_is_audited(api: Api) -> None:
    now = time.time()
    # dev-11 reports once, healthy, then its last will: offline, cause unknown.
    await publish(api.broker, "dev-11", state("dev-11", 1, now - 100), presence("dev-11", 2, False))

    async def offline() -> bool:
        d = await api.repo.get_device("dev-11")
        return not d.online and d.last_seq == 2

    await wait_for(offline, what="dev-11 offline")
    b2 = await _b2(api)
    assert b2["clusters"]["dev-11"]["cause"] == "unknown"
    assert b2["clusters"]["dev-11"]["source"] == "unknown"

    # The technician opens a ticket with what was found on site.
    status, ticket = await api.call(
        "admin",
        "POST",
        "/api/v1/repairs",
        {
            "device_id": "dev-11",
            "note": "đi kiểm tra",
            "cause": "sim_failure",
            "finding": "SIM cháy",
        },
    )
    assert status == 201, ticket
    assert any(h["action"] == "finding" for h in ticket["history"])
    b2 = await _b2(api)
    assert b2["clusters"]["dev-11"] == {
        "cause": "sim_failure",
        "source": "finding",
        "rule": None,
        "evidence": "admin: SIM cháy",
        "at": pytest.approx(time.time(), abs=30),
        "conflict": None,
    }
    row = next(r for r in b2["rows"] if r["key"] == "xa-01")
    assert row["causes"]["sim_failure"] == 1
    assert "1 cụm: nguyên nhân do kỹ thuật viên xác định" in row["notes"]
    audit = [e for e in await api.repo.audit_log() if e["action"] == "repair.finding"]
    assert audit and audit[0]["actor"] == "admin"
    assert audit[0]["detail"]["cause"] == "sim_failure" and audit[0]["detail"]["at"] > now

    # Later the device (buffered reports arriving late) says something else:
    # shown as a conflict, the finding stands.
    await publish(
        api.broker,
        "dev-11",
        state("dev-11", 3, time.time(), faults=(FaultCode.NO_SERVICE,)),
        presence("dev-11", 4, False),
    )

    async def seen() -> bool:
        return 4 in await api.repo.stored_seqs("dev-11")

    await wait_for(seen, what="dev-11's later report")
    status, cause = await api.call("viewer", "GET", "/api/v1/devices/dev-11/cause")
    assert status == 200
    assert cause["cause"]["cause"] == "sim_failure" and cause["cause"]["source"] == "finding"
    assert "Unstable network" in cause["cause"]["conflict"]
    assert [f["cause"] for f in cause["findings"]] == ["sim_failure"]
    # The cluster page shows the cause, its source, the evidence and the conflict,
    # and offers the finding form on the open ticket.
    status, page = await api.call("admin", "GET", "/devices/dev-11")
    assert status == 200
    assert "do kỹ thuật viên xác định" in page and "admin: SIM cháy" in page
    assert "Thiết bị báo khác với kết quả kiểm tra" in page
    assert f'data-api="/api/v1/repairs/{ticket["id"]}/finding"' in page


async def test_finding_and_resolve_endpoints_check_input_and_scope(api: Api) -> None:
    await publish(api.broker, "dev-21", state("dev-21", 1, faults=(FaultCode.STREAM_LOST,)))

    async def known() -> bool:
        return (await api.repo.get_device("dev-21")).last_seq == 1

    await wait_for(known, what="dev-21")
    status, ticket = await api.call("admin", "POST", "/api/v1/repairs", {"device_id": "dev-21"})
    assert status == 201
    tid = ticket["id"]
    for bad in ({"cause": "burnt"}, {"text": "no cause"}, {"cause": 3}, {}):
        status, err = await api.call("tech", "POST", f"/api/v1/repairs/{tid}/finding", bad)
        assert status == 400 and err["field"] == "cause", (bad, err)
    # A commune officer of another commune may not record findings here.
    status, _ = await api.call(
        "officer1", "POST", f"/api/v1/repairs/{tid}/finding", {"cause": "power"}
    )
    assert status in (403, 404)
    status, done = await api.call(
        "tech",
        "POST",
        f"/api/v1/repairs/{tid}/resolve",
        {"cause": "amplifier_speaker", "finding": "thay amply", "note": "xong"},
    )
    assert status == 200 and done["state"] == "resolved"
    status, _ = await api.call("tech", "POST", f"/api/v1/repairs/{tid}/resolve", {"note": "x"})
    assert status == 409


async def test_recomputed_b2_for_a_past_date_says_what_changed(api: Api) -> None:
    t0 = time.time() - 3600
    await publish(api.broker, "dev-12", state("dev-12", 1, t0 - 600), presence("dev-12", 2, False))

    async def offline() -> bool:
        return (await api.repo.get_device("dev-12")).last_seq == 2

    await wait_for(offline, what="dev-12 offline")
    as_of = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 5))
    first = await _b2(api, as_of)
    assert first["first_produced_at"] is None and first["changes_since_first"] == []
    # Late evidence: the SIM's failure reaches the collector afterwards (buffered).
    await publish(
        api.broker,
        "dev-12",
        state("dev-12", 3, time.time() - 1, faults=(FaultCode.SIM_FAILURE,)),
    )

    async def late() -> bool:
        return 3 in await api.repo.stored_seqs("dev-12")

    await wait_for(late, what="late report")
    again = await _b2(api, as_of)
    assert again["first_produced_at"] is not None
    assert again["clusters"]["dev-12"]["cause"] == "sim_failure"
    (line,) = [c for c in again["changes_since_first"] if c.startswith("dev-12")]
    assert "Không rõ nguyên nhân" in line and "Cháy SIM" in line
