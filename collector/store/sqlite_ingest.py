"""``IngestStore`` on SQLite: load, step (``collector.fleet_step``), save."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import aiosqlite

from collector.clocktruth import date_message, install_floor, learned_offset
from collector.fleet import INITIAL, FleetState, Observation, ObsKind, Transition, fold
from collector.fleet_step import (
    DeviceRecord,
    DeviceStep,
    fuller_report,
    merged_report,
    reconcile_faults,
    refold_start,
    silence,
    step_device,
)
from collector.store.base import (
    BatchResult,
    IncomingMessage,
)
from collector.store.sqlite_base import (
    _RECORD_COLS,
    _chunks,
    _obs_of,
    _qmarks,
    _record_of,
    _redated,
    _state_cols,
    _state_of,
    payload_digest,
)
from collector.store.sqlite_compact import CompactRole


def _newest_cell(msgs: Sequence[IncomingMessage]) -> tuple[str | None, float | None]:
    """The cell named by the newest (event time) of ``msgs`` that names one, and its time."""
    named = [m for m in msgs if m.cell is not None]
    if not named:
        return None, None
    m = max(named, key=lambda m: (m.ts, m.seq))
    return m.cell, m.ts


class IngestRole(CompactRole):
    """``IngestStore`` on SQLite: load, step (``collector.fleet_step``), save;
    compaction of redundant heartbeats (``CompactRole``)."""

    async def write_batch(
        self,
        messages: Sequence[IncomingMessage],
        *,
        late_after_s: float,
        max_future_s: float = 300.0,
    ) -> BatchResult:
        if not messages:
            return BatchResult(0, 0)
        async with self._tx(ingest=True) as db:
            # Dating, the dedupe and the inserts touch no device's state: on
            # PostgreSQL they run beside other instances' writes of the same
            # devices; the devices are locked only for the read-modify-write of
            # their state below (``_lock_devices``).
            dated, dating, learned = await self._date(
                db, messages, late_after_s=late_after_s, max_future_s=max_future_s
            )
            rows = [
                (
                    m.device_id,
                    m.seq,
                    m.kind,
                    m.ts,
                    m.received_at,
                    None if m.observation is None else str(m.observation.kind),
                    1 if m.observation is None or m.observation.prompt else 0,
                    1 if m.observation is not None and m.observation.broken else 0,
                    None
                    if m.observation is None or m.observation.cause is None
                    else str(m.observation.cause),
                    *(m.signal or (None, None, None, None, None)),
                    m.payload,
                    m.digest if m.digest is not None else payload_digest(m.payload),
                    m.boot_id,
                    m.mono,
                    int(est),
                )
                for m, est in dated
            ]
            # Seqs compaction dropped (collector.compaction) are duplicates too.
            gone = await self._compacted(db, [(m.device_id, m.seq) for m, _est in dated])
            if gone:
                rows = [r for r in rows if (r[0], r[1]) not in gone]
            fresh = await self._insert_messages(db, rows)
            new: list[IncomingMessage] = []
            dups: list[IncomingMessage] = []
            for m, _est in dated:
                if (m.device_id, m.seq) in fresh:
                    fresh.discard((m.device_id, m.seq))
                    new.append(m)
                else:
                    dups.append(m)
            conflicts = await self._replay_conflicts(db, dups)
            # Only devices with news change: a batch of replays waits for no one.
            await self._lock_devices(db, {m.device_id for m in new} | {d for d, _b in learned})
            refold_from, restamped = await self._restamp(
                db, learned, late_after_s=late_after_s, max_future_s=max_future_s
            )
            if restamped:
                dating["restamped"] = restamped
            changed = await self._apply(db, new, refold_from)
        return BatchResult(
            len(new),
            len(messages) - len(new),
            tuple(changed),
            conflicts=conflicts,
            dating=tuple(sorted(dating.items())),
        )

    async def _floors(self, db: aiosqlite.Connection, devices: Sequence[str]) -> dict[str, float]:
        floors: dict[str, float] = {}
        for chunk in _chunks(devices):
            async with db.execute(
                "SELECT device_id, install_date FROM inventory WHERE install_date != ''"
                f" AND device_id IN ({_qmarks(len(chunk))})",
                chunk,
            ) as cur:
                for r in await cur.fetchall():
                    floor = install_floor(r["install_date"])
                    if floor is not None:
                        floors[r["device_id"]] = floor
        return floors

    async def _date(
        self,
        db: aiosqlite.Connection,
        messages: Sequence[IncomingMessage],
        *,
        late_after_s: float,
        max_future_s: float,
    ) -> tuple[list[tuple[IncomingMessage, bool]], dict[str, int], dict[tuple[str, str], float]]:
        """Date every message (boot offsets, install dates); learn the batch's new offsets."""
        devices = sorted({m.device_id for m in messages})
        floors = await self._floors(db, devices)
        boots = sorted({(m.device_id, m.boot_id) for m in messages if m.boot_id is not None})
        offsets: dict[tuple[str, str], float] = {}
        # One read per chunk, not per boot: a coalesced live batch names hundreds of devices.
        for chunk in _chunks(boots, 400):
            async with db.execute(
                'SELECT device_id, boot_id, "offset" FROM boot_clocks WHERE (device_id, boot_id)'
                f" IN (VALUES {', '.join(['(?,?)'] * len(chunk))})",
                [x for key in chunk for x in key],
            ) as cur:
                for r in await cur.fetchall():
                    offsets[(r["device_id"], r["boot_id"])] = float(r["offset"])
        learned: dict[tuple[str, str], float] = {}
        # Synchronised messages first: they may teach the offset that dates the others.
        for m in messages:
            if m.device_ts is None or m.boot_id is None or (m.device_id, m.boot_id) in offsets:
                continue
            dated = date_message(
                ts=m.device_ts,
                received_at=m.received_at,
                clock_synced=m.clock_synced,
                mono=m.mono,
                offset=None,
                floor=floors.get(m.device_id),
                max_future_s=max_future_s,
            )
            off = learned_offset(
                ts=m.device_ts,
                clock_synced=m.clock_synced,
                boot_id=m.boot_id,
                mono=m.mono,
                dated=dated,
            )
            if off is not None:
                offsets[(m.device_id, m.boot_id)] = learned[(m.device_id, m.boot_id)] = off
        if learned:
            now = time.time()
            await db.executemany(
                'INSERT OR IGNORE INTO boot_clocks (device_id, boot_id, "offset", learned_at)'
                " VALUES (?,?,?,?)",
                [(d, b, off, now) for (d, b), off in learned.items()],
            )
        out: list[tuple[IncomingMessage, bool]] = []
        dating: dict[str, int] = defaultdict(int)
        for m in messages:
            if m.device_ts is None:
                out.append((m, False))
                continue
            dated = date_message(
                ts=m.device_ts,
                received_at=m.received_at,
                clock_synced=m.clock_synced,
                mono=m.mono,
                offset=None if m.boot_id is None else offsets.get((m.device_id, m.boot_id)),
                floor=floors.get(m.device_id),
                max_future_s=max_future_s,
            )
            dating[str(dated.how)] += 1
            out.append((_redated(m, dated.ts, late_after_s), dated.how.estimated))
        return out, dating, learned

    async def _restamp(
        self,
        db: aiosqlite.Connection,
        learned: dict[tuple[str, str], float],
        *,
        late_after_s: float,
        max_future_s: float,
    ) -> tuple[dict[str, tuple[float, int]], int]:
        """Re-date the stored estimated messages of boots whose offset was just learned.

        Returns, per device, the earliest observation key touched (old or new
        time), from which its history must be re-derived, and how many were re-dated.
        """
        refold_from: dict[str, tuple[float, int]] = {}
        count = 0
        floors = await self._floors(db, sorted({d for d, _ in learned}))
        for (device, boot), offset in learned.items():
            async with db.execute(
                "SELECT seq, ts, received_at, mono, obs_kind FROM messages WHERE device_id = ?"
                " AND boot_id = ? AND time_estimated = 1 AND mono IS NOT NULL",
                (device, boot),
            ) as cur:
                rows = list(await cur.fetchall())
            updates: list[tuple[Any, ...]] = []
            shifts: list[tuple[Any, ...]] = []
            for r in rows:
                seq, old_ts, received_at = r["seq"], r["ts"], r["received_at"]
                mono, obs_kind = r["mono"], r["obs_kind"]
                dated = date_message(
                    ts=float(mono) + offset,
                    received_at=float(received_at),
                    clock_synced=None,
                    mono=None,
                    offset=None,
                    floor=floors.get(device),
                    max_future_s=max_future_s,
                )
                if dated.how.estimated:
                    continue
                late = obs_kind == ObsKind.REPORT and received_at - dated.ts > late_after_s
                prompt = 0 if late else 1
                updates.append((dated.ts, prompt, device, seq))
                shifts.append((dated.ts - float(old_ts), dated.ts, device, seq))
                key = min((float(old_ts), int(seq)), (dated.ts, int(seq)))
                refold_from[device] = min(refold_from.get(device, key), key)
            if updates:
                await db.executemany(
                    "UPDATE messages SET ts = ?, prompt = ?, time_estimated = 0"
                    " WHERE device_id = ? AND seq = ?",
                    updates,
                )
                await db.executemany(
                    "UPDATE events SET ts = ? WHERE device_id = ? AND seq = ?",
                    [(ts, d, s) for ts, _p, d, s in updates],
                )
                # The fault episodes these reports opened or closed move with them
                # (``_shifted_since``: since was stamped by the same wrong clock).
                await db.executemany(
                    f"UPDATE faults SET since = {self.least}(since + ?, ?)"
                    " WHERE device_id = ? AND opened_seq = ?",
                    shifts,
                )
                await db.executemany(
                    "UPDATE faults SET cleared_at = ? WHERE device_id = ? AND cleared_seq = ?",
                    [(ts, d, s) for _delta, ts, d, s in shifts],
                )
                count += len(updates)
        return refold_from, count

    async def _replay_conflicts(
        self, db: aiosqlite.Connection, dups: Sequence[IncomingMessage]
    ) -> tuple[tuple[str, int], ...]:
        """Duplicates whose content differs from the stored message of that (device, seq)."""
        by_device: dict[str, list[IncomingMessage]] = defaultdict(list)
        for m in dups:
            by_device[m.device_id].append(m)
        out: list[tuple[str, int]] = []
        for device, msgs in sorted(by_device.items()):
            stored: dict[int, bytes] = {}
            for chunk in _chunks(sorted({m.seq for m in msgs})):
                async with db.execute(
                    "SELECT seq, digest, payload FROM messages WHERE device_id = ?"
                    f" AND seq IN ({_qmarks(len(chunk))})",
                    (device, *chunk),
                ) as cur:
                    for r in await cur.fetchall():
                        digest, payload = r["digest"], r["payload"]
                        # Rows stored before digests existed: hash the kept payload.
                        stored[int(r["seq"])] = (
                            bytes(digest) if digest is not None else payload_digest(payload or b"")
                        )
            for m in msgs:
                digest = m.digest if m.digest is not None else payload_digest(m.payload)
                if m.seq in stored and stored[m.seq] != digest:
                    out.append((device, m.seq))
        return tuple(out)

    async def _stored_reports(
        self, db: aiosqlite.Connection, devices: Sequence[str]
    ) -> dict[str, bytes | None]:
        """The kept full report of each of ``devices`` (one read per chunk, not per
        device: a coalesced live batch names hundreds of devices)."""
        out: dict[str, bytes | None] = {}
        for chunk in _chunks(sorted(devices)):
            async with db.execute(
                "SELECT device_id, last_report FROM devices"
                f" WHERE device_id IN ({_qmarks(len(chunk))})",
                chunk,
            ) as cur:
                for r in await cur.fetchall():
                    out[r["device_id"]] = r["last_report"]
        return out

    async def _apply(
        self,
        db: aiosqlite.Connection,
        new: Sequence[IncomingMessage],
        refold_from: dict[str, tuple[float, int]] | None = None,
    ) -> list[str]:
        """Load, step (``collector.fleet_step``: the rules), save: the new messages of a
        batch into devices, transitions, events and fault episodes.

        ``refold_from`` forces a device's history to be re-derived from that key
        (its stored messages were re-dated).
        """
        refold_from = refold_from or {}
        by_device: dict[str, list[IncomingMessage]] = defaultdict(list)
        for m in new:
            by_device[m.device_id].append(m)
        if not by_device:
            return []
        current: dict[str, DeviceRecord] = {}
        ids = sorted(by_device)
        for chunk in _chunks(ids):
            async with db.execute(
                f"SELECT {_RECORD_COLS} FROM devices WHERE device_id IN ({_qmarks(len(chunk))})",
                chunk,
            ) as cur:
                for r in await cur.fetchall():
                    rec = _record_of(r)
                    current[rec.device_id] = rec
        steps: dict[str, DeviceStep] = {}
        for device, msgs in by_device.items():
            cur_rec = current.get(device)
            start = refold_start(cur_rec, msgs, refold_from.get(device))
            history = await self._stored_history(db, device, start) if start is not None else None
            steps[device] = step_device(device, cur_rec, msgs, history=history, replace_from=start)
        for device, st in steps.items():
            if st.replace_from is not None:
                ts0, seq0 = st.replace_from
                await db.execute(
                    "DELETE FROM transitions WHERE device_id = ?"
                    " AND (ts > ? OR (ts = ? AND seq >= ?))",
                    (device, ts0, ts0, seq0),
                )
                # What is kept from the history at or after ts0 is stale even when the
                # refold brings back fewer (or later) transitions than it deleted.
                await self._history_changed(db, ts0)
        # A heartbeat merges into the fullest report before it: in the batch, or kept.
        bases: dict[str, bytes | None] = {}
        for device, st in steps.items():
            if st.report is not None and st.report.heartbeat:
                bases[device] = fuller_report(st.report, by_device[device])
        kept = await self._stored_reports(db, [d for d, b in bases.items() if b is None])
        device_rows: list[tuple[Any, ...]] = []
        for device, st in steps.items():
            rec = st.record
            last_report: bytes | None = None
            if st.report is not None:
                base = bases.get(device)
                if base is None and st.report.heartbeat:
                    base = kept.get(device)
                last_report = merged_report(st.report, base)
            device_rows.append(
                (
                    device,
                    rec.commune_code,
                    *_state_cols(rec.state),
                    None if rec.obs_key is None else rec.obs_key[0],
                    None if rec.obs_key is None else rec.obs_key[1],
                    None if rec.last_key is None else rec.last_key[0],
                    None if rec.last_key is None else rec.last_key[1],
                    rec.last_seen,
                    rec.first_seen,
                    rec.report_ts,
                    last_report,
                    *_newest_cell(by_device[device]),
                    1 if st.report is not None else 0,
                )
            )
        await db.executemany(
            """
            INSERT INTO devices (device_id, commune_code, online, has_diag, diag_broken,
                diag_cause, status, cause, status_since, obs_ts, obs_seq, last_ts, last_seq,
                last_seen, first_seen, report_ts, last_report, cell, cell_ts)
            VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
            ON CONFLICT(device_id) DO UPDATE SET
                commune_code=excluded.commune_code, online=excluded.online,
                has_diag=excluded.has_diag, diag_broken=excluded.diag_broken,
                diag_cause=excluded.diag_cause, status=excluded.status, cause=excluded.cause,
                status_since=excluded.status_since, obs_ts=excluded.obs_ts,
                obs_seq=excluded.obs_seq, last_ts=excluded.last_ts, last_seq=excluded.last_seq,
                last_seen=excluded.last_seen, report_ts=excluded.report_ts,
                last_report=CASE WHEN ?20 = 1 THEN excluded.last_report
                    ELSE devices.last_report END,
                cell=CASE WHEN excluded.cell_ts IS NOT NULL AND (devices.cell_ts IS NULL
                    OR excluded.cell_ts >= devices.cell_ts) THEN excluded.cell
                    ELSE devices.cell END,
                cell_ts=CASE WHEN excluded.cell_ts IS NOT NULL AND (devices.cell_ts IS NULL
                    OR excluded.cell_ts >= devices.cell_ts) THEN excluded.cell_ts
                    ELSE devices.cell_ts END
            """,
            device_rows,
        )
        await self._save_transitions(
            db, [(device, tr) for device, st in steps.items() for tr in st.transitions]
        )
        await self._save_faults(
            db, {d: st.fault_reports for d, st in steps.items() if st.fault_reports}
        )
        events = [(d, *e) for d, st in steps.items() for e in st.events]
        if events:
            await db.executemany(
                "INSERT OR IGNORE INTO events (device_id, seq, ts, type, fault_code, action,"
                " detail) VALUES (?,?,?,?,?,?,?)",
                events,
            )
        await self._touch(db, steps, shown=[d for d, st in steps.items() if st.events])
        return [d for d, st in steps.items() if st.changed]

    async def _save_transitions(
        self, db: aiosqlite.Connection, rows: Sequence[tuple[str, Transition]]
    ) -> None:
        if rows:  # the kept counts of moments at or after the earliest change are stale
            await self._history_changed(db, min(tr.ts for _, tr in rows))
        await db.executemany(
            "INSERT OR REPLACE INTO transitions (device_id, ts, seq, online, has_diag,"
            " diag_broken, diag_cause, status, cause, status_since, via)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [
                (device, tr.ts, tr.seq, *_state_cols(tr.state), tr.via and str(tr.via))
                for device, tr in rows
            ],
        )

    async def _stored_history(
        self, db: aiosqlite.Connection, device: str, start: tuple[float, int]
    ) -> tuple[FleetState, list[Observation]]:
        """(state before ``start``, stored observations from it on) for a refold.

        The state is the last stored transition before ``start``; the
        observations are the stored messages (which already include this batch).
        """
        ts0, seq0 = start
        async with db.execute(
            "SELECT online, has_diag, diag_broken, diag_cause, status_since FROM transitions"
            " WHERE device_id = ? AND (ts < ? OR (ts = ? AND seq < ?))"
            " ORDER BY ts DESC, seq DESC LIMIT 1",
            (device, ts0, ts0, seq0),
        ) as cur:
            row = await cur.fetchone()
        base = INITIAL if row is None else _state_of(row)
        async with db.execute(
            "SELECT ts, seq, obs_kind, prompt, broken, cause FROM messages"
            " WHERE device_id = ? AND obs_kind IS NOT NULL AND (ts > ? OR (ts = ? AND seq >= ?))"
            " ORDER BY ts, seq",
            (device, ts0, ts0, seq0),
        ) as cur:
            observations = [_obs_of(r) for r in await cur.fetchall()]
        return base, observations

    async def _save_faults(
        self, db: aiosqlite.Connection, reports: dict[str, Sequence[IncomingMessage]]
    ) -> None:
        """Fault episodes (``fleet_step.reconcile_faults``) against the stored open ones."""
        devices = sorted(reports)
        open_now: dict[str, set[str]] = defaultdict(set)
        for chunk in _chunks(devices):
            async with db.execute(
                "SELECT device_id, code FROM faults WHERE cleared_at IS NULL"
                f" AND device_id IN ({_qmarks(len(chunk))})",
                chunk,
            ) as cur:
                for r in await cur.fetchall():
                    open_now[r["device_id"]].add(r["code"])
        clears: list[tuple[Any, ...]] = []
        inserts: list[tuple[Any, ...]] = []
        for device in devices:
            changes = reconcile_faults(open_now[device], reports[device])
            clears += [(c.at, c.seq, device, c.code) for c in changes.cleared]
            for o in changes.opened:
                row = (o.code, o.since, o.cause, o.severity, o.evidence, o.cleared_at)
                inserts.append((device, *row, o.opened_seq, o.cleared_seq))
        if clears:
            await db.executemany(
                "UPDATE faults SET cleared_at = ?, cleared_seq = ? WHERE device_id = ?"
                " AND code = ? AND cleared_at IS NULL",
                clears,
            )
        if inserts:
            await db.executemany(
                "INSERT INTO faults (device_id, code, since, cause, severity, evidence,"
                " cleared_at, opened_seq, cleared_seq) VALUES (?,?,?,?,?,?,?,?,?)",
                inserts,
            )

    async def mark_silent_offline(self, now: float, grace_s: float) -> list[str]:
        marked: list[str] = []
        async with self._tx() as db:
            async with db.execute(
                "SELECT device_id, online, has_diag, diag_broken, diag_cause, status_since,"
                " last_ts, obs_ts, obs_seq FROM devices WHERE online = 1 AND last_seen < ?",
                (now - grace_s,),
            ) as cur:
                rows = list(await cur.fetchall())
            for r in rows:
                device = r["device_id"]
                obs_key = None if r["obs_ts"] is None else (float(r["obs_ts"]), int(r["obs_seq"]))
                obs = silence(float(r["last_ts"]), obs_key, now=now, grace_s=grace_s)
                await db.execute(
                    "INSERT OR IGNORE INTO messages (device_id, seq, kind, ts, received_at,"
                    " obs_kind) VALUES (?,?,?,?,?,?)",
                    (device, obs.seq, "silent", obs.ts, now, str(ObsKind.SILENT)),
                )
                state, trs = fold(_state_of(r), [obs])
                await self._save_transitions(db, [(device, tr) for tr in trs])
                await db.execute(
                    "UPDATE devices SET online = 0, status = ?, cause = ?, status_since = ?,"
                    " obs_ts = ?, obs_seq = ? WHERE device_id = ?",
                    (
                        str(state.status),
                        state.cause and str(state.cause),
                        state.status_since,
                        obs.ts,
                        obs.seq,
                        device,
                    ),
                )
                marked.append(device)
            await self._touch(db, marked)
        return marked

    async def purge_raw(self, older_than: float) -> int:
        async with self._tx() as db:
            cur = await db.execute("DELETE FROM messages WHERE received_at < ?", (older_than,))
            n = cur.rowcount
            await cur.close()
            await db.execute("DELETE FROM boot_clocks WHERE learned_at < ?", (older_than,))
            await db.execute("DELETE FROM seq_spans WHERE received_until < ?", (older_than,))
        return int(n)

    async def message_count(self) -> int:
        """Wire messages stored: those kept and those compaction dropped."""
        rows = await self._all("SELECT count(*) AS n FROM messages WHERE seq >= 0")
        return int(rows[0]["n"]) + await self._spanned_count()

    async def stored_seqs(self, device_id: str) -> list[int]:
        """Wire seqs stored for ``device_id``, ascending (tests, diagnostics); the
        seqs compaction dropped count as stored (they are duplicates)."""
        rows = await self._all(
            "SELECT seq FROM messages WHERE device_id = ? AND seq >= 0 ORDER BY seq",
            (device_id,),
        )
        return sorted([int(r["seq"]) for r in rows] + await self._spanned_seqs(device_id))
