"""Logging setup for the `ussycode` command (library modules only call getLogger)."""

from __future__ import annotations

import logging
import sys


def configure(level: str) -> None:
    """Send log records to stderr with a timestamp, level and module name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("asyncssh").setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
