"""A realistic demo district: 200 clusters in the 14 communes and towns of Lâm Thao.

Its state as of 31/7/2023 reproduces the district's notice: 148 working, 52
broken (28 in repair, 24 not), broken because of no station signal (20),
unknown causes (14), an unstable network (10) and burnt SIMs (8). Used for
the samples in docs/samples/, the demo, and the B2 tests.

Commune names are those of Lâm Thao district; commune codes, coordinates,
ICCIDs and phone numbers are illustrative, not real.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from collector.b2.availability import evaluate, month_start
from collector.b2.dates import DEFAULT_TZ, end_of_day, zone
from collector.b2.table import B2Table, commune_label, compute_b2
from collector.model import CommuneKind, DeviceStatus, InventoryDevice, Status
from collector.store.base import StatusTimeline
from fleet_protocol import B2Cause

DISTRICT: Final = "Huyện Lâm Thao"
PROVINCE: Final = "Tỉnh Phú Thọ"
CONTRACTORS: Final = ("Viettel Phú Thọ", "Công ty CP CN Bắc Việt")


@dataclass(frozen=True, slots=True)
class DemoCommune:
    """One commune's clusters and the broken ones, by cause, as of the demo date."""

    code: str
    slug: str
    name: str
    kind: CommuneKind
    total: int
    no_signal: int
    unknown: int
    network: int
    sim: int
    in_repair: int
    #: Of the ``unknown`` clusters, how many never reported at all.
    never_reported: int

    @property
    def broken(self) -> int:
        return self.no_signal + self.unknown + self.network + self.sim


_X, _TT = CommuneKind.XA, CommuneKind.THI_TRAN

#: (code, slug, name, kind, total, no_signal, unknown, network, sim, in_repair, never_reported)
COMMUNES: Final[tuple[DemoCommune, ...]] = tuple(
    DemoCommune(*row)
    for row in (
        ("08410", "lamthao", "Lâm Thao", _TT, 18, 1, 0, 1, 0, 2, 0),
        ("08413", "hungson", "Hùng Sơn", _TT, 16, 2, 1, 0, 1, 3, 0),
        ("08416", "xuanhuy", "Xuân Huy", _X, 15, 0, 1, 1, 0, 1, 1),
        ("08419", "tienkien", "Tiên Kiên", _X, 14, 1, 0, 0, 0, 1, 0),
        ("08422", "thachson", "Thạch Sơn", _X, 15, 3, 2, 1, 1, 3, 2),
        ("08425", "vinhlai", "Vĩnh Lại", _X, 13, 2, 2, 1, 1, 2, 1),
        ("08428", "sonvi", "Sơn Vi", _X, 14, 1, 1, 1, 0, 2, 0),
        ("08431", "sonduong", "Sơn Dương", _X, 12, 2, 1, 0, 1, 2, 0),
        ("08434", "caoxa", "Cao Xá", _X, 16, 1, 1, 2, 0, 3, 0),
        ("08437", "tuxa", "Tứ Xã", _X, 13, 2, 1, 1, 1, 2, 0),
        ("08440", "bannguyen", "Bản Nguyên", _X, 14, 1, 1, 1, 1, 2, 0),
        ("08443", "kinhke", "Kinh Kệ", _X, 12, 2, 1, 0, 1, 2, 1),
        ("08446", "phungnguyen", "Phùng Nguyên", _X, 15, 1, 1, 1, 0, 2, 0),
        ("08449", "xuanlung", "Xuân Lũng", _X, 13, 1, 1, 0, 1, 1, 0),
    )
)

#: The notice's date: the demo state holds at the end of this day (Asia/Ho_Chi_Minh).
DEMO_DAY: Final = dt.date(2023, 7, 31)


def demo_inventory() -> list[InventoryDevice]:
    """The 200 clusters, commune by commune, in B2 order."""
    devices: list[InventoryDevice] = []
    for c_index, commune in enumerate(COMMUNES):
        for n in range(1, commune.total + 1):
            i = len(devices)
            devices.append(
                InventoryDevice(
                    device_id=f"lt-{commune.slug}-{n:02d}",
                    commune_code=commune.code,
                    commune_name=commune.name,
                    commune_kind=commune.kind,
                    district=DISTRICT,
                    province=PROVINCE,
                    address=f"Khu {(n - 1) // 3 + 1}, {commune.kind.value} {commune.name}",
                    latitude=round(21.28 + 0.012 * (c_index % 5) + 0.0011 * n, 5),
                    longitude=round(105.24 + 0.015 * (c_index // 5) + 0.0009 * n, 5),
                    contractor=CONTRACTORS[c_index % 2],
                    sim_iccid=f"8984048{2000000000 + 7919 * i:012d}",
                    sim_phone=f"09{(41000000 + 3571 * i) % 100000000:08d}",
                    install_date=(
                        dt.date(2021, 9, 1) + dt.timedelta(days=5 * c_index + n % 4)
                    ).isoformat(),
                    position=i,
                )
            )
    return devices


def demo_statuses(as_of: float) -> list[DeviceStatus]:
    """Every cluster's status at ``as_of`` (UNIX time) in the demo state.

    Per commune, the broken clusters are the last ones of the commune, in the
    order no-signal, network, SIM, unknown; the first ``in_repair`` of them are
    in repair. Unknown ones that did report were last seen 10 days before
    ``as_of`` (so the note "mất kết nối quá 7 ngày" shows); the others broke 3
    days before and were last seen an hour before.
    """
    day = 86400.0
    statuses: list[DeviceStatus] = []
    for commune in COMMUNES:
        causes = (
            [B2Cause.NO_STATION_SIGNAL] * commune.no_signal
            + [B2Cause.UNSTABLE_NETWORK] * commune.network
            + [B2Cause.SIM_FAILURE] * commune.sim
            + [B2Cause.UNKNOWN] * commune.unknown
        )
        first_broken = commune.total - len(causes) + 1
        never_from = commune.total - commune.never_reported + 1
        for n in range(1, commune.total + 1):
            device_id = f"lt-{commune.slug}-{n:02d}"
            if n < first_broken:
                statuses.append(
                    DeviceStatus(
                        device_id=device_id,
                        commune_code=commune.code,
                        status=Status.WORKING,
                        online=True,
                        since=as_of - 60 * day,
                        last_seen=as_of - 120.0,
                    )
                )
                continue
            k = n - first_broken
            cause = causes[k]
            if n >= never_from:
                statuses.append(
                    DeviceStatus(
                        device_id=device_id,
                        commune_code=commune.code,
                        status=Status.BROKEN,
                        cause=B2Cause.UNKNOWN,
                        in_repair=k < commune.in_repair,
                        never_reported=True,
                    )
                )
                continue
            silent = cause is B2Cause.UNKNOWN
            statuses.append(
                DeviceStatus(
                    device_id=device_id,
                    commune_code=commune.code,
                    status=Status.BROKEN,
                    cause=cause,
                    in_repair=k < commune.in_repair,
                    online=not silent and cause is not B2Cause.UNSTABLE_NETWORK,
                    since=as_of - (10 if silent else 3) * day,
                    last_seen=as_of - (10 * day if silent else 3600.0),
                )
            )
    return statuses


def demo_timelines(as_of: float) -> list[StatusTimeline]:
    """July as the demo state implies it: every cluster that reported worked from
    the start of the month until its status at ``as_of`` began."""
    out = []
    for s in demo_statuses(as_of):
        changes: tuple[tuple[float, Status], ...] = ()
        if s.status is Status.BROKEN and s.since is not None:
            changes = ((s.since, Status.BROKEN),)
        out.append(
            StatusTimeline(
                device_id=s.device_id,
                commune_code=s.commune_code,
                counted_from=None,
                initial=None if s.never_reported else Status.WORKING,
                changes=changes,
            )
        )
    return out


def demo_table(lang: str = "vi") -> B2Table:
    """The demo district's B2 table as of :data:`DEMO_DAY` (end of day, Asia/Ho_Chi_Minh),
    with July's evaluation."""
    as_of = end_of_day(DEMO_DAY, zone(DEFAULT_TZ))
    inventory = demo_inventory()
    table = compute_b2(inventory, demo_statuses(as_of.timestamp()), as_of=as_of, lang=lang)
    evaluation = evaluate(
        inventory,
        demo_timelines(as_of.timestamp()),
        start=month_start(as_of),
        end=as_of,
        label=lambda d: commune_label(d.commune_kind, d.commune_name, lang),
        lang=lang,
    )
    return replace(table, evaluation=evaluation)


def write_samples(directory: Path) -> list[Path]:
    """Write the demo inventory and every B2 export (Vietnamese, plus English JSON) there."""
    from collector.exports import Format, render
    from collector.inventory import inventory_to_csv, inventory_to_xlsx

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def put(name: str, body: bytes) -> None:
        path = directory / name
        path.write_bytes(body)
        written.append(path)

    inventory = demo_inventory()
    put("inventory-lam-thao.csv", inventory_to_csv(inventory))
    put("inventory-lam-thao.xlsx", inventory_to_xlsx(inventory))
    table = demo_table("vi")
    for fmt in Format:
        put(f"b2-lam-thao-2023-07-31.{fmt.value}", render(table, fmt).body)
    put("b2-lam-thao-2023-07-31.en.html", render(demo_table("en"), Format.HTML).body)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m collector.b2.demo [DIR]``: write the samples (default docs/samples)."""
    parser = argparse.ArgumentParser(prog="python -m collector.b2.demo", description=__doc__)
    parser.add_argument("directory", nargs="?", default="docs/samples", type=Path)
    args = parser.parse_args(argv)
    for path in write_samples(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
