"""A short-lived cache of the access decisions that allowed a request to a private VM URL.

Caddy requests a decision from the forward-auth endpoint for every request, and a page load
sends many requests with the same credentials. An entry lets the same host and credentials
through without the store queries (and, for a token, the signature check and the last-used
write) until either:

- anything in the store changes (a share, a logout, a revoked token, a removed key or VM), which
  the store's change marker shows, so `share set-private` or a logout takes effect at once; or
- `ttl` seconds pass, which bounds how long a session or token that expires by time alone is still
  accepted after its expiry.

Only ALLOW decisions are cached: a denial is decided again every time, so it is always audited.
Keys are SHA-256 digests, so the cache keeps no session cookie or token in clear.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ussycode.auth.access import TOKEN_HEADER, Decision, Verdict
from ussycode.store import Store

DEFAULT_TTL_SECONDS = 2.0
MAX_ENTRIES = 4096
# Every request header that `decide` reads to allow a request, in lower case.
CREDENTIAL_HEADERS = frozenset({TOKEN_HEADER, "authorization", "cookie"})


@dataclass(frozen=True)
class _Entry:
    decision: Decision
    marker: tuple[int, int]
    expires: float


class DecisionCache:
    """Caches ALLOW decisions by host and credentials; `ttl` 0 turns caching off."""

    def __init__(
        self,
        store: Store,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    @staticmethod
    def key(host: str, headers: Iterable[tuple[str, str]]) -> bytes:
        """Return the cache key of a request: its host and every credential header, repeats included.

        `headers` are the request's (name, value) pairs in order, as a multidict's `items()` gives them.
        """
        parts = [host]
        parts += [f"{name.lower()}:{value}" for name, value in headers if name.lower() in CREDENTIAL_HEADERS]
        return hashlib.sha256("\0".join(parts).encode()).digest()

    def get(self, key: bytes) -> Decision | None:
        """Return the cached decision for `key` if the store has not changed and it has not expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock() or entry.marker != self.store.change_marker():
            del self._entries[key]
            return None
        return entry.decision

    def put(self, key: bytes, decision: Decision) -> None:
        """Keep `decision` under `key` if it allows the request; call right after deciding."""
        if decision.verdict is not Verdict.ALLOW or self.ttl <= 0:
            return
        self._entries[key] = _Entry(decision, self.store.change_marker(), self.clock() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
