"""What every dashboard page renders with: the caller's context and the page frame's data.

Pages are Jinja2 templates (``collector/web/templates/``, autoescaped, through
aiohttp-jinja2): ``base.html`` is the frame with navigation and live updates,
``bare.html`` the frame without a session (login, errors). A handler gathers
its data and returns ``page_context(ctx, ...) | {...}``; it builds no markup.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from collector.auth import PRINCIPAL, Permission, Principal
from collector.b2.api import settings_of
from collector.templating import render
from collector.web.i18n import LANG_COOKIE, LANGS, Tr, pick_lang
from collector.web.markup import Html

#: Seconds between the pages' live-update polls.
LIVE_POLL_S = 2.0


@dataclass(frozen=True, slots=True)
class Ctx:
    """What a page handler renders with: the caller, language, time zone and clock."""

    request: web.Request
    principal: Principal
    tr: Tr
    tz: dt.tzinfo
    now: float

    @classmethod
    def of(cls, request: web.Request) -> Ctx:
        return cls(
            request=request,
            principal=request[PRINCIPAL],
            tr=Tr(pick_lang(request)),
            tz=settings_of(request).tz(),
            now=time.time(),
        )

    @property
    def lang(self) -> str:
        return self.tr.lang

    def when(self, ts: float | None) -> str:
        return self.tr.datetime(ts, self.tz)


def lang_links(request: web.Request) -> list[tuple[str, str]]:
    """(language code, this page's URL in that language) for the language switch."""
    return [(code, str(request.rel_url.update_query(lang=code))) for code in LANGS]


def remember_lang(request: web.Request, resp: web.StreamResponse) -> None:
    """Remember an explicit ``?lang=`` choice in a cookie (a year)."""
    wanted = request.query.get("lang")
    if wanted in LANGS:
        resp.set_cookie(LANG_COOKIE, wanted, max_age=365 * 86400, samesite="Lax", path="/")


def page_context(ctx: Ctx, *, title: str, active: str = "") -> dict[str, Any]:
    """The frame's context (``base.html``): header, navigation, live updates."""
    nav = [("overview", "/"), ("b2", "/b2"), ("repairs", "/repairs"), ("my_alerts", "/me/alerts")]
    if ctx.principal.may(Permission.USERS_ADMIN):
        nav.append(("users", "/users"))
        nav.append(("alerts", "/alerts"))
    return {
        "ctx": ctx,
        "tr": ctx.tr,
        "title": title,
        "active": active,
        "nav": nav,
        "lang_links": lang_links(ctx.request),
        "live_poll_ms": int(LIVE_POLL_S * 1000),
    }


def page(ctx: Ctx, *, title: str, body: Html, active: str = "", status: int = 200) -> web.Response:
    """The frame (``base.html``) around a body already built as trusted markup.

    For the alert pages, whose forms are assembled from escaped fragments
    (``collector.web.markup``); every other page is a template of its own.
    """
    text = render("fragment.html", **page_context(ctx, title=title, active=active), body=body)
    return web.Response(text=text, content_type="text/html", charset="utf-8", status=status)


def bare_context(request: web.Request, *, title: str) -> dict[str, Any]:
    """The context of ``bare.html``: a page without a session or navigation."""
    tr = Tr(pick_lang(request))
    return {"tr": tr, "lang": tr.lang, "title": title, "lang_links": lang_links(request)}
