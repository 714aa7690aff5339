"""The control server: JSON lines over a real Unix socket, hostile requests included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.control import (
    MAX_REQUEST_BYTES,
    ControlRequestError,
    ControlServer,
    request,
    request_sync,
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ControlServer]:
    srv = ControlServer(tmp_path / "run" / "control.sock")

    async def echo(req: dict[str, Any]) -> Any:
        if "text" not in req:
            raise ControlRequestError("'text' is required")
        return {"echo": req["text"]}

    async def broken(_req: dict[str, Any]) -> Any:
        raise RuntimeError("bug")

    async def busy(_req: dict[str, Any]) -> Any:
        raise ControlRequestError("modem busy", code="failed")

    srv.register("echo", echo)
    srv.register("broken", broken)
    srv.register("busy", busy)
    await srv.start()
    yield srv
    await srv.aclose()


async def _lines(path: Path, *lines: bytes) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    try:
        writer.write(b"".join(lines))
        await writer.drain()
        async with asyncio.timeout(5):
            return [await reader.readline() for _ in lines]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_ops_results_and_error_codes(server: ControlServer) -> None:
    assert await request(server.path, "echo", text="xin chào", id="a") == {
        "id": "a",
        "ok": True,
        "result": {"echo": "xin chào"},
    }
    assert (await request(server.path, "ops"))["result"] == ["broken", "busy", "echo", "ops"]
    assert (await request(server.path, "echo"))["code"] == "bad_request"
    assert (await request(server.path, "busy"))["code"] == "failed"
    assert (await request(server.path, "nope"))["code"] == "unknown_op"
    internal = await request(server.path, "broken")
    assert internal["code"] == "internal" and "bug" in internal["error"]


async def test_socket_mode_is_0660(server: ControlServer) -> None:
    assert server.path.stat().st_mode & 0o777 == 0o660


async def test_garbage_lines_get_errors_and_the_connection_keeps_serving(
    server: ControlServer,
) -> None:
    replies = await _lines(
        server.path,
        b"\xff\xfe not json\n",
        b"[1, 2]\n",
        b'{"op": 5}\n',
        b'{"op": "echo", "text": "still here"}\n',
    )
    import json

    parsed = [json.loads(r) for r in replies]
    assert [p["ok"] for p in parsed] == [False, False, False, True]
    assert parsed[-1]["result"] == {"echo": "still here"}
    assert server.bad_requests == 3


async def test_oversized_request_is_refused(server: ControlServer) -> None:
    (reply,) = await _lines(server.path, b'{"op": "echo", "text": "' + b"x" * MAX_REQUEST_BYTES)
    assert b"longer than" in reply


async def test_blocking_client(server: ControlServer) -> None:
    reply = await asyncio.to_thread(request_sync, server.path, "echo", text="hi")
    assert reply["result"] == {"echo": "hi"}


async def test_stale_socket_file_is_replaced_and_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    path.write_text("left over by a killed agent")
    srv = ControlServer(path)
    await srv.start()
    assert (await request(path, "ops"))["ok"]
    await srv.aclose()
    assert not path.exists()
