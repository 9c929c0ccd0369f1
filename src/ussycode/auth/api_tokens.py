"""Turn a presented token into the user and permissions it stands for."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ussycode.auth.signed_tokens import (
    InvalidToken,
    Permissions,
    hash_secret,
    parse_usy0,
    parse_usy1,
)
from ussycode.store import Store, User
from ussycode.store.tokens import TokenStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenIdentity:
    """Who a verified token acts for, what it may run, and the key its rate limit counts against."""

    user: User
    permissions: Permissions
    vm_scope: str | None
    rate_key: str
    description: str

    @property
    def ctx(self) -> Any:
        return self.permissions.ctx


def exec_namespace(domain: str) -> str:
    return f"v0@{domain}"


def vm_namespace(vm_name: str, domain: str) -> str:
    return f"v0@{vm_name}.{domain}"


class TokenVerifier:
    """Verifies usy0 and usy1 tokens against the store; every failure raises `InvalidToken`."""

    def __init__(self, store: Store, domain: str) -> None:
        self.store = store
        self.tokens = TokenStore(store)
        self.domain = domain

    def verify(self, token: str, *, vm_name: str | None = None, now: float | None = None) -> TokenIdentity:
        """Verify `token` for `/exec` (vm_name None) or for the private URL of `vm_name`."""
        if token.startswith("usy0."):
            return self._verify_usy0(token, vm_name=vm_name, now=now)
        if token.startswith("usy1."):
            return self._verify_usy1(token, vm_name=vm_name, now=now)
        raise InvalidToken("unknown token type: expected usy0.… or usy1.…")

    def _user_for_key(self, fingerprint: str) -> User:
        user = self.store.find_user_by_fingerprint(fingerprint)
        if user is None:
            raise InvalidToken("token signed by a key that is not registered (or was removed)")
        return user

    def _verify_usy0(self, token: str, *, vm_name: str | None, now: float | None) -> TokenIdentity:
        signed = parse_usy0(token)
        expected = exec_namespace(self.domain) if vm_name is None else vm_namespace(vm_name, self.domain)
        if signed.namespace != expected:
            raise InvalidToken(f'token signed for namespace "{signed.namespace}", expected "{expected}"')
        user = self._user_for_key(signed.fingerprint)
        signed.permissions.check_time(now)
        self.tokens.touch_key(signed.fingerprint)
        return TokenIdentity(user, signed.permissions, vm_name, f"key:{signed.fingerprint}", "usy0")

    def _verify_usy1(self, token: str, *, vm_name: str | None, now: float | None) -> TokenIdentity:
        record = self.tokens.find_by_hash(hash_secret(parse_usy1(token)))
        if record is None or record.revoked_at is not None:
            raise InvalidToken("token unknown or revoked")
        if record.kind == "short":
            assert record.usy0 is not None
            identity = self._verify_usy0(record.usy0, vm_name=vm_name, now=now)
            self.tokens.touch(record.id)
            return TokenIdentity(
                identity.user, identity.permissions, vm_name, identity.rate_key, "usy1 short"
            )
        moment = time.time() if now is None else now
        if record.expires_at is not None and moment >= record.expires_at:
            raise InvalidToken("api key expired: generate a new one")
        if record.vm_name != vm_name:
            if record.vm_name is None:
                raise InvalidToken("api key is not scoped to this VM")
            raise InvalidToken(f'api key is scoped to vm "{record.vm_name}"')
        user = self.store.get_user(record.user_id)
        self.tokens.touch(record.id)
        permissions = Permissions(record.expires_at, None, record.cmds, None)
        return TokenIdentity(user, permissions, record.vm_name, f"apikey:{record.id}", "usy1 key")
