"""Read-only views of the agent's outbox database, for the technician commands.

The daemon serves these through its control socket (``tech.outbox``); with no
daemon running, ``loa-agent outbox`` and ``events`` call them on the file named
by the config. The database is opened with ``mode=ro``: nothing here can
change, lock for writing, or half-write the outbox. Every call is bounded by
SQLite's ``busy`` timeout and raises ``OutboxFileError`` naming the file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from fleet_protocol import ProtocolError, parse_topic


class OutboxFileError(Exception):
    """The outbox file cannot be read; the message names the file and why."""


@contextlib.contextmanager
def _open(path: Path, timeout_s: float) -> Iterator[sqlite3.Connection]:
    if not path.is_file():
        raise OutboxFileError(f"outbox {path}: no such file")
    # Read-only, and without a write-ahead log on disk nobody is writing: then open it
    # immutable, so not even the -wal/-shm side files get created (as root they would
    # later lock the agent's own user out of its outbox).
    mode = "ro" if Path(f"{path}-wal").exists() else "ro&immutable=1"
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?mode={mode}", uri=True, timeout=timeout_s)
    except sqlite3.Error as exc:
        raise OutboxFileError(f"outbox {path}: cannot open read-only: {exc}") from exc
    try:
        yield db
    except sqlite3.Error as exc:
        raise OutboxFileError(f"outbox {path}: cannot read: {exc}") from exc
    finally:
        db.close()


def _kind(topic: str) -> str:
    try:
        return parse_topic(topic)[1].value
    except (ProtocolError, ValueError):
        return "other"


def summary(path: Path | str, *, timeout_s: float = 2.0) -> dict[str, Any]:
    """Depth, payload bytes, oldest creation time, next seq and counts by kind.

    ``kinds`` maps a message kind (``state``, ``event``, ``reply``...) to
    ``{"count": n, "bytes": b, "oldest": ts}``; ``oldest`` is None when empty.
    """
    p = Path(path)
    with _open(p, timeout_s) as db:
        rows = db.execute(
            "SELECT topic, COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), MIN(created)"
            " FROM outbox GROUP BY topic"
        ).fetchall()
        seq_row = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
    kinds: dict[str, dict[str, Any]] = {}
    for topic, count, size, oldest in rows:
        k = kinds.setdefault(_kind(str(topic)), {"count": 0, "bytes": 0, "oldest": None})
        k["count"] += int(count)
        k["bytes"] += int(size)
        if oldest is not None and (k["oldest"] is None or oldest < k["oldest"]):
            k["oldest"] = float(oldest)
    oldests = [k["oldest"] for k in kinds.values() if k["oldest"] is not None]
    return {
        "path": str(p),
        "depth": sum(k["count"] for k in kinds.values()),
        "bytes": sum(k["bytes"] for k in kinds.values()),
        "oldest": min(oldests) if oldests else None,
        "next_seq": int(seq_row[0]) if seq_row else None,
        "kinds": dict(sorted(kinds.items())),
        "read_at": time.time(),
    }


def pending_events(path: Path | str, limit: int, *, timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """The newest ``limit`` event messages still in the outbox (not yet sent), oldest first.

    A payload that does not decode is returned as ``{"seq": n, "undecodable": reason}``
    rather than failing the whole listing.
    """
    p = Path(path)
    with _open(p, timeout_s) as db:
        rows = db.execute(
            "SELECT seq, topic, payload FROM outbox ORDER BY seq DESC",
        ).fetchall()
    out: list[dict[str, Any]] = []
    for seq, topic, payload in rows:
        if _kind(str(topic)) != "event":
            continue
        try:
            event = msgspec.json.decode(bytes(payload))
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except (msgspec.DecodeError, ValueError) as exc:
            event = {"seq": int(seq), "undecodable": str(exc)}
        out.append(event)
        if len(out) >= limit:
            break
    out.reverse()
    return out


__all__ = ["OutboxFileError", "pending_events", "summary"]
