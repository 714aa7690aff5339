"""Local receivers for the alert channels, in the test's own event loop (no threads).

- ``SmtpReceiver``: a real SMTP server (aiosmtpd) with STARTTLS required before
  AUTH and before mail, a certificate from our own CA (collector.tls), and a
  user name and password. It records every message it accepts, parsed.
- ``HttpReceivers``: one aiohttp server standing in for what cannot run here,
  speaking the real request shapes: a generic webhook (``POST /hook/<name>``,
  checks the HMAC signature), the Telegram Bot API (``POST
  /bot<token>/sendMessage``) and the Zalo OA v3 message API (``POST
  /v3.0/oa/message/cs`` with an ``access_token`` header). Each records what it
  received; ``fail_next`` makes the next requests fail, ``delay_s`` slows them.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from collector.alerts.channels import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from collector.tls import CertificateAuthority

SMTP_USER = "loa-alerts"
SMTP_PASSWORD = "smtp-secret-pw"
TELEGRAM_TOKEN = "123456:TEST-token"
ZALO_TOKEN = "zalo-oa-access-token"


class _Handler:
    def __init__(self, sink: list[EmailMessage], tls_seen: list[bool]) -> None:
        self.sink = sink
        self.tls_seen = tls_seen

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.tls_seen.append(session.ssl is not None)
        self.sink.append(msg)
        return "250 OK"


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok)


@dataclass
class SmtpReceiver:
    host: str
    port: int
    ca_file: Path
    messages: list[EmailMessage] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "starttls": True,
            "ca_file": str(self.ca_file),
            "username": SMTP_USER,
            "password": SMTP_PASSWORD,
            "sender": "Giám sát cụm loa <loa@huyen.test>",
            "timeout_s": 10.0,
        }


@asynccontextmanager
async def smtp_receiver(tmp: Path) -> AsyncIterator[SmtpReceiver]:
    """aiosmtpd on 127.0.0.1 (free port): STARTTLS required, AUTH LOGIN/PLAIN after it."""
    ca = CertificateAuthority.create("test SMTP CA")
    cert = ca.issue_server(["127.0.0.1", "localhost"])
    tmp.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "smtp.pem", tmp / "smtp.key"
    ca_file.write_bytes(ca.cert_pem)
    cert.write(cert_file, key_file)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    receiver = SmtpReceiver("127.0.0.1", 0, ca_file)
    handler = _Handler(receiver.messages, receiver.tls)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            tls_context=ctx,
            require_starttls=True,
            authenticator=_authenticator,
            auth_required=True,
            auth_require_tls=True,
            hostname="smtp.test",
        ),
        "127.0.0.1",
        0,
    )
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Received:
    kind: str  # "webhook", "telegram", "zalo"
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    signature_ok: bool | None = None


@dataclass
class HttpReceivers:
    base_url: str = ""
    received: list[Received] = field(default_factory=list)
    #: Webhook name -> secret to verify with.
    secrets: dict[str, str] = field(default_factory=dict)
    #: The next N requests answer this status (then normal again).
    fail_next: int = 0
    fail_status: int = 500
    delay_s: float = 0.0

    def of(self, kind: str) -> list[Received]:
        return [r for r in self.received if r.kind == kind]

    async def _maybe_fail(self) -> web.Response | None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"error": "injected"}, status=self.fail_status)
        return None

    async def webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if (failed := await self._maybe_fail()) is not None:
            return failed
        name = request.match_info["name"]
        secret = self.secrets.get(name, "")
        ok = verify(
            secret,
            request.headers.get(TIMESTAMP_HEADER, ""),
            raw,
            request.headers.get(SIGNATURE_HEADER, ""),
        )
        self.received.append(
            Received("webhook", request.path, dict(request.headers), json.loads(raw), ok)
        )
        if not ok:
            return web.json_response({"error": "bad signature"}, status=401)
        return web.json_response({"ok": True})

    async def telegram(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TELEGRAM_TOKEN:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        data = await request.json()
        if (failed := await self._maybe_fail()) is not None:
            return failed
        if not isinstance(data.get("chat_id"), str | int) or not isinstance(data.get("text"), str):
            return web.json_response(
                {"ok": False, "error_code": 400, "description": "Bad Request: text is empty"},
                status=400,
            )
        self.received.append(Received("telegram", request.path, dict(request.headers), data))
        return web.json_response(
            {"ok": True, "result": {"message_id": len(self.received), "text": data["text"]}}
        )

    async def zalo(self, request: web.Request) -> web.Response:
        data = await request.json()
        if request.headers.get("access_token") != ZALO_TOKEN:
            return web.json_response({"error": -216, "message": "Access token is invalid"})
        if (failed := await self._maybe_fail()) is not None:
            return failed
        user = (data.get("recipient") or {}).get("user_id")
        text = (data.get("message") or {}).get("text")
        if not user or not isinstance(text, str) or len(text) > 2000:
            return web.json_response({"error": -201, "message": "Parameter is invalid"})
        self.received.append(Received("zalo", request.path, dict(request.headers), data))
        return web.json_response(
            {"error": 0, "message": "Success", "data": {"message_id": f"m{len(self.received)}"}}
        )


@asynccontextmanager
async def http_receivers() -> AsyncIterator[HttpReceivers]:
    rec = HttpReceivers()
    app = web.Application()
    app.router.add_post("/hook/{name}", rec.webhook)
    app.router.add_post("/bot{token}/sendMessage", rec.telegram)
    app.router.add_post("/v3.0/oa/message/cs", rec.zalo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.base_url = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        await runner.cleanup()


def delivery_ids(received: list[Received]) -> list[str]:
    return [r.headers.get(DELIVERY_HEADER, "") for r in received]
