"""Every command without a VM in exec mode (`ssh host COMMAND`) and through `POST /exec`, with
`--json`: successes, and bad input with the exact error text and code."""

from __future__ import annotations

import json

import pytest

from tests.api.test_exec import NAMESPACE, check_schema, post
from tests.framework.platform import Platform, SSHUser
from tests.framework.tokens import sign_usy0
from ussycode.commands.dispatch import REGISTRY

pytestmark = pytest.mark.netns

NOT_FOUND = 'no VM named "nope": run "ls" to see your VMs'
SIZE_HINT = "expected a size such as 20G"

# (command line, code, message) for input that fails before any VM exists.
ERRORS = [
    ("start nope", "not_found", NOT_FOUND),
    ("stop nope", "not_found", NOT_FOUND),
    ("restart nope", "not_found", NOT_FOUND),
    ("rm nope --force", "not_found", NOT_FOUND),
    ("rm other nope --force", "not_found", 'no VM named "other": run "ls" to see your VMs'),
    ("cp nope", "not_found", NOT_FOUND),
    ("rename nope calm-fox", "not_found", NOT_FOUND),
    ("tag nope web", "not_found", NOT_FOUND),
    ("tag -d nope web", "not_found", NOT_FOUND),
    ("comment nope hello", "not_found", NOT_FOUND),
    ("resize nope --disk 20G", "not_found", NOT_FOUND),
    ("stat nope", "not_found", NOT_FOUND),
    ("vm-logs nope", "not_found", NOT_FOUND),
    ("ssh nope true", "not_found", NOT_FOUND),
    ("share show nope", "not_found", NOT_FOUND),
    ("new --disk 20X", "invalid_input", f'invalid --disk "20X": {SIZE_HINT}'),
    ("new --disk=-5G", "invalid_input", f'invalid --disk "-5G": {SIZE_HINT}'),
    (
        "new --disk -5G",
        "invalid_input",
        'new: argument --disk: expected one argument; run "new --help" for usage',
    ),
    ("new --disk 500G", "quota_exceeded", "--disk 500G is over the limit of 200G per VM"),
    ("new --memory lots", "invalid_input", 'invalid --memory "lots": expected a size such as 512M or 2G'),
    ("new --memory 64M", "invalid_input", "--memory 64M is below the minimum of 256M"),
    ("new --memory 64G", "quota_exceeded", "--memory 64G is over the limit of 16G per VM"),
    ("new --cpu two", "invalid_input", 'invalid --cpu "two": expected a whole number of vCPUs, such as 2'),
    ("new --cpu 0", "invalid_input", 'invalid --cpu "0": a VM needs at least 1 vCPU'),
    ("new --cpu 99", "quota_exceeded", "--cpu 99 is over the limit of 8 vCPUs per VM"),
    ("new --env PORT", "invalid_input", 'invalid --env "PORT": expected KEY=VALUE, such as --env PORT=8080'),
    (
        "new --env USSYCODE_VM_NAME=x",
        "invalid_input",
        'invalid --env name "USSYCODE_VM_NAME": names starting with USSYCODE_ are set by the platform',
    ),
    (
        "new --tag Web",
        "invalid_input",
        'invalid tag "Web": use 1 to 32 lowercase letters, digits, "_", "." or "-",'
        " starting with a letter or digit",
    ),
    ("new --comment " + "x" * 201, "invalid_input", "comment is 201 bytes: the limit is 200 bytes"),
    (
        "new --name Bad_Name",
        "invalid_input",
        'invalid VM name "Bad_Name": use 3 to 32 lowercase letters, digits and single dashes,'
        " starting with a letter and not ending with a dash",
    ),
    (
        "new --setup-script setup.sh",
        "invalid_input",
        '--setup-script "setup.sh": the server cannot read files on your machine; send the script on stdin:'
        " ssh -p 2224 localhost new --setup-script - < setup.sh",
    ),
    (
        "resize nope",
        "invalid_input",
        'resize needs --cpu, --memory, --disk or --idle: "resize nope --disk 20G"',
    ),
    ("resize nope --disk 20X", "invalid_input", f'invalid --disk "20X": {SIZE_HINT}'),
    (
        "cp nope --copy-tags=maybe",
        "invalid_input",
        'cp: argument --copy-tags: expected true or false, not "maybe"; run "cp --help" for usage',
    ),
    (
        "vm-logs",
        "invalid_input",
        'vm-logs: the following arguments are required: VM; run "vm-logs --help" for usage',
    ),
    ("ssh-key rename nope x", "not_found", 'no key named "nope": run "ssh-key list"'),
    (
        "doc nope",
        "not_found",
        'no doc topic "nope": topics are getting-started, https-and-ports, sharing, api-and-tokens,'
        " ssh-tips, llm, agents",
    ),
    ("tutorial --lesson 11", "invalid_input", "invalid --lesson 11: choose 1 to 10"),
    ("tutorial --lesson 0", "invalid_input", "invalid --lesson 0: choose 1 to 10"),
    (
        "help ssh-key frob",
        "not_found",
        '"ssh-key" has no action "frob": its actions are list, add, remove, rename, generate-api-key',
    ),
    ("help frob", "unknown_command", 'unknown command "frob": run "help" to list commands'),
    ("help nwe", "unknown_command", 'unknown command "nwe": did you mean "new"? Run "help" to list commands'),
]


@pytest.fixture
def alice(platform: Platform) -> SSHUser:
    user = platform.make_user("alice")
    assert platform.ssh(user, "whoami").status == 0
    return user


def all_commands_token(user: SSHUser) -> str:
    names = [
        name
        for command in REGISTRY.values()
        for name in (command.name, *(f"{command.name} {a}" for a in command.subcommands))
    ]
    return sign_usy0(user.key, {"cmds": names}, NAMESPACE)


def test_exec_surface_errors(platform: Platform, alice: SSHUser) -> None:
    token = all_commands_token(alice)
    for line, code, message in ERRORS:
        name, _, rest = line.partition(" ")
        # --json goes first: after the VM of "ssh VM COMMAND" it would belong to the command.
        result = platform.ssh(alice, f"{name} --json {rest}")
        assert result.status == 1, line
        assert result.stderr == f"error: {message}\n", line
        assert result.stdout.startswith("{"), line
        assert json.loads(result.stdout) == {"error": {"code": code, "message": message}}, line

        response, _ = post(platform, line, token)
        assert response.status == 422, (line, response.stdout)
        document = json.loads(response.stdout)
        check_schema("Error", document)
        assert document == {"error": {"code": code, "message": message}}, line


def test_exec_unknown_command_suggestion(platform: Platform, alice: SSHUser) -> None:
    message = 'unknown command "sl": did you mean "ls"? Run "help" to list commands'
    result = platform.ssh(alice, "sl --json")
    assert result.status == 1
    assert result.stderr == f"error: {message}\n"
    assert json.loads(result.stdout)["error"] == {"code": "unknown_command", "message": message}
    response, _ = post(platform, "sl", all_commands_token(alice))
    assert response.status == 404
    assert json.loads(response.stdout)["error"]["message"] == message


def test_exec_last_key_cannot_be_removed(platform: Platform, alice: SSHUser) -> None:
    keys = json.loads(platform.ssh(alice, "ssh-key list --json").stdout)
    message = "cannot remove your last SSH key: add another one first"
    for target in (keys[0]["fingerprint"], keys[0]["name"]):
        result = platform.ssh(alice, ["ssh-key", "remove", repr(target), "--json"])
        assert result.status == 1
        assert json.loads(result.stdout)["error"] == {"code": "conflict", "message": message}
        response, _ = post(platform, f"ssh-key remove '{target}'", all_commands_token(alice))
        assert response.status == 422
        assert json.loads(response.stdout)["error"] == {"code": "conflict", "message": message}
    assert len(json.loads(platform.ssh(alice, "ssh-key list --json").stdout)) == 1


def test_exec_ssh_key_rename(platform: Platform, alice: SSHUser) -> None:
    laptop = platform.make_user("alice-laptop")
    public = (laptop.key.parent / f"{laptop.key.name}.pub").read_text().strip()
    assert platform.ssh(alice, ["ssh-key", "add", repr(public), "--name", "laptop"]).status == 0
    renamed = platform.ssh(alice, "ssh-key rename laptop work --json")
    assert renamed.status == 0, renamed.stderr
    assert json.loads(renamed.stdout)["name"] == "work"
    names = [key["name"] for key in json.loads(platform.ssh(alice, "ssh-key list --json").stdout)]
    assert names == ["first key", "work"]
    taken = platform.ssh(alice, ["ssh-key", "rename", "work", repr("first key"), "--json"])
    assert json.loads(taken.stdout)["error"] == {
        "code": "conflict",
        "message": 'you already have a key named "first key": choose another name',
    }
    response, _ = post(platform, "ssh-key rename work laptop", all_commands_token(alice))
    assert response.status == 200, response.stdout
    assert json.loads(response.stdout)["name"] == "laptop"


def test_exec_help_as_data(platform: Platform, alice: SSHUser) -> None:
    token = all_commands_token(alice)
    for line in ("help cp --json", "cp --help --json"):
        data = json.loads(platform.ssh(alice, line).stdout)
        assert data["name"] == "cp"
        assert data["group"] == "vms"
        flags = {argument["name"]: argument for argument in data["arguments"]}
        assert flags["--disk"]["metavar"] == "SIZE"
        assert "GiB if no unit" in flags["--disk"]["help"]
        assert data["examples"]
    via_api, _ = post(platform, "resize --help", token)
    assert json.loads(via_api.stdout)["name"] == "resize"
    action = json.loads(platform.ssh(alice, "ssh-key rename --help --json").stdout)
    assert action["name"] == "ssh-key rename"
    assert [argument["name"] for argument in action["arguments"]] == ["--json", "OLD", "NEW"]
    listing = json.loads(platform.ssh(alice, "help --json").stdout)
    assert {entry["group"] for entry in listing} >= {"vms", "sharing", "account", "api", "learn"}
    assert {entry["name"] for entry in listing} == set(REGISTRY)


def test_exec_help_text_grouped(platform: Platform, alice: SSHUser) -> None:
    text = platform.ssh(alice, "help").stdout
    lines = text.splitlines()
    assert lines[0] == "VMs"
    assert "Sharing" in lines
    assert "Help and learning" in lines
    usage = platform.ssh(alice, "help resize").stdout
    assert "--disk SIZE" in usage
    assert "only grows" in usage
    assert "examples:" in usage


def test_exec_doc_and_tutorial(platform: Platform, alice: SSHUser) -> None:
    token = all_commands_token(alice)
    topics = json.loads(platform.ssh(alice, "doc --json").stdout)
    assert [entry["topic"] for entry in topics][:5] == [
        "getting-started",
        "https-and-ports",
        "sharing",
        "api-and-tokens",
        "ssh-tips",
    ]
    page = json.loads(post(platform, "doc ssh-tips", token)[0].stdout)
    assert page["title"] == "SSH tips"
    assert "ssh -p 2224 -L 8000:localhost:8000 mild-owl@localhost" in page["markdown"]
    text = platform.ssh(alice, "doc sharing").stdout
    assert text.startswith("SHARING\n")
    lesson = json.loads(platform.ssh(alice, "tutorial --json").stdout)
    assert lesson["lesson"] == 1
    assert lesson["title"] == "Create a VM"
    assert lesson["total"] == 10
    again = json.loads(post(platform, "tutorial", token)[0].stdout)
    assert again["lesson"] == 1
    assert again["completed"] == []
    jumped = json.loads(platform.ssh(alice, "tutorial --lesson 5 --json").stdout)
    assert jumped["lesson"] == 5
    not_yet = platform.ssh(alice, "tutorial").stdout
    assert not_yet.startswith("Not done yet: your tutorial VM is gone")
    reset = json.loads(platform.ssh(alice, "tutorial --reset --json").stdout)
    assert reset["lesson"] == 1


def test_exec_setup_script_stdin_empty(platform: Platform, alice: SSHUser) -> None:
    result = platform.ssh(alice, "new --setup-script - --json", stdin="")
    assert json.loads(result.stdout)["error"] == {
        "code": "invalid_input",
        "message": "--setup-script -: no script on stdin",
    }
    too_big = platform.ssh(alice, "new --setup-script - --json", stdin="echo hi\n" * 2000)
    assert json.loads(too_big.stdout)["error"] == {
        "code": "invalid_input",
        "message": "the input is over 10240 bytes",
    }
    response, _ = post(platform, "new --setup-script -", all_commands_token(alice))
    assert json.loads(response.stdout)["error"]["message"] == (
        "--setup-script - reads stdin, which this client cannot send: pass the script text as the value"
    )


def test_exec_ls_filters_without_vms(platform: Platform, alice: SSHUser) -> None:
    assert json.loads(platform.ssh(alice, "ls -l 'web-*' --json").stdout) == []
    assert platform.ssh(alice, "ls 'web-*'").stdout == "No VMs match.\n"
    assert platform.ssh(alice, "ls -l").stdout == 'You have no VMs yet. Create one with "new".\n'
