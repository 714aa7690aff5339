"""Process-local counters of the collector and their Prometheus text rendering.

Counters are per process (Prometheus sums instances); fleet gauges (devices by
status and cause) are read from the store, which all instances share.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class IngestStats:
    """What the ingest of this process has seen since it started."""

    #: Messages taken from the broker (validated on arrival).
    received: int = 0
    #: Messages whose handling is complete: stored, dropped as duplicates or
    #: rejected, and acknowledged to the broker.
    handled: int = 0
    stored: int = 0
    duplicates: int = 0
    #: Rejected messages by ProtocolError kind (json, schema, mismatch, oversize, ...).
    rejected: Counter[str] = field(default_factory=Counter)
    #: Device timestamps replaced by the receive time (clock ahead of ours).
    clock_skew: int = 0
    #: Stored messages by how their time was decided (clocktruth.Dating values
    #: and "restamped" for stored ones re-dated later).
    dating: Counter[str] = field(default_factory=Counter)
    #: Duplicates (device, seq) that arrived with other content than stored.
    replay_conflict: int = 0
    #: Store confirmations (Ack messages) published to devices.
    confirmations: int = 0
    batches: int = 0
    #: Flow control: times reading the broker was paused because the queue was
    #: full, and the most messages ever queued (bounded by it).
    read_pauses: int = 0
    queued_peak: int = 0
    connected: bool = False
    connects: int = 0
    #: The supervised ingest task: running now, restarts so far, why it last ended.
    task_running: bool = False
    task_restarts: int = 0
    task_last_error: str | None = None
    #: (monotonic time, stored so far) samples for the rate over the last minute.
    _samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=120))

    def sample(self, now: float | None = None) -> None:
        self._samples.append((time.monotonic() if now is None else now, self.stored))

    def rate(self, window_s: float = 60.0, now: float | None = None) -> float:
        """Messages stored per second over about the last ``window_s`` seconds."""
        now = time.monotonic() if now is None else now
        recent = [(t, n) for t, n in self._samples if now - t <= window_s]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(stats: IngestStats, devices: Iterable[tuple[str, str, int]]) -> str:
    """Prometheus text exposition (version 0.0.4).

    ``devices`` is (status, cause, count) rows; cause is "" for working devices.
    """
    lines = [
        "# HELP loa_ingest_received_total Wire messages received by this process.",
        "# TYPE loa_ingest_received_total counter",
        f"loa_ingest_received_total {stats.received}",
        "# HELP loa_ingest_handled_total Messages stored, dropped or rejected, and acknowledged.",
        "# TYPE loa_ingest_handled_total counter",
        f"loa_ingest_handled_total {stats.handled}",
        "# HELP loa_ingest_stored_total Messages stored (new, valid).",
        "# TYPE loa_ingest_stored_total counter",
        f"loa_ingest_stored_total {stats.stored}",
        "# HELP loa_ingest_duplicates_total Duplicate (device, seq) messages dropped.",
        "# TYPE loa_ingest_duplicates_total counter",
        f"loa_ingest_duplicates_total {stats.duplicates}",
        "# HELP loa_ingest_rejected_total Messages rejected, by kind.",
        "# TYPE loa_ingest_rejected_total counter",
    ]
    for kind in sorted(stats.rejected):
        lines.append(f'loa_ingest_rejected_total{{kind="{_esc(kind)}"}} {stats.rejected[kind]}')
    lines += [
        "# HELP loa_ingest_clock_skew_total Device timestamps in the future, clamped.",
        "# TYPE loa_ingest_clock_skew_total counter",
        f"loa_ingest_clock_skew_total {stats.clock_skew}",
        "# HELP loa_ingest_dated_total Messages stored, by how their time was decided"
        " (device clock, redated from the boot offset, estimated: unsynced / before_install /"
        " future; restamped: re-dated after storing).",
        "# TYPE loa_ingest_dated_total counter",
    ]
    for how in sorted(stats.dating):
        lines.append(f'loa_ingest_dated_total{{how="{_esc(how)}"}} {stats.dating[how]}')
    lines += [
        "# HELP loa_ingest_replay_conflict_total Seqs seen again with different content.",
        "# TYPE loa_ingest_replay_conflict_total counter",
        f"loa_ingest_replay_conflict_total {stats.replay_conflict}",
        "# HELP loa_ingest_confirmations_total Store confirmations (acks) sent to devices.",
        "# TYPE loa_ingest_confirmations_total counter",
        f"loa_ingest_confirmations_total {stats.confirmations}",
        "# HELP loa_ingest_task_running 1 while the supervised ingest task runs.",
        "# TYPE loa_ingest_task_running gauge",
        f"loa_ingest_task_running {int(stats.task_running)}",
        "# HELP loa_ingest_task_restarts_total Times the ingest task ended and was restarted.",
        "# TYPE loa_ingest_task_restarts_total counter",
        f"loa_ingest_task_restarts_total {stats.task_restarts}",
        "# HELP loa_ingest_batches_total Write transactions.",
        "# TYPE loa_ingest_batches_total counter",
        f"loa_ingest_batches_total {stats.batches}",
        "# HELP loa_ingest_read_pauses_total Times reading the broker paused: queue full.",
        "# TYPE loa_ingest_read_pauses_total counter",
        f"loa_ingest_read_pauses_total {stats.read_pauses}",
        "# HELP loa_ingest_queued_peak Most messages queued in memory at once.",
        "# TYPE loa_ingest_queued_peak gauge",
        f"loa_ingest_queued_peak {stats.queued_peak}",
        "# HELP loa_ingest_rate Messages stored per second over the last minute.",
        "# TYPE loa_ingest_rate gauge",
        f"loa_ingest_rate {stats.rate():.3f}",
        "# HELP loa_ingest_connected 1 while connected to the broker.",
        "# TYPE loa_ingest_connected gauge",
        f"loa_ingest_connected {int(stats.connected)}",
        "# HELP loa_devices Devices by status and cause (inventory and reporting).",
        "# TYPE loa_devices gauge",
    ]
    for status, cause, n in devices:
        lines.append(f'loa_devices{{status="{_esc(status)}",cause="{_esc(cause)}"}} {n}')
    return "\n".join(lines) + "\n"
