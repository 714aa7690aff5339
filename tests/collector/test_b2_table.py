"""The pure B2 table: the demo district's exact figures, roll-ups, edge cases, invariants."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.b2 import CAUSES, B2Table, Scope, compute_b2, end_of_day, zone
from collector.b2.demo import DEMO_DAY, demo_inventory, demo_statuses
from collector.model import CommuneKind, DeviceStatus, InventoryDevice, Status
from fleet_protocol import B2Cause

TZ = zone()
AS_OF = end_of_day(DEMO_DAY, TZ)

# unit, total, working, broken, in repair, not repaired,
# then causes in B2Cause order: no signal, network, SIM, amplifier, power, receiver, unknown;
# then notes.
EXPECTED = [
    ("Thị trấn Lâm Thao", 18, 16, 2, 2, 0, 1, 1, 0, 0, 0, 0, 0, ""),
    ("Thị trấn Hùng Sơn", 16, 12, 4, 3, 1, 2, 0, 1, 0, 0, 0, 1, "1 cụm loa mất kết nối quá 7 ngày"),
    ("Xã Xuân Huy", 15, 13, 2, 1, 1, 0, 1, 0, 0, 0, 0, 1, "1 cụm loa chưa từng báo cáo"),
    ("Xã Tiên Kiên", 14, 13, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, ""),
    ("Xã Thạch Sơn", 15, 8, 7, 3, 4, 3, 1, 1, 0, 0, 0, 2, "2 cụm loa chưa từng báo cáo"),
    (
        "Xã Vĩnh Lại",
        13,
        7,
        6,
        2,
        4,
        2,
        1,
        1,
        0,
        0,
        0,
        2,
        "1 cụm loa chưa từng báo cáo; 1 cụm loa mất kết nối quá 7 ngày",
    ),
    ("Xã Sơn Vi", 14, 11, 3, 2, 1, 1, 1, 0, 0, 0, 0, 1, "1 cụm loa mất kết nối quá 7 ngày"),
    ("Xã Sơn Dương", 12, 8, 4, 2, 2, 2, 0, 1, 0, 0, 0, 1, "1 cụm loa mất kết nối quá 7 ngày"),
    ("Xã Cao Xá", 16, 12, 4, 3, 1, 1, 2, 0, 0, 0, 0, 1, "1 cụm loa mất kết nối quá 7 ngày"),
    ("Xã Tứ Xã", 13, 8, 5, 2, 3, 2, 1, 1, 0, 0, 0, 1, "1 cụm loa mất kết nối quá 7 ngày"),
    ("Xã Bản Nguyên", 14, 10, 4, 2, 2, 1, 1, 1, 0, 0, 0, 1, "1 cụm loa mất kết nối quá 7 ngày"),
    ("Xã Kinh Kệ", 12, 8, 4, 2, 2, 2, 0, 1, 0, 0, 0, 1, "1 cụm loa chưa từng báo cáo"),
    ("Xã Phùng Nguyên", 15, 12, 3, 2, 1, 1, 1, 0, 0, 0, 0, 1, "1 cụm loa mất kết nối quá 7 ngày"),
    ("Xã Xuân Lũng", 13, 10, 3, 1, 2, 1, 0, 1, 0, 0, 0, 1, "1 cụm loa mất kết nối quá 7 ngày"),
]
EXPECTED_TOTAL = (
    "Tổng cộng", 200, 148, 52, 28, 24, 20, 10, 8, 0, 0, 0, 14,
    "5 cụm loa chưa từng báo cáo; 9 cụm loa mất kết nối quá 7 ngày",
)  # fmt: skip
EXPECTED_SENTENCE = (
    "Về tình hình hoạt động của hệ thống truyền thanh cơ sở (tính đến ngày 31/7/2023)"
    " có 148 cụm loa hoạt động tốt; 52 cụm loa hỏng không hoạt động (trong đó: 28 cụm loa"
    " hỏng đang được sửa chữa và 24 cụm loa hỏng chưa được sửa chữa) do không tiếp được"
    " sóng của đài; không rõ nguyên nhân; do mạng chập chờn; do cháy SIM, lỗi SIM."
)


def _figures(table: B2Table) -> list[tuple[object, ...]]:
    return [
        (r.unit, r.total, r.working, r.broken, r.in_repair, r.not_repaired, *r.causes, r.notes)
        for r in table.all_rows()
    ]


def demo() -> B2Table:
    return compute_b2(demo_inventory(), demo_statuses(AS_OF.timestamp()), as_of=AS_OF)


def test_demo_district_gives_exactly_the_expected_table_and_sentence() -> None:
    table = demo()
    assert _figures(table) == [*EXPECTED, EXPECTED_TOTAL]
    assert [r.stt for r in table.all_rows()] == [*range(1, 15), None]
    assert table.summary == EXPECTED_SENTENCE
    assert table.unit_name == "Huyện Lâm Thao, Tỉnh Phú Thọ"
    assert table.total.causes_text == (
        "Không tiếp được sóng của đài (20); Không rõ nguyên nhân (14); "
        "Mạng chập chờn (10); Cháy SIM, lỗi SIM (8)"
    )
    assert table.unlisted == ()
    _check_invariants(table)


def test_english_labels() -> None:
    inventory = demo_inventory()
    table = compute_b2(inventory, demo_statuses(AS_OF.timestamp()), as_of=AS_OF, lang="en")
    assert table.rows[0].unit == "Lâm Thao township"
    assert table.rows[2].unit == "Xuân Huy commune"
    assert table.total.unit == "Total"
    assert table.total.notes == "5 clusters never reported; 9 clusters offline for over 7 days"
    assert table.summary.startswith(
        "Status of the commune radio system as of 31 July 2023: 148 speaker clusters working;"
        " 52 speaker clusters broken (of which 28 under repair and 24 not yet repaired),"
        " due to no station signal; cause unknown; due to unstable network;"
    )


def test_inventory_devices_without_status_count_as_never_reported_and_strangers_are_listed() -> (
    None
):
    inventory = demo_inventory()[:3]
    stranger = DeviceStatus(device_id="zz-stranger", commune_code="x", status=Status.WORKING)
    statuses = [
        DeviceStatus(
            device_id=inventory[0].device_id,
            commune_code=inventory[0].commune_code,
            status=Status.WORKING,
            online=True,
        ),
        DeviceStatus(
            device_id=inventory[1].device_id,
            commune_code=inventory[1].commune_code,
            status=Status.BROKEN,  # no cause given: counted as unknown
        ),
        stranger,
    ]
    table = compute_b2(inventory, statuses, as_of=AS_OF)
    (row,) = table.rows
    assert (row.total, row.working, row.broken, row.not_repaired) == (3, 1, 2, 2)
    assert row.cause(B2Cause.UNKNOWN) == 2
    assert row.never_reported == 1
    assert row.notes == "1 cụm loa chưa từng báo cáo"
    assert table.unlisted == ("zz-stranger",)


def test_two_statuses_for_one_device_is_a_caller_error() -> None:
    device = demo_inventory()[0]
    status = DeviceStatus(device_id=device.device_id, commune_code="x", status=Status.WORKING)
    with pytest.raises(ValueError, match="two statuses"):
        compute_b2([device], [status, status], as_of=AS_OF)


def test_naive_as_of_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        compute_b2([], [], as_of=dt.datetime(2023, 7, 31))


def test_empty_inventory_gives_a_zero_total_row() -> None:
    table = compute_b2([], [], as_of=AS_OF)
    assert table.rows == ()
    assert (table.total.total, table.total.broken) == (0, 0)
    assert table.summary.endswith("chưa có cụm loa nào trong danh mục.")


def _device(i: int, district: str, province: str, commune: str) -> InventoryDevice:
    return InventoryDevice(
        device_id=f"dev-{i:03d}",
        commune_code=commune,
        commune_name=commune.upper(),
        district=district,
        province=province,
        position=i,
    )


def test_rolls_up_to_district_and_province_in_inventory_order_and_filters() -> None:
    inventory = [
        _device(0, "Huyện Phù Ninh", "Tỉnh Phú Thọ", "c1"),
        _device(1, "Huyện Lâm Thao", "Tỉnh Phú Thọ", "c2"),
        _device(2, "Huyện Phù Ninh", "Tỉnh Phú Thọ", "c1"),
        _device(3, "Huyện Sông Lô", "Tỉnh Vĩnh Phúc", "c3"),
    ]
    statuses = [
        DeviceStatus(device_id="dev-000", commune_code="c1", status=Status.WORKING, online=True),
        DeviceStatus(
            device_id="dev-001",
            commune_code="c2",
            status=Status.BROKEN,
            cause=B2Cause.POWER,
            in_repair=True,
        ),
        DeviceStatus(
            device_id="dev-002", commune_code="c1", status=Status.BROKEN, cause=B2Cause.POWER
        ),
        DeviceStatus(device_id="dev-003", commune_code="c3", status=Status.WORKING, online=True),
    ]
    by_district = compute_b2(inventory, statuses, as_of=AS_OF, scope=Scope.DISTRICT)
    assert [(r.unit, r.total, r.broken, r.in_repair) for r in by_district.rows] == [
        ("Huyện Phù Ninh", 2, 1, 0),
        ("Huyện Lâm Thao", 1, 1, 1),
        ("Huyện Sông Lô", 1, 0, 0),
    ]
    assert by_district.unit_name == "Toàn bộ danh mục"
    by_province = compute_b2(inventory, statuses, as_of=AS_OF, scope=Scope.PROVINCE)
    assert [(r.unit, r.total, r.cause(B2Cause.POWER)) for r in by_province.rows] == [
        ("Tỉnh Phú Thọ", 3, 2),
        ("Tỉnh Vĩnh Phúc", 1, 0),
    ]
    one_province = compute_b2(
        inventory, statuses, as_of=AS_OF, scope=Scope.DISTRICT, province="Tỉnh Phú Thọ"
    )
    assert one_province.unit_name == "Tỉnh Phú Thọ"
    assert [r.unit for r in one_province.rows] == ["Huyện Phù Ninh", "Huyện Lâm Thao"]
    assert one_province.unlisted == ()  # dev-003 is in the inventory, just filtered out
    one_district = compute_b2(inventory, statuses, as_of=AS_OF, district="Huyện Phù Ninh")
    assert [(r.unit, r.total) for r in one_district.rows] == [("Xã C1", 2)]
    for table in (by_district, by_province, one_province, one_district):
        _check_invariants(table)


def test_commune_label_does_not_repeat_the_kind() -> None:
    device = InventoryDevice(
        device_id="dev-001",
        commune_code="1",
        commune_name="thị trấn Hùng Sơn",
        commune_kind=CommuneKind.THI_TRAN,
    )
    table = compute_b2([device], [], as_of=AS_OF)
    assert table.rows[0].unit == "Thị trấn Hùng Sơn"


def test_offline_note_counts_only_devices_silent_longer_than_offline_days() -> None:
    t = AS_OF.timestamp()
    inventory = [_device(i, "D", "P", "c") for i in range(3)]
    statuses = [
        DeviceStatus(
            device_id="dev-000",
            commune_code="c",
            status=Status.BROKEN,
            cause=B2Cause.UNSTABLE_NETWORK,
            last_seen=t - 3 * 86400,
        ),
        DeviceStatus(
            device_id="dev-001",
            commune_code="c",
            status=Status.BROKEN,
            cause=B2Cause.UNSTABLE_NETWORK,
            last_seen=t - 8 * 86400,
        ),
        DeviceStatus(
            device_id="dev-002",
            commune_code="c",
            status=Status.BROKEN,
            cause=B2Cause.UNSTABLE_NETWORK,
            online=True,  # online devices are never "mất kết nối"
            last_seen=t - 30 * 86400,
        ),
    ]
    assert compute_b2(inventory, statuses, as_of=AS_OF).total.offline_long == 1
    table = compute_b2(inventory, statuses, as_of=AS_OF, offline_days=2.5)
    assert table.total.notes == "2 cụm loa mất kết nối quá 2.5 ngày"


def _check_invariants(table: B2Table) -> None:
    for row in table.all_rows():
        assert row.total == row.working + row.broken
        assert row.broken == row.in_repair + row.not_repaired
        assert sum(row.causes) == row.broken
        assert row.never_reported <= row.cause(B2Cause.UNKNOWN)
    total = table.total
    for name in ("total", "working", "broken", "in_repair", "not_repaired", "never_reported"):
        assert getattr(total, name) == sum(getattr(r, name) for r in table.rows), name
    assert total.causes == tuple(sum(r.causes[i] for r in table.rows) for i in range(len(CAUSES)))


_communes = st.sampled_from(["c1", "c2", "c3", "c4", "c5"])


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[InventoryDevice], list[DeviceStatus]]:
    n = draw(st.integers(min_value=0, max_value=60))
    inventory: list[InventoryDevice] = []
    statuses: list[DeviceStatus] = []
    positions = draw(st.permutations(list(range(n))))
    for i in range(n):
        commune = draw(_communes)
        inventory.append(
            InventoryDevice(
                device_id=f"dev-{i:03d}",
                commune_code=commune,
                commune_name=commune,
                district=draw(st.sampled_from(["D1", "D2"])),
                province=draw(st.sampled_from(["P1", "P2"])),
                position=positions[i],
            )
        )
        if draw(st.booleans()) and draw(st.booleans()):
            continue  # no status at all: never reported
        broken = draw(st.booleans())
        statuses.append(
            DeviceStatus(
                device_id=f"dev-{i:03d}",
                commune_code=commune,
                status=Status.BROKEN if broken else Status.WORKING,
                cause=draw(st.none() | st.sampled_from(list(B2Cause))) if broken else None,
                in_repair=draw(st.booleans()),
                online=draw(st.booleans()),
                never_reported=draw(st.booleans()) and draw(st.booleans()),
                last_seen=draw(
                    st.none() | st.floats(AS_OF.timestamp() - 40 * 86400, AS_OF.timestamp())
                ),
            )
        )
    return inventory, statuses


@settings(max_examples=150, deadline=None)
@given(fleet=fleets(), scope=st.sampled_from(list(Scope)), lang=st.sampled_from(["vi", "en"]))
def test_invariants_hold_on_random_fleets(
    fleet: tuple[list[InventoryDevice], list[DeviceStatus]], scope: Scope, lang: str
) -> None:
    inventory, statuses = fleet
    table = compute_b2(inventory, statuses, as_of=AS_OF, scope=scope, lang=lang)
    _check_invariants(table)
    assert table.total.total == len(inventory)
    first_seen = list(
        dict.fromkeys(
            {Scope.COMMUNE: d.commune_code, Scope.DISTRICT: d.district, Scope.PROVINCE: d.province}[
                scope
            ]
            for d in sorted(inventory, key=lambda d: d.position)
        )
    )
    assert [r.key for r in table.rows] == first_seen
    assert f" {table.total.working} " in f" {table.summary} " or table.total.working == 0
