"""Stream probe over real sockets: a tiny Icecast-like server in the test, and player files."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.probes.stream import StreamProbe, read_player_state


@pytest.fixture
async def station() -> AsyncIterator[str]:
    """http://127.0.0.1:PORT with /live (audio), /moved (302), /gone (404), /stall, /short."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ")[1].decode()
            if path == "/live":
                writer.write(b"ICY 200 OK\r\nContent-Type: audio/mpeg\r\n\r\n" + b"\xff" * 4096)
            elif path == "/moved":
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: /live\r\n\r\n")
            elif path == "/stall":
                writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(5)
            elif path == "/short":
                writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"\xff" * 10)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize(
    ("path", "receiving", "detail"),
    [
        ("/live", True, None),
        ("/moved", True, None),
        ("/gone", False, "HTTP 404 from"),
        ("/stall", False, "no stream data in 0.5 s"),
        ("/short", False, "stream ended after 10 bytes"),
    ],
)
async def test_url_check(station: str, path: str, receiving: bool, detail: str | None) -> None:
    probe = StreamProbe(url=station + path, min_bytes=1024, timeout_s=0.5)
    r = await probe.read()
    assert r.state.receiving is receiving
    if detail:
        assert r.state.detail and detail in r.state.detail
    assert r.state.since == r.ts


async def test_unreachable_server_names_the_url() -> None:
    probe = StreamProbe(url="http://127.0.0.1:9/x", timeout_s=1.0)
    r = await probe.read()
    assert not r.state.receiving and r.state.detail and "127.0.0.1:9/x" in r.state.detail


async def test_since_marks_the_start_of_the_spell(station: str) -> None:
    probe = StreamProbe(url=station + "/live", timeout_s=1.0)
    a = await probe.read()
    b = await probe.read()
    assert a.state.since == b.state.since == a.ts
    probe.url = station + "/gone"
    c = await probe.read()
    assert c.state.since == c.ts and not c.state.receiving


@pytest.mark.parametrize(
    ("content", "receiving", "source"),
    [
        ('{"state": "playing", "source": "VOV1"}', True, "VOV1"),
        ('{"receiving": false}', False, None),
        ('{"state": "idle"}', True, None),
        ("error no signal", False, None),
        ("stopped\n", True, None),
        ("", False, None),
        ("\x00\xff garbage", False, None),
    ],
)
def test_player_state_file(
    tmp_path: Path, content: str, receiving: bool, source: str | None
) -> None:
    f = tmp_path / "state"
    f.write_text(content)
    ok, detail, src = read_player_state(f, max_age_s=60, now=time.time())
    assert (ok, src) == (receiving, source), detail


def test_stale_or_missing_player_file_is_not_receiving(tmp_path: Path) -> None:
    f = tmp_path / "state"
    f.write_text(json.dumps({"state": "playing"}))
    old = time.time() - 600
    os.utime(f, (old, old))
    ok, detail, _ = read_player_state(f, max_age_s=60, now=time.time())
    assert not ok and "not updated for" in detail
    ok, detail, _ = read_player_state(tmp_path / "none", max_age_s=60, now=time.time())
    assert not ok and "none" in detail
