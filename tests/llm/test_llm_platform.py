"""The LLM gateway through a running server: llm-key and llm-usage over SSH, and a request from
inside a real VM through http://169.254.169.254/gateway/llm/ to a provider stand-in."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAILED, require_image, require_root
from tests.framework import openapi
from tests.framework.platform import REPO, Platform, wait_until

pytestmark = pytest.mark.netns

OWN_KEY = "sk-own-key-of-alice-0123456789"
PLATFORM_KEY = "sk-platform-key-9876543210zyx"
STANDIN_PORT = 18080


def store_rows(platform: Platform, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(platform.data_dir / "ussycode.db") as db:
        return list(db.execute(sql))


def test_llm_key_commands(platform: Platform) -> None:
    alice = platform.make_user("alice")
    stored = platform.ssh(alice, ["llm-key", "set", "openai", "-"], stdin=OWN_KEY + "\n")
    assert stored.status == 0, stored.stderr
    assert stored.stdout == "stored your openai key sk-...6789; your VMs now use it through the gateway\n"

    listed = platform.ssh(alice, "llm-key list --json")
    assert listed.status == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["provider"] == "openai"
    assert entry["key"] == "sk-...6789"
    table = platform.ssh(alice, "llm-key list").stdout
    assert "sk-...6789" in table
    assert OWN_KEY not in table

    repl = platform.repl(alice, [f"llm-key set anthropic {OWN_KEY}x", "llm-key list"])
    assert "stored your anthropic key" in repl.stdout

    for argv, message in [
        (["llm-key", "set", "gemini", "-"], "error: unknown LLM provider 'gemini': expected one of"),
        (["llm-key", "set", "openai", "short"], "error: invalid key: it has 5 characters"),
        (["llm-key", "remove", "fireworks"], 'error: you have no fireworks key stored: run "llm-key list"'),
        (["llm-usage", "--days", "0"], "error: --days 0: expected 1 to 366"),
    ]:
        failed = platform.ssh(alice, argv, stdin="")
        assert failed.status != 0, argv
        assert failed.stderr.startswith(message), failed.stderr
    empty = platform.ssh(alice, ["llm-key", "set", "openai", "-"], stdin="")
    assert empty.stderr == "error: llm-key set PROVIDER -: no key on stdin\n"

    removed = platform.ssh(alice, "llm-key remove anthropic")
    assert removed.stdout == "removed your anthropic key\n"

    usage = platform.ssh(alice, "llm-usage --json")
    assert usage.status == 0, usage.stderr
    document = json.loads(usage.stdout)
    assert document["usage"] == []
    assert document["budget"] == {
        "tier": "newbie",
        "tokens_per_day": 200000,
        "requests_per_minute": 20,
        "tokens_used_today": 0,
    }
    text = platform.ssh(alice, "llm-usage").stdout
    assert "platform budget today: 0 of 200000 tokens (tier newbie, 20 requests per minute)" in text

    # The key is in no log, no REPL history and nowhere in the store in plain text.
    assert OWN_KEY not in platform.log_path.read_text()
    history = store_rows(platform, "SELECT line FROM repl_history")
    assert not any("llm-key" in str(line) for (line,) in history)
    for path in platform.data_dir.glob("ussycode.db*"):
        assert OWN_KEY.encode() not in path.read_bytes()


@pytest.fixture
def llm_platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    """A platform whose OpenAI provider is a stand-in inside its namespace, with a platform key."""
    require_root()
    environ = {
        "USSYCODE_LLM_OPENAI_URL": f"http://127.0.0.1:{STANDIN_PORT}",
        "USSYCODE_LLM_OPENAI_KEY": PLATFORM_KEY,
    }
    with Platform(tmp_path, extra_env=environ) as running:
        log = tmp_path / "standin.jsonl"
        log.touch()
        running.ns.popen(
            [sys.executable, "-m", "tests.llm.provider_standin", str(STANDIN_PORT), str(log)],
            cwd=REPO,
            stdout=(tmp_path / "standin.out").open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: running.curl(f"http://127.0.0.1:{STANDIN_PORT}/v1/models", timeout=5).status == 200,
            20,
            "the provider stand-in to listen",
        )
        yield running
        if request.node.stash.get(FAILED, False):
            running.keep_logs(request.node.name)


def chat_requests(platform: Platform) -> list[dict[str, object]]:
    """Return the chat completion requests the stand-in received (not the readiness probes)."""
    lines = (platform.workdir / "standin.jsonl").read_text().splitlines()
    found = [json.loads(line) for line in lines if line.strip()]
    return [entry for entry in found if entry["path"] == "/v1/chat/completions"]


CHAT_CURL = (
    "curl -sS --max-time 60 http://169.254.169.254/gateway/llm/openai/v1/chat/completions"
    ' -H "Authorization: Bearer $OPENAI_API_KEY" -H "Content-Type: application/json"'
    """ -d '{"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'"""
)


@pytest.mark.vm
def test_llm_gateway_from_vm(llm_platform: Platform) -> None:
    require_image()
    platform = llm_platform
    alice = platform.make_user("alice")
    created = platform.ssh(alice, ["new", "--name", "llm-owl", "--json"])
    assert created.status == 0, created.stderr + platform.log_tail()

    env = platform.ssh(alice, "bash -lc env; cat /etc/environment", login="llm-owl")
    assert env.status == 0, env.stderr
    assert "OPENAI_BASE_URL=http://169.254.169.254/gateway/llm/openai/v1" in env.stdout
    assert "ANTHROPIC_BASE_URL=http://169.254.169.254/gateway/llm/anthropic" in env.stdout
    assert PLATFORM_KEY not in env.stdout

    metadata = platform.ssh(alice, "curl -sS http://169.254.169.254/v1/vm", login="llm-owl")
    document = json.loads(metadata.stdout)
    openapi.validate("metadata.yaml", "VMDocument", document)
    assert document["env"]["OPENAI_API_KEY"] == "ussycode-gateway"
    assert PLATFORM_KEY not in metadata.stdout

    # Through the platform key first, with the guest's placeholder key in the request.
    streamed = platform.ssh(alice, "bash -l", login="llm-owl", stdin=CHAT_CURL)
    assert streamed.status == 0, streamed.stderr
    assert "Hello" in streamed.stdout
    assert streamed.stdout.rstrip().endswith("data: [DONE]")
    [seen] = chat_requests(platform)
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers["authorization"] == f"Bearer {PLATFORM_KEY}"

    # Then through alice's own key, once she sets one.
    assert platform.ssh(alice, ["llm-key", "set", "openai", "-"], stdin=OWN_KEY).status == 0
    again = platform.ssh(alice, "bash -l", login="llm-owl", stdin=CHAT_CURL)
    assert again.status == 0, again.stderr
    headers = chat_requests(platform)[-1]["headers"]
    assert isinstance(headers, dict)
    assert headers["authorization"] == f"Bearer {OWN_KEY}"

    # The gateway writes its counters within half a second.
    expected = {("openai", "platform"): (1, 18), ("openai", "own"): (1, 18)}

    def counted() -> dict[tuple[str, str], tuple[int, int]]:
        usage = json.loads(platform.ssh(alice, "llm-usage --json").stdout)["usage"]
        return {(row["provider"], row["source"]): (row["requests"], row["total_tokens"]) for row in usage}

    wait_until(lambda: counted() == expected, 10, "llm-usage to count both requests")

    server_log = platform.log_path.read_text()
    assert "llm POST provider=openai source=platform status=200 tokens_in=11 tokens_out=7" in server_log
    for key in (PLATFORM_KEY, OWN_KEY):
        assert key not in server_log
    # The keys go in on stdin: on a command line they would land in the guest's journal.
    guest = platform.ssh(
        alice,
        "sudo grep -rlF -f /dev/stdin /etc /home /var/log /run /tmp; echo status=$?",
        login="llm-owl",
        stdin=f"{PLATFORM_KEY}\n{OWN_KEY}\n",
    )
    assert guest.stdout.splitlines() == ["status=1"], guest.stdout
