"""The demo's repair crews: tickets opened, started and resolved on the fleet's clock.

A district's B2 table splits broken clusters into "đang sửa chữa" (a contractor
has started a repair) and "chưa sửa chữa". In a simulated fleet nobody repairs
anything, so ``plan_repairs`` derives what the people would have done from the
scenario's schedule: a ticket opens a day into every breakdown, a contractor
starts most of them within days, and a ticket resolves soon after the
breakdown ends. ``RepairCrew`` sends those steps to the collector's REST API
(``/api/v1/repairs``) as the simulated clock passes them, at their simulated
times (``at``, which only an admin's token may set), so backfilled history
has realistic repair figures (the collector's own automatic open and resolve
are switched off in the demo, since they work on wall-clock time). Going
through the API rather than the database keeps a single writer on the
collector's SQLite file: no "database is locked" while the backfill streams in.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from fleet_sim.timeline import Episode

log = logging.getLogger(__name__)

#: Scenario faults that only warn: they do not break a cluster, so nobody repairs them.
WARNING_FAULTS = frozenset({"modem.weak_signal", "amp.battery_low"})
TECHNICIANS = ("Nguyễn Văn Hùng", "Trần Thị Bình", "Lê Minh Tuấn", "Phạm Quốc Khánh", "Đỗ Thu Hà")

StepKind = Literal["open", "start", "resolve"]


@dataclass(frozen=True, slots=True, order=True)
class RepairStep:
    """One thing a person does to a device's ticket at simulated time ``at``."""

    at: float
    device: str
    kind: StepKind
    contractor: str = ""
    technician: str = ""
    note: str = ""


def broken_spans(episodes: Iterable[Episode]) -> dict[str, list[tuple[float, float]]]:
    """Per device, the merged intervals during which some breaking fault was active."""
    by_device: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in sorted(episodes):
        if e.name in WARNING_FAULTS:
            continue
        spans = by_device[e.device]
        if spans and e.start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], e.end))
        else:
            spans.append((e.start, e.end))
    return dict(by_device)


def plan_repairs(
    episodes: Iterable[Episode],
    contractors: Mapping[str, str],
    *,
    seed: int,
    open_after_s: float = 86400.0,
    start_probability: float = 0.6,
    start_delay_s: tuple[float, float] = (43200.0, 5 * 86400.0),
    resolve_after_s: float = 3600.0,
) -> list[RepairStep]:
    """Every repair step for the schedule, by time. Pure and deterministic for ``seed``."""
    steps: list[RepairStep] = []
    for device, spans in broken_spans(episodes).items():
        for start, end in spans:
            opened = start + open_after_s
            if opened >= end:
                continue  # healed before anyone noticed it was a breakdown
            rng = random.Random(f"{seed}:repair:{device}:{start:.0f}")
            steps.append(
                RepairStep(opened, device, "open", note="Xã báo cụm loa không phát quá 24 giờ")
            )
            started = opened + rng.uniform(*start_delay_s)
            if rng.random() < start_probability and started < end:
                steps.append(
                    RepairStep(
                        started,
                        device,
                        "start",
                        contractor=contractors.get(device, "") or "Viettel",
                        technician=rng.choice(TECHNICIANS),
                        note="Đơn vị thi công nhận phiếu, kiểm tra tại chỗ",
                    )
                )
            if math.isfinite(end):
                steps.append(
                    RepairStep(
                        end + resolve_after_s, device, "resolve", note="Đã khắc phục, loa phát lại"
                    )
                )
    steps.sort()
    return steps


class CollectorUnavailable(Exception):
    """The collector did not answer (down, restarting, 5xx); the step is tried again later."""


class RepairCrew:
    """Sends planned steps to the collector's REST API as the fleet's clock passes them.

    ``base_url`` is the collector (``http://127.0.0.1:8080``) and ``token`` an
    admin's API token (``loa-collector users token``): past times need it. A
    step the collector refuses with 409 or 404 (a person acted on the dashboard
    meanwhile: theirs stands) is skipped and counted; a collector that does not
    answer keeps the step for the next round, logged once.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        steps: list[RepairStep],
        clock: Callable[[], float],
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.steps = steps
        self.clock = clock
        self.timeout_s = timeout_s
        self.applied = 0
        self.skipped = 0
        self._next = 0
        self._tickets: dict[str, int] = {}
        self._unavailable: str | None = None

    def session(self) -> aiohttp.ClientSession:
        """An HTTP session carrying the crew's token (the caller closes it)."""
        return aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        )

    async def run(self, stop: asyncio.Event, *, period_s: float = 1.0) -> None:
        """Apply due steps every ``period_s`` until ``stop`` is set."""
        async with self.session() as http:
            while not stop.is_set():
                try:
                    await self.apply_due(http)
                except CollectorUnavailable as exc:
                    if self._unavailable is None:
                        log.warning("repair crew: %s; retrying", exc)
                    self._unavailable = str(exc)
                else:
                    if self._unavailable is not None:
                        log.info("repair crew: the collector answers again")
                    self._unavailable = None
                try:
                    async with asyncio.timeout(period_s):
                        await stop.wait()
                except TimeoutError:
                    pass

    async def _post(self, http: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> Any:
        """POST ``body``; the answer's JSON, None when refused (409/404)."""
        url = f"{self.base_url}/api/v1/repairs{path}"
        try:
            async with http.post(url, json=body) as resp:
                if resp.status in (404, 409):
                    log.info("repair crew: %s refused: %s", path, await resp.text())
                    return None
                if resp.status >= 500:
                    raise CollectorUnavailable(f"{url}: HTTP {resp.status}")
                if resp.status >= 400:
                    # Our own request is wrong: a bug, not the weather.
                    raise RuntimeError(f"{url}: HTTP {resp.status}: {await resp.text()}")
                return await resp.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CollectorUnavailable(f"{url}: {exc or type(exc).__name__}") from exc

    async def apply_due(self, http: aiohttp.ClientSession) -> int:
        """Apply every step whose time has come; returns how many were applied."""
        now = self.clock()
        done = 0
        while self._next < len(self.steps) and self.steps[self._next].at <= now:
            step = self.steps[self._next]
            base = {"at": step.at, "note": step.note}
            if step.kind == "open":
                result = await self._post(http, "", {"device_id": step.device, **base})
                if result is not None:
                    self._tickets[step.device] = int(result["id"])
            elif step.device not in self._tickets:
                result = None
            elif step.kind == "start":
                result = await self._post(
                    http,
                    f"/{self._tickets[step.device]}/start",
                    {"contractor": step.contractor, "technician": step.technician, **base},
                )
            else:
                result = await self._post(http, f"/{self._tickets[step.device]}/resolve", base)
                del self._tickets[step.device]
            self._next += 1  # only once the collector answered
            if result is None:
                self.skipped += 1
                continue
            done += 1
        self.applied += done
        return done
