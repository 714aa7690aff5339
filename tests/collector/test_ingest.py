"""MQTT ingest against a real Mosquitto: storage, dedupe, hostile input, acknowledgements."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from collector.model import Status
from collector.store.sqlite import SQLiteRepository
from fleet_protocol import (
    PROTOCOL_VERSION,
    B2Cause,
    Fault,
    FaultCode,
    Kind,
    StateReport,
    encode,
    topic,
)
from tests.collector.conftest import (
    event,
    ingest_running,
    make_config,
    presence,
    publish,
    state,
    wait_for,
)
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration


async def test_state_and_fault_transitions(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    cfg = make_config(broker, tmp_path)
    t0 = time.time() - 30
    async with ingest_running(cfg, repo):
        await publish(
            broker,
            "dev-001",
            state("dev-001", 1, t0),
            state("dev-001", 2, t0 + 10, faults=(FaultCode.SIM_ABSENT,)),
            event("dev-001", 3, FaultCode.SIM_ABSENT),
            state("dev-001", 4, t0 + 20, faults=(FaultCode.WEAK_SIGNAL,)),
        )

        async def stored() -> bool:
            return len(await repo.stored_seqs("dev-001")) == 4

        await wait_for(stored, what="4 messages stored")
    history = await repo.status_history("dev-001")
    assert [(h.status, h.cause) for h in history] == [
        (Status.WORKING, None),
        (Status.BROKEN, B2Cause.SIM_FAILURE),
        (Status.WORKING, None),
    ]
    assert [h.ts for h in history] == pytest.approx([t0, t0 + 10, t0 + 20])
    dev = await repo.get_device("dev-001")
    assert dev.status is Status.WORKING and dev.online and dev.commune_code == "xa-01"
    faults = await repo.list_faults("dev-001")
    assert {(f.code, f.cleared_at is None) for f in faults} == {
        ("sim_absent", False),
        ("weak_signal", True),
    }
    events = await repo.list_events(device_id="dev-001")
    assert [(e.type, e.fault_code) for e in events] == [("fault_raised", "sim_absent")]
    assert [p.rssi_dbm for p in await repo.signal_history("dev-001")] == [-75.0] * 3


async def test_duplicates_dropped_out_of_order_kept(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    cfg = make_config(broker, tmp_path)
    t0 = time.time() - 100
    async with ingest_running(cfg, repo) as (ingestor, _):
        msgs = [state("dev-002", s, t0 + s) for s in (5, 6, 7)]
        # seq 1..3 arrive after 5..7 (a drained backlog), and 6 and 2 twice.
        backlog = [state("dev-002", s, t0 + s) for s in (1, 2, 3)]
        await publish(broker, "dev-002", *msgs, msgs[1], *backlog, backlog[1])

        async def done() -> bool:
            return ingestor.stats.handled >= 8

        await wait_for(done, what="8 messages received")
        assert await repo.stored_seqs("dev-002") == [1, 2, 3, 5, 6, 7]
        assert ingestor.stats.duplicates == 2
        assert ingestor.stats.stored == 6


async def test_hostile_input_rejected_counted_and_still_serving(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(broker, tmp_path)
    dev = "dev-003"
    t = topic(dev, Kind.STATE)
    hostile = [
        (t, b"{not json"),
        (t, b"\xff\xfe\x00garbage"),
        (t, encode(state("dev-999", 1))),  # payload names another device
        (t, b'{"v":1,"device":"dev-003","seq":1,"ts":1.0}'),  # ts before 2000
        (t, b"x" * (70 * 1024)),  # oversize
        (t, b'{"v":1,"device":"dev-003","seq":"1; DROP TABLE messages;--","ts":1700000000}'),
        (topic(dev, Kind.EVENT), b'{"v":1,"device":"dev-003","seq":2,"ts":1700000000}'),
        (t, b'{"v":9,"device":"dev-003","seq":3,"ts":1700000000}'),
        (t, b'{"v":1,"device":"dev-003","seq":4,"ts":1700000000}' * 3),
    ]
    # SQL metacharacters and odd Unicode in every free-text string field: valid, stored verbatim.
    odd = "'; DROP TABLE devices; -- \u202e\u0000\U0001f4a9 Xã Đông\ud7ff\"\\"
    weird = state(dev, 10, commune=odd[:64])
    weird_modem = weird.modem
    assert weird_modem is not None
    import msgspec

    weird = msgspec.structs.replace(
        weird,
        modem=msgspec.structs.replace(weird_modem, operator=odd[:64], cell_id=odd[:64], tac=odd),
    )
    caplog.set_level("WARNING", logger="loa.collector.ingest")
    async with ingest_running(cfg, repo) as (ingestor, _):
        await publish(broker, dev, *hostile, *hostile, weird, state(dev, 11, commune=odd[:64]))

        async def all_seen() -> bool:
            return ingestor.stats.handled >= 2 * len(hostile) + 2

        await wait_for(all_seen, what="all messages received")
        rejected = ingestor.stats.rejected
        assert rejected == {"json": 6, "mismatch": 2, "schema": 6, "oversize": 2, "version": 2}
        assert await repo.stored_seqs(dev) == [10, 11]
        row = await repo.get_device(dev)
        assert row.status is Status.WORKING
        assert row.last_report is not None and row.last_report["seq"] == 11
        # Each (device, kind) is logged once, not once per message.
        lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
        assert len(lines) == 5, lines
        # Still serving after all that.
        await publish(broker, dev, state(dev, 12, commune=odd[:64]))

        async def stored12() -> bool:
            return 12 in await repo.stored_seqs(dev)

        await wait_for(stored12, what="a valid message after hostile ones")
    assert (await repo.list_devices(communes=frozenset({odd[:64]})))[0].device_id == dev


async def test_offline_via_last_will_and_presence(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    import aiomqtt

    from tests.collector.conftest import device_client

    cfg = make_config(broker, tmp_path)
    dev = "dev-004"
    async with ingest_running(cfg, repo):
        will = aiomqtt.Will(topic(dev, Kind.PRESENCE), encode(presence(dev, 2, False)), qos=1)
        client = device_client(broker, dev, will=will, keepalive=1)
        await client.__aenter__()
        await client.publish(topic(dev, Kind.PRESENCE), encode(presence(dev, 1, True)), qos=1)
        await client.publish(topic(dev, Kind.STATE), encode(state(dev, 3)), qos=1)

        async def online() -> bool:
            d = await repo.get_device(dev) if await repo.stored_seqs(dev) else None
            return d is not None and d.status is Status.WORKING

        await wait_for(online, what="device working")
        # Drop the TCP link without DISCONNECT: the broker publishes the will.
        sock = client._client.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)

        async def offline() -> bool:
            d = await repo.get_device(dev)
            return d.status is Status.BROKEN and not d.online

        await wait_for(offline, what="offline after last will")
    d = await repo.get_device(dev)
    assert d.cause is B2Cause.UNKNOWN
    history = await repo.status_history(dev)
    assert [h.state.online for h in history][-1] is False


async def test_locked_database_delays_ingest_but_loses_nothing(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    cfg = make_config(broker, tmp_path)
    repo = await SQLiteRepository.open(cfg.db.path, synchronous="normal", busy_timeout_s=0.2)
    await repo.migrate()
    blocker = sqlite3.connect(cfg.db.path, isolation_level=None)
    try:
        async with ingest_running(cfg, repo) as (ingestor, _):
            blocker.execute("BEGIN EXCLUSIVE")
            await publish(broker, "dev-005", *(state("dev-005", s) for s in (1, 2, 3)))

            async def failing() -> bool:
                return any("cannot store" in r.getMessage() for r in caplog.records)

            await wait_for(failing, what="store failure logged")
            blocker.execute("ROLLBACK")

            async def stored() -> bool:
                return await repo.stored_seqs("dev-005") == [1, 2, 3]

            await wait_for(stored, timeout=40, what="messages stored after the lock")
            assert ingestor.stats.stored == 3
    finally:
        blocker.close()
        await repo.close()


async def test_shared_subscription_group(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    cfg = make_config(broker, tmp_path, mqtt={"shared_group": "collectors"})
    async with ingest_running(cfg, repo):
        await publish(broker, "dev-006", state("dev-006", 1))

        async def stored() -> bool:
            return await repo.stored_seqs("dev-006") == [1]

        await wait_for(stored, what="message via $share/collectors")


async def test_compact_heartbeat_keeps_the_last_full_report_sections(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    cfg = make_config(broker, tmp_path)
    t0 = time.time() - 30
    heartbeat = StateReport(
        v=PROTOCOL_VERSION,
        device="dev-001",
        seq=2,
        ts=t0 + 10,
        heartbeat=True,
        outbox_depth=4,
        faults=[Fault.of(FaultCode.STREAM_LOST, t0 + 5, "no audio for 5 min")],
    )
    async with ingest_running(cfg, repo):
        await publish(broker, "dev-001", state("dev-001", 1, t0, rssi=-81.0), heartbeat)

        async def stored() -> bool:
            return len(await repo.stored_seqs("dev-001")) == 2

        await wait_for(stored, what="2 messages stored")
    dev = await repo.get_device("dev-001")
    report = dev.last_report
    assert report is not None
    # Envelope, outbox depth and faults come from the heartbeat...
    assert (report["seq"], report["heartbeat"], report["outbox_depth"]) == (2, True, 4)
    assert [f["code"] for f in report["faults"]] == ["stream_lost"]
    # ...the sections it leaves out stay those of the last full report.
    assert report["modem"]["rssi_dbm"] == -81.0
    assert report["commune"] == "xa-01"
    assert dev.status is Status.BROKEN and dev.cause is B2Cause.NO_STATION_SIGNAL


async def test_heartbeats_of_many_devices_merge_into_their_own_kept_reports(
    tmp_path: Path, repo: SQLiteRepository
) -> None:
    """Full reports in one batch, each device's compact heartbeat in a later one (as
    a coalesced live batch brings them): every heartbeat keeps its own device's
    stored sections, never another's, and one whose device has no kept report
    stands alone."""
    from collector.ingest import Ingestor
    from collector.metrics import IngestStats

    cfg = make_config(None, tmp_path)
    ingestor = Ingestor(repo, cfg.ingest, IngestStats())
    t0 = time.time() - 60
    devices = [f"dev-4{i:02d}" for i in range(40)]

    def prepared(msgs: list[StateReport]) -> list[Any]:
        now = time.time()
        out = [
            ingestor.prepare(topic(m.device, Kind.STATE), encode(m), received_at=now) for m in msgs
        ]
        assert all(m is not None for m in out)
        return out

    fulls = [state(d, 1, t0, rssi=-60.0 - i) for i, d in enumerate(devices)]
    await repo.write_batch(prepared(fulls), late_after_s=cfg.ingest.late_after_s)
    beats = [
        StateReport(v=PROTOCOL_VERSION, device=d, seq=2, ts=t0 + 10, heartbeat=True)
        for d in [*devices, "dev-499"]
    ]
    await repo.write_batch(prepared(beats), late_after_s=cfg.ingest.late_after_s)
    for i, d in enumerate(devices):
        report = (await repo.get_device(d)).last_report
        assert report is not None and (report["seq"], report["heartbeat"]) == (2, True)
        assert report["modem"]["rssi_dbm"] == -60.0 - i, d
    alone = (await repo.get_device("dev-499")).last_report
    assert alone is not None and alone["seq"] == 2 and "modem" not in alone


# --- no message can stop ingest; store confirmations; replays (issue 11) ---------------

NESTED = b'{"a":' * 1500 + b"1" + b"}" * 1500  # 9 KB; RecursionError in the decoder


async def test_deeply_nested_json_is_rejected_even_retained_and_nothing_sticks(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    from tests.collector.conftest import device_client

    cfg = make_config(broker, tmp_path)
    dev = "dev-007"
    # Retained on presence before the collector starts: a fresh session gets it first thing.
    async with device_client(broker, dev) as c:
        await c.publish(topic(dev, Kind.PRESENCE), NESTED, qos=1, retain=True)
    for run in range(2):  # the second run is the collector after a restart
        async with ingest_running(cfg, repo) as (ingestor, task):
            await publish(broker, dev, (topic(dev, Kind.STATE), NESTED), state(dev, 10 + run))

            async def stored(run: int = run) -> bool:
                return 10 + run in await repo.stored_seqs(dev)

            await wait_for(stored, what=f"a valid message after the nested ones (run {run})")
            # The retained copy again, and this run's nested state: nothing redelivered
            # from the run before (it was acknowledged), nothing stuck.
            assert ingestor.stats.rejected == {"depth": 2}
            assert not task.done()
    assert await repo.stored_seqs(dev) == [10, 11]


class BuggyRepository(SQLiteRepository):
    """The real store, with a bug that fires on one seq (a handling failure no one foresaw)."""

    async def write_batch(self, messages, **kw):  # type: ignore[no-untyped-def,override]
        if any(m.seq == 666 for m in messages):
            raise KeyError("a bug in handling seq 666")
        return await super().write_batch(messages, **kw)


async def test_a_message_that_breaks_handling_is_rejected_alone(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(broker, tmp_path)
    repo = await BuggyRepository.open(cfg.db.path, synchronous="normal")
    await repo.migrate()
    dev = "dev-008"
    try:
        for run in range(2):
            async with ingest_running(cfg, repo) as (ingestor, task):
                seqs = (665, 666, 667) if run == 0 else (668,)
                await publish(broker, dev, *(state(dev, s) for s in seqs))

                async def handled(n: int = len(seqs)) -> bool:
                    return ingestor.stats.handled >= n

                await wait_for(handled, what="the batch handled")
                assert not task.done()
                assert ingestor.stats.rejected == ({"internal": 1} if run == 0 else {})
        assert await repo.stored_seqs(dev) == [665, 667, 668]
        assert sum("seq 666" in r.getMessage() for r in caplog.records) == 1
    finally:
        await repo.close()


async def test_replay_with_other_content_is_counted_and_logged_once_per_device(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(broker, tmp_path)
    dev = "dev-009"
    t0 = time.time() - 60
    original = state(dev, 1, t0, rssi=-70.0)
    caplog.set_level("WARNING", logger="loa.collector.ingest")
    async with ingest_running(cfg, repo) as (ingestor, _):
        await publish(broker, dev, original, state(dev, 2, t0 + 1))
        await publish(
            broker,
            dev,
            original,  # a genuine re-send: same bytes, a plain duplicate
            state(dev, 1, t0, rssi=-100.0),  # same seq, other content
            state(dev, 2, t0 + 1, faults=(FaultCode.SIM_ABSENT,)),
            state(dev, 1, t0, rssi=-101.0),
        )

        async def handled() -> bool:
            return ingestor.stats.handled >= 6

        await wait_for(handled, what="all messages handled")
        assert ingestor.stats.replay_conflict == 3
        assert ingestor.stats.duplicates == 4
    lines = [r.getMessage() for r in caplog.records if "replay conflict" in r.getMessage()]
    assert len(lines) == 1 and "'dev-009'" in lines[0], lines
    # The stored message is the original.
    assert [p.rssi_dbm for p in await repo.signal_history(dev)] == [-70.0, -75.0]


async def test_stored_and_rejected_seqs_are_confirmed_to_the_device_only(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    import aiomqtt

    from fleet_protocol import decode_ack
    from tests.collector.conftest import device_client

    cfg = make_config(broker, tmp_path, ingest={"ack_interval_s": 0.2})
    dev, other = "dev-010", "dev-011"
    acks: list[tuple[str, bool, bytes]] = []

    async def listen(client: aiomqtt.Client) -> None:
        async for m in client.messages:
            assert isinstance(m.payload, bytes)
            acks.append((str(m.topic), m.retain, m.payload))

    async with ingest_running(cfg, repo), device_client(broker, dev, identifier="acks") as c:
        # A device may read its own ack topic, never another's (the broker drops the
        # subscription silently: nothing arrives).
        await c.subscribe([(topic(dev, Kind.ACK), 1), (topic(other, Kind.ACK), 1)])
        reader = asyncio.create_task(listen(c))
        try:
            bad = b'{"v":1,"device":"dev-010","seq":5,"ts":"yesterday"}'
            two = state(dev, 2)
            await publish(broker, dev, state(dev, 1), two, state(dev, 4))
            await publish(broker, dev, (topic(dev, Kind.STATE), bad), two)
            await publish(broker, other, state(other, 1))

            def confirmed() -> set[int]:
                out: set[int] = set()
                for _, _, payload in acks:
                    for a, b in decode_ack(payload, topic_device=dev).seqs():
                        out |= set(range(a, b + 1))
                return out

            async def all_confirmed() -> bool:
                return confirmed() >= {1, 2, 4, 5}

            await wait_for(all_confirmed, what="acks for seqs 1, 2, 4 and 5")
            assert {t for t, _, _ in acks} == {topic(dev, Kind.ACK)}
            rejected = set()
            for _, _, payload in acks:
                rejected |= {a for a, _ in decode_ack(payload).seqs() if a == 5}
            assert rejected == {5}
            assert any(b'"rejected":[5]' in p for _, _, p in acks)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    # Retained: a device that reconnects learns at once that this collector confirms.
    async with device_client(broker, dev, identifier="acks-again") as c:
        await c.subscribe(topic(dev, Kind.ACK), qos=1)
        async with asyncio.timeout(5):
            async for m in c.messages:
                assert m.retain
                break


async def test_a_qos0_flood_waits_at_the_broker_not_in_memory_and_loses_nothing(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """QoS 0 has no receive maximum: without flow control the collector would read
    a device's whole flood into its queue while the store is slow (the flood
    bench's 150 MiB). With it, reading pauses once ``2 x batch_size`` messages
    are queued, TCP's window fills, the broker holds the rest; all is stored."""
    import sqlite3

    from tests.collector.conftest import device_client

    n = 4000
    cfg = make_config(broker, tmp_path, ingest={"batch_size": 10})
    repo = await SQLiteRepository.open(cfg.db.path, synchronous="normal", busy_timeout_s=0.2)
    await repo.migrate()
    blocker = sqlite3.connect(cfg.db.path, isolation_level=None)
    try:
        async with ingest_running(cfg, repo) as (ingestor, _):
            blocker.execute("BEGIN EXCLUSIVE")  # a slow store: nothing can be written
            async with device_client(broker, "dev-q0") as c:
                for seq in range(1, n + 1):
                    await c.publish(topic("dev-q0", Kind.STATE), encode(state("dev-q0", seq)))

            async def paused() -> bool:
                return ingestor.stats.read_pauses >= 1 and any(
                    "cannot store" in r.getMessage() for r in caplog.records
                )

            await wait_for(paused, what="reading paused while the store fails")
            blocker.execute("ROLLBACK")

            async def stored() -> bool:
                return ingestor.stats.stored == n

            await wait_for(stored, timeout=60, what=f"all {n} messages stored")
            assert await repo.stored_seqs("dev-q0") == list(range(1, n + 1))
            # 2 x batch_size, plus at most what one 256 KiB read had already buffered
            # (without flow control: every message sent while the store was locked).
            smallest = len(encode(state("dev-q0", 1)))
            peak = ingestor.stats.queued_peak
            assert peak <= 20 + 256 * 1024 // smallest < n, (peak, ingestor.stats.read_pauses)
    finally:
        blocker.close()
        await repo.close()


async def test_a_backlog_waiting_at_reconnect_is_read_past_the_flow_control_limit(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    """The broker sends a persistent session's backlog right after CONNACK, before the
    SUBACK: pausing reads then (queue past 2 x batch_size) would never see the SUBACK,
    and ingest would hang before it ever consumed."""
    cfg = make_config(broker, tmp_path, ingest={"batch_size": 10})
    async with ingest_running(cfg, repo):
        pass  # the session exists at the broker now; the collector goes away
    await publish(broker, "dev-bl", *(state("dev-bl", s) for s in range(1, 301)))
    async with ingest_running(cfg, repo) as (ingestor, _):

        async def stored() -> bool:
            return ingestor.stats.stored == 300

        await wait_for(stored, timeout=30, what="the backlog stored")
        assert await repo.stored_seqs("dev-bl") == list(range(1, 301))
