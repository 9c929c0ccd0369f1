"""The share, email and browser commands through the command layer, with the loopback stack."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.sharing.stack import DOMAIN, Stack
from ussycode.auth.audit import Action
from ussycode.commands.qr import qr_text
from ussycode.store import User
from ussycode.store.audit import AuditLog


def run(stack: Stack, user: User, line: str) -> str:
    outcome = stack.command(user, line)
    assert outcome.status == 0, outcome.stderr
    return outcome.stdout


def run_json(stack: Stack, user: User, line: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(run(stack, user, f"{line} --json"))
    return document


def fails(stack: Stack, user: User, line: str) -> str:
    outcome = stack.command(user, line)
    assert outcome.status == 1, outcome.stdout
    return outcome.stderr


@pytest.fixture(scope="module")
def people(stack: Stack) -> dict[str, User]:
    users = {name: stack.add_user(f"c-{name}") for name in ("alice", "bob", "carol")}
    stack.add_vm("c-owl", users["alice"])
    stack.add_vm("c-fox", users["bob"])
    return users


def test_share_show_defaults(stack: Stack, people: dict[str, User]) -> None:
    data = run_json(stack, people["alice"], "share show c-owl")
    assert data["vm"] == "c-owl"
    assert data["visibility"] == "private"
    assert isinstance(data["port"], int)
    assert data["url"] == f"https://c-owl.{DOMAIN}:{stack.https_port}/"
    assert data["other_ports_url"] == f"https://c-owl--PORT.{DOMAIN}:{stack.https_port}/"
    assert data["other_ports"] == [3000, 9999]
    assert data["links"] == []
    text = run(stack, people["alice"], "share show c-owl")
    assert text.startswith(f"c-owl: private, port {data['port']}")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("share", "the following arguments are required: ACTION"),
        ("share show", "the following arguments are required: VM"),
        ("share frob c-owl", "share: argument ACTION: invalid choice: 'frob'"),
        ("share show c-fox", 'no VM named "c-fox"'),
        ("share show nope", 'no VM named "nope"'),
        ("share set-public c-fox", 'no VM named "c-fox"'),
        ("share port c-owl 0", 'invalid port "0": use a number from 1 to 65535'),
        ("share port c-owl 65536", 'invalid port "65536"'),
        ("share port c-owl http", 'invalid port "http"'),
        ("share port c-owl -1", "invalid port"),
        ("share add c-owl nobody", 'no user with the handle "nobody"'),
        ("share add c-owl c-alice", 'you own vm "c-owl"'),
        ("share add c-owl not@an@email", 'invalid email address "not@an@email"'),
        ("share add c-owl c-bob --message " + "x" * 501, "invalid --message"),
        ("share add c-owl c-bob --message 'a\tb'", "invalid --message"),
        ("share remove c-owl c-carol", 'vm "c-owl" is not shared with "c-carol"'),
        ("share remove c-owl zed@example.org", 'is not shared with "zed@example.org"'),
        ("share remove-link c-owl abcdefgh", 'vm "c-owl" has no share link "abcdefgh"'),
        ("share access allow c-owl c-carol", 'vm "c-owl" is not shared with c-carol'),
        ("share access maybe c-owl c-bob", "invalid choice"),
        ("share access allow c-owl nobody", 'no user with the handle "nobody"'),
        ("email set nonsense", 'invalid email address "nonsense"'),
        ("email", "the following arguments are required: ACTION"),
        ("browser --qr=1", "browser: argument --qr: ignored explicit argument '1'"),
    ],
)
def test_commands_reject(stack: Stack, people: dict[str, User], line: str, message: str) -> None:
    assert message in fails(stack, people["alice"], line)


def test_commands_reject_json_shape(stack: Stack, people: dict[str, User]) -> None:
    outcome = stack.command(people["alice"], "share show c-fox --json")
    assert outcome.status == 1
    assert json.loads(outcome.stdout)["error"]["code"] == "not_found"


def test_share_add_person_flow(stack: Stack, people: dict[str, User]) -> None:
    alice = people["alice"]
    added = run_json(stack, alice, "share add c-owl C-BOB --message 'staging site'")
    person = added["person"]
    assert isinstance(person, dict)
    assert person["handle"] == "c-bob"
    assert person["status"] == "active"
    assert person["message"] == "staging site"
    assert person["added_by"] == "c-alice"
    assert person["ssh_access"] is False
    assert "already shared with c-bob" in fails(stack, alice, "share add c-owl c-bob")

    allowed = run(stack, alice, "share access allow c-owl c-bob")
    assert "c-bob can now log in with: ssh -p 2224 c-owl@localhost" in allowed
    show = run_json(stack, alice, "share show c-owl")
    assert [(p["handle"], p["ssh_access"]) for p in show["people"]] == [("c-bob", True)]
    text = run(stack, alice, "share show c-owl")
    assert re.search(r"^c-bob\s+active\s+yes\s+c-alice\s+\S+\s+staging site$", text, re.MULTILINE)

    disallowed = run(stack, alice, "share access disallow c-owl c-bob")
    assert "can no longer ssh" in disallowed
    removed = run(stack, alice, "share remove c-owl c-bob")
    assert removed.strip() == 'c-bob can no longer open vm "c-owl"'
    assert run_json(stack, alice, "share show c-owl")["people"] == []


def test_share_invitation_flow(stack: Stack, people: dict[str, User]) -> None:
    alice = people["alice"]
    text = run(stack, alice, "share add c-owl Dana@Example.org")
    assert "Invited dana@example.org" in text
    assert "verification is not available" in text
    show = run_json(stack, alice, "share show c-owl")
    assert [(p["email"], p["status"], p["handle"]) for p in show["people"]] == [
        ("dana@example.org", "pending", None)
    ]
    assert "already shared with dana@example.org" in fails(stack, alice, "share add c-owl dana@example.org")
    assert "revoked the invitation" in run(stack, alice, "share remove c-owl DANA@example.org")


def test_share_visibility_and_port(stack: Stack, people: dict[str, User]) -> None:
    alice = people["alice"]
    public = run_json(stack, alice, "share set-public c-owl")
    assert public["visibility"] == "public"
    assert public["updated_by"] == "c-alice"
    assert "Other ports stay private" in run(stack, alice, "share set-public c-owl")
    assert run_json(stack, alice, "share set-private c-owl")["visibility"] == "private"
    original = run_json(stack, alice, "share show c-owl")["port"]
    assert run_json(stack, alice, "share port c-owl 3000")["port"] == 3000
    assert "now serves port 3000" in run(stack, alice, "share port c-owl 3000")
    run(stack, alice, f"share port c-owl {original}")


def test_share_links_flow(stack: Stack, people: dict[str, User]) -> None:
    alice = people["alice"]
    first = run_json(stack, alice, "share add-link c-owl")
    second = run_json(stack, alice, "share add-link c-owl")
    token = str(first["token"])
    assert len(token) == 43
    assert first["id"] == token[:8]
    assert first["url"] == f"https://c-owl.{DOMAIN}:{stack.https_port}/__ussycode/share?token={token}"
    assert first["token"] != second["token"]
    stored = [row[0] for row in stack.store.execute("SELECT token_hash FROM share_links")]
    assert token not in stored
    show = run_json(stack, alice, "share show c-owl")
    assert [link["id"] for link in show["links"]] == [first["id"], second["id"]]

    assert "removed share link" in run(stack, alice, f"share remove-link c-owl {first['url']}")
    assert "removed share link" in run(stack, alice, f"share remove-link c-owl {second['token']}")
    assert run_json(stack, alice, "share show c-owl")["links"] == []
    other = run_json(stack, people["bob"], "share add-link c-fox")
    assert "has no share link" in fails(stack, alice, f"share remove-link c-owl {other['token']}")


def test_share_changes_audited(stack: Stack, people: dict[str, User]) -> None:
    alice = people["alice"]
    run(stack, alice, "share set-public c-owl")
    run(stack, alice, "share set-private c-owl")
    run(stack, alice, "share add c-owl c-carol")
    run(stack, alice, "share remove c-owl c-carol")
    entries = AuditLog(stack.store).entries(target="c-owl", limit=4)
    assert [entry.action for entry in entries] == [
        Action.REMOVE_PERSON,
        Action.ADD_PERSON,
        Action.SET_PRIVATE,
        Action.SET_PUBLIC,
    ]
    assert all(entry.actor == "c-alice" for entry in entries)
    assert all(entry.actor_id == alice.id for entry in entries)
    assert entries[0].detail == "user c-carol"


def test_email_commands(stack: Stack, people: dict[str, User]) -> None:
    carol = people["carol"]
    assert "none" in run(stack, carol, "email show")
    assert json.loads(run(stack, carol, "whoami --json"))["email"] is None
    assert "email set to carol@example.org (unverified" in run(stack, carol, "email set Carol@Example.org")
    whoami = json.loads(run(stack, carol, "whoami --json"))
    assert whoami["email"]["address"] == "carol@example.org"
    assert whoami["email"]["verified"] is False
    assert "email:    carol@example.org (unverified)" in run(stack, carol, "whoami")
    assert run_json(stack, carol, "email show")["verified"] is False
    assert "removed" in run(stack, carol, "email clear")
    assert "you had no email address" in run(stack, carol, "email clear")
    actions = [entry.action for entry in AuditLog(stack.store).entries(target="c-carol")]
    assert actions == [Action.CLEAR_EMAIL, Action.SET_EMAIL]


def test_browser_command(stack: Stack, people: dict[str, User]) -> None:
    data = run_json(stack, people["alice"], "browser")
    url = str(data["url"])
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        f"{DOMAIN}:{stack.https_port}",
        "/__ussycode/login",
    )
    assert re.fullmatch(r"token=[A-Za-z0-9_-]{43}", parts.query)
    assert data["expires_in"] == 300
    assert str(data["expires_at"]).endswith("Z")
    text = run(stack, people["alice"], "browser")
    assert "works once, for 5 minutes" in text
    assert url not in text


def test_browser_qr(stack: Stack, people: dict[str, User]) -> None:
    text = run(stack, people["alice"], "browser --qr")
    url = next(line.strip() for line in text.splitlines() if line.strip().startswith("https://"))
    assert qr_text(url) in text
    assert "\u2588" in text


def test_help_lists_sharing_commands(stack: Stack, people: dict[str, User]) -> None:
    listing = run(stack, people["alice"], "help")
    for name in ("share", "email", "browser"):
        assert re.search(rf"^{name}\s", listing, re.MULTILINE), name
    for line in ("share --help", "help share"):
        usage = run(stack, people["alice"], line)
        for action in ("set-public", "add-link", "remove-link", "access"):
            assert action in usage, line
    assert "show visibility, port, people and links" in run(stack, people["alice"], "share show --help")
