"""Fixtures for deployment tests: a fleet CA and Mosquitto with the production TLS listeners."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from collector.tls import CertificateAuthority, install_broker_files
from tests.support.mosquitto import COLLECTOR_USER, Broker, free_port


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "emulated: installs and runs the agent in arm64/armhf chroots under qemu-user",
    )


@pytest.fixture(scope="session")
def fleet_ca() -> CertificateAuthority:
    """The test fleet's CA (one per session: key generation is the slow part)."""
    return CertificateAuthority.create("loa-fleet test CA")


@pytest.fixture
def tls_broker(tmp_path: Path, fleet_ca: CertificateAuthority) -> Iterator[Broker]:
    """Mosquitto from the production config with both TLS listeners (password and certificate).

    The server certificate is issued by ``fleet_ca`` for 127.0.0.1 and localhost.
    """
    broker = Broker(tmp_path / "broker", tls_port=free_port(), cert_port=free_port())
    install_broker_files(fleet_ca, broker.layout.config_dir, ["127.0.0.1", "localhost"])
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def reloader(broker: Broker) -> Callable[[], None]:
    """What provisioning calls after changing the password file: SIGHUP, as systemctl reload."""

    def reload() -> None:
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)

    return reload


def client_context(
    ca: CertificateAuthority, cert: tuple[Path, Path] | None = None
) -> ssl.SSLContext:
    """A client TLS context trusting ``ca`` and presenting ``cert`` (cert, key) if given."""
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


@dataclass
class Watcher:
    """The collector's view: topics of every message seen on ``loa/v1/#``."""

    topics: list[str]
    arrived: asyncio.Event

    async def wait_for(self, topic: str, timeout: float = 10.0) -> list[str]:
        """Wait until ``topic`` was seen; return every topic seen until then."""
        async with asyncio.timeout(timeout):
            while topic not in self.topics:
                self.arrived.clear()
                await self.arrived.wait()
        return list(self.topics)


@contextlib.asynccontextmanager
async def watching(broker: Broker) -> AsyncIterator[Watcher]:
    """Subscribe as the collector (plain local listener) for the duration of the block."""
    watcher = Watcher([], asyncio.Event())
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=COLLECTOR_USER,
        password=broker.password(COLLECTOR_USER),
    ) as c:
        await c.subscribe("loa/v1/#", qos=1)

        async def pump() -> None:
            async for m in c.messages:
                watcher.topics.append(str(m.topic))
                watcher.arrived.set()

        task = asyncio.create_task(pump(), name="watcher")
        try:
            yield watcher
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
