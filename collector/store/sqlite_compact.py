"""Compaction of redundant heartbeats (``collector.compaction``) on SQLite and
PostgreSQL: load a device's rows since its mark, plan, drop, keep the ranges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from collector.compaction import StoredReport, plan
from collector.store.base import CompactionResult
from collector.store.sqlite_base import _chunks, _qmarks, _SQLiteBase

#: Devices compacted per write transaction (ingest goes on between them).
_DEVICES_PER_TX = 200

_COLS = (
    "seq, ts, received_at, kind, obs_kind, prompt, broken, cause, time_estimated,"
    " rssi_dbm, rsrp_dbm, rsrq_db, sinr_db, csq, payload, run_until"
)


class _Says(msgspec.Struct):
    """The parts of a stored state report the planner compares."""

    heartbeat: bool = False
    faults: list[dict[str, Any]] = msgspec.field(default_factory=list)


_decode_says = msgspec.json.Decoder(_Says).decode


def _report_of(r: Any) -> StoredReport:
    heartbeat = False
    faults: tuple[str, ...] = ()
    if r["kind"] == "state" and r["payload"] is not None:
        try:
            says = _decode_says(bytes(r["payload"]))
        except msgspec.DecodeError:  # validated on the way in; never expected
            says = None
        if says is not None:
            heartbeat = says.heartbeat
            faults = tuple(sorted(str(f.get("code")) for f in says.faults))
    no_signal = all(r[c] is None for c in ("rssi_dbm", "rsrp_dbm", "rsrq_db", "sinr_db", "csq"))
    return StoredReport(
        seq=int(r["seq"]),
        ts=float(r["ts"]),
        received_at=float(r["received_at"]),
        obs_kind=r["obs_kind"],
        prompt=bool(r["prompt"]),
        broken=bool(r["broken"]),
        cause=r["cause"],
        droppable=(
            heartbeat
            and no_signal
            and bool(r["prompt"])
            and not r["time_estimated"]
            and int(r["seq"]) >= 0
        ),
        faults=faults,
        run_until=None if r["run_until"] is None else float(r["run_until"]),
    )


class CompactRole(_SQLiteBase):
    """``IngestStore.compact_raw`` and the dedupe against compacted seqs."""

    async def compact_raw(self, horizon: float) -> CompactionResult:
        async with self._read() as db:
            async with db.execute("SELECT ts FROM compaction_marks WHERE device_id = '*'") as cur:
                row = await cur.fetchone()
            since = float(row["ts"]) if row is not None else 0.0
            if since >= horizon:
                return CompactionResult(0, 0, 0)
            async with db.execute(
                "SELECT DISTINCT device_id FROM messages WHERE received_at >= ? AND received_at < ?"
                " ORDER BY device_id",
                (since, horizon),
            ) as cur:
                devices = [r["device_id"] for r in await cur.fetchall()]
        dropped = spans = 0
        for chunk in _chunks(devices, _DEVICES_PER_TX):
            d, s = await self._compact_devices(chunk, horizon)
            dropped += d
            spans += s
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO compaction_marks (device_id, ts, seq) VALUES ('*', ?, 0)"
                " ON CONFLICT(device_id) DO UPDATE SET ts = excluded.ts",
                (horizon,),
            )
        return CompactionResult(len(devices), dropped, spans)

    async def _compact_devices(self, devices: Sequence[str], horizon: float) -> tuple[int, int]:
        dropped = new_spans = 0
        async with self._tx() as db:
            marks: dict[str, Any] = {}
            async with db.execute(
                "SELECT device_id, ts, seq, span_hi FROM compaction_marks"
                f" WHERE device_id IN ({_qmarks(len(devices))})",
                tuple(devices),
            ) as cur:
                for r in await cur.fetchall():
                    marks[r["device_id"]] = r
            for device in devices:
                m = marks.get(device)
                ts0, seq0 = (float(m["ts"]), int(m["seq"])) if m is not None else (-1e18, -(2**62))
                async with db.execute(
                    f"SELECT {_COLS} FROM messages WHERE device_id = ?"
                    " AND (ts > ? OR (ts = ? AND seq >= ?)) AND ts < ? ORDER BY ts, seq",
                    (device, ts0, ts0, seq0, horizon),
                ) as cur:
                    rows = [_report_of(r) for r in await cur.fetchall()]
                async with db.execute(
                    f"SELECT {_COLS} FROM messages WHERE device_id = ? AND ts >= ?"
                    " ORDER BY ts, seq LIMIT 1",
                    (device, horizon),
                ) as cur:
                    rows += [_report_of(r) for r in await cur.fetchall()]
                p = plan(rows, horizon=horizon)
                if p.drop:
                    await db.executemany(
                        "DELETE FROM messages WHERE device_id = ? AND seq = ?",
                        [(device, s) for s in p.drop],
                    )
                if p.run_until:
                    await db.executemany(
                        "UPDATE messages SET run_until = ? WHERE device_id = ? AND seq = ?",
                        [(u, device, s) for s, u in p.run_until.items()],
                    )
                span_hi = None if m is None or m["span_hi"] is None else int(m["span_hi"])
                new_spans += await self._save_spans(db, device, p.spans, span_hi, rows)
                if p.spans:
                    span_hi = max(span_hi or p.spans[-1][1], p.spans[-1][1])
                if p.mark is not None:
                    await db.execute(
                        "INSERT INTO compaction_marks (device_id, ts, seq, span_hi)"
                        " VALUES (?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET"
                        " ts = excluded.ts, seq = excluded.seq, span_hi = excluded.span_hi",
                        (device, p.mark[0], p.mark[1], span_hi),
                    )
                dropped += len(p.drop)
        return dropped, new_spans

    async def _save_spans(
        self,
        db: Any,
        device: str,
        spans: Sequence[tuple[int, int]],
        span_hi: int | None,
        rows: Sequence[StoredReport],
    ) -> int:
        """Store the dropped ranges, the first one joined to the device's last
        range when they meet. Returns how many rows were added."""
        if not spans:
            return 0
        received = {r.seq: r.received_at for r in rows}

        def until(lo: int, hi: int) -> float:
            return max(received[s] for s in range(lo, hi + 1) if s in received)

        todo = list(spans)
        if span_hi is not None and todo[0][0] == span_hi + 1:
            lo, hi = todo.pop(0)
            await db.execute(
                f"UPDATE seq_spans SET hi = ?, received_until = {self.greatest}(received_until, ?)"
                " WHERE device_id = ? AND hi = ?",
                (hi, until(lo, hi), device, span_hi),
            )
        if todo:
            await db.executemany(
                "INSERT INTO seq_spans (device_id, lo, hi, received_until) VALUES (?,?,?,?)",
                [(device, lo, hi, until(lo, hi)) for lo, hi in todo],
            )
        return len(todo)

    async def _compacted(self, db: Any, keys: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """The (device, seq) among ``keys`` that compaction dropped (duplicates)."""
        devices = sorted({d for d, _ in keys})
        span_hi: dict[str, int] = {}
        for chunk in _chunks(devices):
            async with db.execute(
                "SELECT device_id, span_hi FROM compaction_marks WHERE span_hi IS NOT NULL"
                f" AND device_id IN ({_qmarks(len(chunk))})",
                tuple(chunk),
            ) as cur:
                for r in await cur.fetchall():
                    span_hi[r["device_id"]] = int(r["span_hi"])
        out: set[tuple[str, int]] = set()
        for device, seq in keys:
            hi = span_hi.get(device)
            if hi is None or seq > hi:
                continue
            async with db.execute(
                "SELECT hi FROM seq_spans WHERE device_id = ? AND lo <= ? ORDER BY lo DESC LIMIT 1",
                (device, seq),
            ) as cur:
                r = await cur.fetchone()
            if r is not None and int(r["hi"]) >= seq:
                out.add((device, seq))
        return out

    async def _spanned_seqs(self, device_id: str) -> list[int]:
        rows = await self._all(
            "SELECT lo, hi FROM seq_spans WHERE device_id = ? ORDER BY lo", (device_id,)
        )
        return [s for r in rows for s in range(int(r["lo"]), int(r["hi"]) + 1)]

    async def _spanned_count(self) -> int:
        rows = await self._all("SELECT coalesce(sum(hi - lo + 1), 0) AS n FROM seq_spans")
        return int(rows[0]["n"])
