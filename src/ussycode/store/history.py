"""REPL history and the log of commands each user ran, both per user and bounded."""

from __future__ import annotations

from ussycode.store.db import Store, utc_now

MAX_HISTORY_LINES = 1000
MAX_COMMAND_RUNS = 1000


class HistoryStore:
    """Queries on `repl_history` and `command_runs`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def lines(self, user_id: int, limit: int = MAX_HISTORY_LINES) -> list[str]:
        """Return the user's last `limit` REPL lines, oldest first."""
        rows = self.store.execute(
            "SELECT line FROM (SELECT id, line FROM repl_history WHERE user_id = ? ORDER BY id DESC LIMIT ?)"
            " ORDER BY id",
            (user_id, limit),
        )
        return [str(row["line"]) for row in rows]

    def add_line(self, user_id: int, line: str) -> None:
        """Append a REPL line and drop the user's lines beyond the last `MAX_HISTORY_LINES`."""
        self.store.execute(
            "INSERT INTO repl_history (user_id, line, created_at) VALUES (?, ?, ?)",
            (user_id, line, utc_now()),
        )
        self.store.execute(
            "DELETE FROM repl_history WHERE user_id = ? AND id <= (SELECT id FROM repl_history"
            " WHERE user_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (user_id, user_id, MAX_HISTORY_LINES),
        )

    def add_run(self, user_id: int, command: str, *, succeeded: bool) -> None:
        """Record that the user ran `command` (a name such as "ls" or "ssh-key list")."""
        self.store.execute(
            "INSERT INTO command_runs (user_id, command, succeeded, created_at) VALUES (?, ?, ?, ?)",
            (user_id, command, int(succeeded), utc_now()),
        )
        self.store.execute(
            "DELETE FROM command_runs WHERE user_id = ? AND id <= (SELECT id FROM command_runs"
            " WHERE user_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (user_id, user_id, MAX_COMMAND_RUNS),
        )

    def ran_since(self, user_id: int, command: str, since: str) -> bool:
        """Return whether the user ran `command` successfully at or after the ISO time `since`."""
        row = self.store.execute(
            "SELECT 1 FROM command_runs WHERE user_id = ? AND command = ? AND succeeded = 1"
            " AND created_at >= ? LIMIT 1",
            (user_id, command, since),
        ).fetchone()
        return row is not None
