"""The cluster page's remote-command button in headless Chromium: a real collector
process, a real agent process for one inventory cluster, the answer shown on the page."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from collector.model import InventoryDevice
from edge_agent.remote import config_version
from tests.collector.conftest import wait_for
from tests.e2e.conftest import Collector, sign_in
from tests.edge_agent.agent_support import AgentProcess, write_config
from tests.support.mosquitto import Broker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WAIT_MS = 20000


async def test_remote_button_shows_the_reply_and_the_offline_refusal(
    collector: Collector,
    broker: Broker,
    inventory: list[InventoryDevice],
    browser: Any,
    tmp_path: Path,
) -> None:
    device = inventory[0].device_id
    cfg = write_config(tmp_path, broker, device)
    with AgentProcess(cfg, tmp_path / "agent.log") as agent:
        context = await browser.new_context(base_url=collector.url)
        page = await context.new_page()
        await sign_in(page, collector)

        # Wait until the collector has seen the agent come online.
        async def online() -> bool:
            resp = await page.request.get(f"/api/v1/devices/{device}")
            data = await resp.json() if resp.ok else {}
            return bool(data.get("online") and (data.get("last_report") or {}).get("system"))

        await wait_for(online, timeout=30, what=f"{device} online")

        await page.goto(f"/devices/{device}")
        panel = page.locator("#remote")
        assert await panel.locator("h2").inner_text() == "Lệnh từ xa"
        # The running agent's version and config version (hash of its agent.toml).
        assert config_version(cfg) in await panel.locator(".versions").inner_text()
        await panel.locator('select[name="action"]').select_option("diag")
        await panel.locator('button[type="submit"]').click()
        result = page.locator("#remote-result")
        await page.wait_for_function(
            "() => document.querySelector('#remote-result').textContent.includes('replied')",
            timeout=WAIT_MS,
        )
        text = await result.inner_text()
        assert '"ok": true' in text and '"readings"' in text and '"system"' in text

        # A recovery action without the confirmation box is refused, with the reason shown.
        await panel.locator('select[name="action"]').select_option("soft_reset")
        await panel.locator('button[type="submit"]').click()
        await panel.locator(".form-error").wait_for(state="visible", timeout=WAIT_MS)
        assert "confirm" in await panel.locator(".form-error").inner_text()

        assert await asyncio.to_thread(agent.stop) == 0

        async def offline() -> bool:
            resp = await page.request.get(f"/api/v1/devices/{device}")
            return resp.ok and not (await resp.json())["online"]

        await wait_for(offline, timeout=30, what=f"{device} offline")
        await panel.locator('select[name="action"]').select_option("status")
        await panel.locator('button[type="submit"]').click()
        await page.wait_for_function(
            "() => document.querySelector('#remote-result').textContent.includes('refused')",
            timeout=WAIT_MS,
        )
        assert "is offline" in await panel.locator(".form-error").inner_text()
        await context.close()
