"""Logging setup for the `ussycode` command (library modules only call getLogger)."""

from __future__ import annotations

import logging
import sys

MAX_MESSAGE_CHARS = 2000
# Control characters (newlines, ESC) in a message could forge log lines or drive a terminal that
# shows the log; they are written as escapes such as \n and \x1b.
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


class SafeFormatter(logging.Formatter):
    """Escapes control characters in messages and cuts messages at MAX_MESSAGE_CHARS."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message.translate(_CONTROL)
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + f"… ({len(message)} chars)"
        record.message = message
        return super().formatMessage(record)


def configure(level: str) -> None:
    """Send log records to stderr with a timestamp, level and module name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("asyncssh").setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
