"""Stream probe: is the broadcast stream being received?

Two independent checks, either or both configured:

- the stream URL (http/https): a GET over plain asyncio streams (the agent
  must not import aiohttp), following up to 3 redirects; the stream counts as
  reachable when the server answers 2xx and ``min_bytes`` of audio arrive
  within the timeout;
- the local player's state file: JSON (``{"receiving": true}`` or
  ``{"state": "playing", "source": "..."}``) or a bare state word. ``playing``,
  ``idle``, ``standby`` and ``stopped`` are fine (a commune station is silent
  between scheduled bulletins); any other state, or a file not updated within
  ``max_age_s``, means the player is not receiving.

The reading's ``since`` is when the current receiving/not-receiving spell
began; ``detail`` says what failed (``HTTP 404 from http://...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from firmware_shims.readings import StreamReading
from fleet_protocol import StreamState

log = logging.getLogger(__name__)

PLAYER_OK_STATES = frozenset({"playing", "idle", "standby", "stopped"})
_MAX_HEADER_BYTES = 16 * 1024
_MAX_REDIRECTS = 3


class StreamCheckFailed(Exception):
    """One check failed; the message is the reading's ``detail``."""


async def check_url(url: str, *, min_bytes: int, timeout_s: float) -> str:
    """GET ``url`` and read ``min_bytes`` of body; returns a short OK note.

    Raises StreamCheckFailed with a message naming the URL. The whole check,
    redirects included, is bounded by ``timeout_s``.
    """
    try:
        async with asyncio.timeout(timeout_s):
            for _ in range(_MAX_REDIRECTS + 1):
                location = await _get_once(url, min_bytes)
                if location is None:
                    return f"{min_bytes} bytes from {url}"
                url = urljoin(url, location)
            raise StreamCheckFailed(f"too many redirects from {url}")
    except TimeoutError:
        raise StreamCheckFailed(f"{url}: no stream data in {timeout_s:g} s") from None


async def _get_once(url: str, min_bytes: int) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StreamCheckFailed(f"unsupported stream URL {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        reader, writer = await asyncio.open_connection(
            parts.hostname, port, ssl=ssl.create_default_context() if tls else None, limit=65536
        )
    except (OSError, ssl.SSLError) as exc:
        raise StreamCheckFailed(f"{url}: cannot connect: {exc.strerror or exc}") from None
    try:
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: loa-agent\r\n"
            "Icy-MetaData: 0\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise StreamCheckFailed(f"{url}: response header too long") from None
        except asyncio.IncompleteReadError:
            raise StreamCheckFailed(f"{url}: connection closed before a response") from None
        if len(head) > _MAX_HEADER_BYTES:
            raise StreamCheckFailed(f"{url}: response header too long")
        lines = head.decode("latin-1").split("\r\n")
        status_parts = lines[0].split(" ", 2)
        # Shoutcast v1 answers "ICY 200 OK".
        if len(status_parts) < 2 or not status_parts[1].isdigit():
            raise StreamCheckFailed(f"{url}: not an HTTP response: {lines[0][:60]!r}")
        status = int(status_parts[1])
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if ":" in line)
        }
        if status in (301, 302, 303, 307, 308) and "location" in headers:
            return headers["location"]
        if not 200 <= status < 300:
            raise StreamCheckFailed(f"HTTP {status} from {url}")
        got = 0
        while got < min_bytes:
            chunk = await reader.read(min_bytes - got)
            if not chunk:
                raise StreamCheckFailed(f"{url}: stream ended after {got} bytes")
            got += len(chunk)
        return None
    except (ConnectionError, OSError) as exc:
        raise StreamCheckFailed(f"{url}: {exc.strerror or exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


def read_player_state(path: Path, *, max_age_s: float, now: float) -> tuple[bool, str, str | None]:
    """(receiving, detail, source) from the player's state file; never raises."""
    try:
        age = now - path.stat().st_mtime
        text = path.read_text(encoding="utf-8", errors="replace")[:4096].strip()
    except OSError as exc:
        return False, f"player state {path}: {exc.strerror or exc}", None
    if age > max_age_s:
        return False, f"player state {path} not updated for {age:.0f} s", None
    source: str | None = None
    state: str
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        src = data.get("source")
        source = src[:200] if isinstance(src, str) else None
        if isinstance(data.get("receiving"), bool):
            ok = bool(data["receiving"])
            return ok, "player receiving" if ok else "player: not receiving", source
        state = str(data.get("state", "")).strip().lower()
    else:
        state = text.split()[0].lower() if text else ""
    if state in PLAYER_OK_STATES:
        return True, f"player {state}", source
    return False, f"player: {state or 'empty state file'}", source


class StreamProbe:
    """``Probe[StreamReading]`` for the stream URL and/or the player's state file."""

    name = "stream"

    def __init__(
        self,
        *,
        url: str = "",
        min_bytes: int = 1024,
        timeout_s: float = 15.0,
        player_state_file: Path | None = None,
        player_state_max_age_s: float = 180.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not url and player_state_file is None:
            raise ValueError("StreamProbe needs a url and/or a player_state_file")
        self.url = url
        self.min_bytes = min_bytes
        self.timeout_s = timeout_s
        self.player_state_file = player_state_file
        self.player_state_max_age_s = player_state_max_age_s
        self.clock = clock
        self._receiving: bool | None = None
        self._since: float | None = None

    async def read(self) -> StreamReading:
        ts = self.clock()
        problems: list[str] = []
        source: str | None = self.url or None
        if self.player_state_file is not None:
            ok, detail, player_source = read_player_state(
                self.player_state_file, max_age_s=self.player_state_max_age_s, now=time.time()
            )
            source = player_source or source
            if not ok:
                problems.append(detail)
        if self.url:
            try:
                await check_url(self.url, min_bytes=self.min_bytes, timeout_s=self.timeout_s)
            except StreamCheckFailed as exc:
                problems.append(str(exc))
        receiving = not problems
        if receiving != self._receiving:
            if receiving and self._receiving is not None:
                log.info("stream: receiving again (%s)", source)
            elif not receiving:
                log.warning("stream: not received: %s", "; ".join(problems))
            self._receiving, self._since = receiving, ts
        return StreamReading(
            ts=ts,
            state=StreamState(
                receiving=receiving,
                since=self._since,
                source=source[:512] if source else None,
                detail="; ".join(problems)[:512] or None,
            ),
        )

    async def aclose(self) -> None:
        return None


__all__ = ["PLAYER_OK_STATES", "StreamCheckFailed", "StreamProbe", "check_url", "read_player_state"]
