"""The B2 summary sentence, as the district's monthly notice writes it.

"Về tình hình hoạt động của hệ thống truyền thanh cơ sở (tính đến ngày
31/7/2023) có 148 cụm loa hoạt động tốt; 52 cụm loa hỏng không hoạt động
(trong đó: 28 cụm loa hỏng đang được sửa chữa và 24 cụm loa hỏng chưa được
sửa chữa) do không tiếp được sóng của đài; không rõ nguyên nhân; do mạng
chập chờn; do cháy SIM, lỗi SIM."

Causes are named by their labels, most frequent first (ties in B2 table
order); the wording stays grammatical when a count is zero or a part is
missing (no broken clusters, none in repair, all in repair, one cause).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from collector.b2.dates import short_date
from fleet_protocol import B2Cause


def ranked_causes(causes: Mapping[B2Cause, int]) -> list[tuple[B2Cause, int]]:
    """Causes with a non-zero count, most frequent first, ties in B2Cause order."""
    order = {cause: i for i, cause in enumerate(B2Cause)}
    present = [(c, n) for c, n in causes.items() if n > 0]
    return sorted(present, key=lambda item: (-item[1], order[item[0]]))


def _lcfirst(text: str) -> str:
    return text[:1].lower() + text[1:]


def _cause_phrase(cause: B2Cause, lang: str) -> str:
    if lang == "en":
        return (
            "cause unknown" if cause is B2Cause.UNKNOWN else "due to " + _lcfirst(cause.label("en"))
        )
    label = _lcfirst(cause.label("vi"))
    return label if cause is B2Cause.UNKNOWN else "do " + label


def summary_sentence(
    *,
    day: dt.date,
    working: int,
    in_repair: int,
    not_repaired: int,
    causes: Mapping[B2Cause, int],
    lang: str = "vi",
    no_data: bool = False,
) -> str:
    """The summary paragraph for these counts as of ``day`` ("vi" or "en");
    ``no_data``: no cluster counted yet at that date (:func:`no_data_sentence`)."""
    if min(working, in_repair, not_repaired, *causes.values(), 0) < 0:
        raise ValueError("counts must not be negative")
    broken = in_repair + not_repaired
    phrases = [_cause_phrase(c, lang) for c, _ in ranked_causes(causes)]
    if no_data:
        return no_data_sentence(day, lang)
    if lang == "en":
        return _english(day, working, broken, in_repair, not_repaired, phrases)
    return _vietnamese(day, working, broken, in_repair, not_repaired, phrases)


def no_data_sentence(day: dt.date, lang: str = "vi") -> str:
    """What the report says for a date before any listed cluster existed."""
    if lang == "en":
        return (
            f"No data as of {day.day} {day:%B} {day.year}: no speaker cluster of the inventory"
            " had been installed, listed or heard from by then."
        )
    return (
        f"Không có dữ liệu (tính đến ngày {short_date(day)}): chưa có cụm loa nào trong danh mục"
        " được lắp đặt, đưa vào danh mục hoặc báo cáo."
    )


def _vietnamese(
    day: dt.date, working: int, broken: int, in_repair: int, not_repaired: int, phrases: list[str]
) -> str:
    head = (
        f"Về tình hình hoạt động của hệ thống truyền thanh cơ sở (tính đến ngày {short_date(day)})"
    )
    if working + broken == 0:
        return f"{head} chưa có cụm loa nào trong danh mục."
    good = (
        f"có {working} cụm loa hoạt động tốt" if working else "không có cụm loa nào hoạt động tốt"
    )
    if broken == 0:
        return f"{head} {good}; không có cụm loa nào hỏng."
    if in_repair and not_repaired:
        detail = (
            f" (trong đó: {in_repair} cụm loa hỏng đang được sửa chữa"
            f" và {not_repaired} cụm loa hỏng chưa được sửa chữa)"
        )
    else:
        state = "đang được sửa chữa" if in_repair else "chưa được sửa chữa"
        detail = f" ({state})" if broken == 1 else f" (tất cả {state})"
    why = ""
    if phrases:
        # "(...) do X" reads on, but "(...) không rõ nguyên nhân" needs a comma.
        why = (" " if phrases[0].startswith("do ") else ", ") + "; ".join(phrases)
    return f"{head} {good}; {broken} cụm loa hỏng không hoạt động{detail}{why}."


def _clusters(n: int) -> str:
    return f"{n} speaker cluster" + ("" if n == 1 else "s")


def _english(
    day: dt.date, working: int, broken: int, in_repair: int, not_repaired: int, phrases: list[str]
) -> str:
    head = f"Status of the commune radio system as of {day.day} {day:%B} {day.year}:"
    if working + broken == 0:
        return f"{head} no speaker clusters in the inventory."
    good = f"{_clusters(working)} working" if working else "no speaker clusters working"
    if broken == 0:
        return f"{head} {good}; none broken."
    if in_repair and not_repaired:
        detail = f" (of which {in_repair} under repair and {not_repaired} not yet repaired)"
    else:
        state = "under repair" if in_repair else "not yet repaired"
        detail = f" ({state})" if broken == 1 else f" (all {state})"
    why = ", " + "; ".join(phrases) if phrases else ""
    return f"{head} {good}; {_clusters(broken)} broken{detail}{why}."
