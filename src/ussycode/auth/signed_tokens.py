"""API tokens signed with the user's own SSH key (`usy0`) and server-side handles (`usy1`).

A `usy0` token is `usy0.<base64url(permissions)>.<base64url(signature)>`. The permissions are a
strict JSON object with only `exp` and `nbf` (Unix seconds), `cmds` (allowed command names) and
`ctx` (any JSON value, passed on to the VM or command). The signature is the binary SSHSIG blob
that `ssh-keygen -Y sign -n v0@<domain>` writes, armour removed, over the exact permission bytes.
The server stores no secret for such a token: it verifies the signature against the embedded
public key and accepts it only while that key is registered to a user.

A `usy1.<id>` token is a random handle that the server stores hashed; it refers either to a
shortened `usy0` token or to an API key minted on the server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import asyncssh

from ussycode.errors import InvalidInput, PermissionDenied

MAX_TOKEN_BYTES = 8 * 1024
SSHSIG_MAGIC = b"SSHSIG"
SSHSIG_VERSION = 1
SIGNATURE_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
PERMISSION_KEYS = frozenset({"exp", "nbf", "cmds", "ctx"})
# Commands a token may run when its permissions name no `cmds`: reading, plus creating a VM.
DEFAULT_CMDS = (
    "help",
    "whoami",
    "ls",
    "new",
    "share show",
    "ssh-key list",
    "api-key list",
    "stat",
    "vm-logs",
    "doc",
)
SHORT_TOKEN_BYTES = 24  # 192 random bits per usy1 handle
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")


class InvalidToken(PermissionDenied):
    """The token is malformed, expired, not yet valid, or signed by an unknown key."""


@dataclass(frozen=True)
class Permissions:
    exp: int | None
    nbf: int | None
    cmds: tuple[str, ...] | None
    ctx: Any

    @property
    def allowed_commands(self) -> tuple[str, ...]:
        return self.cmds if self.cmds is not None else DEFAULT_CMDS

    def allows(self, command: str) -> bool:
        """Return True if `command` (such as "ls" or "share add") is allowed; exact names only."""
        return command in self.allowed_commands

    def check_time(self, now: float | None = None) -> None:
        """:raise InvalidToken: the token has expired or is not valid yet."""
        moment = time.time() if now is None else now
        if self.exp is not None and moment >= self.exp:
            raise InvalidToken("token expired: sign a new one")
        if self.nbf is not None and moment < self.nbf:
            raise InvalidToken("token not valid yet: its nbf is in the future")


@dataclass(frozen=True)
class SignedToken:
    """A `usy0` token whose signature checked out; the key still has to be looked up."""

    permissions: Permissions
    public_key: asyncssh.SSHKey
    fingerprint: str
    namespace: str


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding.

    :raise InvalidToken: the text is not base64url.
    """
    if not text or any(char not in _B64URL for char in text):
        raise InvalidToken("token is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("token is not base64url") from exc


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidToken(f'token permissions repeat the key "{key}"')
        result[key] = value
    return result


def _optional_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidToken(f'token permission "{key}" must be an integer of Unix seconds')
    return value


def parse_permissions(raw: bytes) -> Permissions:
    """Parse the strict permissions JSON.

    :raise InvalidToken: not a JSON object, an unknown key, or a value of the wrong type.
    """
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidToken("token permissions are not valid JSON") from exc
    if not isinstance(data, dict):
        raise InvalidToken("token permissions must be a JSON object")
    unknown = set(data) - PERMISSION_KEYS
    if unknown:
        raise InvalidToken(f"token permissions have unknown keys: {', '.join(sorted(unknown))}")
    cmds = data.get("cmds")
    if cmds is not None:
        if not isinstance(cmds, list) or not all(isinstance(c, str) and c for c in cmds):
            raise InvalidToken('token permission "cmds" must be a list of command names')
        cmds = tuple(cmds)
    return Permissions(_optional_int(data, "exp"), _optional_int(data, "nbf"), cmds, data.get("ctx"))


class _Reader:
    """Reads SSH wire-format values (uint32, length-prefixed strings)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.offset + count > len(self.data):
            raise InvalidToken("token signature is truncated")
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def uint32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self) -> bytes:
        return self.take(self.uint32())

    def done(self) -> bool:
        return self.offset == len(self.data)


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def verify_signature(message: bytes, blob: bytes) -> tuple[asyncssh.SSHKey, str]:
    """Check an SSHSIG blob over `message` and return the signing key and the namespace.

    :raise InvalidToken: the blob is malformed or the signature does not match.
    """
    reader = _Reader(blob)
    if reader.take(6) != SSHSIG_MAGIC:
        raise InvalidToken("token signature is not an SSH signature")
    if reader.uint32() != SSHSIG_VERSION:
        raise InvalidToken("token signature has an unsupported version")
    key_blob = reader.string()
    namespace_bytes = reader.string()
    reserved = reader.string()
    hash_name = reader.string().decode(errors="replace")
    signature = reader.string()
    if not reader.done():
        raise InvalidToken("token signature has trailing data")
    hasher = SIGNATURE_HASHES.get(hash_name)
    if hasher is None:
        raise InvalidToken(f"token signature uses an unsupported hash {hash_name!r}")
    try:
        algorithm = _Reader(key_blob).string().decode("ascii")
        key = asyncssh.import_public_key(f"{algorithm} {base64.b64encode(key_blob).decode()}")
    except (UnicodeDecodeError, asyncssh.KeyImportError, ValueError) as exc:
        raise InvalidToken("token signature carries an invalid public key") from exc
    signed = b"".join(
        (
            SSHSIG_MAGIC,
            _ssh_string(namespace_bytes),
            _ssh_string(reserved),
            _ssh_string(hash_name.encode()),
            _ssh_string(hasher(message).digest()),
        )
    )
    if not key.verify(signed, signature):
        raise InvalidToken("token signature does not match its permissions")
    return key, namespace_bytes.decode(errors="replace")


def parse_usy0(token: str) -> SignedToken:
    """Verify the structure and signature of a `usy0` token (not whether its key is registered).

    :raise InvalidToken: the token is malformed or its signature does not match; the message names the fault.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken(f"token too long: the limit is {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != "usy0":
        raise InvalidToken("token must have the form usy0.<permissions>.<signature>")
    raw_permissions = b64url_decode(parts[1])
    blob = b64url_decode(parts[2])
    permissions = parse_permissions(raw_permissions)
    key, namespace = verify_signature(raw_permissions, blob)
    return SignedToken(permissions, key, key.get_fingerprint("sha256"), namespace)


def new_short_id() -> str:
    return secrets.token_urlsafe(SHORT_TOKEN_BYTES)


def hash_secret(secret: str) -> str:
    """Return the stored form of a random token secret (SHA-256, hex)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_usy1(token: str) -> str:
    """Return the id of a `usy1.<id>` token.

    :raise InvalidToken: the token is not of that form.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken(f"token too long: the limit is {MAX_TOKEN_BYTES} bytes")
    prefix, _, token_id = token.partition(".")
    if prefix != "usy1" or not token_id or any(char not in _B64URL for char in token_id):
        raise InvalidToken("token must have the form usy1.<id>")
    return token_id


def parse_duration(text: str) -> int | None:
    """Parse `30d`, `12h`, `1y`, `90m` or `never` into seconds (None for never).

    :raise InvalidInput: the text is not a duration.
    """
    if text == "never":
        return None
    units = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise InvalidInput(
            f'invalid duration "{text}": use a number with m, h, d, w or y (like 30d), or never'
        )
    return int(number) * units[unit]
