"""Usage counters of the LLM gateway, kept in memory and written to the store in batches.

Each SQLite commit waits for an fsync, and the store is used from the event loop, so committing
once per request would stall every stream in flight for that long. The ledger adds counts in
memory and writes them in one transaction at most `FLUSH_SECONDS` after the first unwritten
count. The budget check adds the unwritten counts to the stored ones, so it includes every
finished request at once. A crash loses at most the last `FLUSH_SECONDS` of counts.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ussycode.errors import UssycodeError
from ussycode.store.llm import LLMStore

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5


@dataclass
class _Pending:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class UsageLedger:
    """Counts requests and tokens per user, provider, UTC day and key source."""

    def __init__(self, store: LLMStore) -> None:
        self.store = store
        self._pending: dict[tuple[int, str, str, str], _Pending] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(
        self, user_id: int, provider: str, day: str, source: str, *, input_tokens: int, output_tokens: int
    ) -> None:
        """Count one request; it reaches the store within `FLUSH_SECONDS`."""
        entry = self._pending.setdefault((user_id, provider, day, source), _Pending())
        entry.requests += 1
        entry.input_tokens += input_tokens
        entry.output_tokens += output_tokens
        if not self._schedule():
            self.flush()

    def _schedule(self) -> bool:
        """Arrange a flush in `FLUSH_SECONDS`; return False if no event loop runs to do it."""
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:
                return False
        return True

    def budget_tokens_used(self, user_id: int, day: str) -> int:
        """Return the user's tokens on platform keys on `day`, written or not."""
        unwritten = sum(
            entry.input_tokens + entry.output_tokens
            for (user, _, entry_day, source), entry in self._pending.items()
            if user == user_id and entry_day == day and source == "platform"
        )
        return self.store.budget_tokens_used(user_id, day) + unwritten

    def flush(self) -> None:
        """Write the unwritten counts in one transaction; on a store error, keep them for the next try."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            with self.store.store.transaction():
                for (user_id, provider, day, source), entry in pending.items():
                    self.store.add_usage(
                        user_id,
                        provider,
                        day,
                        source,
                        requests=entry.requests,
                        input_tokens=entry.input_tokens,
                        output_tokens=entry.output_tokens,
                    )
        except UssycodeError as exc:
            log.warning("writing LLM usage of %d counters failed, will retry: %s", len(pending), exc)
            for key, entry in pending.items():
                merged = self._pending.setdefault(key, _Pending())
                merged.requests += entry.requests
                merged.input_tokens += entry.input_tokens
                merged.output_tokens += entry.output_tokens
            # Without an event loop, the next `add` or `flush` tries again.
            self._schedule()
