"""Browser sessions, one-time login links and login handoff codes.

Every secret is stored as its SHA-256 (`token_hash`, `code_hash`), never in clear. Expiry times
are Unix seconds; expired rows are deleted whenever a row of the same table is added.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ussycode.store.db import Store, utc_now


@dataclass(frozen=True)
class Session:
    """A browser session valid on `host` only: the main domain or one VM host.

    A VM host session carries a user (from a login), a share link, or both.
    """

    id: int
    host: str
    user_id: int | None
    link_id: int | None
    parent_id: int | None
    created_at: str
    expires_at: int


@dataclass(frozen=True)
class Handoff:
    """A redeemed login handoff: the main-domain session it came from and where it leads."""

    session_id: int
    host: str
    next_path: str


def _session(row: sqlite3.Row) -> Session:
    return Session(
        id=row["id"],
        host=row["host"],
        user_id=row["user_id"],
        link_id=row["link_id"],
        parent_id=row["parent_id"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


class Sessions:
    """Reads and writes `sessions`, `login_links` and `login_handoffs`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # Login links.

    def add_login_link(self, token_hash: str, user_id: int, expires_at: int, now: int) -> None:
        with self.store.transaction():
            self.store.execute("DELETE FROM login_links WHERE expires_at <= ?", (now,))
            self.store.execute(
                "INSERT INTO login_links (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (token_hash, user_id, utc_now(), expires_at),
            )

    def redeem_login_link(self, token_hash: str, now: int) -> int | None:
        """Delete the link and return its user id, or None if it is unknown, used or expired."""
        with self.store.transaction():
            row = self.store.execute(
                "SELECT user_id, expires_at FROM login_links WHERE token_hash = ?", (token_hash,)
            ).fetchone()
            if row is None:
                return None
            self.store.execute("DELETE FROM login_links WHERE token_hash = ?", (token_hash,))
        return int(row["user_id"]) if row["expires_at"] > now else None

    # Sessions.

    def add(
        self,
        token_hash: str,
        *,
        host: str,
        expires_at: int,
        now: int,
        user_id: int | None = None,
        link_id: int | None = None,
        parent_id: int | None = None,
    ) -> Session:
        with self.store.transaction():
            self.store.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            cursor = self.store.execute(
                "INSERT INTO sessions (token_hash, host, user_id, link_id, parent_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_hash, host, user_id, link_id, parent_id, utc_now(), expires_at),
            )
        row = self.store.execute("SELECT * FROM sessions WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return _session(row)

    def get(self, session_id: int, now: int) -> Session | None:
        """Return the session if it exists and has not expired."""
        row = self.store.execute(
            "SELECT * FROM sessions WHERE id = ? AND expires_at > ?", (session_id, now)
        ).fetchone()
        return _session(row) if row else None

    def find(self, token_hash: str, host: str, now: int) -> Session | None:
        """Return the live session with that token for `host`; a session of another host is None."""
        row = self.store.execute(
            "SELECT * FROM sessions WHERE token_hash = ? AND host = ? AND expires_at > ?",
            (token_hash, host, now),
        ).fetchone()
        return _session(row) if row else None

    def delete(self, session_id: int) -> None:
        """Delete the session and, through ON DELETE CASCADE, the VM host sessions made from it."""
        self.store.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def count_for_user(self, user_id: int, now: int) -> int:
        row = self.store.execute(
            "SELECT COUNT(*) FROM sessions WHERE user_id = ? AND expires_at > ?", (user_id, now)
        ).fetchone()
        return int(row[0])

    # Handoffs.

    def add_handoff(
        self, code_hash: str, *, session_id: int, host: str, next_path: str, expires_at: int, now: int
    ) -> None:
        with self.store.transaction():
            self.store.execute("DELETE FROM login_handoffs WHERE expires_at <= ?", (now,))
            self.store.execute(
                "INSERT INTO login_handoffs (code_hash, session_id, host, next_path, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (code_hash, session_id, host, next_path, expires_at),
            )

    def redeem_handoff(self, code_hash: str, host: str, now: int) -> Handoff | None:
        """Delete the code and return it, or None if it is unknown, used, expired or for another host.

        A code presented on the wrong host is deleted too, so that it cannot be tried again.
        """
        with self.store.transaction():
            row = self.store.execute(
                "SELECT session_id, host, next_path, expires_at FROM login_handoffs WHERE code_hash = ?",
                (code_hash,),
            ).fetchone()
            if row is None:
                return None
            self.store.execute("DELETE FROM login_handoffs WHERE code_hash = ?", (code_hash,))
        if row["expires_at"] <= now or row["host"] != host:
            return None
        return Handoff(int(row["session_id"]), row["host"], row["next_path"])
