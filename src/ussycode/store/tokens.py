"""Rows of `api_tokens` (usy1 handles) and the last-used time of signing keys."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ussycode.errors import NotFound
from ussycode.store.db import Store, utc_now


@dataclass(frozen=True)
class APIToken:
    id: int
    user_id: int
    kind: str
    token_hash: str
    usy0: str | None
    label: str
    vm_name: str | None
    cmds: tuple[str, ...] | None
    expires_at: int | None
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


def _row_to_token(row: dict[str, object]) -> APIToken:
    cmds = row["cmds"]
    data = dict(row)
    data["cmds"] = tuple(json.loads(str(cmds))) if cmds is not None else None
    return APIToken(**data)  # type: ignore[arg-type]


class TokenStore:
    """Queries on `api_tokens` and on the use of signing keys."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(
        self,
        *,
        user_id: int,
        kind: str,
        token_hash: str,
        usy0: str | None = None,
        label: str = "",
        vm_name: str | None = None,
        cmds: tuple[str, ...] | None = None,
        expires_at: int | None = None,
    ) -> APIToken:
        cursor = self.store.execute(
            "INSERT INTO api_tokens (user_id, kind, token_hash, usy0, label, vm_name, cmds, expires_at,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                user_id,
                kind,
                token_hash,
                usy0,
                label,
                vm_name,
                json.dumps(list(cmds)) if cmds is not None else None,
                expires_at,
                utc_now(),
            ),
        )
        return self.get(int(cursor.lastrowid or 0))

    def get(self, token_id: int) -> APIToken:
        row = self.store.execute("SELECT * FROM api_tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise NotFound(f"api key {token_id} not found")
        return _row_to_token(dict(row))

    def find_by_hash(self, token_hash: str) -> APIToken | None:
        row = self.store.execute("SELECT * FROM api_tokens WHERE token_hash = ?", (token_hash,)).fetchone()
        return _row_to_token(dict(row)) if row else None

    def list_for_user(self, user_id: int) -> list[APIToken]:
        rows = self.store.execute(
            "SELECT * FROM api_tokens WHERE user_id = ? AND revoked_at IS NULL ORDER BY id", (user_id,)
        )
        return [_row_to_token(dict(row)) for row in rows]

    def revoke(self, token_id: int) -> None:
        self.store.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ?", (utc_now(), token_id))

    def touch(self, token_id: int) -> None:
        self.store.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (utc_now(), token_id))

    def touch_key(self, fingerprint: str) -> None:
        self.store.execute(
            "UPDATE ssh_keys SET last_used_at = ? WHERE fingerprint = ?", (utc_now(), fingerprint)
        )
