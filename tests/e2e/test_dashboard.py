"""The dashboard in a real headless browser against a running collector and broker.

A simulated fleet publishes real wire messages; the browser signs in, checks
the overview against the API, opens a commune and a cluster, starts a repair,
watches another tab's overview change without a reload (a repair started, a
new fault), and downloads the B2 XLSX, which openpyxl opens.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from collector.model import InventoryDevice
from fleet_protocol import FaultCode
from tests.e2e.conftest import ADMIN, Collector, Fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

WAIT_MS = 15000  # live updates poll every 2 s; allow for a loaded CI machine


async def stat(page: Any, key: str) -> int:
    return int(await page.locator(f'[data-stat="{key}"]').first.inner_text())


async def wait_stat(page: Any, key: str, value: int) -> None:
    await page.wait_for_function(
        '([k, v]) => { const el = document.querySelector(`[data-stat="${k}"]`);'
        " return el && parseInt(el.textContent, 10) === v; }",
        arg=[key, value],
        timeout=WAIT_MS,
    )


async def api(page: Any, path: str) -> Any:
    resp = await page.request.get(path)
    assert resp.ok, f"{path}: {resp.status}"
    return await resp.json()


async def test_dashboard_end_to_end(
    collector: Collector,
    fleet: Fleet,
    inventory: list[InventoryDevice],
    browser: Any,
    tmp_path: Path,
) -> None:
    ids = [d.device_id for d in inventory]
    first_commune = inventory[0].commune_code
    # The fleet reports: six clusters fine, one without its station stream, one without SIM.
    broken = {ids[1]: FaultCode.STREAM_LOST, ids[5]: FaultCode.SIM_ABSENT}
    for device in ids:
        faults = (broken[device],) if device in broken else ()
        await fleet.send(device, fleet.online(device), fleet.report(device, faults))

    context = await browser.new_context(
        base_url=collector.url, viewport={"width": 1366, "height": 900}, accept_downloads=True
    )
    page = await context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    # Sign in: the overview redirects to the form, the form back to the overview.
    await page.goto("/")
    assert "/login" in page.url
    assert await page.locator("h1").inner_text() == "Đăng nhập hệ thống giám sát"
    await page.fill('input[name="name"]', ADMIN[0])
    await page.fill('input[name="password"]', "wrong password")
    await page.click('button[type="submit"]')
    await page.locator(".form-error").wait_for(state="visible")
    assert "Sai tên đăng nhập" in await page.locator(".form-error").inner_text()
    await page.fill('input[name="password"]', ADMIN[1])
    await page.click('button[type="submit"]')
    await page.wait_for_url(collector.url + "/")
    console_errors.clear()  # the wrong password's 401 was expected

    # The overview's figures are the API's, once every report is stored.
    await wait_stat(page, "broken", 2)
    summary = await api(page, "/api/v1/fleet/summary")
    assert summary["total"] == len(ids) and summary["broken"] == 2
    for key in ("total", "working", "broken", "in_repair", "not_repaired"):
        assert await stat(page, key) == summary[key], key
    assert await page.locator("h1").inner_text() == "Tổng quan"

    # A second tab keeps the overview open to watch live changes.
    watcher = await context.new_page()
    await watcher.goto("/")
    await watcher.evaluate("window.__notReloaded = true")
    in_repair_before = await stat(watcher, "in_repair")

    # Commune, then the cluster without a station stream.
    await page.click(f'a[href="/communes/{first_commune}"]')
    await page.wait_for_url(re.compile(f"/communes/{first_commune}$"))
    rows = page.locator("#clusters tbody tr")
    assert await rows.count() == 4
    assert "Không tiếp được sóng của đài" in await page.locator("#clusters").inner_text()
    assert await page.locator("#map svg circle").count() == 4
    await page.click(f'#clusters a[href="/devices/{ids[1]}"]')
    await page.wait_for_url(re.compile(f"/devices/{ids[1]}$"))
    status_text = await page.locator("#status").inner_text()
    assert "Mất luồng" in status_text or "stream_lost" in status_text
    assert "simulated stream_lost" in status_text
    assert await page.locator("#charts svg").count() == 3

    # Open a repair, then start it with a contractor and a technician.
    await page.fill(
        'form[data-api="/api/v1/repairs"] textarea[name="note"]', "Loa xã báo mất tiếng"
    )
    await page.click('form[data-api="/api/v1/repairs"] button[type="submit"]')
    start_form = page.locator('form[data-api$="/start"]')
    await start_form.wait_for(state="visible", timeout=WAIT_MS)
    await start_form.locator('input[name="contractor"]').fill("Viettel Phú Thọ")
    await start_form.locator('input[name="technician"]').fill("Nguyễn Văn An")
    await start_form.locator('button[type="submit"]').click()
    await page.locator("#status").get_by_text("Đang sửa chữa").first.wait_for(timeout=WAIT_MS)
    assert "Viettel Phú Thọ" in await page.locator("#repairs").inner_text()

    # The other tab's overview follows without a reload.
    await wait_stat(watcher, "in_repair", in_repair_before + 1)
    # A new fault on a working cluster appears there too.
    await fleet.send(ids[2], fleet.report(ids[2], (FaultCode.NETWORK_UNSTABLE,)))
    await wait_stat(watcher, "broken", 3)
    assert await watcher.evaluate("window.__notReloaded === true")
    assert "Mạng chập chờn" in await watcher.locator("#causes").inner_text()
    summary = await api(watcher, "/api/v1/fleet/summary")
    assert (summary["broken"], summary["in_repair"]) == (3, in_repair_before + 1)

    # B2: the table as of today and its XLSX.
    await page.click('nav a[href="/b2"]')
    await page.wait_for_url(re.compile("/b2$"))
    assert "Tổng cộng" in await page.locator("table.b2").inner_text()
    sentence = await page.locator("#b2-summary").inner_text()
    assert "cụm loa hoạt động tốt" in sentence
    async with page.expect_download() as info:
        await page.click('a[data-format="xlsx"]')
    download = await info.value
    target = tmp_path / download.suggested_filename
    await download.save_as(target)
    assert target.suffix == ".xlsx"
    sheet = openpyxl.load_workbook(target).active
    cells = [[c.value for c in row] for row in sheet.iter_rows()]
    total_row = next(r for r in cells if "Tổng cộng" in r)
    numbers = [v for v in total_row if isinstance(v, int | float)]
    # Total, working, broken, in repair, not repaired: as the API counts them now.
    assert numbers[:5] == [
        summary["total"],
        summary["working"],
        summary["broken"],
        summary["in_repair"],
        summary["not_repaired"],
    ]

    # English by the switch, and back.
    await page.click('a[hreflang="en"]')
    await page.locator("h1").get_by_text("B2 report").wait_for()
    await page.goto("/")
    assert await page.locator("h1").inner_text() == "Overview"

    assert not console_errors, console_errors

    # Signing out ends the session: pages send the browser back to the form.
    await page.click("button[data-logout]")
    await page.wait_for_url(re.compile("/login$"))
    await page.goto("/repairs")
    assert "/login?next=/repairs" in page.url
    await context.close()
