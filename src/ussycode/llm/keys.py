"""Users' own provider keys, encrypted at rest with AES-256-GCM.

The AES key is derived with HKDF-SHA256 from the `--llm-secret` setting. When that setting is
empty, the server generates a random secret into `<data-dir>/llm-secret` (mode 0600) the first
time it needs one and uses that file from then on. Losing or changing the secret makes stored
keys unreadable: the gateway then reports that the key must be set again, and nothing else breaks.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ussycode.config import Config
from ussycode.errors import InvalidInput, RuntimeFailure
from ussycode.store import Store
from ussycode.store.llm import LLMStore, StoredLLMKey

log = logging.getLogger(__name__)

SECRET_FILE = "llm-secret"
NONCE_BYTES = 12
MIN_KEY_CHARS = 8
MAX_KEY_CHARS = 1024
HKDF_INFO = b"ussycode llm keys v1"


class UnreadableKey(RuntimeFailure):
    """A stored key does not decrypt with the current secret."""


def load_secret(config: Config) -> bytes:
    """Return `--llm-secret`, or the secret in `<data-dir>/llm-secret`, creating that file if missing.

    :raise RuntimeFailure: the file cannot be read or created.
    """
    if config.llm_secret:
        return config.llm_secret.encode()
    path = config.data_dir / SECRET_FILE
    try:
        return _read_or_create(path)
    except OSError as exc:
        raise RuntimeFailure(
            f"cannot read or create the LLM secret {path}: {exc.strerror}; set --llm-secret instead"
        ) from exc


def _read_or_create(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # The file is empty, or another caller created it between the read and here.
        text = path.read_text().strip()
        if not text:
            raise RuntimeFailure(
                f"the LLM secret file {path} is empty: restore it from a backup, or delete it to"
                " generate a new one (stored keys must then be set again), or set --llm-secret"
            ) from None
        return text.encode()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    log.info("generated a new LLM secret in %s", path)
    return value.encode()


def mask(key: str) -> str:
    """Return the form of `key` that may be shown: a few characters of each end at most."""
    if len(key) >= 16:
        return f"{key[:3]}...{key[-4:]}"
    return f"...{key[-2:]}"


def check_key(key: str) -> str:
    """Return `key` without surrounding white space.

    :raise InvalidInput: the key is too short, too long, or has spaces or control characters.
    """
    key = key.strip()
    if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS:
        raise InvalidInput(
            f"invalid key: it has {len(key)} characters, expected {MIN_KEY_CHARS} to {MAX_KEY_CHARS};"
            " paste the whole key"
        )
    if not key.isascii() or not key.isprintable() or any(char.isspace() for char in key):
        raise InvalidInput("invalid key: it must be one word of printable ASCII characters")
    return key


class KeyVault:
    """Encrypts, stores and decrypts users' own keys."""

    def __init__(self, store: Store, secret: bytes) -> None:
        self.rows = LLMStore(store)
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(secret)
        self._aead = AESGCM(derived)

    @classmethod
    def from_config(cls, store: Store, config: Config) -> KeyVault:
        return cls(store, load_secret(config))

    @staticmethod
    def _associated_data(user_id: int, provider: str) -> bytes:
        return f"{user_id}:{provider}".encode()

    def set(self, user_id: int, provider: str, key: str) -> str:
        """Store `key` for the user and provider, replacing any earlier one; return its masked form."""
        key = check_key(key)
        nonce = secrets.token_bytes(NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, key.encode(), self._associated_data(user_id, provider))
        hint = mask(key)
        self.rows.set_key(user_id, provider, nonce, ciphertext, hint)
        return hint

    def get(self, user_id: int, provider: str) -> str | None:
        """Return the user's key for `provider`, or None if they stored none.

        :raise UnreadableKey: the key was stored under another secret.
        """
        row = self.rows.get_key(user_id, provider)
        if row is None:
            return None
        return self._decrypt(row)

    def _decrypt(self, row: StoredLLMKey) -> str:
        try:
            plain = self._aead.decrypt(
                row.nonce, row.ciphertext, self._associated_data(row.user_id, row.provider)
            )
        except InvalidTag as exc:
            raise UnreadableKey(
                f"your stored {row.provider} key cannot be decrypted (the server's LLM secret changed):"
                f" set it again with llm-key set {row.provider} -"
            ) from exc
        return plain.decode()

    def list(self, user_id: int) -> list[StoredLLMKey]:
        return self.rows.list_keys(user_id)

    def remove(self, user_id: int, provider: str) -> bool:
        return self.rows.delete_key(user_id, provider)
