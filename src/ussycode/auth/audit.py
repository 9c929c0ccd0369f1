"""Audit actions, and the rate-limited record of denied requests."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from ussycode.store.audit import AuditLog

log = logging.getLogger(__name__)


class Action(enum.StrEnum):
    """The `action` column of the audit log."""

    SET_PUBLIC = "share.set-public"
    SET_PRIVATE = "share.set-private"
    SET_PORT = "share.port"
    ADD_PERSON = "share.add"
    ADD_INVITATION = "share.invite"
    REMOVE_PERSON = "share.remove"
    REMOVE_INVITATION = "share.uninvite"
    ADD_LINK = "share.add-link"
    REMOVE_LINK = "share.remove-link"
    ALLOW_SSH = "share.access-allow"
    DISALLOW_SSH = "share.access-disallow"
    CLAIM_INVITATION = "share.claim"
    SET_EMAIL = "email.set"
    CLEAR_EMAIL = "email.clear"
    SET_SETTING = "settings.set"
    LOGIN_LINK = "login.link"
    LOGIN = "login"
    LOGIN_FAILED = "login.failed"
    LOGIN_HOST = "login.host"
    OPEN_SHARE_LINK = "login.share-link"
    LOGOUT = "logout"
    REGISTER = "user.register"
    SET_TRUST = "admin.set-trust"
    SET_LIMIT = "admin.set-limit"
    SUSPEND = "admin.suspend"
    REINSTATE = "admin.reinstate"
    ADD_USER = "admin.add-user"
    INVITE = "admin.invite"
    VM_START = "admin.vm-start"
    VM_STOP = "admin.vm-stop"
    VM_REMOVE = "admin.vm-rm"
    DENIED = "access.denied"
    DENIED_NOT_RECORDED = "access.denied.not-recorded"


class DeniedRequestLog:
    """Writes denied requests to the audit log, with a limit on how many it writes.

    In each window of `window` seconds it writes at most one entry per (client, host, status)
    and `max_per_window` entries in all. The first request after a window in which requests
    were left out writes one more entry that counts them. The counters live in memory, so a
    restart of the server starts a new window.
    """

    def __init__(
        self,
        audit: AuditLog,
        *,
        window: float = 60.0,
        max_per_window: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.audit = audit
        self.window = window
        self.max_per_window = max_per_window
        self._clock = clock
        self._window_start = clock()
        self._written: set[tuple[str, str, int]] = set()
        self._left_out = 0

    def record(
        self, *, actor_id: int | None, actor: str, client: str, host: str, status: int, reason: str
    ) -> bool:
        """Record one denied request unless the limit is reached; return whether it was written."""
        self._roll_window()
        key = (client, host, status)
        if key in self._written or len(self._written) >= self.max_per_window:
            self._left_out += 1
            return False
        self._written.add(key)
        self.audit.add(
            actor_id=actor_id,
            actor=f"{actor} from {client}",
            action=Action.DENIED,
            target=host,
            detail=f"{status} {reason}",
        )
        return True

    def _roll_window(self) -> None:
        now = self._clock()
        if now - self._window_start < self.window:
            return
        if self._left_out:
            log.info("audit: %d denied requests were not recorded (rate limit)", self._left_out)
            self.audit.add(
                actor_id=None,
                actor="platform",
                action=Action.DENIED_NOT_RECORDED,
                target="*",
                detail=f"{self._left_out} denied requests in {self.window:g} s past the audit rate limit",
            )
        self._window_start = now
        self._written.clear()
        self._left_out = 0
