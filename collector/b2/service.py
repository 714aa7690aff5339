"""The thin shell between the store and the pure B2 / inventory code.

Used by both the REST API (``collector.b2.api``) and the CLI
(``collector.b2.cli``); depends only on the ``Repository`` interface.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass, replace

from collector.b2.availability import Evaluation, Thresholds, evaluate, month_start
from collector.b2.compare import Comparison, compare_statuses
from collector.b2.dates import previous_month_end
from collector.b2.settings import ReportSettings
from collector.b2.table import B2Table, Scope, commune_label, compute_b2, select_devices
from collector.inventory import (
    ImportPlan,
    inventory_to_csv,
    inventory_to_xlsx,
    parse_inventory,
    plan_import,
)
from collector.model import InventoryDevice
from collector.store.base import Repository


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
) -> B2Table:
    """The B2 table as of ``as_of`` from the stored inventory and status history,
    with the evaluation of its communes over ``as_of``'s month up to ``as_of``."""
    inventory = await repo.list_inventory()
    statuses = await repo.statuses_as_of(as_of.timestamp())
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
    evaluation = await monthly_evaluation(
        repo, devices, as_of=as_of, settings=settings, lang=table.lang
    )
    return replace(table, evaluation=evaluation)


async def monthly_evaluation(
    repo: Repository,
    devices: list[InventoryDevice],
    *,
    as_of: dt.datetime,
    settings: ReportSettings = ReportSettings(),  # noqa: B008 - frozen
    lang: str = "vi",
) -> Evaluation:
    """Availability and ranking of ``devices``' communes from the start of
    ``as_of``'s month (in its zone) to ``as_of``, from the stored transitions."""
    start = month_start(as_of)
    timelines = await repo.status_timelines(start.timestamp(), as_of.timestamp())
    return evaluate(
        devices,
        timelines,
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
