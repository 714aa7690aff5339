"""The thin shell between the store and the pure B2 / inventory code.

Used by both the REST API (``collector.b2.api``) and the CLI
(``collector.b2.cli``); depends only on the ``Repository`` interface.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from collector.b2.availability import Evaluation, Thresholds, evaluate_seconds, month_start
from collector.b2.compare import Comparison, compare_statuses
from collector.b2.dates import previous_month_end
from collector.b2.settings import ReportSettings
from collector.b2.table import B2Table, Scope, commune_label, compute_b2, select_devices
from collector.causes import statuses_with_causes
from collector.correlation import CorrelationConfig
from collector.inventory import (
    ImportPlan,
    inventory_to_csv,
    inventory_to_xlsx,
    parse_inventory,
    plan_import,
)
from collector.model import InventoryDevice
from collector.store.base import B2Snapshot, Repository
from fleet_protocol import B2Cause


async def b2_table(
    repo: Repository,
    *,
    as_of: dt.datetime,
    settings: ReportSettings = ReportSettings(),  # noqa: B008 - frozen
    scope: Scope = Scope.COMMUNE,
    lang: str | None = None,
    district: str | None = None,
    province: str | None = None,
    communes: Collection[str] | None = None,
    correlation: CorrelationConfig,
    record: bool = True,
) -> B2Table:
    """The B2 table as of ``as_of`` from the stored inventory and status history,
    silent clusters' causes inferred with ``correlation`` (the collector's
    ``[correlation]``: every caller passes it, so no report falls back to defaults),
    with the evaluation of its communes over ``as_of``'s month up to ``as_of``.

    Every broken cluster's cause is the best the evidence supports, with its
    source (``collector.causes``). With ``record``, the whole-inventory table is
    compared with the first one produced for the same moment (``changes``) and
    kept as a snapshot when it differs from the last one.
    """
    inventory = await repo.list_inventory()
    statuses, attributions = await statuses_with_causes(repo, as_of.timestamp(), correlation)
    table = compute_b2(
        inventory,
        statuses,
        as_of=as_of,
        scope=scope,
        lang=lang or settings.lang,
        offline_days=settings.offline_days,
        unit_name=settings.unit_name or None,
        district=district,
        province=province,
        communes=communes,
    )
    devices = select_devices(inventory, district=district, province=province, communes=communes)
    listed = {d.device_id for d in devices}
    by_device = {k: a.to_json() for k, a in attributions.items() if k in listed}
    evaluation = await monthly_evaluation(
        repo, devices, as_of=as_of, settings=settings, lang=table.lang
    )
    table = replace(table, causes_by_device=by_device, evaluation=evaluation)
    whole = district is None and province is None and communes is None
    if record and whole:
        table = await _against_snapshots(repo, table, scope)
    return table


async def monthly_evaluation(
    repo: Repository,
    devices: list[InventoryDevice],
    *,
    as_of: dt.datetime,
    settings: ReportSettings = ReportSettings(),  # noqa: B008 - frozen
    lang: str = "vi",
) -> Evaluation:
    """Availability and ranking of ``devices``' communes from the start of
    ``as_of``'s month (in its zone) to ``as_of``, from the stored transitions
    (through the per-cluster sums the store keeps for the month, so only the
    transitions of the last hours are read again)."""
    start = month_start(as_of)
    seconds = await repo.availability_seconds(start.timestamp(), as_of.timestamp())
    return evaluate_seconds(
        devices,
        seconds,
        start=start,
        end=as_of,
        label=lambda d: commune_label(d.commune_kind, d.commune_name, lang),
        lang=lang,
        thresholds=Thresholds(
            good_pct=settings.rank_good_pct,
            fair_pct=settings.rank_fair_pct,
            average_pct=settings.rank_average_pct,
        ),
    )


def _snapshot_body(table: B2Table) -> dict[str, Any]:
    return {
        "devices": {
            k: [v["cause"], v["source"]] for k, v in sorted(table.causes_by_device.items())
        },
        "rows": {r.key: [r.working, r.broken, *r.causes] for r in table.rows},
    }


def snapshot_changes(
    first: dict[str, Any], now: dict[str, Any], *, lang: str = "vi"
) -> tuple[str, ...]:
    """Lines saying what differs between two snapshot bodies (pure)."""
    from collector.causes import CauseSource

    def say(entry: list[str] | None) -> str:
        if entry is None:
            return "hoạt động tốt" if lang != "en" else "working"
        cause = B2Cause(entry[0]).label(lang)
        return f"{cause} ({CauseSource(entry[1]).label(lang)})"

    out: list[str] = []
    before, after = first.get("devices", {}), now.get("devices", {})
    for device in sorted(set(before) | set(after)):
        if before.get(device) != after.get(device):
            out.append(f"{device}: {say(before.get(device))} → {say(after.get(device))}")
    return tuple(out)


async def _against_snapshots(repo: Repository, table: B2Table, scope: Scope) -> B2Table:
    as_of = table.as_of.timestamp()
    body = _snapshot_body(table)
    snaps = await repo.b2_snapshots(as_of, str(scope))
    if not snaps or snaps[-1].body != body:
        await repo.save_b2_snapshot(
            B2Snapshot(as_of=as_of, scope=str(scope), produced_at=time.time(), body=body)
        )
    if not snaps:
        return table
    return replace(
        table,
        first_produced_at=snaps[0].produced_at,
        changes=snapshot_changes(snaps[0].body, body, lang=table.lang),
    )


async def month_over_month(
    repo: Repository,
    *,
    as_of: dt.datetime,
    lang: str = "vi",
    communes: Collection[str] | None = None,
) -> Comparison:
    """Changes from the end of the previous month to ``as_of``."""
    before = previous_month_end(as_of)
    inventory = [
        d for d in await repo.list_inventory() if communes is None or d.commune_code in communes
    ]
    return compare_statuses(
        inventory,
        await repo.statuses_as_of(before.timestamp()),
        await repo.statuses_as_of(as_of.timestamp()),
        before_at=before,
        after_at=as_of,
        lang=lang,
    )


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What an inventory import did."""

    plan: ImportPlan
    devices: int


async def import_inventory(
    repo: Repository,
    data: bytes,
    *,
    source: str,
    remove_missing: bool = False,
    actor: str = "system",
) -> ImportOutcome:
    """Parse an inventory file and store it in one transaction (all or nothing).

    Raises ``InventoryError`` (nothing stored) for a bad file. The file's row
    order becomes the B2 row order; devices absent from the file are removed
    with ``remove_missing``, otherwise kept after the file's devices in their
    previous order, taking the file's name, kind, district and province for
    their commune (the file is authoritative for a commune it lists).
    """
    incoming = parse_inventory(data, source=source)
    current = await repo.list_inventory()
    plan = plan_import(current, incoming, remove_missing=remove_missing)
    devices: list[InventoryDevice] = list(incoming)
    if not remove_missing and plan.missing:
        missing = set(plan.missing)
        communes = {
            d.commune_code: (d.commune_name, d.commune_kind, d.district, d.province)
            for d in incoming
        }
        kept = [d for d in current if d.device_id in missing]
        for i, d in enumerate(kept):
            name, kind, district, province = communes.get(
                d.commune_code, (d.commune_name, d.commune_kind, d.district, d.province)
            )
            devices.append(
                replace(
                    d,
                    commune_name=name,
                    commune_kind=kind,
                    district=district,
                    province=province,
                    position=len(incoming) + i,
                )
            )
    await repo.upsert_inventory(devices, remove_missing=remove_missing, actor=actor)
    return ImportOutcome(plan, len(incoming))


async def export_inventory(repo: Repository, *, fmt: str = "csv", lang: str = "vi") -> bytes:
    """The stored inventory as CSV (UTF-8 with BOM) or XLSX; re-imports unchanged."""
    devices = await repo.list_inventory()
    if fmt == "xlsx":
        return inventory_to_xlsx(devices, lang=lang)
    if fmt == "csv":
        return inventory_to_csv(devices, lang=lang)
    raise ValueError(f"inventory format {fmt!r:.20}: expected csv or xlsx")
