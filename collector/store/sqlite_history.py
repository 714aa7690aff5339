"""``HistoryStore`` on SQLite: the fleet as of any moment, device history, B2 snapshots."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Collection
from typing import Any

import aiosqlite
import msgspec

from collector.correlation import cell_key
from collector.fleet import FleetState, ObsKind, Transition
from collector.model import DeviceStatus, Status
from collector.store.base import (
    B2Snapshot,
    DeviceRow,
    DiagEvidence,
    EventRow,
    FaultRow,
    NotFound,
    SignalPoint,
    StatusTimeline,
    counted_seconds,
    status_at,
)
from collector.store.sqlite_base import (
    _INVENTORY_COLS,
    _ONLY_MAX,
    _cause,
    _chunks,
    _inventory_of,
    _only,
    _qmarks,
    _SQLiteBase,
    _state_of,
    counted_from,
)
from fleet_protocol import B2Cause

#: The monthly sums are kept up to the last whole ``KEEP_STEP_S`` at least
#: ``KEEP_MARGIN_S`` before the moment asked (reports still in flight, the silence
#: sweep's marks, land after it and leave them be), so a request reads only the
#: transitions of the last one to two hours.
KEEP_STEP_S = 3600.0
KEEP_MARGIN_S = 3600.0
#: Sums kept for month starts this much before the one being kept are dropped.
KEEP_MONTHS_S = 62 * 86400.0


def _cell_of(key: str | None) -> tuple[str, str] | None:
    """``LastKnown.cell`` from a kept ``cell_key``."""
    if not key:
        return None
    tac, _, ci = key.partition("/")
    return (tac, ci)


class HistoryRole(_SQLiteBase):
    """``HistoryStore`` on SQLite."""

    #: Read the state at a moment from the kept devices rows where no message is
    #: later (False: from the history for every cluster; tests compare the two).
    kept_state_reads = True

    async def statuses_as_of(
        self, t: float, *, devices: Collection[str] | None = None
    ) -> list[DeviceStatus]:
        only, only_params = _only("device_id", devices)
        only_d = _only("d.device_id", devices)[0]
        if devices is None:
            inventory = await self._kept_inventory()
        else:
            wanted = set(devices)
            inventory = [
                _inventory_of(r)
                for r in await self._all(
                    f"SELECT {_INVENTORY_COLS} FROM inventory WHERE {only}"
                    " ORDER BY position, device_id",
                    only_params,
                )
                if r["device_id"] in wanted
            ]
        async with self._read() as db:
            # The kept state (the devices row) is the state at t for every cluster
            # none of whose messages is later than t: at "now", nearly all of them.
            kept = "1 = 1" if self.kept_state_reads else "1 = 0"
            async with db.execute(
                "SELECT device_id, online, has_diag, diag_broken, diag_cause, status_since,"
                f" last_ts FROM devices d WHERE {kept} AND obs_ts <= ? AND last_ts <= ?"
                f" AND {only_d} AND EXISTS (SELECT 1 FROM transitions x"
                " WHERE x.device_id = d.device_id)",
                (t, t, *only_params),
            ) as cur:
                states: dict[str, tuple[FleetState, float | None]] = {}
                heard: dict[str, float | None] = {}
                for r in await cur.fetchall():
                    states[r["device_id"]] = (_state_of(r), None)
                    heard[r["device_id"]] = float(r["last_ts"])
            rest = [d.device_id for d in inventory if d.device_id not in states]
            # The others from their history: one probe per cluster of its latest
            # transition at or before t, and of its latest message.
            rest_only, rest_params = _only("i.device_id", rest if len(rest) < 5000 else devices)
            if rest:
                async with db.execute(
                    "SELECT tr.device_id, tr.online, tr.has_diag, tr.diag_broken,"
                    " tr.diag_cause, tr.status_since, tr.ts FROM inventory i"
                    f" CROSS JOIN transitions tr WHERE {rest_only}"
                    " AND tr.device_id = i.device_id AND tr.ts = (SELECT max(x.ts)"
                    " FROM transitions x WHERE x.device_id = i.device_id AND x.ts <= ?)"
                    " ORDER BY tr.device_id, tr.seq",
                    (*rest_params, t),
                ) as cur:
                    for r in await cur.fetchall():  # ties on ts: the highest seq, last
                        if r["device_id"] not in heard:
                            states[r["device_id"]] = (_state_of(r), r["ts"])
                async with db.execute(
                    f"""
                    SELECT i.device_id,
                           (SELECT CASE WHEN m.run_until IS NULL THEN m.ts
                                        ELSE {self.least}(m.run_until, ?) END
                            FROM messages m WHERE m.device_id = i.device_id AND m.ts <= ?
                            AND m.seq >= 0 ORDER BY m.ts DESC LIMIT 1) AS heard
                    FROM inventory i WHERE {rest_only}
                    """,
                    (t, t, *rest_params),
                ) as cur:
                    for r in await cur.fetchall():
                        heard.setdefault(r["device_id"], r["heard"])
            async with db.execute(
                "SELECT DISTINCT device_id FROM tickets WHERE started_at <= ? "
                f"AND (closed_at IS NULL OR closed_at > ?) AND {only}",
                (t, t, *only_params),
            ) as cur:
                repairing = {r["device_id"] for r in await cur.fetchall()}
            starts = await self._counted_from(db, devices)
        out: list[DeviceStatus] = []
        for d in inventory:
            found = states.get(d.device_id)
            start = starts.get(d.device_id)
            exists = start is None or start <= t
            if found is None:
                out.append(
                    DeviceStatus(
                        device_id=d.device_id,
                        commune_code=d.commune_code,
                        status=Status.BROKEN,
                        cause=B2Cause.UNKNOWN,
                        in_repair=d.device_id in repairing,
                        never_reported=True,
                        exists=exists,
                    )
                )
                continue
            state, tr_ts = found
            last = heard.get(d.device_id)
            out.append(
                DeviceStatus(
                    device_id=d.device_id,
                    commune_code=d.commune_code,
                    status=state.status,
                    cause=state.cause,
                    in_repair=state.status is Status.BROKEN and d.device_id in repairing,
                    online=state.online,
                    since=state.status_since,
                    last_seen=last if last is not None else tr_ts,
                    exists=exists,
                )
            )
        return out

    async def _counted_from(
        self, db: aiosqlite.Connection, devices: Collection[str] | None = None
    ) -> dict[str, float | None]:
        """Per inventory device (of ``devices``), when it starts to count (``counted_from``)."""
        only, only_params = _only("i.device_id", devices)
        async with db.execute(
            "SELECT i.device_id, i.install_date, i.listed_at,"
            " (SELECT min(t.ts) FROM transitions t WHERE t.device_id = i.device_id)"
            f" AS first_report FROM inventory i WHERE {only}",
            only_params,
        ) as cur:
            return {
                r["device_id"]: counted_from(r["install_date"], r["listed_at"], r["first_report"])
                for r in await cur.fetchall()
            }

    async def status_timelines(self, t0: float, t1: float) -> list[StatusTimeline]:
        async with self._read() as db:
            async with db.execute(
                "SELECT device_id, commune_code FROM inventory ORDER BY position, device_id"
            ) as cur:
                inventory = [(r["device_id"], r["commune_code"]) for r in await cur.fetchall()]
            starts = await self._counted_from(db)
            async with db.execute(
                """
                SELECT device_id, online, has_diag, diag_broken, diag_cause, status_since
                FROM (SELECT *, row_number() OVER (PARTITION BY device_id
                                                   ORDER BY ts DESC, seq DESC) AS rn
                      FROM transitions WHERE ts <= ?) AS latest
                WHERE rn = 1
                """,
                (t0,),
            ) as cur:
                initial = {r["device_id"]: _state_of(r).status for r in await cur.fetchall()}
            changes: dict[str, list[tuple[float, Status]]] = {}
            async with db.execute(
                "SELECT device_id, ts, online, has_diag, diag_broken, diag_cause, status_since"
                " FROM transitions WHERE ts > ? AND ts <= ? ORDER BY device_id, ts, seq",
                (t0, t1),
            ) as cur:
                async for r in cur:
                    changes.setdefault(r["device_id"], []).append(
                        (float(r["ts"]), _state_of(r).status)
                    )
        return [
            StatusTimeline(
                device_id=device,
                commune_code=commune,
                counted_from=starts.get(device),
                initial=initial.get(device),
                changes=tuple(changes.get(device, ())),
            )
            for device, commune in inventory
        ]

    async def availability_seconds(self, t0: float, t1: float) -> dict[str, tuple[float, float]]:
        """Per inventory device, (seconds counted, seconds working) in [t0, t1]: what
        ``counted_seconds(status_timelines(t0, t1)[i], t0, t1)`` gives, computed from
        the sums kept for month start ``t0`` (``availability_kept``, up to one
        ``kept_until`` for every device) plus the transitions after ``kept_until``.

        Each call moves the kept sums on to the last whole hour at least an hour
        before ``t1`` when that is later than what is kept (and the history did not
        change meanwhile); ``_history_changed`` drops them when history at or
        before ``kept_until`` changes, or the inventory does.
        """
        gen = await self._history_generation()
        async with self._read() as db:
            async with db.execute(
                "SELECT device_id, commune_code FROM inventory ORDER BY position, device_id"
            ) as cur:
                inventory = [(r["device_id"], r["commune_code"]) for r in await cur.fetchall()]
            async with db.execute(
                "SELECT device_id, kept_until, working, status, counted_from"
                " FROM availability_kept WHERE month_start = ?",
                (t0,),
            ) as cur:
                kept = {r["device_id"]: r for r in await cur.fetchall()}
            untils = {float(r["kept_until"]) for r in kept.values()}
            until = untils.pop() if len(untils) == 1 else None
            usable = (
                until is not None
                and until <= t1
                and len(kept) == len(inventory)
                and all(d in kept for d, _ in inventory)
            )
            timelines: list[StatusTimeline] = []
            base: dict[str, float] = {}
            if usable:
                assert until is not None
                origin = until
                # Clusters not counting yet at kept_until: a first report since then
                # can still move when they start to count.
                async with db.execute(
                    "SELECT i.device_id, i.install_date, i.listed_at,"
                    " (SELECT min(t.ts) FROM transitions t WHERE t.device_id = i.device_id)"
                    " AS first_report FROM inventory i JOIN availability_kept k"
                    " ON k.device_id = i.device_id AND k.month_start = ?"
                    " WHERE k.counted_from IS NULL OR k.counted_from > k.kept_until",
                    (t0,),
                ) as cur:
                    unsettled = {
                        r["device_id"]: counted_from(
                            r["install_date"], r["listed_at"], r["first_report"]
                        )
                        for r in await cur.fetchall()
                    }
                changes: dict[str, list[tuple[float, Status]]] = {}
                async with db.execute(
                    "SELECT device_id, ts, online, has_diag, diag_broken, diag_cause,"
                    " status_since FROM transitions WHERE ts > ? AND ts <= ?"
                    " ORDER BY device_id, ts, seq",
                    (origin, t1),
                ) as cur:
                    async for r in cur:
                        changes.setdefault(r["device_id"], []).append(
                            (float(r["ts"]), _state_of(r).status)
                        )
                for device, commune in inventory:
                    k = kept[device]
                    base[device] = float(k["working"])
                    timelines.append(
                        StatusTimeline(
                            device_id=device,
                            commune_code=commune,
                            counted_from=unsettled[device]
                            if device in unsettled
                            else k["counted_from"],
                            initial=None if k["status"] is None else Status(k["status"]),
                            changes=tuple(changes.get(device, ())),
                        )
                    )
        if not usable:
            origin = t0
            timelines = await self.status_timelines(t0, t1)
        target = max(t0, math.floor((t1 - KEEP_MARGIN_S) / KEEP_STEP_S) * KEEP_STEP_S)
        advance = target > origin and (until is None or target > until)
        out: dict[str, tuple[float, float]] = {}
        rows: list[tuple[Any, ...]] = []
        for tl in timelines:
            cf = tl.counted_from
            start = max(t0, cf) if cf is not None else t0
            w0 = base.get(tl.device_id, 0.0)
            # From the origin (t0, or kept_until with its sums) the fold is the same
            # as one from t0: the sums of exact differences of timestamps are exact.
            _, w = counted_seconds(tl, origin, t1)
            out[tl.device_id] = (t1 - start, w0 + w) if start < t1 else (0.0, 0.0)
            if advance:
                _, wa = counted_seconds(tl, origin, target)
                status = status_at(tl, target)
                rows.append(
                    (
                        t0,
                        tl.device_id,
                        target,
                        target - start if start < target else 0.0,
                        w0 + wa,
                        None if status is None else str(status),
                        cf,
                    )
                )
        if advance:
            async with self._tx() as db:
                if await self._history_generation(db) != gen:
                    return out  # changed meanwhile: keep nothing computed before it
                await db.execute("DELETE FROM availability_kept WHERE month_start = ?", (t0,))
                await db.execute(
                    "DELETE FROM availability_kept WHERE month_start < ?", (t0 - KEEP_MONTHS_S,)
                )
                await db.executemany(
                    "INSERT INTO availability_kept (month_start, device_id, kept_until, seconds,"
                    " working, status, counted_from) VALUES (?,?,?,?,?,?,?)",
                    rows,
                )
        return out

    async def list_devices(
        self,
        *,
        communes: frozenset[str] | None = None,
        status: Status | None = None,
        cause: B2Cause | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[DeviceRow]:
        where: list[str] = []
        params: list[Any] = []
        if communes is not None:
            where.append(f"commune IN ({_qmarks(len(communes))})")
            params.extend(sorted(communes))
        if status is not None:
            where.append("status = ?")
            params.append(str(status))
        if cause is not None:
            where.append("cause = ? AND status = 'broken'")
            params.append(str(cause))
        sql = self._DEVICE_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY position IS NULL, position, id LIMIT ? OFFSET ?"
        rows = await self._all(sql, [*params, limit, offset])
        return [self._device_row(r) for r in rows]

    async def get_device(self, device_id: str) -> DeviceRow:
        rows = await self._all(self._DEVICE_SELECT + " WHERE id = ?", (device_id,))
        if not rows:
            raise NotFound(f"device {device_id!r} is not known")
        return self._device_row(rows[0])

    async def cells_as_of(
        self, t: float, devices: Collection[str]
    ) -> dict[str, tuple[str, str] | None]:
        out: dict[str, tuple[str, str] | None] = {}
        kept = "1 = 1" if self.kept_state_reads else "1 = 0"
        rows = await self._all(
            f"SELECT device_id, cell FROM devices WHERE {kept} AND cell_ts <= ?", (t,)
        )
        wanted = set(devices)
        for r in rows:
            if r["device_id"] in wanted:
                out[r["device_id"]] = _cell_of(r["cell"])
        rest = wanted - set(out)
        if rest:
            for device, report in (
                await self.last_reports_as_of(t, devices=rest if len(rest) < 5000 else None)
            ).items():
                if device in rest:
                    modem = report.get("modem")
                    out[device] = _cell_of(cell_key(modem if isinstance(modem, dict) else None))
        return out

    async def correlation_neighbours(self, device_id: str) -> frozenset[str] | None:
        async with self._read() as db:
            async with db.execute(
                "SELECT coalesce(i.commune_code, d.commune_code) AS commune, d.cell AS cell,"
                " d.cell_ts AS cell_ts, d.last_report IS NOT NULL AS reported"
                " FROM (SELECT ? AS device_id) AS k"
                " LEFT JOIN inventory i ON i.device_id = k.device_id"
                " LEFT JOIN devices d ON d.device_id = k.device_id",
                (device_id,),
            ) as cur:
                me = await cur.fetchone()
            if me is None or (me["reported"] and me["cell_ts"] is None):
                return None  # reports from before cells were kept, not filled yet
            commune, cell = me["commune"] or "", me["cell"] or ""
            out = {device_id}
            async with db.execute(
                "SELECT device_id FROM inventory WHERE commune_code = ?", (commune,)
            ) as cur:
                out |= {r["device_id"] for r in await cur.fetchall()}
            if cell:
                async with db.execute(
                    "SELECT device_id FROM devices WHERE cell = ?", (cell,)
                ) as cur:
                    out |= {r["device_id"] for r in await cur.fetchall()}
            async with db.execute(
                "SELECT d.device_id FROM devices d JOIN inventory i ON i.device_id = d.device_id"
                " WHERE d.online = 1 AND d.cell IS NOT NULL AND d.cell != '' AND d.cell != ?"
                " LIMIT 3",
                (cell,),
            ) as cur:
                out |= {r["device_id"] for r in await cur.fetchall()}
        return frozenset(out)

    async def status_history(
        self, device_id: str, *, since: float | None = None, until: float | None = None
    ) -> list[Transition]:
        rows = await self._all(
            "SELECT ts, seq, online, has_diag, diag_broken, diag_cause, status_since, via"
            " FROM transitions WHERE device_id = ? AND ts >= ? AND ts <= ? ORDER BY ts, seq",
            (device_id, since if since is not None else 0.0, until if until is not None else 1e12),
        )
        return [
            Transition(r["ts"], r["seq"], _state_of(r), ObsKind(r["via"]) if r["via"] else None)
            for r in rows
        ]

    async def signal_history(
        self,
        device_id: str,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[SignalPoint]:
        rows = await self._all(
            "SELECT ts, rssi_dbm, rsrp_dbm, rsrq_db, sinr_db, csq FROM messages"
            " WHERE device_id = ? AND kind = 'state' AND ts >= ? AND ts <= ?"
            " ORDER BY ts DESC LIMIT ?",
            (
                device_id,
                since if since is not None else 0.0,
                until if until is not None else 1e12,
                limit,
            ),
        )
        return [
            SignalPoint(
                ts=r["ts"],
                rssi_dbm=r["rssi_dbm"],
                rsrp_dbm=r["rsrp_dbm"],
                rsrq_db=r["rsrq_db"],
                sinr_db=r["sinr_db"],
                csq=r["csq"],
            )
            for r in reversed(rows)
        ]

    async def list_events(
        self,
        *,
        communes: frozenset[str] | None = None,
        device_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 200,
    ) -> list[EventRow]:
        where = ["e.ts >= ?", "e.ts <= ?"]
        params: list[Any] = [
            since if since is not None else 0.0,
            until if until is not None else 1e12,
        ]
        if device_id is not None:
            where.append("e.device_id = ?")
            params.append(device_id)
        commune = "coalesce(i.commune_code, d.commune_code, '')"
        if communes is not None:
            where.append(f"{commune} IN ({_qmarks(len(communes))})")
            params.extend(sorted(communes))
        rows = await self._all(
            f"SELECT e.device_id, {commune} AS commune, e.seq, e.ts, e.type, e.fault_code,"
            " e.action, e.detail FROM events e LEFT JOIN inventory i ON i.device_id = e.device_id"
            " LEFT JOIN devices d ON d.device_id = e.device_id"
            f" WHERE {' AND '.join(where)} ORDER BY e.ts DESC, e.seq DESC LIMIT ?",
            [*params, limit],
        )
        return [
            EventRow(
                device_id=r["device_id"],
                commune_code=r["commune"],
                seq=r["seq"],
                ts=r["ts"],
                type=r["type"],
                fault_code=r["fault_code"],
                action=r["action"],
                detail=r["detail"],
            )
            for r in rows
        ]

    async def list_faults(self, device_id: str, *, active_only: bool = False) -> list[FaultRow]:
        sql = (
            "SELECT device_id, code, severity, cause, since, cleared_at, evidence FROM faults"
            " WHERE device_id = ?"
        )
        if active_only:
            sql += " AND cleared_at IS NULL"
        rows = await self._all(sql + " ORDER BY since DESC LIMIT 500", (device_id,))
        return [
            FaultRow(
                device_id=r["device_id"],
                code=r["code"],
                severity=r["severity"],
                cause=r["cause"],
                since=r["since"],
                cleared_at=r["cleared_at"],
                evidence=r["evidence"],
            )
            for r in rows
        ]

    async def state_reports(
        self, device_id: str, *, since: float, until: float, limit: int = 10000
    ) -> list[tuple[float, dict[str, Any]]]:
        rows = await self._all(
            "SELECT ts, payload FROM messages WHERE device_id = ? AND kind = 'state'"
            " AND seq >= 0 AND ts >= ? AND ts <= ? AND payload IS NOT NULL"
            " ORDER BY ts DESC LIMIT ?",
            (device_id, since, until, limit),
        )
        out: list[tuple[float, dict[str, Any]]] = []
        for r in reversed(rows):
            try:
                data = msgspec.json.decode(r["payload"])
            except msgspec.DecodeError:
                continue  # stored payloads were validated on the way in; never expected
            if isinstance(data, dict):
                out.append((float(r["ts"]), data))
        return out

    @staticmethod
    def _latest_sql(where: str, cols: str, only: str = "1 = 1") -> str:
        """Per cluster, its newest message matching ``where`` (over ``x``) at or
        before the bound moment: one probe of the (device_id, ts) index per
        cluster walking back from the moment, not a pass over every message.
        Rows tied on ts come out together; the caller keeps the highest seq."""
        return (
            f"SELECT {cols} FROM (SELECT ids.device_id AS device_id,"
            f" (SELECT x.ts FROM messages x WHERE x.device_id = ids.device_id AND {where}"
            "   AND x.ts <= ? ORDER BY x.ts DESC LIMIT 1) AS latest_ts"
            " FROM (SELECT device_id FROM inventory UNION SELECT device_id FROM devices) AS ids"
            f" WHERE {only.replace('device_id', 'ids.device_id', 1)})"
            # CROSS JOIN: SQLite keeps this order (clusters outside, the index probe
            # inside) even without statistics; PostgreSQL plans it as a join.
            " AS k CROSS JOIN messages m WHERE m.device_id = k.device_id AND m.ts = k.latest_ts"
            f" AND {where.replace('x.', 'm.')} ORDER BY m.device_id, m.seq"
        )

    async def _latest_rows(
        self, where: str, cols: str, t: float, devices: Collection[str] | None
    ) -> list[Any]:
        """``_latest_sql``'s rows at ``t`` for ``devices`` (all for None), asked in
        chunks the engines' parameter limits allow."""
        if devices is None:
            return await self._all(self._latest_sql(where, cols), (t,))
        ids = sorted(set(devices))
        out: list[Any] = []
        for chunk in _chunks(ids, _ONLY_MAX):
            only, only_params = _only("device_id", chunk)
            out += await self._all(self._latest_sql(where, cols, only), (t, *only_params))
        return out

    async def diag_evidence_as_of(
        self, t: float, *, devices: Collection[str] | None = None
    ) -> dict[str, DiagEvidence]:
        rows = await self._latest_rows(
            "x.obs_kind = 'state'",
            "m.device_id AS device_id, m.kind AS kind, m.prompt AS prompt,"
            " m.broken AS broken, m.cause AS cause, m.ts AS ts,"
            " m.received_at AS received_at, m.payload AS payload, m.run_until AS run_until",
            t,
            devices,
        )
        out: dict[str, DiagEvidence] = {}
        for r in rows:
            faults: tuple[str, ...] = ()
            with contextlib.suppress(msgspec.DecodeError, TypeError, AttributeError):
                data = msgspec.json.decode(r["payload"]) if r["payload"] else {}
                faults = tuple(str(f["code"]) for f in data.get("faults", ()))
            out[r["device_id"]] = DiagEvidence(
                device_id=r["device_id"],
                kind=r["kind"],
                prompt=bool(r["prompt"]),
                broken=bool(r["broken"]),
                cause=_cause(r["cause"]),
                # Within a compacted run (collector.compaction): said up to run_until.
                ts=r["ts"] if r["run_until"] is None else min(float(r["run_until"]), t),
                received_at=r["received_at"],
                faults=faults,
            )
        return out

    async def counts_as_of(self, t: float, *, keep_before: float) -> dict[str, tuple[int, int]]:
        """(working, broken) per commune of the clusters that existed at ``t``, and
        the whole fleet's under '*'. Moments before ``keep_before`` (the past) are
        computed once and kept until history at or before them changes."""
        gen = await self._history_generation()
        if t < keep_before:
            rows = await self._all(
                "SELECT commune, working, broken FROM counts_as_of WHERE as_of = ?", (t,)
            )
            if rows:
                return {r["commune"]: (int(r["working"]), int(r["broken"])) for r in rows}
        counts: dict[str, list[int]] = {"*": [0, 0]}
        for s in await self.statuses_as_of(t):
            if not s.exists:
                continue
            i = 0 if s.status is Status.WORKING else 1
            counts.setdefault(s.commune_code, [0, 0])[i] += 1
            counts["*"][i] += 1
        if t < keep_before:
            async with self._tx() as db:
                if await self._history_generation(db) != gen:
                    return {c: (w, b) for c, (w, b) in counts.items()}  # changed meanwhile
                await db.executemany(
                    "INSERT OR IGNORE INTO counts_as_of (as_of, commune, working, broken)"
                    " VALUES (?,?,?,?)",
                    [(t, c, w, b) for c, (w, b) in counts.items()],
                )
        return {c: (w, b) for c, (w, b) in counts.items()}

    async def last_reports_as_of(
        self, t: float, *, devices: Collection[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        rows = await self._latest_rows(
            "x.kind = 'state' AND instr(CAST(x.payload AS TEXT), '\"modem\"') > 0",
            "m.device_id AS device_id, m.ts AS ts, m.payload AS payload",
            t,
            devices,
        )
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            with contextlib.suppress(msgspec.DecodeError):
                data = msgspec.json.decode(r["payload"])
                if isinstance(data, dict):
                    out[r["device_id"]] = data
        return out

    async def save_b2_snapshot(self, snapshot: B2Snapshot) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO b2_snapshots (as_of, scope, produced_at, body) VALUES (?,?,?,?)",
                (
                    snapshot.as_of,
                    snapshot.scope,
                    snapshot.produced_at,
                    json.dumps(snapshot.body, ensure_ascii=False),
                ),
            )

    async def b2_snapshots(self, as_of: float, scope: str) -> list[B2Snapshot]:
        rows = await self._all(
            "SELECT as_of, scope, produced_at, body FROM b2_snapshots WHERE as_of = ?"
            " AND scope = ? ORDER BY produced_at, id",
            (as_of, scope),
        )
        return [
            B2Snapshot(
                as_of=r["as_of"],
                scope=r["scope"],
                produced_at=r["produced_at"],
                body=json.loads(r["body"]),
            )
            for r in rows
        ]
