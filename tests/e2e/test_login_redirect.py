"""``/login?next=`` open-redirect variants in real headless Chromium.

Each variant is tried twice against a running ``loa-collector serve``: as the
query parameter (the server's ``safe_next`` must neutralise it), and written
straight into the form's ``data-next`` (so the page script's ``safeNext`` alone
stands between the browser and another origin). After signing in the browser
must be on the collector's own ``/``; a local ``next`` is followed.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.conftest import ADMIN, Collector

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# Raw query strings: the percent-escapes are sent as they are.
VARIANTS = [
    "//evil.example/",
    "/%09/evil.example/",
    "/%0a/evil.example/",
    "/%0d/evil.example/",
    "/%0D%0A/evil.example/",
    "/%5Cevil.example/",
    "/%5C%5Cevil.example/",
    "%2F%2Fevil.example/",
    "/%2F/evil.example/",
    "/%252F%252Fevil.example/",
    "https://evil.example/",
    "javascript:alert(document.domain)",
]
# What a page's data-next attribute could hold if the server let it through.
ATTRIBUTE_VARIANTS = [
    "//evil.example/",
    "/\t/evil.example/",
    "/\n/evil.example/",
    "/\r/evil.example/",
    "/\\evil.example/",
    "\\\\evil.example/",
    "/%09/evil.example/",
    "/%2F%2Fevil.example/",
    "https://evil.example/",
    "javascript:alert(document.domain)",
]


async def _sign_in(page: Any) -> None:
    await page.fill('input[name="name"]', ADMIN[0])
    await page.fill('input[name="password"]', ADMIN[1])
    async with page.expect_response(lambda r: r.url.endswith("/api/v1/auth/login")) as resp:
        await page.click('button[type="submit"]')
    assert (await resp.value).status == 200
    with contextlib.suppress(Exception):  # a navigation elsewhere would fail here, no network
        await page.wait_for_url(lambda url: "/login" not in url, timeout=10000)


async def test_next_variants_stay_on_the_collector(collector: Collector, browser: Any) -> None:
    home = collector.url + "/"
    attempts: list[str] = []

    async def attempt(setup: Any, label: str) -> None:
        context = await browser.new_context(base_url=collector.url)
        page = await context.new_page()
        navigations: list[str] = []
        page.on("framenavigated", lambda f: navigations.append(f.url))
        try:
            await setup(page)
            await _sign_in(page)
            assert page.url == home, (label, page.url, navigations)
            assert all(u.startswith(collector.url) for u in navigations), (label, navigations)
        finally:
            await context.close()
        attempts.append(label)

    for raw in VARIANTS:

        async def via_query(page: Any, raw: str = raw) -> None:
            await page.goto("/login?next=" + raw)
            assert await page.locator("#login-form").get_attribute("data-next") == "/", raw

        await attempt(via_query, f"query {raw!r}")

    for raw in ATTRIBUTE_VARIANTS:

        async def via_attribute(page: Any, raw: str = raw) -> None:
            await page.goto("/login")
            await page.eval_on_selector(
                "#login-form", "(form, v) => { form.dataset.next = v; }", raw
            )

        await attempt(via_attribute, f"data-next {raw!r}")
    assert len(attempts) == len(VARIANTS) + len(ATTRIBUTE_VARIANTS)

    # A local path is followed, query string and all.
    context = await browser.new_context(base_url=collector.url)
    page = await context.new_page()
    await page.goto("/login?next=" + quote("/repairs?state=open", safe="/"))
    await _sign_in(page)
    assert page.url == collector.url + "/repairs?state=open"
    await context.close()
