"""Users' trust tiers, limit overrides and suspensions, and invitations to register."""

from __future__ import annotations

from dataclasses import dataclass

from ussycode.store.db import Store, utc_now
from ussycode.store.models import User


@dataclass(frozen=True)
class TrustRow:
    """A user's stored tier and suspension; `suspended_at` is None while they are not suspended."""

    user_id: int
    tier: str
    suspended_at: str | None
    suspended_why: str
    updated_at: str


@dataclass(frozen=True)
class Invitation:
    """An invitation; the token itself is never stored."""

    id: int
    label: str
    tier: str
    uses_left: int
    created_by: int | None
    created_at: str
    expires_at: int


class TrustStore:
    """Reads and writes `user_trust`, `user_limits` and `invitations`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def list_users(self) -> list[User]:
        """Return every user but the warm pool's own, whose handle starts with "_"."""
        rows = self.store.execute("SELECT * FROM users WHERE handle NOT LIKE '\\_%' ESCAPE '\\' ORDER BY id")
        return [User(**dict(row)) for row in rows]

    # Tiers and suspensions.

    def get(self, user_id: int) -> TrustRow | None:
        row = self.store.execute("SELECT * FROM user_trust WHERE user_id = ?", (user_id,)).fetchone()
        return TrustRow(**dict(row)) if row else None

    def set_tier(self, user_id: int, tier: str) -> None:
        self.store.execute(
            "INSERT INTO user_trust (user_id, tier, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(user_id) DO UPDATE SET tier = excluded.tier, updated_at = excluded.updated_at",
            (user_id, tier, utc_now()),
        )

    def set_suspended(self, user_id: int, tier: str, *, suspended: bool, reason: str = "") -> None:
        """Suspend or reinstate a user; `tier` is stored for a user who has no row yet."""
        now = utc_now()
        self.store.execute(
            "INSERT INTO user_trust (user_id, tier, suspended_at, suspended_why, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(user_id) DO UPDATE SET"
            " suspended_at = excluded.suspended_at, suspended_why = excluded.suspended_why,"
            " updated_at = excluded.updated_at",
            (user_id, tier, now if suspended else None, reason if suspended else "", now),
        )

    def all_rows(self) -> dict[int, TrustRow]:
        return {
            int(row["user_id"]): TrustRow(**dict(row))
            for row in self.store.execute("SELECT * FROM user_trust")
        }

    # Limit overrides, by the field names of `Limits`.

    def overrides(self, user_id: int) -> dict[str, int]:
        rows = self.store.execute("SELECT key, value FROM user_limits WHERE user_id = ?", (user_id,))
        return {str(row["key"]): int(row["value"]) for row in rows}

    def set_override(self, user_id: int, key: str, value: int) -> None:
        self.store.execute(
            "INSERT INTO user_limits (user_id, key, value, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(user_id, key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            (user_id, key, value, utc_now()),
        )

    def clear_override(self, user_id: int, key: str) -> bool:
        cursor = self.store.execute("DELETE FROM user_limits WHERE user_id = ? AND key = ?", (user_id, key))
        return cursor.rowcount > 0

    # Invitations.

    def add_invitation(
        self, token_hash: str, *, label: str, tier: str, uses: int, created_by: int | None, expires_at: int
    ) -> Invitation:
        cursor = self.store.execute(
            "INSERT INTO invitations (token_hash, label, tier, uses_left, created_by, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (token_hash, label, tier, uses, created_by, utc_now(), expires_at),
        )
        row = self.store.execute(
            "SELECT * FROM invitations WHERE id = ?", (int(cursor.lastrowid or 0),)
        ).fetchone()
        return _invitation(dict(row))

    def find_invitation(self, token_hash: str, now: int) -> Invitation | None:
        """Return the invitation if it exists, has uses left and has not expired."""
        row = self.store.execute(
            "SELECT * FROM invitations WHERE token_hash = ? AND uses_left > 0 AND expires_at > ?",
            (token_hash, now),
        ).fetchone()
        return _invitation(dict(row)) if row else None

    def use_invitation(self, invitation_id: int, now: int) -> bool:
        """Take one use of the invitation; return False if it had none left or expired meanwhile."""
        cursor = self.store.execute(
            "UPDATE invitations SET uses_left = uses_left - 1"
            " WHERE id = ? AND uses_left > 0 AND expires_at > ?",
            (invitation_id, now),
        )
        return cursor.rowcount > 0

    def list_invitations(self, now: int) -> list[Invitation]:
        rows = self.store.execute(
            "SELECT * FROM invitations WHERE uses_left > 0 AND expires_at > ? ORDER BY id", (now,)
        )
        return [_invitation(dict(row)) for row in rows]


def _invitation(row: dict[str, object]) -> Invitation:
    row.pop("token_hash", None)
    return Invitation(**row)  # type: ignore[arg-type]
