"""The exception tree of ussycode.

Every error that the platform raises on purpose derives from `UssycodeError`. Subclasses group
errors by how a caller reacts to them, not by where they come from:

    UssycodeError
    ├── ConfigError        a setting is invalid; the server must not start
    ├── InvalidInput       the user's input is malformed; fix the command and retry
    ├── NotFound           the named object does not exist (or belongs to someone else)
    ├── Conflict           the object exists, or is in a state that forbids the action
    ├── PermissionDenied   the caller may not do this
    ├── QuotaExceeded      the action would pass a limit
    ├── RuntimeFailure     a child process or system command failed (QEMU, Caddy, ip, nft)
    └── StoreError         the SQLite store failed

Third-party exceptions (sqlite3, asyncssh, aiohttp, subprocess) are translated at module
boundaries with ``raise ... from exc`` so that they never cross into the command layer.
"""

from __future__ import annotations


class UssycodeError(Exception):
    """Root of all ussycode errors; `message` is the text a user reads."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(UssycodeError):
    """A setting has an invalid value."""


class InvalidInput(UssycodeError):
    """A command or request is malformed."""


class NotFound(UssycodeError):
    """The named object does not exist or is not visible to the caller."""


class Conflict(UssycodeError):
    """The object already exists or is in a state that forbids the action."""


class PermissionDenied(UssycodeError):
    """The caller may not perform the action."""


class QuotaExceeded(UssycodeError):
    """The action would pass a resource limit."""


class RuntimeFailure(UssycodeError):
    """A child process or system command failed.

    `output` holds the tail of what the process printed, for logs and for the VM's log.
    """

    def __init__(self, message: str, *, output: str = "", returncode: int | None = None) -> None:
        super().__init__(message)
        self.output = output
        self.returncode = returncode


class StoreError(UssycodeError):
    """The SQLite store failed."""
