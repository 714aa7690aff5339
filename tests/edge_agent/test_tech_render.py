"""Words for a person: widths with Vietnamese letters, aligned tables, colour rules."""

from __future__ import annotations

import io
import os
import pty

import pytest

from edge_agent.tech.render import Painter, duration, label, table, use_colour, width


def test_width_counts_what_a_terminal_shows() -> None:
    assert width("Mạng chập chờn") == 14
    # The same words with decomposed marks (NFD) take the same columns.
    import unicodedata

    assert width(unicodedata.normalize("NFD", "Mạng chập chờn")) == 14
    assert width("\x1b[31mlỗi\x1b[0m") == 3


def test_table_aligns_columns_whatever_the_letters() -> None:
    text = table([["Thiết bị", "dev-001"], ["Sóng", "RSRP -95 dBm"], ["Amply", "bật"]])
    starts = {
        width(line[: line.index(v)])
        for line, v in zip(text.splitlines(), ["dev", "RSRP", "bật"], strict=True)
    }
    assert starts == {10}


def test_table_with_colour_still_aligns() -> None:
    p = Painter(True)
    text = table([[p("Modem", "bold"), "x"], ["Amply", "z"]])
    a, b = text.splitlines()
    assert width(a[: a.index("x")]) == width(b[: b.index("z")])


def test_no_colour_when_not_a_terminal_or_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert not use_colour(io.StringIO())
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty_out:
            assert use_colour(tty_out)
            monkeypatch.setenv("NO_COLOR", "1")
            assert not use_colour(tty_out)
    finally:
        os.close(master)
        os.close(slave)
    assert Painter(False)("lỗi", "red") == "lỗi"
    assert Painter(True)("lỗi", "red") == "\x1b[31mlỗi\x1b[0m"


def test_labels_and_durations_in_both_languages() -> None:
    assert label("faults", "vi") == "Lỗi đang có" and label("faults", "en") == "Active faults"
    assert duration(90, "en") == "90 s"
    assert duration(600, "vi") == "10 phút"
    assert duration(3 * 86400, "en") == "3.0 days"
