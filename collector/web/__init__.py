"""The dashboard: server-rendered pages for district and commune officers.

``setup_dashboard(app)`` adds the pages, their static assets (CSS, JS, SVG,
all local: the dashboard must work on a district LAN without internet) and
one middleware to the collector app built by ``collector.app.create_app``.

Routes (HTML unless noted)::

    GET  /login                     sign-in form (public)
    GET  /                          overview
    GET  /communes/{code}           one commune's clusters and map
    GET  /devices/{device_id}       one cluster: status, faults, charts, repairs
    GET  /b2                        the B2 table, summary, downloads
    GET  /repairs                   open repair tickets
    GET  /users                     user administration (admin)
    POST /users, /users/{name}      create / update a user (JSON, CSRF header)
    GET  /ui/live                   change fingerprint for live updates (JSON)
    GET  /static/...                assets (public)

Authentication, roles and CSRF are the API's (``collector.auth``): a browser
signs in through ``POST /api/v1/auth/login`` and sends the session's CSRF
token in ``X-CSRF-Token`` with every write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from collector.templating import ENV
from collector.web import pages
from collector.web.layout import remember_lang

STATIC_DIR: Final = Path(__file__).parent / "static"
#: Route names served without a session: the inner auth middleware would answer 401.
PUBLIC_ROUTES: Final = frozenset({"web-login", "web-static"})
_PAGE_PREFIX: Final = "web-page"

#: Content Security Policy of the pages: only this origin's scripts and styles,
#: no inline script or style, no framing.
CSP: Final = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return (resource.name if resource is not None else None) or ""


@web.middleware
async def dashboard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Public dashboard routes skip authentication; pages get HTML errors and a
    redirect to the login form instead of JSON 401/403/404; HTML gets security headers."""
    name = _route_name(request)
    if name in PUBLIC_ROUTES:
        # The login form and static assets must load before a session exists;
        # the auth middleware further in would refuse them, so call the route
        # directly. Nothing else is reachable this way.
        resp = await request.match_info.handler(request)
    elif name.startswith(_PAGE_PREFIX) and request.method in ("GET", "HEAD"):
        try:
            resp = await handler(request)
        except web.HTTPUnauthorized:
            target = quote(request.path_qs, safe="/?=&")
            raise web.HTTPSeeOther(f"/login?next={target}") from None
        except web.HTTPException as exc:
            if exc.status not in (400, 403, 404):
                raise
            resp = pages.error_page(request, exc.status, _message(exc))
    else:
        resp = await handler(request)
    if resp.content_type == "text/html":
        remember_lang(request, resp)
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


def _message(exc: web.HTTPException) -> str:
    """The ``error`` text of the API's JSON errors, else the HTTP reason."""
    try:
        data = json.loads(exc.text or "")
    except ValueError:
        return exc.reason
    return str(data.get("error", exc.reason)) if isinstance(data, dict) else exc.reason


def setup_dashboard(app: web.Application) -> None:
    """Add the dashboard's routes, assets and middleware to the collector ``app``.

    Call once, after the API routes, before the app starts.
    """
    app.middlewares.insert(0, dashboard_middleware)
    # The pages' templates: the environment the HTML export renders with too.
    app[aiohttp_jinja2.APP_KEY] = ENV
    r = app.router
    r.add_get("/login", pages.login_page, name="web-login")
    r.add_get("/", pages.overview, name="web-page-overview")
    r.add_get("/communes/{code}", pages.commune, name="web-page-commune")
    r.add_get("/devices/{device_id}", pages.device, name="web-page-device")
    r.add_get("/b2", pages.b2, name="web-page-b2")
    r.add_get("/repairs", pages.repairs_page, name="web-page-repairs")
    r.add_get("/users", pages.users_page, name="web-page-users")
    r.add_post("/users", pages.users_create, name="web-users-create")
    r.add_post("/users/{name}", pages.users_update, name="web-users-update")
    r.add_get("/ui/live", pages.live, name="web-live")
    r.add_static("/static/", STATIC_DIR, name="web-static")


__all__ = ["PUBLIC_ROUTES", "STATIC_DIR", "dashboard_middleware", "setup_dashboard"]
