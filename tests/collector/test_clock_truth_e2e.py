"""Clock truth end to end: an agent whose clock starts three years behind and syncs later.

The agent is the real ``Agent`` (probes, diagnosis, outbox, uplink) on the
production broker config, with its wall clock and the kernel's sync status
injected (the way a controller without an RTC boots); the collector is the
real ingest on SQLite. Its reports buffered while the clock was wrong must end
up stored at their true times.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from collector.store.sqlite import SQLiteRepository
from edge_agent.agent import Agent
from edge_agent.clock import Stamper, boot_seconds
from edge_agent.config import load_config
from tests.collector.conftest import ingest_running, make_config, wait_for
from tests.edge_agent.agent_support import write_config
from tests.support.mosquitto import Broker

pytestmark = pytest.mark.integration

DEV = "dev-201"
THREE_YEARS = 3 * 365 * 86400.0


async def stored_rows(
    repo: SQLiteRepository,
) -> list[tuple[int, str, float, float, float | None, int]]:
    rows = await repo._all(
        "SELECT seq, kind, ts, received_at, mono, time_estimated FROM messages"
        " WHERE device_id = ? ORDER BY seq",
        (DEV,),
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_reports_buffered_with_a_wrong_clock_are_stored_at_their_true_times(
    broker: Broker, tmp_path: Path, repo: SQLiteRepository
) -> None:
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    cfg = load_config(
        write_config(
            agent_dir,
            broker,
            DEV,
            reports={"heartbeat_s": 0.4, "full_report_s": 30.0},
        )
    )
    # The controller boots after a power cut: no RTC, so the wall clock is years
    # behind and the kernel says "not synchronised"; no 4G data yet either.
    skew = [THREE_YEARS]
    synced = [False]
    agent = Agent(
        cfg,
        clock=lambda: time.time() - skew[0],
        stamper=Stamper(synced=lambda: synced[0], boot="5f3ca2f0", mono=boot_seconds),
        shutdown_timeout=5.0,
    )
    broker.stop()
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop), name="agent")
    ccfg = make_config(broker, tmp_path, ingest={"ack_interval_s": 0.2})
    try:

        async def buffered() -> bool:
            return agent.outbox is not None and agent.outbox.depth >= 5

        await wait_for(buffered, what="reports buffered while offline")
        # The data link comes up; the clock is still wrong: the collector can only
        # date what arrives by when it arrived (estimated), never three years back.
        broker.start()
        async with ingest_running(ccfg, repo) as (ingestor, _):

            async def delivered() -> bool:
                return ingestor.stats.dating["unsynced"] >= 5

            await wait_for(delivered, timeout=20, what="unsynchronised reports stored")
            early = await stored_rows(repo)
            assert all(est == 1 for *_, est in early)
            assert all(abs(ts - received) < 1e-6 for _, _, ts, received, _, _ in early)
            # NTP syncs over 4G: the wall clock steps forward three years and the
            # kernel clears STA_UNSYNC. The next report teaches the boot's offset.
            skew[0] = 0.0
            synced[0] = True

            async def redated() -> bool:
                rows = await stored_rows(repo)
                return len(rows) > len(early) and not any(est for *_, est in rows)

            await wait_for(redated, timeout=20, what="the boot's messages re-dated")
            assert ingestor.stats.dating["restamped"] >= len(early)
            offset = time.time() - boot_seconds()  # the true wall - mono of this boot
            for seq, kind, ts, received, mono, _ in await stored_rows(repo):
                if mono is None:
                    # Synchronised and the boot's offset confirmed known: no stamp needed.
                    assert seq > max(r[0] for r in early)
                    assert ts == pytest.approx(received, abs=2.0), (seq, kind)
                    continue
                # Its true time: when the agent made it (mono), on the synced clock.
                assert ts == pytest.approx(mono + offset, abs=0.5), (seq, kind)
                assert ts <= received + 0.5
            # The status history starts now, not three years ago.
            history = await repo.status_history(DEV)
            assert history and min(h.ts for h in history) > time.time() - 600
            stop.set()
            await asyncio.wait_for(run, 20)
    finally:
        stop.set()
        if not run.done():
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run


async def test_fault_episodes_move_with_the_reports_that_opened_and_closed_them(
    tmp_path: Path, repo: SQLiteRepository
) -> None:
    """A fault raised and cleared while the clock was three years behind: its episode
    is first dated by arrival (never three years back), then, once the boot's offset
    is learned, at the true times of the reports that opened and closed it."""
    import msgspec

    from collector.ingest import Ingestor
    from collector.metrics import IngestStats
    from fleet_protocol import Fault, FaultCode, Kind, encode, topic
    from tests.collector.conftest import state

    cfg = make_config(None, tmp_path)
    ingestor = Ingestor(repo, cfg.ingest, IngestStats())
    boot, offset = "9a1b2c3d", time.time() - 7200.0  # this boot began two hours ago
    fault = Fault.of(FaultCode.STREAM_LOST, offset + 600.0 - THREE_YEARS, "test")

    async def send(seq: int, mono: float, *, synced: bool, faults: tuple[Fault, ...]) -> None:
        wrong = 0.0 if synced else THREE_YEARS
        msg = msgspec.structs.replace(
            state(DEV, seq, offset + mono - wrong),
            boot_id=boot,
            mono=mono,
            clock_synced=synced,
            faults=faults,
        )
        # All of it arrives now, after the link came back.
        incoming = ingestor.prepare(topic(DEV, Kind.STATE), encode(msg), received_at=time.time())
        assert incoming is not None
        await repo.write_batch([incoming], late_after_s=cfg.ingest.late_after_s)

    await send(1, 300.0, synced=False, faults=())
    await send(2, 605.0, synced=False, faults=(fault,))  # raised at mono 600
    await send(3, 1800.0, synced=False, faults=())  # cleared by mono 1800
    (episode,) = await repo.list_faults(DEV)
    assert episode.since > time.time() - 60 and episode.cleared_at is not None
    assert episode.cleared_at > time.time() - 60  # by arrival: estimated, not 2023
    await send(4, 7000.0, synced=True, faults=())  # NTP synced: the offset is learned
    (episode,) = await repo.list_faults(DEV)
    assert episode.since == pytest.approx(offset + 600.0, abs=0.01)
    assert episode.cleared_at == pytest.approx(offset + 1800.0, abs=0.01)


async def test_a_learned_offset_dates_later_batches_of_that_boot_only(
    tmp_path: Path, repo: SQLiteRepository
) -> None:
    """Once a boot's offset is learned, a later batch's unsynchronised messages of that
    boot are dated by it (read back from the store), those of another boot by arrival;
    one batch naming many devices' boots reads each device's offsets."""
    import msgspec

    from collector.ingest import Ingestor
    from collector.metrics import IngestStats
    from fleet_protocol import Kind, encode, topic
    from tests.collector.conftest import state

    cfg = make_config(None, tmp_path)
    ingestor = Ingestor(repo, cfg.ingest, IngestStats())
    now = time.time()
    offsets = {f"dev-3{i:02d}": now - 7200.0 - 60.0 * i for i in range(30)}

    def msg(dev: str, seq: int, boot: str, mono: float, *, synced: bool) -> object:
        wrong = 0.0 if synced else THREE_YEARS
        m = ingestor.prepare(
            topic(dev, Kind.STATE),
            encode(
                msgspec.structs.replace(
                    state(dev, seq, offsets[dev] + mono - wrong),
                    boot_id=boot,
                    mono=mono,
                    clock_synced=synced,
                )
            ),
            received_at=time.time(),
        )
        assert m is not None
        return m

    # Batch 1: every device's boot "aaaa" is synchronised: the offsets are learned.
    await repo.write_batch(
        [msg(d, 1, "aaaa", 300.0, synced=True) for d in offsets],  # type: ignore[misc]
        late_after_s=cfg.ingest.late_after_s,
    )
    # Batch 2: the clocks are wrong again (same boot "aaaa", and a new boot "bbbb").
    later = [msg(d, 2, "aaaa", 900.0, synced=False) for d in offsets]
    later += [msg(d, 3, "bbbb", 60.0, synced=False) for d in offsets]
    await repo.write_batch(later, late_after_s=cfg.ingest.late_after_s)  # type: ignore[arg-type]
    for dev, offset in offsets.items():
        rows = {
            int(r["seq"]): (float(r["ts"]), int(r["time_estimated"]))
            for r in await repo._all(
                "SELECT seq, ts, time_estimated FROM messages WHERE device_id = ?", (dev,)
            )
        }
        assert rows[2] == (pytest.approx(offset + 900.0, abs=0.01), 0), dev
        assert rows[3][1] == 1 and rows[3][0] > now - 60, dev  # boot "bbbb": by arrival
