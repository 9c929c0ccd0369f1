"""llm-key and llm-usage run in-process against a store, without SSH: bad inputs and what they log."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncssh
import pytest

from tests.llm.harness import ALICE_FP, load_config
from tests.sharing.stack import BatchTerminal
from ussycode.commands.base import CommandContext, Services
from ussycode.commands.dispatch import Outcome, execute, split_line
from ussycode.store import Store, User
from ussycode.vm.manager import VMManager
from ussycode.vm.network import Network
from ussycode.vm.qemu import QemuRuntime

KEY = "sk-proj-SECRETabcdefghijklmnopqrstuvwxyz0123456789"


def run(services: Services, user: User, line: str) -> Outcome:
    return asyncio.run(execute(CommandContext(services, user, BatchTerminal()), split_line(line)))


@pytest.fixture
def services(tmp_path: Path) -> tuple[Services, User]:
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
    return Services(config=cfg, store=store, manager=manager), user


@pytest.mark.parametrize("line", [f"llm-key set {KEY} openai", f"llm-key remove {KEY}"])
def test_llm_key_swapped_arguments_keep_key_out(
    services: tuple[Services, User], line: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The failed command is logged with its message: a key in the provider's place must not be in it.
    caplog.set_level(logging.DEBUG)
    outcome = run(*services, line)
    assert outcome.status == 1
    assert outcome.stderr == (
        "error: unknown LLM provider (not shown: it looks like a key): expected one of anthropic,"
        " fireworks, openai, openrouter; the provider comes first, as in llm-key set openai -\n"
    )
    assert KEY not in caplog.text
    assert KEY[:12] not in outcome.stdout + outcome.stderr
    assert "no LLM keys stored" in run(*services, "llm-key list").stdout


def test_llm_key_unknown_provider_named(services: tuple[Services, User]) -> None:
    outcome = run(*services, "llm-key set gemini abcdefghij")
    assert outcome.stderr.startswith("error: unknown LLM provider 'gemini': expected one of anthropic,")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"llm-key set openai - {KEY}", "unexpected extra arguments"),
        (f"llm-key list {KEY}", "unexpected extra arguments"),
        (f"llm-key {KEY}", "invalid choice"),
    ],
)
def test_llm_key_parse_errors_keep_key_out(
    services: tuple[Services, User], line: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    # argparse repeats what it did not expect, and the dispatcher logs the error.
    caplog.set_level(logging.DEBUG)
    outcome = run(*services, line)
    assert outcome.status == 1
    assert message in outcome.stderr
    assert KEY[:12] not in caplog.text + outcome.stdout + outcome.stderr
