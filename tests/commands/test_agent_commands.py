"""`new --prompt` input checks and the `settings` command, in exec mode and through the API,
without booting a VM."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.test_exec import check_schema, post
from tests.commands.test_exec_surface import all_commands_token
from tests.framework.platform import Platform, SSHUser

pytestmark = pytest.mark.netns

CONTROL = "--prompt contains the control character U+001B: only text, tabs and line breaks are allowed"
# (command line, stdin, message) of `new` calls that must fail before a VM exists. The server
# splits the command line with shell rules, so an empty argument is written as ''.
PROMPT_ERRORS: list[tuple[list[str], str | None, str]] = [
    (["new", "--prompt", "''"], None, "--prompt is empty: give the first instruction for the agent"),
    (["new", "--prompt", "'  '"], None, "--prompt is empty: give the first instruction for the agent"),
    (["new", "--prompt", "x" * 16385], None, "--prompt is 16385 bytes: the limit is 16384 bytes (16 KiB)"),
    (["new", "--prompt", "-"], "", "--prompt -: no prompt on stdin"),
    (["new", "--prompt", "-"], "  \n", "--prompt is empty: give the first instruction for the agent"),
    (["new", "--prompt", "-"], ("x" * 99 + "\n") * 164, "the input is over 16384 bytes"),
    (["new", "--prompt", "-"], "clear \x1b[2J", CONTROL),
    (
        ["new", "--setup-script", "-", "--prompt", "-"],
        "echo hi\n",
        "--setup-script - and --prompt - both read stdin: pass the prompt as text",
    ),
    (["new", "--prompt"], None, 'new: argument --prompt: expected one argument; run "new --help" for usage'),
]


@pytest.fixture
def alice(platform: Platform) -> SSHUser:
    user = platform.make_user("alice")
    assert platform.ssh(user, "whoami").status == 0
    return user


def error_of(result_stdout: str) -> Any:
    return json.loads(result_stdout)["error"]


def test_new_prompt_bad_input(platform: Platform, alice: SSHUser) -> None:
    for argv, stdin, message in PROMPT_ERRORS:
        result = platform.ssh(alice, [*argv, "--json"], stdin=stdin)
        assert result.status == 1, argv
        assert error_of(result.stdout) == {"code": "invalid_input", "message": message}, argv
    # Nothing was created, and the server still responds.
    assert json.loads(platform.ssh(alice, "ls --json").stdout) == []


def test_new_prompt_stdin_through_api(platform: Platform, alice: SSHUser) -> None:
    response, _ = post(platform, "new --prompt -", all_commands_token(alice))
    assert response.status == 422
    document = json.loads(response.stdout)
    check_schema("Error", document)
    assert document["error"]["message"] == (
        "--prompt - reads stdin, which this client cannot send: pass the prompt text as the value"
    )


def test_settings_show_and_set(platform: Platform, alice: SSHUser) -> None:
    assert json.loads(platform.ssh(alice, "settings show --json").stdout) == {"agent-on-login": "on"}
    listing = platform.ssh(alice, "settings show").stdout
    assert listing.startswith("agent-on-login  on   start the coding agent pi")

    changed = platform.ssh(alice, "settings agent-on-login off")
    assert changed.status == 0
    assert changed.stdout == "agent-on-login is off: VMs apply it at their next start\n"
    assert json.loads(platform.ssh(alice, "settings show --json").stdout) == {"agent-on-login": "off"}

    bob = platform.make_user("bob")
    assert json.loads(platform.ssh(bob, "settings show --json").stdout) == {"agent-on-login": "on"}


def test_settings_bad_input(platform: Platform, alice: SSHUser) -> None:
    bad_value = platform.ssh(alice, "settings agent-on-login maybe --json")
    assert bad_value.status == 1
    assert error_of(bad_value.stdout) == {
        "code": "invalid_input",
        "message": 'invalid value "maybe" for agent-on-login: use on or off',
    }
    unknown = platform.ssh(alice, "settings colour blue --json")
    assert unknown.status == 1
    assert error_of(unknown.stdout)["code"] == "invalid_input"
    assert "colour" in error_of(unknown.stdout)["message"]
    assert json.loads(platform.ssh(alice, "settings show --json").stdout) == {"agent-on-login": "on"}
