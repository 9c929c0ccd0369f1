"""Rows of `llm_keys` (users' encrypted provider keys) and `llm_usage` (daily counters)."""

from __future__ import annotations

from dataclasses import dataclass

from ussycode.store.db import Store, utc_now


@dataclass(frozen=True)
class StoredLLMKey:
    """A user's encrypted key for one provider; `hint` is its masked form."""

    user_id: int
    provider: str
    nonce: bytes
    ciphertext: bytes
    hint: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class UsageRow:
    """Requests and tokens of one user for one provider, UTC day and key source."""

    provider: str
    day: str
    source: str
    requests: int
    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class LLMStore:
    """Reads and writes `llm_keys` and `llm_usage`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # Keys.

    def set_key(self, user_id: int, provider: str, nonce: bytes, ciphertext: bytes, hint: str) -> None:
        now = utc_now()
        self.store.execute(
            "INSERT INTO llm_keys (user_id, provider, nonce, ciphertext, hint, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(user_id, provider) DO UPDATE SET"
            " nonce = excluded.nonce, ciphertext = excluded.ciphertext, hint = excluded.hint,"
            " updated_at = excluded.updated_at",
            (user_id, provider, nonce, ciphertext, hint, now, now),
        )

    def get_key(self, user_id: int, provider: str) -> StoredLLMKey | None:
        row = self.store.execute(
            "SELECT * FROM llm_keys WHERE user_id = ? AND provider = ?", (user_id, provider)
        ).fetchone()
        return StoredLLMKey(**dict(row)) if row else None

    def list_keys(self, user_id: int) -> list[StoredLLMKey]:
        rows = self.store.execute("SELECT * FROM llm_keys WHERE user_id = ? ORDER BY provider", (user_id,))
        return [StoredLLMKey(**dict(row)) for row in rows]

    def delete_key(self, user_id: int, provider: str) -> bool:
        """Delete the key; return whether there was one."""
        cursor = self.store.execute(
            "DELETE FROM llm_keys WHERE user_id = ? AND provider = ?", (user_id, provider)
        )
        return cursor.rowcount > 0

    # Usage.

    def add_usage(
        self,
        user_id: int,
        provider: str,
        day: str,
        source: str,
        *,
        requests: int,
        input_tokens: int,
        output_tokens: int,
    ) -> None:
        self.store.execute(
            "INSERT INTO llm_usage (user_id, provider, day, source, requests, input_tokens, output_tokens)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(user_id, provider, day, source) DO UPDATE SET"
            " requests = requests + excluded.requests,"
            " input_tokens = input_tokens + excluded.input_tokens,"
            " output_tokens = output_tokens + excluded.output_tokens",
            (user_id, provider, day, source, requests, input_tokens, output_tokens),
        )

    def usage(self, user_id: int, *, since_day: str = "") -> list[UsageRow]:
        """Return the user's counters from `since_day` on (YYYY-MM-DD), newest day first."""
        rows = self.store.execute(
            "SELECT provider, day, source, requests, input_tokens, output_tokens FROM llm_usage"
            " WHERE user_id = ? AND day >= ? ORDER BY day DESC, provider, source",
            (user_id, since_day),
        )
        return [UsageRow(**dict(row)) for row in rows]

    def budget_tokens_used(self, user_id: int, day: str) -> int:
        """Return the tokens the user spent on `day` that count against their budget (platform keys)."""
        row = self.store.execute(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM llm_usage"
            " WHERE user_id = ? AND day = ? AND source = 'platform'",
            (user_id, day),
        ).fetchone()
        return int(row[0])
