"""Users' own keys: encryption at rest, masking, the secret file and invalid keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.llm.harness import load_config
from ussycode.errors import InvalidInput, RuntimeFailure
from ussycode.llm.keys import SECRET_FILE, KeyVault, UnreadableKey, check_key, load_secret, mask
from ussycode.store import Store
from ussycode.store.llm import LLMStore

KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123"


def make_store(tmp_path: Path) -> tuple[Store, int, int]:
    store = Store(tmp_path / "store.db")
    alice = store.create_user("alice", "SHA256:" + "A" * 43, "ssh-ed25519 AAAAalice")
    bob = store.create_user("bob", "SHA256:" + "B" * 43, "ssh-ed25519 AAAAbob")
    return store, alice.id, bob.id


def test_keys_round_trip_encrypted(tmp_path: Path) -> None:
    store, alice, _ = make_store(tmp_path)
    vault = KeyVault(store, b"test secret")
    assert vault.set(alice, "openai", f"  {KEY}\n") == "sk-...0123"
    assert vault.get(alice, "openai") == KEY
    assert vault.get(alice, "anthropic") is None
    row = LLMStore(store).get_key(alice, "openai")
    assert row is not None
    assert KEY.encode() not in row.ciphertext
    store.close()
    assert KEY.encode() not in (tmp_path / "store.db").read_bytes()
    for wal in tmp_path.glob("store.db-*"):
        assert KEY.encode() not in wal.read_bytes()


def test_keys_replace_and_remove(tmp_path: Path) -> None:
    store, alice, _ = make_store(tmp_path)
    vault = KeyVault(store, b"test secret")
    vault.set(alice, "openai", KEY)
    vault.set(alice, "openai", "sk-second-key-0000000009")
    assert vault.get(alice, "openai") == "sk-second-key-0000000009"
    assert [row.provider for row in vault.list(alice)] == ["openai"]
    assert vault.remove(alice, "openai")
    assert not vault.remove(alice, "openai")
    assert vault.get(alice, "openai") is None


def test_keys_bound_to_user_and_provider(tmp_path: Path) -> None:
    store, alice, bob = make_store(tmp_path)
    vault = KeyVault(store, b"test secret")
    vault.set(alice, "openai", KEY)
    row = LLMStore(store).get_key(alice, "openai")
    assert row is not None
    # A ciphertext copied into bob's row does not decrypt there.
    LLMStore(store).set_key(bob, "openai", row.nonce, row.ciphertext, row.hint)
    with pytest.raises(UnreadableKey):
        vault.get(bob, "openai")


def test_keys_other_secret_unreadable(tmp_path: Path) -> None:
    store, alice, _ = make_store(tmp_path)
    KeyVault(store, b"first secret").set(alice, "openai", KEY)
    with pytest.raises(UnreadableKey) as caught:
        KeyVault(store, b"second secret").get(alice, "openai")
    assert str(caught.value) == (
        "your stored openai key cannot be decrypted (the server's LLM secret changed):"
        " set it again with llm-key set openai -"
    )


def test_keys_secret_file_generated(tmp_path: Path) -> None:
    config = load_config({"USSYCODE_DATA_DIR": str(tmp_path / "data")})
    first = load_secret(config)
    path = tmp_path / "data" / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert load_secret(config) == first

    given = load_config({"USSYCODE_DATA_DIR": str(tmp_path / "data"), "USSYCODE_LLM_SECRET": "from-settings"})
    assert load_secret(given) == b"from-settings"


@pytest.mark.parametrize("content", ["", "\n", "  \n"])
def test_keys_empty_secret_file_rejected(tmp_path: Path, content: str) -> None:
    # An empty file (a failed first write, or `touch`) must not become an empty secret, which
    # would encrypt every key with a key that anyone can derive.
    path = tmp_path / "data" / SECRET_FILE
    path.parent.mkdir()
    path.write_text(content)
    config = load_config({"USSYCODE_DATA_DIR": str(tmp_path / "data")})
    with pytest.raises(RuntimeFailure) as caught:
        load_secret(config)
    assert str(caught.value) == (
        f"the LLM secret file {path} is empty: restore it from a backup, or delete it to generate a new"
        " one (stored keys must then be set again), or set --llm-secret"
    )
    assert path.read_text() == content


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("short", "invalid key: it has 5 characters, expected 8 to 1024; paste the whole key"),
        ("sk-" + "a" * 1100, "invalid key: it has 1103 characters, expected 8 to 1024; paste the whole key"),
        ("sk-with space-123", "invalid key: it must be one word of printable ASCII characters"),
        ("sk-\x00control-123", "invalid key: it must be one word of printable ASCII characters"),
        ("sk-ünicode-12345", "invalid key: it must be one word of printable ASCII characters"),
    ],
)
def test_keys_invalid(key: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_key(key)
    assert str(caught.value) == message


def test_keys_mask_shows_little() -> None:
    assert mask(KEY) == "sk-...0123"
    assert mask("abcdefghij") == "...ij"
