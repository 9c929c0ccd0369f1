"""The guest agent's hand-out steps for warm-pool VMs, on files in a temporary directory."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from tests.vm.test_image import agent

DOCUMENT = {
    "name": "mild-owl",
    "hostname": "mild-owl",
    "instance_id": "vm-00000003",
    "owner": "alice",
    "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice@test"],
    "env": {"GREETING": "hi"},
}


@pytest.fixture
def ssh_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "ssh"
    directory.mkdir()
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key", "sshd_config"):
        (directory / name).write_text(f"old {name}\n")
    monkeypatch.setattr(agent, "SSH_DIR", str(directory))
    monkeypatch.setattr(agent, "NEXT_HOST_KEYS_DIR", str(directory / "ussycode-next"))
    return directory


def test_agent_stage_and_install_host_keys(ssh_dir: Path) -> None:
    staged = agent.stage_host_keys()
    assert [line.split()[0] for line in staged] == ["ssh-ed25519", "ecdsa-sha2-nistp256"]
    # Staged keys are not where sshd reads them yet.
    assert (ssh_dir / "ssh_host_ed25519_key.pub").read_text() == "old ssh_host_ed25519_key.pub\n"

    agent.install_staged_host_keys()
    names = sorted(path.name for path in ssh_dir.iterdir())
    assert names == [
        "ssh_host_ecdsa_key",
        "ssh_host_ecdsa_key.pub",
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
        "sshd_config",
    ]
    assert (ssh_dir / "sshd_config").read_text() == "old sshd_config\n"
    installed = [(ssh_dir / f"ssh_host_{kind}_key.pub").read_text().strip() for kind in ("ed25519", "ecdsa")]
    assert installed == staged
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(ssh_dir / "ssh_host_ed25519_key")],
        check=True,
        capture_output=True,
        text=True,
    )
    assert derived.stdout.split()[:2] == staged[0].split()[:2]


def test_agent_stage_replaces_earlier_staging(ssh_dir: Path) -> None:
    first = agent.stage_host_keys()
    second = agent.stage_host_keys()
    assert not set(first) & set(second)
    assert len(list((ssh_dir / "ussycode-next").iterdir())) == 4


def test_agent_read_go_with_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"go {json.dumps(DOCUMENT)}\n"))
    received = agent.read_go()
    assert received is not None
    metadata, raw = received
    assert metadata.name == "mild-owl"
    assert metadata.env == {"GREETING": "hi"}
    assert raw == DOCUMENT


def test_agent_read_go_bare_fetches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("go\n"))
    assert agent.read_go() is None


@pytest.mark.parametrize(
    ("line", "fragment"),
    [("", "end of input"), ("stop\n", "no go"), ("go {nope\n", "not JSON"), ('go {"name": 1}\n', "'name'")],
)
def test_agent_read_go_rejects(monkeypatch: pytest.MonkeyPatch, line: str, fragment: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(line))
    with pytest.raises(agent.MetadataError, match=fragment):
        agent.read_go()


def test_agent_listening_inodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    header = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    )
    tcp = tmp_path / "tcp"
    tcp.write_text(
        header
        + "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4242 1\n"
        + "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 5151 1\n"
        + "   2: 0200000A:0016 0100000A:C350 01 00000000:00000000 00:00000000 00000000 0 0 6161 1\n"
    )
    opened = []
    real_open = open

    def fake_open(path: str, *args: object, **kwargs: object) -> object:
        opened.append(path)
        if path == "/proc/net/tcp":
            return real_open(tcp, *args, **kwargs)  # type: ignore[call-overload]
        raise FileNotFoundError(path)

    monkeypatch.setattr("builtins.open", fake_open)
    assert agent.listening_inodes(22) == {"4242"}
    assert agent.listening_inodes(8080) == {"5151"}
    assert opened[:2] == ["/proc/net/tcp", "/proc/net/tcp6"]
