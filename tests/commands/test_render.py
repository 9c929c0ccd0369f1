"""Text rendering: styles, tables fitted to a width, sizes, durations and charts."""

from __future__ import annotations

import pytest

from ussycode.commands.render import PLAIN, Style, bucket, human_bytes, human_duration, sparkline, table


def test_style_plain_has_no_escapes() -> None:
    assert PLAIN.paint("x", "bold", "red") == "x"
    assert PLAIN.state("running") == "running"


def test_style_color_wraps() -> None:
    style = Style(color=True)
    assert style.paint("x", "bold", "red") == "\x1b[1;31mx\x1b[0m"
    assert style.state("running") == "\x1b[32mrunning\x1b[0m"
    assert style.paint("", "bold") == ""


def test_table_plain_columns() -> None:
    text = table(["name", "state"], [["mild-owl", "running"], ["x", "stopped"]])
    assert text.splitlines() == ["NAME      STATE", "mild-owl  running", "x         stopped"]


def test_table_fits_width() -> None:
    rows = [["mild-owl", "https://mild-owl.ussy.localhost/some/very/long/path"]]
    text = table(["name", "url"], rows, Style(width=30), shrink=[1])
    assert all(len(line) <= 30 for line in text.splitlines())
    assert text.splitlines()[1].endswith("…")


def test_table_shrink_stops_at_minimum() -> None:
    rows = [["a" * 40, "b" * 40]]
    text = table(["first", "second"], rows, Style(width=10), shrink=[1])
    assert text.splitlines()[1] == "a" * 40 + "  " + "b" * 7 + "…"


def test_table_colour_does_not_change_widths() -> None:
    style = Style(color=True)
    text = table(["state", "x"], [["running", "1"], ["stopped", "2"]], style, paint={0: style.state})
    plain = [
        line.replace("\x1b[32m", "").replace("\x1b[2m", "").replace("\x1b[0m", "").replace("\x1b[1m", "")
        for line in text.splitlines()
    ]
    assert plain == ["STATE    X", "running  1", "stopped  2"]


def test_human_bytes() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 1024**3) == "3.0 GiB"
    assert human_bytes(5 * 1024**4) == "5.0 TiB"


def test_human_duration() -> None:
    assert human_duration(45) == "45s"
    assert human_duration(125) == "2m"
    assert human_duration(3 * 3600 + 300) == "3h 5m"
    assert human_duration(2 * 86400 + 4 * 3600) == "2d 4h"
    assert human_duration(-3) == "0s"


def test_sparkline_scale_and_gaps() -> None:
    assert sparkline([0, 50, 100]) == "▁▅█"
    assert sparkline([None, 100, None]) == " █ "
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([10, 200], top=100) == "▂█"


def test_bucket_averages_slots() -> None:
    points = [(0.0, 10.0), (1.0, 20.0), (5.0, 40.0), (99.0, 7.0), (200.0, 1.0)]
    assert bucket(points, 0.0, 100.0, 4) == [pytest.approx(70 / 3), None, None, 7.0]
    assert bucket(points, 0.0, 10.0, 2) == [15.0, 40.0]
