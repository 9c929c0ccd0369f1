"""Random secrets for links, sessions and handoff codes, and the hashes the store keeps of them."""

from __future__ import annotations

import hashlib
import re
import secrets

# 32 random bytes: 256 bits, written as 43 URL-safe base64 characters.
TOKEN_BYTES = 32
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def new_token() -> str:
    """Return a new random token of 256 bits, safe in URLs and cookies.

    A token never starts with "-": users pass tokens as command arguments (`share remove-link VM
    TOKEN`), where a leading dash reads as an option.
    """
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        if not token.startswith("-"):
            return token


def hash_token(token: str) -> str:
    """Return the hex SHA-256 of `token`: the only form in which the store keeps it.

    A salt or a slow hash would add nothing, because the tokens are 256 random bits.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(text: str) -> bool:
    """Return whether `text` has the shape of a token from `new_token`."""
    return TOKEN_RE.match(text) is not None
