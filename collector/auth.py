"""Authentication and authorisation of the collector's HTTP API (reused by the dashboard).

Two ways in, one ``Principal`` out:

- browsers log in (``POST /api/v1/auth/login``) and get an HttpOnly session
  cookie; every unsafe request (POST, PUT, PATCH, DELETE) made with the cookie
  must carry the session's CSRF token in the ``X-CSRF-Token`` header;
- scripts send ``Authorization: Bearer <token>`` (tokens from ``loa-collector
  users token NAME``); no CSRF check, a browser cannot forge that header.

Passwords are hashed with argon2id; session ids and API tokens are random
256-bit secrets stored only as SHA-256 (they are not guessable, so a slow hash
would add nothing). No secret is ever logged.

Roles: ``admin`` (everything), ``district_viewer`` (read all), ``commune_officer``
(read and manage repairs in their communes only), ``technician`` (read, open,
start and comment repairs, send remote commands to devices; limited to their
communes when they have any).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from collector.config import LoginConfig
from collector.store.base import AccountStore, NotFound, Repository, Role, ThrottleRule, User

SESSION_COOKIE = "loa_session"
CSRF_HEADER = "X-CSRF-Token"
#: Paths served without the middleware's authentication. ``/metrics`` checks its
#: own (an admin, or the metrics token).
PUBLIC_PATHS = frozenset({"/healthz", "/api/v1/auth/login", "/metrics"})
#: Upgrade downloads: the path carries a random per-rollout capability that the
#: handler checks (``collector.upgrades``); devices hold no API token.
CAPABILITY_PREFIX = "/upgrades/download/"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_hasher = PasswordHasher()


class Permission(enum.StrEnum):
    READ = "read"
    REPAIR_OPEN = "repair.open"
    REPAIR_WORK = "repair.work"  # start, comment
    REPAIR_CANCEL = "repair.cancel"
    #: Record a repair step at a past time (``at``): admin only, it moves B2 figures.
    REPAIR_BACKDATE = "repair.backdate"
    INVENTORY_WRITE = "inventory.write"
    USERS_ADMIN = "users.admin"
    METRICS = "metrics"  # fleet-wide counts: admins (and the metrics token) only
    #: Send commands to devices and read their results (collector.remote_api).
    REMOTE = "remote"
    #: Sign-and-serve agent upgrades and roll them out (admin only).
    UPGRADE = "upgrade"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.DISTRICT_VIEWER: frozenset({Permission.READ}),
    Role.COMMUNE_OFFICER: frozenset(
        {
            Permission.READ,
            Permission.REPAIR_OPEN,
            Permission.REPAIR_WORK,
            Permission.REPAIR_CANCEL,
        }
    ),
    Role.TECHNICIAN: frozenset(
        {Permission.READ, Permission.REPAIR_OPEN, Permission.REPAIR_WORK, Permission.REMOTE}
    ),
}


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling and what they may touch."""

    user: User
    via: str  # "session" or "token"
    csrf_token: str | None = None

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def communes(self) -> frozenset[str] | None:
        """Communes in scope; None means all."""
        if self.user.role is Role.COMMUNE_OFFICER:
            return self.user.communes  # never "all", even when empty
        if self.user.role is Role.TECHNICIAN and self.user.communes:
            return self.user.communes
        return None

    def may(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.user.role]

    def sees(self, commune: str) -> bool:
        scope = self.communes
        return scope is None or commune in scope


#: Where the middleware puts the caller on each request.
PRINCIPAL = web.RequestKey("principal", Principal)


def _json_error(
    status: type[web.HTTPException], field: str, message: str, **kw: Any
) -> web.HTTPException:
    return status(
        text=json.dumps({"error": f"{field}: {message}", "field": field}, ensure_ascii=False),
        content_type="application/json",
        **kw,
    )


def forbidden(message: str = "not allowed for your role", field: str = "role") -> web.HTTPException:
    return _json_error(web.HTTPForbidden, field, message)


def not_found(field: str) -> web.HTTPException:
    """404 for a missing row *and* for one outside the caller's communes: the same answer."""
    return _json_error(web.HTTPNotFound, field, "not found")


def unauthorized() -> web.HTTPException:
    return _json_error(
        web.HTTPUnauthorized,
        "Authorization",
        "authentication required (a session cookie or a bearer token)",
        headers={"WWW-Authenticate": 'Bearer realm="loa-collector"'},
    )


def require(
    request: web.Request,
    permission: Permission,
    commune: str | None = None,
    *,
    field: str = "$",
) -> Principal:
    """The caller, if allowed ``permission`` (on ``commune``); else raise 403 (404 for scope).

    Out-of-scope communes answer 404 naming ``field``, exactly as a missing row
    does, so an officer cannot probe which device ids exist elsewhere.
    """
    principal: Principal = request[PRINCIPAL]
    if not principal.may(permission):
        raise forbidden(f"{permission} is not allowed for role {principal.user.role}")
    if commune is not None and not principal.sees(commune):
        raise not_found(field)
    return principal


async def authenticate(request: web.Request, repo: AccountStore) -> Principal | None:
    """The caller from a bearer token or a session cookie (CSRF checked), or None."""
    now = time.time()
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        user = await repo.user_by_token(secret_hash(header[7:].strip()), at=now)
        if user is not None and not user.disabled:
            return Principal(user, "token")
        return None
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    session = await repo.session(secret_hash(cookie), at=now)
    if session is None or session.user.disabled:
        return None
    if request.method in _UNSAFE:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent, session.csrf_token):
            raise forbidden(f"missing or wrong {CSRF_HEADER} header", field=CSRF_HEADER)
    return Principal(session.user, "session", session.csrf_token)


def auth_middleware(repo_of: Callable[[web.Request], Repository]) -> Middleware:
    """Middleware: attach ``request[PRINCIPAL]`` or answer 401; enforce CSRF for cookies."""

    @web.middleware
    async def middleware(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or request.path.startswith(CAPABILITY_PREFIX):
            return await handler(request)
        principal = await authenticate(request, repo_of(request))
        if principal is None:
            raise unauthorized()
        request[PRINCIPAL] = principal
        return await handler(request)

    return middleware


async def login(
    repo: AccountStore, name: str, password: str, *, ttl_s: float
) -> tuple[User, str, str] | None:
    """Check a password; on success store a session and return (user, session id, csrf)."""
    try:
        user, stored = await repo.get_user(name)
    except NotFound:
        # Same work as a real check, so timing does not reveal which names exist.
        await asyncio.to_thread(verify_password, _DUMMY_HASH, password)
        return None
    ok = await asyncio.to_thread(verify_password, stored, password)
    if not ok or user.disabled:
        return None
    session_id, csrf = new_secret(), new_secret()
    await repo.add_session(
        name, session_hash=secret_hash(session_id), csrf_token=csrf, expires_at=time.time() + ttl_s
    )
    return user, session_id, csrf


_DUMMY_HASH = hash_password("not a real password")


def client_address(
    request: web.Request, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> str:
    """The real client address: the peer, or -- when the peer is a trusted proxy --
    the right-most X-Forwarded-For entry that is not itself a trusted proxy."""
    peer = request.remote or ""
    if not trusted or not _within(peer, trusted):
        return peer
    hops = [
        h.strip()
        for value in request.headers.getall("X-Forwarded-For", [])
        for h in value.split(",")
        if h.strip()
    ]
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return peer  # not what a proxy appends: believe nothing further left
        if not _within(str(address), trusted):
            return str(address)
    return str(ipaddress.ip_address(hops[0])) if hops else peer


def _within(
    address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def throttle_rules(name: str, address: str, cfg: LoginConfig) -> tuple[ThrottleRule, ...]:
    """The three keys one login attempt counts against (see ``LoginConfig``)."""

    def rule(key: str, about: str | None, free: int) -> ThrottleRule:
        return ThrottleRule(
            key=key,
            name=about,
            free=free,
            first_delay_s=cfg.first_delay_s,
            max_delay_s=cfg.max_delay_s,
            forget_s=cfg.forget_after_s,
        )

    return (
        rule(f"pair:{address}|{name}", name, cfg.pair_free),
        rule(f"name:{name}", name, cfg.name_free),
        rule(f"addr:{address}", None, cfg.address_free),
    )


async def throttled_login(
    repo: AccountStore,
    name: str,
    password: str,
    *,
    address: str,
    cfg: LoginConfig,
    ttl_s: float,
) -> tuple[User, str, str] | float | None:
    """A login through the throttle: (user, session id, csrf) on success, the seconds
    to wait when throttled (no password check made), None for a wrong name or password.

    The attempt is counted before the password is checked, so N concurrent attempts
    make at most as many password checks as the throttle allows. Failures are
    audited (``auth.login_failed``).
    """
    rules = throttle_rules(name, address, cfg)
    wait = await repo.throttle_attempt(rules, at=time.time())
    if wait > 0:
        return wait
    result = await login(repo, name, password, ttl_s=ttl_s)
    if result is None:
        await repo.audit(name, "auth.login_failed", f"user:{name}", {"client": address})
        return None
    await repo.throttle_clear([rules[0].key, rules[1].key])
    return result
