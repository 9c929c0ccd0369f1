"""The list of SSH keys that Routussy approved, fetched over HTTP and cached.

Routussy is the Discord bot through which people ask for access (`/ussycode-request`). The
gateway asks it `GET {ROUTUSSY_URL}/ussycode/authorized-keys` with the bearer token
`USSYCODE_ROUTUSSY_INTERNAL_KEY`. A valid answer is status 200 with a JSON body in one of these
shapes, where each item is a fingerprint string or an object with a `fingerprint` member:

    {"keys": ["SHA256:...", {"fingerprint": "SHA256:...", "discord": "..."}]}
    ["SHA256:...", ...]

Every fingerprint must look like `SHA256:` and 43 base64 characters, as `ssh-keygen -l` prints
them. Any other answer, a timeout or a refused connection counts as unavailable: the caller then
fails closed for unknown keys.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

AUTHORIZED_KEYS_PATH = "/ussycode/authorized-keys"
REQUEST_TIMEOUT_SECONDS = 5.0
MAX_BODY_BYTES = 4 * 1024 * 1024
# After a failed fetch, wait this long (or the cache time, if shorter) before asking again, so
# a down Routussy is not asked on every login attempt.
RETRY_AFTER_FAILURE_SECONDS = 5.0
FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


class Answer(enum.StrEnum):
    APPROVED = "approved"
    NOT_APPROVED = "not-approved"
    UNAVAILABLE = "unavailable"


class MalformedAnswer(ValueError):
    """Routussy's answer is not a list of approved fingerprints."""


def parse_authorized_keys(body: bytes) -> frozenset[str]:
    """Return the fingerprints in an authorized-keys answer.

    :raise MalformedAnswer: the body is not one of the documented shapes.
    """
    try:
        document: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedAnswer(f"not JSON: {exc}") from exc
    items = document.get("keys") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise MalformedAnswer('expected a list of keys, or an object with a "keys" list')
    found: set[str] = set()
    for item in items:
        value = item.get("fingerprint") if isinstance(item, dict) else item
        if not isinstance(value, str) or not FINGERPRINT_RE.match(value):
            raise MalformedAnswer(f"invalid key entry {str(item)[:80]!r}: expected a SHA256 fingerprint")
        found.add(value)
    return frozenset(found)


class RoutussyKeys:
    """Fetches the approved fingerprints and keeps them for `cache_seconds`.

    `last_good` keeps the most recent valid list, of any age, for the caller's decision while
    Routussy is unavailable. It lives in memory, so a restart of the server forgets it.
    """

    def __init__(
        self,
        base_url: str,
        internal_key: str,
        *,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = base_url.rstrip("/") + AUTHORIZED_KEYS_PATH
        self._internal_key = internal_key
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self.last_good: frozenset[str] | None = None
        self._lock = asyncio.Lock()

    async def lookup(self, fingerprints: Iterable[str]) -> Answer:
        """Return whether any of `fingerprints` is approved, from the cache or a fresh fetch."""
        approved = await self._current()
        if approved is None:
            return Answer.UNAVAILABLE
        return Answer.APPROVED if set(fingerprints) & approved else Answer.NOT_APPROVED

    async def _current(self) -> frozenset[str] | None:
        async with self._lock:
            now = self._clock()
            fresh = self._fetched_at is not None and now - self._fetched_at < self.cache_seconds
            if fresh and self.last_good is not None:
                return self.last_good
            retry_after = min(RETRY_AFTER_FAILURE_SECONDS, self.cache_seconds)
            if self._failed_at is not None and now - self._failed_at < retry_after:
                return None
            try:
                keys = await self._fetch()
            except MalformedAnswer as exc:
                log.warning("routussy: answer from %s refused: %s", self.url, exc)
                self._failed_at = now
                return None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("routussy: %s unreachable: %s", self.url, exc or type(exc).__name__)
                self._failed_at = now
                return None
            self._fetched_at, self._failed_at, self.last_good = now, None, keys
            log.info("routussy: %d approved keys", len(keys))
            return keys

    async def _fetch(self) -> frozenset[str]:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        headers = {"Authorization": f"Bearer {self._internal_key}", "Accept": "application/json"}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.url, headers=headers, allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise MalformedAnswer(f"status {response.status}")
            body = await response.content.read(MAX_BODY_BYTES + 1)
            if len(body) > MAX_BODY_BYTES:
                raise MalformedAnswer(f"body over {MAX_BODY_BYTES} bytes")
            return parse_authorized_keys(body)
