"""Users' email addresses and their verification state."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ussycode.errors import InvalidInput, NotFound
from ussycode.store.db import Store, utc_now

MAX_EMAIL_CHARS = 254
# One @, no spaces or characters that need quoting, and a dot in the domain. Deliverability is
# for the mail verification to prove.
_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`|~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def check_email(text: str) -> str:
    """Return `text` as a lowercase email address.

    :raise InvalidInput: it is not an address such as ann@example.org.
    """
    address = text.strip().lower()
    if len(address) > MAX_EMAIL_CHARS or not _EMAIL_RE.match(address):
        raise InvalidInput(f'invalid email address "{text}": expected an address such as ann@example.org')
    return address


@dataclass(frozen=True)
class UserEmail:
    """A user's email address; `email` is stored in lowercase."""

    user_id: int
    email: str
    verified: bool
    updated_at: str


class Emails:
    """Reads and writes `user_emails`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, user_id: int) -> UserEmail | None:
        row = self.store.execute("SELECT * FROM user_emails WHERE user_id = ?", (user_id,)).fetchone()
        if row is None:
            return None
        return UserEmail(row["user_id"], row["email"], bool(row["verified"]), row["updated_at"])

    def set(self, user_id: int, email: str) -> UserEmail:
        """Store `email` as the user's unverified address, replacing any earlier one."""
        now = utc_now()
        self.store.execute(
            "INSERT INTO user_emails (user_id, email, verified, updated_at) VALUES (?, ?, 0, ?)"
            " ON CONFLICT(user_id) DO UPDATE SET email = excluded.email, verified = 0,"
            " updated_at = excluded.updated_at",
            (user_id, email, now),
        )
        return UserEmail(user_id, email, False, now)

    def clear(self, user_id: int) -> bool:
        """Remove the user's address; return whether there was one."""
        cursor = self.store.execute("DELETE FROM user_emails WHERE user_id = ?", (user_id,))
        return cursor.rowcount > 0

    def mark_verified(self, user_id: int) -> UserEmail:
        """Mark the user's address as verified.

        Only the coming mail verification should call this. The caller claims pending
        invitations afterwards (`Sharing.claim_invitations`).
        :raise NotFound: the user has no address.
        :raise Conflict: another user has already verified the same address.
        """
        cursor = self.store.execute(
            "UPDATE user_emails SET verified = 1, updated_at = ? WHERE user_id = ?", (utc_now(), user_id)
        )
        email = self.get(user_id)
        if cursor.rowcount == 0 or email is None:
            raise NotFound(f"user {user_id} has no email address to verify")
        return email

    def find_verified_user(self, email: str) -> int | None:
        """Return the id of the user whose verified address is `email`, if any."""
        row = self.store.execute(
            "SELECT user_id FROM user_emails WHERE email = ? AND verified = 1", (email,)
        ).fetchone()
        return int(row[0]) if row else None
