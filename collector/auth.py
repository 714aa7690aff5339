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
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from collector.store.base import NotFound, Repository, Role, User

SESSION_COOKIE = "loa_session"
CSRF_HEADER = "X-CSRF-Token"
#: Paths served without authentication.
PUBLIC_PATHS = frozenset({"/healthz", "/api/v1/auth/login"})
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
    INVENTORY_WRITE = "inventory.write"
    USERS_ADMIN = "users.admin"
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


def _json_error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json")


def forbidden(message: str = "not allowed for your role") -> web.HTTPException:
    return _json_error(web.HTTPForbidden, message)


def require(request: web.Request, permission: Permission, commune: str | None = None) -> Principal:
    """The caller, if allowed ``permission`` (on ``commune``); else raise 403 (404 for scope).

    Out-of-scope communes answer 404, not 403, so an officer cannot probe which
    device ids exist elsewhere.
    """
    principal: Principal = request[PRINCIPAL]
    if not principal.may(permission):
        raise forbidden(f"{permission} is not allowed for role {principal.user.role}")
    if commune is not None and not principal.sees(commune):
        raise _json_error(web.HTTPNotFound, "not found")
    return principal


def auth_middleware(repo_of: Callable[[web.Request], Repository]) -> Middleware:
    """Middleware: attach ``request[PRINCIPAL]`` or answer 401; enforce CSRF for cookies."""

    @web.middleware
    async def middleware(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or request.path.startswith(CAPABILITY_PREFIX):
            return await handler(request)
        repo = repo_of(request)
        now = time.time()
        header = request.headers.get("Authorization", "")
        principal: Principal | None = None
        if header.lower().startswith("bearer "):
            user = await repo.user_by_token(secret_hash(header[7:].strip()), at=now)
            if user is not None and not user.disabled:
                principal = Principal(user, "token")
        else:
            cookie = request.cookies.get(SESSION_COOKIE)
            if cookie:
                session = await repo.session(secret_hash(cookie), at=now)
                if session is not None and not session.user.disabled:
                    principal = Principal(session.user, "session", session.csrf_token)
                    if request.method in _UNSAFE:
                        sent = request.headers.get(CSRF_HEADER, "")
                        if not hmac.compare_digest(sent, session.csrf_token):
                            raise forbidden(f"missing or wrong {CSRF_HEADER} header")
        if principal is None:
            raise web.HTTPUnauthorized(
                text='{"error": "authentication required"}',
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="loa-collector"'},
            )
        request[PRINCIPAL] = principal
        return await handler(request)

    return middleware


async def login(
    repo: Repository, name: str, password: str, *, ttl_s: float
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


class LoginThrottle:
    """Refuses logins for a name or a client address after repeated failures.

    At most ``max_failures`` failed logins per key within ``window_s``; then
    that key is refused (HTTP 429) until its oldest failure leaves the window.
    Keys are the user name and the client address, so one attacker cannot lock
    out a name from everywhere for long without also being throttled itself.
    State is per collector instance: with several instances an attacker gets
    at most ``max_failures`` per instance, which still stops password guessing.
    """

    def __init__(
        self, *, max_failures: int = 10, window_s: float = 900.0, max_keys: int = 100_000
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: dict[str, list[float]] = {}

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if t > now - self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, keys: Iterable[str], now: float) -> float:
        """Seconds until a login for ``keys`` is allowed again (0 when allowed now)."""
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                wait = max(wait, times[-self.max_failures] + self.window_s - now)
        return wait

    def failed(self, keys: Iterable[str], now: float) -> None:
        if len(self._failures) >= self.max_keys:
            # Bounded memory under a spray from many addresses: forget the stale.
            for key in list(self._failures):
                self._recent(key, now)
        for key in keys:
            self._failures.setdefault(key, []).append(now)

    def succeeded(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)
