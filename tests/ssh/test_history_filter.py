"""Which REPL lines the lobby keeps out of the stored history, which is plain text."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from tests.llm.harness import ALICE_FP, load_config
from ussycode.commands.base import Services
from ussycode.ssh.lobby import LobbySession
from ussycode.store import Store, User
from ussycode.store.history import HistoryStore
from ussycode.vm.manager import VMManager
from ussycode.vm.network import Network
from ussycode.vm.qemu import QemuRuntime

KEPT = [
    "whoami",
    "new --name myvm",
    "ssh myvm git log 3f2a9c1d",
    "ls /home/ubuntu/project-directory-long-name",
    "new --image ussyuntu-24.04-with-python3",
    "llm-usage",
]
LEFT_OUT = [
    "llm-key set openai sk-abc",
    "llm-kye set openai sk-abc",
    "llmkey set openai x",
    "lm-key set anthropic -",
    "llm-keys list",
    "ssh myvm export OPENAI_API_KEY=x sk-proj-abcdef123456",
    "ssh myvm echo sk-ant-api03-abcdefghijkl",
    "ssh myvm echo 'fw_3ZabcDEF12345678'",
    "ssh myvm login AbC1dEf2GhI3jKl4MnO5pQr6StU",
]


@pytest.mark.parametrize("line", KEPT + LEFT_OUT)
def test_history_keeps_out_secrets(tmp_path: Path, line: str) -> None:
    cfg = load_config({"USSYCODE_DATA_DIR": str(tmp_path / "data")})
    store = Store(tmp_path / "store.db")
    user = store.create_user("alice", ALICE_FP, "ssh-ed25519 AAAAalice")
    manager = VMManager(
        config=cfg,
        store=store,
        network=Network(bridge="ussy0", subnet=cfg.subnet, metadata_port=8083),
        runtime=QemuRuntime(),
        gateway_key=asyncssh.generate_private_key("ssh-ed25519"),
        listener=None,
    )

    async def resolve(session: LobbySession) -> User:
        return user

    session = LobbySession(Services(config=cfg, store=store, manager=manager), resolve, "test")
    session._remember(user, line)
    expected = [line] if line in KEPT else []
    assert HistoryStore(store).lines(user.id) == expected
    store.close()
