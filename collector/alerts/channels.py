"""Channels: email (SMTP + STARTTLS), generic webhook, Telegram Bot API, Zalo OA message API.

Each sender has one method, ``send(delivery)``, that returns when the far end
has accepted the message and raises :class:`ChannelError` otherwise (with
``permanent=True`` when retrying cannot help: a refused address, a chat that
does not exist, a bad token). Base URLs are settings, so tests send to local
receivers that speak the same request shapes.

Every request carries the delivery's idempotency key (email ``Message-ID``,
webhook ``X-Loa-Delivery``), so a receiver can drop the repeat that an
at-least-once queue may produce after a crash.

Request shapes:

- Telegram: ``POST {base}/bot{token}/sendMessage`` with JSON ``{"chat_id",
  "text", "disable_web_page_preview"}``; the answer is ``{"ok": true,
  "result": {...}}`` or ``{"ok": false, "error_code", "description",
  "parameters": {"retry_after"}}``.
- Zalo OA (v3 customer-service message): ``POST {base}/v3.0/oa/message/cs``
  with header ``access_token`` and JSON ``{"recipient": {"user_id"},
  "message": {"text"}}``; the answer (HTTP 200 either way) is ``{"error": 0,
  "message": "Success", "data": {"message_id"}}`` or a non-zero ``error``.
- Webhook: ``POST {url}`` with the JSON payload; headers ``X-Loa-Delivery``
  (idempotency key), ``X-Loa-Timestamp`` (UNIX seconds) and
  ``X-Loa-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the
  recipient's secret>``. Any 2xx is success; 4xx but 408/429 is permanent.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import aiosmtplib

from collector.alerts.render import TELEGRAM_MAX, ZALO_MAX, shorten
from collector.alerts.settings import (
    EmailSettings,
    TelegramSettings,
    WebhookSettings,
    ZaloSettings,
)
from collector.store.alerts import Delivery

SIGNATURE_HEADER = "X-Loa-Signature"
TIMESTAMP_HEADER = "X-Loa-Timestamp"
DELIVERY_HEADER = "X-Loa-Delivery"
XLSX_TYPE = ("application", "vnd.openxmlformats-officedocument.spreadsheetml.sheet")


class ChannelError(Exception):
    """A send that did not go through; the message names the channel and endpoint."""

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class Sender(Protocol):
    async def send(self, delivery: Delivery) -> None: ...


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver checks (constant-time)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def webhook_url_problem(url: str, *, require_https: bool) -> str | None:
    """Why ``url`` cannot be a webhook (None when it can)."""
    if len(url) > 500:
        return "at most 500 characters"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an http(s):// URL"
    if parts.username or parts.password:
        return "must not carry a user name or password"
    if require_https and parts.scheme != "https":
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback:
            return "must be https:// (plain http only to this machine)"
    return None


# -- email ---------------------------------------------------------------------------------


class EmailSender:
    """SMTP submission with STARTTLS (aiosmtplib), one connection per message."""

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings
        self._password = settings.resolved_password()
        self._tls: ssl.SSLContext | None = None
        if settings.starttls:
            self._tls = ssl.create_default_context(cafile=settings.ca_file or None)

    def message(self, d: Delivery) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.settings.sender
        msg["To"] = d.address
        msg["Subject"] = d.subject
        msg["Date"] = formatdate(localtime=False)
        # The idempotency key as Message-ID: mail systems drop duplicates by it.
        msg["Message-ID"] = f"<{d.idem_key}@loa-fleet>"
        msg["X-Loa-Delivery"] = d.idem_key
        msg.set_content(d.body)
        if d.attachment is not None:
            msg.add_attachment(
                d.attachment,
                maintype=XLSX_TYPE[0],
                subtype=XLSX_TYPE[1],
                filename=d.attachment_name or "report.xlsx",
            )
        return msg

    async def send(self, delivery: Delivery) -> None:
        s = self.settings
        where = f"email to {delivery.address} via {s.host}:{s.port}"
        try:
            await aiosmtplib.send(
                self.message(delivery),
                hostname=s.host,
                port=s.port,
                start_tls=s.starttls,
                tls_context=self._tls,
                username=s.username or None,
                password=self._password or None,
                timeout=s.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise ChannelError(f"{where}: recipient refused: {exc}", permanent=True) from exc
        except aiosmtplib.SMTPResponseException as exc:
            permanent = 500 <= exc.code < 600 and exc.code not in (552,)  # 552: mailbox full
            raise ChannelError(
                f"{where}: server said {exc.code} {exc.message}", permanent=permanent
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise ChannelError(f"{where}: {type(exc).__name__}: {exc}") from exc


def email_address_problem(addr: str) -> str | None:
    if len(addr) > 254 or addr.count("@") != 1 or any(c in addr for c in " \r\n<>,;\"'()"):
        return "expected one address such as ten@xa.gov.vn"
    local, domain = addr.split("@")
    if not local or "." not in domain or domain.startswith(".") or domain.endswith("."):
        return "expected one address such as ten@xa.gov.vn"
    return None


def display_from(name: str, addr: str) -> str:
    return formataddr((name, addr))


# -- HTTP channels -------------------------------------------------------------------------


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
    where: str,
) -> tuple[int, bytes, dict[str, str]]:
    try:
        async with session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            return resp.status, await resp.content.read(64 * 1024), dict(resp.headers)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ChannelError(f"{where}: {type(exc).__name__}: {exc}") from exc


def _retry_after(headers: dict[str, str]) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


def _status_error(where: str, status: int, headers: dict[str, str], text: str) -> ChannelError:
    permanent = 400 <= status < 500 and status not in (408, 425, 429)
    return ChannelError(
        f"{where}: HTTP {status} {text[:200]}",
        permanent=permanent,
        retry_after=_retry_after(headers) if status in (429, 503) else None,
    )


class WebhookSender:
    """JSON POST signed with HMAC-SHA256 of the recipient's secret."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: WebhookSettings,
        secret_of: Callable[[str], Awaitable[str]],
    ) -> None:
        self.session = session
        self.settings = settings
        self.secret_of = secret_of

    async def send(self, delivery: Delivery) -> None:
        where = f"webhook {urlsplit(delivery.address).netloc}"
        problem = webhook_url_problem(delivery.address, require_https=self.settings.require_https)
        if problem:
            raise ChannelError(f"{where}: {problem}", permanent=True)
        body = json.dumps(delivery.payload, ensure_ascii=False, sort_keys=True).encode()
        stamp = str(int(time.time()))
        headers = {DELIVERY_HEADER: delivery.idem_key, TIMESTAMP_HEADER: stamp}
        secret = await self.secret_of(delivery.recipient)
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, stamp, body)
        status, text, resp_headers = await _post(
            self.session, delivery.address, body, headers, self.settings.timeout_s, where
        )
        if not 200 <= status < 300:
            raise _status_error(where, status, resp_headers, text.decode("utf-8", "replace"))


class TelegramSender:
    """Bot API ``sendMessage``."""

    def __init__(self, session: aiohttp.ClientSession, settings: TelegramSettings) -> None:
        self.session = session
        self.settings = settings
        self._token = settings.resolved_token()

    async def send(self, delivery: Delivery) -> None:
        # The token is part of the URL: never put the URL in an error message.
        where = f"telegram chat {delivery.address}"
        url = f"{self.settings.base_url.rstrip('/')}/bot{self._token}/sendMessage"
        body = json.dumps(
            {
                "chat_id": delivery.address,
                "text": shorten(delivery.body, TELEGRAM_MAX, delivery.lang),
                "disable_web_page_preview": True,
            },
            ensure_ascii=False,
        ).encode()
        status, raw, headers = await _post(
            self.session, url, body, {}, self.settings.timeout_s, where
        )
        data: Any
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if status == 200 and isinstance(data, dict) and data.get("ok") is True:
            return
        desc = data.get("description", "") if isinstance(data, dict) else ""
        err = _status_error(where, status, headers, str(desc) or raw.decode("utf-8", "replace"))
        params = data.get("parameters") if isinstance(data, dict) else None
        if isinstance(params, dict) and isinstance(params.get("retry_after"), int | float):
            err.retry_after = float(params["retry_after"])
        if status in (401, 404):
            err.permanent = True  # a bad token or chat: retrying cannot help
        raise err


#: Zalo error codes that retrying cannot fix (invalid user, not a follower,
#: bad access token, message too long...). Others (quota, server) are retried.
ZALO_PERMANENT = frozenset({-201, -210, -211, -213, -216, -230, -240})


class ZaloSender:
    """Official Account v3 customer-service text message."""

    def __init__(self, session: aiohttp.ClientSession, settings: ZaloSettings) -> None:
        self.session = session
        self.settings = settings
        self._token = settings.resolved_token()

    async def send(self, delivery: Delivery) -> None:
        where = f"zalo user {delivery.address}"
        url = f"{self.settings.base_url.rstrip('/')}/v3.0/oa/message/cs"
        body = json.dumps(
            {
                "recipient": {"user_id": delivery.address},
                "message": {"text": shorten(delivery.body, ZALO_MAX, delivery.lang)},
            },
            ensure_ascii=False,
        ).encode()
        status, raw, headers = await _post(
            self.session, url, body, {"access_token": self._token}, self.settings.timeout_s, where
        )
        if status != 200:
            raise _status_error(where, status, headers, raw.decode("utf-8", "replace"))
        try:
            data = json.loads(raw)
        except ValueError:
            raise ChannelError(f"{where}: answer is not JSON") from None
        if not isinstance(data, dict) or "error" not in data:
            raise ChannelError(f"{where}: unexpected answer {raw[:100]!r}")
        code = data.get("error")
        if code == 0:
            return
        raise ChannelError(
            f"{where}: error {code} {str(data.get('message', ''))[:200]}",
            permanent=code in ZALO_PERMANENT,
        )
