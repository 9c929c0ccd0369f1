from __future__ import annotations

import logging

from ussycode.logs import MAX_MESSAGE_CHARS, SafeFormatter


def format_message(message: str, *args: object) -> str:
    record = logging.LogRecord("ussycode.test", logging.INFO, __file__, 1, message, args, None)
    return SafeFormatter("%(levelname)s %(message)s").format(record)


def test_logs_escape_forged_lines() -> None:
    line = format_message("command failed: %s", 'unknown "x\n2026-12-04 CRITICAL forged"\x1b[2J')
    assert "\n" not in line
    assert "\\n2026-12-04 CRITICAL forged" in line
    assert "\\x1b[2J" in line


def test_logs_cut_long_messages() -> None:
    line = format_message("%s", "a" * (MAX_MESSAGE_CHARS * 3))
    assert len(line) < MAX_MESSAGE_CHARS + 100
    assert line.endswith(f"({MAX_MESSAGE_CHARS * 3} chars)")


def test_logs_keep_tracebacks() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info()
        )
    text = SafeFormatter("%(message)s").format(record)
    assert text.startswith("failed\nTraceback")
