"""The page frame every dashboard page shares, and the request context pages render with."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from aiohttp import web

from collector.auth import PRINCIPAL, Permission, Principal
from collector.b2.api import settings_of
from collector.web.i18n import LANG_COOKIE, LANGS, Tr, pick_lang
from collector.web.markup import Html, attrs, html, join

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


def lang_switch(request: web.Request, lang: str) -> Html:
    links = []
    for code in LANGS:
        url = request.rel_url.update_query(lang=code)
        links.append(
            html(
                '<a href="{u}"{a} hreflang="{c}">{label}</a>',
                u=str(url),
                a=attrs(aria_current="true" if code == lang else None),
                c=code,
                label=code.upper(),
            )
        )
    return html('<span class="lang">{links}</span>', links=join(links, " | "))


def finish(request: web.Request, resp: web.Response) -> web.Response:
    """Remember an explicit ``?lang=`` choice in a cookie (a year)."""
    wanted = request.query.get("lang")
    if wanted in LANGS:
        resp.set_cookie(LANG_COOKIE, wanted, max_age=365 * 86400, samesite="Lax", path="/")
    return resp


def page(ctx: Ctx, *, title: str, body: Html, active: str = "", status: int = 200) -> web.Response:
    """A complete HTML page: header, navigation, ``body`` in ``<main>``, live updates."""
    tr = ctx.tr
    nav_items = [("overview", "/"), ("b2", "/b2"), ("repairs", "/repairs")]
    nav_items.append(("my_alerts", "/me/alerts"))
    if ctx.principal.may(Permission.USERS_ADMIN):
        nav_items.append(("users", "/users"))
        nav_items.append(("alerts", "/alerts"))
    nav = join(
        html(
            '<a href="{href}"{a}>{label}</a>',
            href=href,
            a=attrs(aria_current="page" if key == active else None),
            label=tr(key),
        )
        for key, href in nav_items
    )
    user = ctx.principal.user
    doc = html(
        """<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{csrf}">
<title>{title} · {app}</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body data-live-url="/ui/live" data-live-poll-ms="{poll}" data-lang="{lang}">
<header class="top">
<a class="brand" href="/"><img src="/static/favicon.svg" alt="" width="24" height="24"> {app}</a>
<nav class="main-nav">{nav}</nav>
<div class="who"><span class="user">{user} · {role}</span> {switch}
<button type="button" class="link" data-logout>{logout}</button>
<span class="live-dot" id="live-dot" title="{live}" data-ok="{live}" data-lost="{lost}"></span>
</div>
</header>
<main id="main">
<h1>{title}</h1>
{body}
</main>
<div id="toast" class="toast" role="status" aria-live="polite" hidden></div>
</body>
</html>
""",
        lang=ctx.lang,
        csrf=ctx.principal.csrf_token or "",
        title=title,
        app=tr("app_name"),
        poll=int(LIVE_POLL_S * 1000),
        nav=nav,
        user=user.name,
        role=tr(f"role_{user.role}"),
        switch=lang_switch(ctx.request, ctx.lang),
        logout=tr("logout"),
        live=tr("live"),
        lost=tr("live_lost"),
        body=body,
    )
    resp = web.Response(text=doc, content_type="text/html", charset="utf-8", status=status)
    return finish(ctx.request, resp)


def bare_page(request: web.Request, *, title: str, body: Html, status: int = 200) -> web.Response:
    """A page without navigation (login, errors before a session exists)."""
    tr = Tr(pick_lang(request))
    doc = html(
        """<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · {app}</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body class="bare">
<main id="main" class="narrow">
<div class="bare-head"><img src="/static/favicon.svg" alt="" width="40" height="40">
<span>{app}</span> {switch}</div>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
""",
        lang=tr.lang,
        title=title,
        app=tr("app_name"),
        switch=lang_switch(request, tr.lang),
        body=body,
    )
    resp = web.Response(text=doc, content_type="text/html", charset="utf-8", status=status)
    return finish(request, resp)
