"""Month-over-month comparison of two B2 moments."""

from __future__ import annotations

from collector.b2 import compare_statuses, end_of_day, previous_month_end, zone
from collector.b2.demo import DEMO_DAY, demo_inventory, demo_statuses
from collector.model import DeviceStatus, InventoryDevice, Status
from fleet_protocol import B2Cause

AFTER = end_of_day(DEMO_DAY, zone())
BEFORE = previous_month_end(AFTER)


def _inv(i: int, commune: str) -> InventoryDevice:
    return InventoryDevice(
        device_id=f"dev-{i:02d}", commune_code=commune, commune_name=commune, position=i
    )


def _st(i: int, commune: str, broken: bool) -> DeviceStatus:
    return DeviceStatus(
        device_id=f"dev-{i:02d}",
        commune_code=commune,
        status=Status.BROKEN if broken else Status.WORKING,
        cause=B2Cause.POWER if broken else None,
    )


def test_newly_broken_repaired_still_broken_and_trends() -> None:
    inventory = [_inv(0, "A"), _inv(1, "A"), _inv(2, "B"), _inv(3, "B"), _inv(4, "C")]
    before = [_st(0, "A", True), _st(1, "A", True), _st(2, "B", False), _st(3, "B", False)]
    after = [
        _st(0, "A", False),
        _st(1, "A", True),
        _st(2, "B", True),
        _st(3, "B", True),
        _st(4, "C", False),
    ]  # dev-04 had no status before: never reported (broken), now working
    result = compare_statuses(inventory, before, after, before_at=BEFORE, after_at=AFTER)
    assert result.newly_broken == ("dev-02", "dev-03")
    assert result.repaired == ("dev-00", "dev-04")
    assert result.still_broken == ("dev-01",)
    assert [(t.unit, t.delta) for t in result.improving] == [("Xã A", -1), ("Xã C", -1)]
    assert [(t.unit, t.delta) for t in result.worsening] == [("Xã B", 2)]
    assert result.sentence == (
        "So với ngày 30/6/2023: 2 cụm loa mới hỏng, 2 cụm loa đã được khắc phục,"
        " 1 cụm loa vẫn còn hỏng; các đơn vị có chuyển biến tốt: Xã A (giảm 1),"
        " Xã C (giảm 1); các đơn vị có thêm cụm loa hỏng: Xã B (tăng 2)."
    )
    english = compare_statuses(
        inventory, before, after, before_at=BEFORE, after_at=AFTER, lang="en"
    )
    assert english.sentence == (
        "Compared with 30/6/2023: 2 newly broken, 2 repaired, 1 still broken;"
        " improving: A commune (-1), C commune (-1); worsening: B commune (+2)."
    )


def test_no_change_reads_naturally() -> None:
    inventory = demo_inventory()
    same = demo_statuses(AFTER.timestamp())
    result = compare_statuses(inventory, same, same, before_at=BEFORE, after_at=AFTER)
    assert (len(result.newly_broken), len(result.repaired), len(result.still_broken)) == (0, 0, 52)
    assert result.improving == result.worsening == ()
    assert result.sentence == (
        "So với ngày 30/6/2023: không có cụm loa nào mới hỏng, không có cụm loa nào được"
        " khắc phục, 52 cụm loa vẫn còn hỏng."
    )
