"""The gateway with the real OpenSSH client: sign-up, exec mode, the REPL and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.framework.platform import Platform

pytestmark = pytest.mark.netns


def test_gateway_signup_from_username(platform: Platform) -> None:
    alice = platform.make_user("alice")
    first = platform.ssh(alice, "whoami --json")
    assert first.status == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["handle"] == "alice"
    assert data["ssh_keys"][0]["fingerprint"].startswith("SHA256:")
    again = json.loads(platform.ssh(alice, "whoami --json").stdout)
    assert again["user_id"] == data["user_id"]


def test_gateway_signup_generic_username(platform: Platform) -> None:
    someone = platform.make_user("root")
    data = json.loads(platform.ssh(someone, "whoami --json").stdout)
    assert data["handle"] != "root"
    assert re.fullmatch(r"[a-z]+-[a-z]+-\d+", data["handle"])


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("frobnicate", 'unknown command "frobnicate": run "help" to list commands'),
        ("new --name Bad_Name", 'invalid VM name "Bad_Name"'),
        ("new --bogus", "unrecognized arguments: --bogus"),
        ("start nope", 'no VM named "nope"'),
        ("stop", "the following arguments are required: VM"),
        ("rm nope", 'no VM named "nope"'),
        ('new --name "unterminated', "cannot parse the command line"),
    ],
)
def test_gateway_exec_errors(platform: Platform, command: str, message: str) -> None:
    alice = platform.make_user("alice")
    result = platform.ssh(alice, command)
    assert result.status != 0
    assert message in result.stderr
    assert platform.ssh(alice, "whoami").status == 0


def test_gateway_exec_json_error_shape(platform: Platform) -> None:
    alice = platform.make_user("alice")
    result = platform.ssh(alice, "start nope --json")
    assert result.status == 1
    document = json.loads(result.stdout)
    assert document["error"]["code"] == "not_found"
    assert 'no VM named "nope"' in document["error"]["message"]


def test_gateway_help_lists_commands(platform: Platform) -> None:
    alice = platform.make_user("alice")
    listing = platform.ssh(alice, "help")
    for name in ("new", "ls", "start", "stop", "restart", "rm", "whoami", "help", "exit"):
        assert re.search(rf"^{name}\s", listing.stdout, re.MULTILINE), name
    usage = platform.ssh(alice, "new --help")
    assert "--name" in usage.stdout
    assert "examples:" in usage.stdout
    data = json.loads(platform.ssh(alice, "help rm --json").stdout)
    assert data["name"] == "rm"


def test_gateway_ls_empty(platform: Platform) -> None:
    alice = platform.make_user("alice")
    result = platform.ssh(alice, "ls")
    assert "You have no VMs yet" in result.stdout


def test_gateway_repl_without_pty(platform: Platform) -> None:
    alice = platform.make_user("alice")
    result = platform.repl(alice, ["whoami", "frobnicate", "new --name Bad_Name", "ls", "exit"])
    assert result.status == 0
    assert "ussy> " in result.stdout
    assert "handle:   alice" in result.stdout
    assert "You have no VMs yet" in result.stdout
    assert 'unknown command "frobnicate"' in result.stderr
    assert 'invalid VM name "Bad_Name"' in result.stderr


def test_gateway_repl_pty_signup_asks_handle(platform: Platform) -> None:
    newcomer = platform.make_user("newcomer")
    argv = platform.ssh_argv(newcomer, tty=True)
    completed = platform.ns.run(argv, input="bad handle\rbobby\rwhoami\rexit\r", timeout=60, check=False)
    assert "Choose a handle" in completed.stdout
    assert 'invalid handle "bad handle"' in completed.stdout
    assert "Registered as bobby" in completed.stdout
    assert "handle:   bobby" in completed.stdout


def test_gateway_rejects_password_login(platform: Platform) -> None:
    argv = [
        "ssh", "-p", "2224", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "alice@127.0.0.1", "whoami",
    ]  # fmt: skip
    result = platform.ns.run(argv, timeout=30, check=False)
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_gateway_new_without_image(tmp_path: Path) -> None:
    require_root()
    empty = tmp_path / "no-images"
    empty.mkdir()
    with Platform(tmp_path, extra_env={"USSYCODE_IMAGE_DIR": str(empty)}) as platform:
        alice = platform.make_user("alice")
        result = platform.ssh(alice, "new --name mild-owl")
        assert result.status == 1
        assert 'image "ussyuntu" not found' in result.stderr
        assert "ussycode image build" in result.stderr
        assert json.loads(platform.ssh(alice, "ls --json").stdout) == []


def test_https_landing_and_unknown_vm(platform: Platform) -> None:
    landing = platform.curl("https://ussy.localhost/", "--resolve", "ussy.localhost:443:127.0.0.1")
    assert landing.status == 200
    assert "ssh -p 2224 localhost" in landing.stdout
    unknown = platform.curl(
        "https://ghost.ussy.localhost/", "--resolve", "ghost.ussy.localhost:443:127.0.0.1"
    )
    assert unknown.status == 404
    assert 'No VM named "ghost"' in unknown.stdout


def test_gateway_repl_long_line_dropped_whole(platform: Platform) -> None:
    alice = platform.make_user("alice")
    platform.ssh(alice, "whoami")
    result = platform.repl(alice, [" " * 40_000 + "whoami", "ls"])
    assert "line too long; the limit is 16 KiB" in result.stderr
    assert result.stderr.count("line too long") == 1
    assert "handle:" not in result.stdout
    assert "You have no VMs yet" in result.stdout


def test_gateway_repl_pty_line_capped(platform: Platform) -> None:
    alice = platform.make_user("alice")
    platform.ssh(alice, "whoami")
    argv = platform.ssh_argv(alice, tty=True)
    completed = platform.ns.run(argv, input="a" * 100_000 + "\rwhoami\rexit\r", timeout=120, check=False)
    # The capped 16 KiB line shows up a few times (echo, redraw, error), never the 100 000 typed.
    assert completed.stdout.count("a") < 5 * 16 * 1024
    assert "a" * (16 * 1024 + 1) not in completed.stdout
    assert "handle:   alice" in completed.stdout
