"""A technician on site records the cause from the cluster page on a phone (headless
Chromium at a phone's size and touch): the finding overrides the device's own
diagnosis in the cluster's cause and in the B2, named as an on-site finding."""

from __future__ import annotations

from typing import Any

import pytest

from collector.model import InventoryDevice
from fleet_protocol import FaultCode
from tests.collector.conftest import wait_for
from tests.e2e.conftest import Collector, Fleet, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WAIT_MS = 20000
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


async def test_a_finding_recorded_on_a_phone_becomes_the_b2_cause(
    collector: Collector, fleet: Fleet, inventory: list[InventoryDevice], browser: Any
) -> None:
    device = inventory[0].device_id
    # The cluster reports no station signal; the ticket opens on its own.
    await fleet.send(
        device, fleet.online(device), fleet.report(device, faults=(FaultCode.STREAM_LOST,))
    )
    context = await browser.new_context(base_url=collector.url, **PHONE)
    try:
        page = await context.new_page()
        await sign_in(page, collector, tap=True)

        async def cause() -> dict[str, Any]:
            resp = await page.request.get(f"/api/v1/devices/{device}/cause")
            return (await resp.json() if resp.ok else {}).get("cause") or {}

        async def broken() -> bool:
            return (await cause()).get("source") == "device_live"

        await wait_for(broken, timeout=30, what=f"{device} broken, cause from the device")
        assert (await cause())["cause"] == "no_station_signal"

        await page.goto(f"/devices/{device}")
        # Fits the phone: nothing to scroll sideways to reach the forms.
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        # Opening the ticket on site takes the cause found and what was seen.
        form = page.locator('form[data-api="/api/v1/repairs"]')
        await form.wait_for(state="visible", timeout=WAIT_MS)
        await form.locator('select[name="cause"]').select_option("sim_failure")
        await form.locator('textarea[name="finding"]').fill("Sim cháy, đã thay sim mới")
        await form.locator('button[type="submit"]').tap()

        async def found() -> bool:
            return (await cause()).get("source") == "finding"

        await wait_for(found, timeout=20, what="the finding applied")
        c = await cause()
        assert c["cause"] == "sim_failure" and c["conflict"] is None, c
        resp = await page.request.get("/api/v1/reports/b2", params={"format": "json"})
        assert resp.ok
        b2 = await resp.json()
        assert b2["clusters"][device]["cause"] == "sim_failure"
        assert b2["clusters"][device]["source"] == "finding"
        # The page shows the finding with its text.
        await page.reload()
        assert "Sim cháy, đã thay sim mới" in await page.locator("body").inner_text()
        # Later, the device reports no station signal again: shown as a conflict,
        # never silently applied over the finding.
        await fleet.send(device, fleet.report(device, faults=(FaultCode.STREAM_LOST,)))

        async def conflict() -> bool:
            return bool((await cause()).get("conflict"))

        await wait_for(conflict, timeout=20, what="the later device evidence as a conflict")
        assert (await cause())["cause"] == "sim_failure"
    finally:
        await context.close()
