"""Browser logins: one-time login links, sessions, the handoff to VM hosts, share links.

The flow for a private VM URL:

1. Caddy's forward auth calls `decide`. A browser without a session is redirected to the login
   page on the main domain, with the VM URL as `next`.
2. The visitor opens a login link from the `browser` command. `redeem_login_link` turns it
   into a session on the main domain (cookie `__Host-ussycode-session` of that host).
3. `start_handoff` makes a one-time code, valid for one VM host and 60 seconds, and returns
   the URL of that host's callback. The main-domain session itself never leaves the main domain.
4. `finish_handoff`, on the VM host, redeems the code for a session valid on that host only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ussycode.auth.hosts import (
    CALLBACK_PATH,
    LOGIN_PATH,
    SHARE_PATH,
    check_local_path,
    check_return_url,
    origin,
    parse_vm_host,
    platform_url,
    strip_port,
)
from ussycode.auth.random_tokens import hash_token, looks_like_token, new_token
from ussycode.config import Config
from ussycode.errors import InvalidInput
from ussycode.store import Store, User
from ussycode.store.sessions import Session, Sessions
from ussycode.store.sharing import ShareLink, Sharing

LOGIN_LINK_SECONDS = 5 * 60
HANDOFF_SECONDS = 60


@dataclass(frozen=True)
class LoginLink:
    """A login link as the `browser` command prints it; `token` is never stored in clear."""

    url: str
    token: str
    expires_at: int


@dataclass(frozen=True)
class NewSession:
    """A session just created, with the cookie value (`token`) and its lifetime in seconds."""

    session: Session
    token: str
    max_age: int


class Logins:
    """Creates and redeems login links, sessions, handoff codes and share-link sessions."""

    def __init__(self, store: Store, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.sessions = Sessions(store)
        self._clock = clock

    def now(self) -> int:
        return int(self._clock())

    @property
    def session_seconds(self) -> int:
        return self.config.session_days * 24 * 3600

    # Login links.

    def create_login_link(self, user: User) -> LoginLink:
        """Create a one-time login link for `user`, valid for 5 minutes."""
        token = new_token()
        now = self.now()
        expires_at = now + LOGIN_LINK_SECONDS
        self.sessions.add_login_link(hash_token(token), user.id, expires_at, now)
        url = platform_url(self.config, f"{LOGIN_PATH}?token={token}")
        return LoginLink(url, token, expires_at)

    def redeem_login_link(self, text: str) -> NewSession | None:
        """Redeem a login link (the URL or its token) for a session on the main domain.

        Returns None if the link is malformed, unknown, already used or expired.
        """
        token = token_from_link(text)
        if token is None:
            return None
        now = self.now()
        user_id = self.sessions.redeem_login_link(hash_token(token), now)
        if user_id is None:
            return None
        return self._new_session(
            host=self.config.domain, user_id=user_id, expires_at=now + self.session_seconds
        )

    # Sessions.

    def _new_session(
        self,
        *,
        host: str,
        expires_at: int,
        user_id: int | None = None,
        link_id: int | None = None,
        parent_id: int | None = None,
    ) -> NewSession:
        token = new_token()
        now = self.now()
        session = self.sessions.add(
            hash_token(token),
            host=host,
            expires_at=expires_at,
            now=now,
            user_id=user_id,
            link_id=link_id,
            parent_id=parent_id,
        )
        return NewSession(session, token, max(expires_at - now, 0))

    def end(self, session: Session) -> None:
        """End the session; ending a main-domain session also ends the VM host sessions made from it."""
        self.sessions.delete(session.id)

    # Handoff from the main domain to a VM host.

    def start_handoff(self, session: Session, return_url: str) -> str:
        """Return the callback URL that logs the browser in on the VM host of `return_url`.

        :raise InvalidInput: `return_url` is not a VM URL of this platform.
        """
        checked = check_return_url(self.config, return_url)
        parts = urlsplit(checked)
        host = strip_port(parts.netloc)
        next_path = parts.path + (f"?{parts.query}" if parts.query else "")
        code = new_token()
        now = self.now()
        self.sessions.add_handoff(
            hash_token(code),
            session_id=session.id,
            host=host,
            next_path=next_path,
            expires_at=now + HANDOFF_SECONDS,
            now=now,
        )
        return f"{origin(self.config, host)}{CALLBACK_PATH}?code={quote(code)}"

    def finish_handoff(self, code: str, host: str) -> tuple[NewSession, str] | None:
        """Redeem a handoff code on `host` for a session there; return it and the path to go to.

        Returns None if the code is malformed, unknown, used, expired or made for another host,
        or if the main-domain session it came from has ended.
        """
        if not looks_like_token(code):
            return None
        host_name = strip_port(host)
        now = self.now()
        handoff = self.sessions.redeem_handoff(hash_token(code), host_name, now)
        if handoff is None:
            return None
        parent = self.sessions.get(handoff.session_id, now)
        if parent is None or parent.user_id is None:
            return None
        new = self._new_session(
            host=host_name, user_id=parent.user_id, parent_id=parent.id, expires_at=parent.expires_at
        )
        try:
            next_path = check_local_path(handoff.next_path)
        except InvalidInput:
            next_path = "/"
        return new, next_path

    # Share links.

    def create_share_link(self, vm_id: int, created_by: User) -> tuple[ShareLink, str]:
        """Create a share link for the VM; return it and its token, which is not stored in clear."""
        token = new_token()
        link = Sharing(self.store).add_link(vm_id, hash_token(token), token[:8], created_by.id)
        return link, token

    def open_share_link(self, token: str, host: str, current: Session | None) -> NewSession | None:
        """Redeem a share link's token on one of its VM's hosts for a session on that host.

        A visitor already logged in on the host keeps their identity in the new session.
        Returns None if the token is malformed or unknown, or names another VM.
        """
        if not looks_like_token(token):
            return None
        target = parse_vm_host(host, self.config.domain)
        link = Sharing(self.store).find_link(hash_token(token))
        if target is None or link is None:
            return None
        vm = self.store.find_vm(target.vm_name)
        if vm is None or vm.id != link.vm_id:
            return None
        user_id = current.user_id if current is not None else None
        return self._new_session(
            host=strip_port(host),
            user_id=user_id,
            link_id=link.id,
            expires_at=self.now() + self.session_seconds,
        )


def share_link_url(config: Config, vm_name: str, token: str) -> str:
    """Return the URL that opens a VM through a share link."""
    return origin(config, f"{vm_name}.{config.domain}") + f"{SHARE_PATH}?token={token}"


def token_from_link(text: str) -> str | None:
    """Return the token in a login link, given the whole URL or the token alone."""
    text = text.strip()
    if looks_like_token(text):
        return text
    for pair in urlsplit(text).query.split("&"):
        name, _, value = pair.partition("=")
        if name == "token" and looks_like_token(value):
            return value
    return None


def check_next(config: Config, text: str | None) -> str | None:
    """Return `text` as a checked return URL, or None if it is missing or not allowed."""
    if not text:
        return None
    try:
        return check_return_url(config, text)
    except InvalidInput:
        return None
