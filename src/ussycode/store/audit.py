"""The audit log: who changed sharing, who logged in, and which requests were denied."""

from __future__ import annotations

from dataclasses import dataclass

from ussycode.store.db import Store, utc_now


@dataclass(frozen=True)
class AuditEntry:
    """One audit record. `actor` is a handle or a description such as "anonymous from 10.0.0.9"."""

    id: int
    actor_id: int | None
    actor: str
    action: str
    target: str
    detail: str
    created_at: str


class AuditLog:
    """Appends to and reads `audit_log`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, *, actor_id: int | None, actor: str, action: str, target: str, detail: str = "") -> None:
        self.store.execute(
            "INSERT INTO audit_log (actor_id, actor, action, target, detail, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (actor_id, actor, action, target, detail, utc_now()),
        )

    def entries(
        self, *, target: str | None = None, action: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        """Return the newest entries first, optionally only for one target or one action."""
        clauses: list[str] = []
        params: list[object] = []
        if target is not None:
            clauses.append("target = ?")
            params.append(target)
        if action is not None:
            clauses.append("action = ?")
            params.append(action)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.store.execute(
            f"SELECT * FROM audit_log{where} ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return [AuditEntry(**dict(row)) for row in rows]
