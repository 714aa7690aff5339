"""The summary sentence: counts, cause order, and grammar in every corner."""

from __future__ import annotations

import datetime as dt

import pytest

from collector.b2 import ranked_causes, summary_sentence
from fleet_protocol import B2Cause as C

DAY = dt.date(2023, 7, 31)
HEAD = "Về tình hình hoạt động của hệ thống truyền thanh cơ sở (tính đến ngày 31/7/2023) "

# (working, in_repair, not_repaired, causes, expected Vietnamese tail after HEAD)
VI_CASES = [
    (
        148, 28, 24,
        {C.NO_STATION_SIGNAL: 20, C.UNKNOWN: 14, C.UNSTABLE_NETWORK: 10, C.SIM_FAILURE: 8},
        "có 148 cụm loa hoạt động tốt; 52 cụm loa hỏng không hoạt động (trong đó: 28 cụm loa"
        " hỏng đang được sửa chữa và 24 cụm loa hỏng chưa được sửa chữa) do không tiếp được"
        " sóng của đài; không rõ nguyên nhân; do mạng chập chờn; do cháy SIM, lỗi SIM.",
    ),
    (200, 0, 0, {}, "có 200 cụm loa hoạt động tốt; không có cụm loa nào hỏng."),
    (
        10, 0, 3, {C.POWER: 3},
        "có 10 cụm loa hoạt động tốt; 3 cụm loa hỏng không hoạt động"
        " (tất cả chưa được sửa chữa) do mất nguồn điện.",
    ),
    (
        10, 3, 0, {C.AMPLIFIER_SPEAKER: 2, C.POWER: 1},
        "có 10 cụm loa hoạt động tốt; 3 cụm loa hỏng không hoạt động"
        " (tất cả đang được sửa chữa) do hỏng amply, loa; do mất nguồn điện.",
    ),
    (
        5, 1, 0, {C.RECEIVER_DEVICE: 1},
        "có 5 cụm loa hoạt động tốt; 1 cụm loa hỏng không hoạt động"
        " (đang được sửa chữa) do hỏng thiết bị thu.",
    ),
    (
        5, 0, 1, {C.UNKNOWN: 1},
        "có 5 cụm loa hoạt động tốt; 1 cụm loa hỏng không hoạt động"
        " (chưa được sửa chữa), không rõ nguyên nhân.",
    ),
    (
        0, 2, 2, {C.SIM_FAILURE: 2, C.UNSTABLE_NETWORK: 2},
        "không có cụm loa nào hoạt động tốt; 4 cụm loa hỏng không hoạt động (trong đó:"
        " 2 cụm loa hỏng đang được sửa chữa và 2 cụm loa hỏng chưa được sửa chữa)"
        " do mạng chập chờn; do cháy SIM, lỗi SIM.",
    ),
    (0, 0, 0, {}, None),
]  # fmt: skip


@pytest.mark.parametrize(("working", "in_repair", "not_repaired", "causes", "tail"), VI_CASES)
def test_vietnamese_sentence(
    working: int, in_repair: int, not_repaired: int, causes: dict[C, int], tail: str | None
) -> None:
    got = summary_sentence(
        day=DAY, working=working, in_repair=in_repair, not_repaired=not_repaired, causes=causes
    )
    if tail is None:
        assert (
            got == "Về tình hình hoạt động của hệ thống truyền thanh cơ sở (tính đến ngày"
            " 31/7/2023) chưa có cụm loa nào trong danh mục."
        )
    else:
        assert got == HEAD + tail
    assert "  " not in got and " ;" not in got and not got.endswith(" .")


EN_CASES = [
    (
        148, 28, 24, {C.NO_STATION_SIGNAL: 20, C.UNKNOWN: 14},
        "148 speaker clusters working; 52 speaker clusters broken (of which 28 under repair"
        " and 24 not yet repaired), due to no station signal; cause unknown.",
    ),
    (1, 0, 0, {}, "1 speaker cluster working; none broken."),
    (0, 1, 0, {C.SIM_FAILURE: 1},
     "no speaker clusters working; 1 speaker cluster broken (under repair),"
     " due to burnt or failed SIM."),
    (3, 0, 2, {C.POWER: 2}, "3 speaker clusters working; 2 speaker clusters broken"
     " (all not yet repaired), due to power failure."),
]  # fmt: skip


@pytest.mark.parametrize(("working", "in_repair", "not_repaired", "causes", "tail"), EN_CASES)
def test_english_sentence(
    working: int, in_repair: int, not_repaired: int, causes: dict[C, int], tail: str
) -> None:
    got = summary_sentence(
        day=DAY,
        working=working,
        in_repair=in_repair,
        not_repaired=not_repaired,
        causes=causes,
        lang="en",
    )
    assert got == "Status of the commune radio system as of 31 July 2023: " + tail


def test_causes_rank_by_count_then_table_order_and_zero_counts_vanish() -> None:
    causes = {C.UNKNOWN: 3, C.POWER: 3, C.SIM_FAILURE: 5, C.NO_STATION_SIGNAL: 0}
    assert ranked_causes(causes) == [(C.SIM_FAILURE, 5), (C.POWER, 3), (C.UNKNOWN, 3)]


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        summary_sentence(day=DAY, working=-1, in_repair=0, not_repaired=0, causes={})
