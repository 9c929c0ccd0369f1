"""The boot agent's new identity for copied disks: it replaces host keys when the instance id changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.vm.test_image import agent


@pytest.fixture
def guest_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_ecdsa_key", "sshd_config"):
        (ssh_dir / name).write_text("x\n")
    monkeypatch.setattr(agent, "SSH_DIR", str(ssh_dir))
    monkeypatch.setattr(agent, "CACHE_PATH", str(tmp_path / "metadata.json"))
    return tmp_path


def test_agent_cached_instance_id(guest_files: Path) -> None:
    cache = guest_files / "metadata.json"
    assert agent.cached_instance_id() is None
    cache.write_text(json.dumps({"instance_id": "vm-00000007"}))
    assert agent.cached_instance_id() == "vm-00000007"
    cache.write_text("not json")
    assert agent.cached_instance_id() is None
    cache.write_text(json.dumps(["vm-00000007"]))
    assert agent.cached_instance_id() is None
    cache.write_text(json.dumps({"instance_id": 7}))
    assert agent.cached_instance_id() is None


def test_agent_remove_host_keys_only_keys(guest_files: Path) -> None:
    agent.remove_host_keys()
    assert sorted(path.name for path in (guest_files / "ssh").iterdir()) == ["sshd_config"]
