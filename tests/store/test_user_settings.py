"""Per-user settings: defaults, changes, bad keys and values, and the agent prompt column."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.store.test_db import make_vm
from ussycode.errors import InvalidInput
from ussycode.store import Store
from ussycode.store.user_settings import AGENT_ON_LOGIN, UserSettings, check_setting
from ussycode.store.vm_details import VMDetailsStore


def test_user_settings_default_and_set(tmp_path: Path) -> None:
    store = Store(tmp_path / "u.db")
    alice = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    bob = store.create_user("bob", "SHA256:b", "ssh-ed25519 BBBB")
    settings = UserSettings(store)
    assert settings.get(alice.id, AGENT_ON_LOGIN) == "on"

    settings.set(alice.id, AGENT_ON_LOGIN, "off")
    settings.set(alice.id, AGENT_ON_LOGIN, "off")
    assert settings.get(alice.id, AGENT_ON_LOGIN) == "off"
    assert settings.all(alice.id) == {AGENT_ON_LOGIN: "off"}
    assert settings.get(bob.id, AGENT_ON_LOGIN) == "on"

    settings.set(alice.id, AGENT_ON_LOGIN, "on")
    assert settings.get(alice.id, AGENT_ON_LOGIN) == "on"


def test_user_settings_unknown_stored_value(tmp_path: Path) -> None:
    store = Store(tmp_path / "u.db")
    alice = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    store.execute(
        "INSERT INTO user_settings (user_id, key, value, updated_at) VALUES (?, ?, 'maybe', 'x')",
        (alice.id, AGENT_ON_LOGIN),
    )
    assert UserSettings(store).get(alice.id, AGENT_ON_LOGIN) == "on"


def test_user_settings_invalid(tmp_path: Path) -> None:
    store = Store(tmp_path / "u.db")
    alice = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    with pytest.raises(InvalidInput) as value:
        UserSettings(store).set(alice.id, AGENT_ON_LOGIN, "yes")
    assert str(value.value) == 'invalid value "yes" for agent-on-login: use on or off'
    with pytest.raises(InvalidInput) as key:
        check_setting("agent", "on")
    assert str(key.value) == 'unknown setting "agent": the settings are agent-on-login'
    assert UserSettings(store).get(alice.id, AGENT_ON_LOGIN) == "on"


def test_vm_details_agent_prompt(tmp_path: Path) -> None:
    store = Store(tmp_path / "u.db")
    alice = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    details = VMDetailsStore(store)
    with_prompt = make_vm(store, alice.id)
    without = make_vm(store, alice.id, "calm-fox", "10.0.0.3")
    assert details.create(with_prompt, agent_prompt="build a blog").agent_prompt == "build a blog"
    assert details.create(without).agent_prompt is None
    assert details.get(with_prompt).agent_prompt == "build a blog"
