"""Several broker addresses: ``[broker] urls`` in the config, and an agent that moves
to the other node when its node dies (two real Mosquittos, the agent's own uplink)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import load_config, parse_config
from edge_agent.errors import ConfigError
from edge_agent.outbox import Outbox, Priority
from edge_agent.uplink import Uplink, start_index
from fleet_protocol import Command, Kind, StateReport
from tests.collector.conftest import state
from tests.edge_agent.agent_support import Seen, collecting, write_config
from tests.support.mosquitto import Broker

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "agent.example.toml"
DEVICE = "dev-001"


def _cfg(**broker: Any) -> dict[str, Any]:
    return {"device": {"id": DEVICE}, "broker": broker}


def test_urls_lists_several_nodes_and_url_stays_valid() -> None:
    cfg = parse_config(_cfg(urls=["mqtts://a.example:8883", "mqtts://b.example"]))
    assert cfg.broker.addresses == ("mqtts://a.example:8883", "mqtts://b.example")
    assert cfg.broker.tls and (cfg.broker.host, cfg.broker.port) == ("a.example", 8883)
    one = parse_config(_cfg(url="mqtt://127.0.0.1:1884"))
    assert one.broker.addresses == ("mqtt://127.0.0.1:1884",)
    assert (one.broker.host, one.broker.port, one.broker.tls) == ("127.0.0.1", 1884, False)


BAD_BROKER = [
    ({}, "broker.url", "required"),
    ({"urls": []}, "broker.url", "required"),
    ({"url": "mqtt://a", "urls": ["mqtt://b"]}, "broker.urls", "not both"),
    ({"urls": ["mqtt://a", "http://b"]}, "broker.urls[1]", "must be mqtt://"),
    ({"urls": ["mqtt://a", "mqtt://b:99999"]}, "broker.urls[1]", "bad port"),
    ({"urls": ["mqtts://a", "mqtt://b"]}, "broker.urls[1]", "every address"),
    ({"urls": ["mqtt://a", "mqtt://a:1883"]}, "broker.urls[1]", "same broker as broker.urls[0]"),
    ({"urls": "mqtt://a"}, "broker.urls", "expected a list"),
    ({"urls": ["mqtt://a", 7]}, "broker.urls[1]", "expected a string"),
    ({"url": "mqtt://a", "backoff_max_s": 0}, "broker.backoff_max_s", "positive"),
]


@pytest.mark.parametrize(("broker", "field", "reason"), BAD_BROKER)
def test_bad_broker_addresses_name_the_field(
    broker: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_cfg(**broker))
    assert err.value.field == field
    assert reason in err.value.reason


def test_certificates_need_mqtts_on_every_address(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    with pytest.raises(ConfigError) as err:
        parse_config(_cfg(urls=["mqtt://a", "mqtt://b"], ca_file=str(ca)))
    assert err.value.field == "broker.urls"


def test_example_documents_the_backoff_defaults_and_its_urls_line_parses() -> None:
    text = EXAMPLE.read_text()
    example = tomllib.loads(text)["broker"]
    defaults = parse_config(_cfg(url="mqtts://x")).broker
    for key in ("backoff_base_s", "backoff_max_s", "refused_backoff_max_s"):
        assert example[key] == getattr(defaults, key), key
    line = next(ln for ln in text.splitlines() if ln.lstrip("# ").startswith("urls = "))
    urls = tomllib.loads(line.lstrip("# "))["urls"]
    assert len(parse_config(_cfg(urls=urls)).broker.addresses) == 2


# --- moving to the other node ----------------------------------------------------


async def _no_command(_cmd: Command) -> None:
    return None


async def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _seqs_on(seen: Seen) -> set[int]:
    return {m.seq for m in seen.messages if isinstance(m, StateReport)}


@contextlib.asynccontextmanager
async def _running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(uplink.run(), name="uplink")
    try:
        yield task
    finally:
        uplink.stop()
        try:
            async with asyncio.timeout(10):
                await task
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.mark.integration
async def test_the_agent_moves_to_the_next_node_when_its_node_dies(tmp_path: Path) -> None:
    a, b = Broker(tmp_path / "a"), Broker(tmp_path / "b")
    a.start()
    try:
        b.start()
        try:
            await _moves_over(tmp_path, a, b)
        finally:
            b.stop()
    finally:
        a.stop()


async def _moves_over(tmp_path: Path, a: Broker, b: Broker) -> None:
    b.add_user(DEVICE)
    # This device starts at start_index(DEVICE, 2): put A there, so it connects to A first.
    urls = [a.url, b.url] if start_index(DEVICE, 2) == 0 else [b.url, a.url]
    cfg = load_config(write_config(tmp_path, a, DEVICE, broker={"url": "", "urls": urls}))
    box = await Outbox.open(cfg.outbox.path, device=DEVICE, max_bytes=cfg.outbox.max_bytes)
    uplink = Uplink(cfg, box, _no_command)

    async def emit(count: int) -> set[int]:
        out = set()
        for _ in range(count):
            item = await box.put(
                Kind.STATE, lambda seq: state(DEVICE, seq, commune="xa-01"), Priority.REPORT
            )
            assert item is not None
            out.add(item.seq)
        return out

    try:
        async with collecting(a) as on_a, collecting(b) as on_b, _running(uplink):
            before = await emit(5)
            await on_a.wait_for(lambda s: before <= _seqs_on(s), what="the first batch on A")
            assert uplink.connected and uplink.endpoint == f"{a.host}:{a.port}"
            assert uplink.connects == 1
            await _until(lambda: box.depth == 0, "the outbox drained to A")

            a.kill9()
            after = await emit(20)
            await on_b.wait_for(lambda s: after <= _seqs_on(s), what="the outbox drained on B")
            assert uplink.connected and uplink.endpoint == f"{b.host}:{b.port}"
            assert uplink.connects == 2
            await _until(lambda: box.depth == 0, "the outbox empty once on B")
            assert not _seqs_on(on_b) & before  # A had them: nothing was sent twice
            assert uplink.dialer.failures == 0  # the session on B got going
    finally:
        await box.aclose()
