"""The store modules of sharing: emails, shares, links, sessions, handoffs and the audit log."""

from __future__ import annotations

import sqlite3

import pytest

from tests.sharing.conftest import World
from ussycode.errors import Conflict, InvalidInput, NotFound
from ussycode.store.audit import AuditLog
from ussycode.store.emails import Emails, check_email
from ussycode.store.sessions import Sessions
from ussycode.store.sharing import DEFAULT_PORT, Sharing

NOW = 1_800_000_000


def test_sharing_defaults_private(world: World) -> None:
    settings = Sharing(world.store).settings(world.owl.id)
    assert settings.public is False
    assert settings.port == DEFAULT_PORT
    assert settings.updated_by is None


def test_sharing_set_public_and_port(world: World) -> None:
    sharing = Sharing(world.store)
    sharing.set_public(world.owl.id, True, world.alice.id)
    settings = sharing.set_port(world.owl.id, 3000, world.alice.id)
    assert settings.public is True
    assert settings.port == 3000
    assert settings.updated_by == "alice"
    assert sharing.settings(world.fox.id).public is False


def test_sharing_add_user_twice(world: World) -> None:
    sharing = Sharing(world.store)
    share = sharing.add_user(world.owl.id, world.bob.id, message="hi", added_by=world.alice.id)
    assert share.handle == "bob"
    assert share.added_by == "alice"
    assert share.pending is False
    assert sharing.can_open(world.owl.id, world.bob.id)
    with pytest.raises(Conflict, match="already shared"):
        sharing.add_user(world.owl.id, world.bob.id, message="", added_by=world.alice.id)


def test_sharing_invitation_pending(world: World) -> None:
    sharing = Sharing(world.store)
    share = sharing.add_invitation(world.owl.id, "carol@example.org", message="", added_by=world.alice.id)
    assert share.pending
    assert share.email == "carol@example.org"
    assert not sharing.can_open(world.owl.id, world.carol.id)
    with pytest.raises(Conflict, match="already has an invitation"):
        sharing.add_invitation(world.owl.id, "carol@example.org", message="", added_by=world.alice.id)


def test_sharing_claim_invitations(world: World) -> None:
    sharing = Sharing(world.store)
    sharing.add_invitation(world.owl.id, "carol@example.org", message="", added_by=world.alice.id)
    sharing.add_invitation(world.fox.id, "carol@example.org", message="", added_by=world.bob.id)
    sharing.add_user(world.fox.id, world.carol.id, message="", added_by=world.bob.id)

    claimed = sharing.claim_invitations(world.carol.id, "carol@example.org")

    assert [share.vm_id for share in claimed] == [world.owl.id]
    assert sharing.can_open(world.owl.id, world.carol.id)
    assert len([s for s in sharing.shares(world.fox.id) if s.user_id == world.carol.id]) == 1
    assert all(not share.pending for share in sharing.shares(world.fox.id))


def test_sharing_claim_drops_own_vm(world: World) -> None:
    sharing = Sharing(world.store)
    sharing.add_invitation(world.owl.id, "alice@example.org", message="", added_by=world.alice.id)
    assert sharing.claim_invitations(world.alice.id, "alice@example.org") == []
    assert sharing.shares(world.owl.id) == []


def test_sharing_ssh_access(world: World) -> None:
    sharing = Sharing(world.store)
    share = sharing.add_user(world.owl.id, world.bob.id, message="", added_by=world.alice.id)
    assert not sharing.can_ssh(world.owl.id, world.bob.id)
    assert sharing.set_ssh_access(share.id, True).ssh_access
    assert sharing.can_ssh(world.owl.id, world.bob.id)
    sharing.set_ssh_access(share.id, False)
    assert not sharing.can_ssh(world.owl.id, world.bob.id)


def test_sharing_links_and_sessions(world: World) -> None:
    sharing = Sharing(world.store)
    sessions = Sessions(world.store)
    link = sharing.add_link(world.owl.id, "hash-1", "abcdefgh", world.alice.id)
    assert sharing.find_link("hash-1") == link
    assert sharing.links(world.owl.id) == [link]
    session = sessions.add(
        "s-1", host="mild-owl.ussy.localhost", expires_at=NOW + 60, now=NOW, link_id=link.id
    )

    sharing.remove_link(link.id)

    assert sharing.find_link("hash-1") is None
    assert sessions.get(session.id, NOW) is None


def test_sharing_vm_removal_cascades(world: World) -> None:
    sharing = Sharing(world.store)
    sharing.add_user(world.owl.id, world.bob.id, message="", added_by=world.alice.id)
    sharing.add_link(world.owl.id, "hash-2", "label", world.alice.id)
    sharing.set_public(world.owl.id, True, world.alice.id)

    world.store.delete_vm(world.owl.id)

    assert sharing.shares(world.owl.id) == []
    assert sharing.links(world.owl.id) == []
    assert sharing.settings(world.owl.id).public is False


def test_sharing_user_removal_cascades(world: World) -> None:
    sharing = Sharing(world.store)
    sharing.add_user(world.owl.id, world.carol.id, message="", added_by=world.alice.id)
    world.store.execute("DELETE FROM users WHERE id = ?", (world.carol.id,))
    assert sharing.shares(world.owl.id) == []


def test_session_bound_to_host(world: World) -> None:
    sessions = Sessions(world.store)
    sessions.add("tok", host="mild-owl.ussy.localhost", expires_at=NOW + 60, now=NOW, user_id=world.bob.id)
    assert sessions.find("tok", "mild-owl.ussy.localhost", NOW) is not None
    assert sessions.find("tok", "bold-fox.ussy.localhost", NOW) is None
    assert sessions.find("tok", "mild-owl.ussy.localhost", NOW + 60) is None


def test_session_parent_removal_cascades(world: World) -> None:
    sessions = Sessions(world.store)
    parent = sessions.add("p", host="ussy.localhost", expires_at=NOW + 60, now=NOW, user_id=world.bob.id)
    child = sessions.add(
        "c",
        host="mild-owl.ussy.localhost",
        expires_at=NOW + 60,
        now=NOW,
        user_id=world.bob.id,
        parent_id=parent.id,
    )
    sessions.delete(parent.id)
    assert sessions.get(child.id, NOW) is None


def test_session_needs_user_or_link(world: World) -> None:
    with pytest.raises(Conflict):
        Sessions(world.store).add("x", host="ussy.localhost", expires_at=NOW + 1, now=NOW)


def test_session_add_purges_expired(world: World) -> None:
    sessions = Sessions(world.store)
    sessions.add("old", host="ussy.localhost", expires_at=NOW, now=NOW - 10, user_id=world.bob.id)
    sessions.add("new", host="ussy.localhost", expires_at=NOW + 60, now=NOW, user_id=world.bob.id)
    hashes = [row[0] for row in world.store.execute("SELECT token_hash FROM sessions")]
    assert hashes == ["new"]


def test_login_link_used_once(world: World) -> None:
    sessions = Sessions(world.store)
    sessions.add_login_link("link", world.bob.id, NOW + 300, NOW)
    assert sessions.redeem_login_link("link", NOW) == world.bob.id
    assert sessions.redeem_login_link("link", NOW) is None


def test_login_link_expires(world: World) -> None:
    sessions = Sessions(world.store)
    sessions.add_login_link("link", world.bob.id, NOW + 300, NOW)
    assert sessions.redeem_login_link("link", NOW + 300) is None
    assert sessions.redeem_login_link("link", NOW) is None


def test_handoff_wrong_host_burns_code(world: World) -> None:
    sessions = Sessions(world.store)
    parent = sessions.add("p", host="ussy.localhost", expires_at=NOW + 60, now=NOW, user_id=world.bob.id)
    sessions.add_handoff(
        "code", session_id=parent.id, host="a-b.ussy.localhost", next_path="/", expires_at=NOW + 60, now=NOW
    )
    assert sessions.redeem_handoff("code", "c-d.ussy.localhost", NOW) is None
    assert sessions.redeem_handoff("code", "a-b.ussy.localhost", NOW) is None


def test_handoff_used_once(world: World) -> None:
    sessions = Sessions(world.store)
    parent = sessions.add("p", host="ussy.localhost", expires_at=NOW + 60, now=NOW, user_id=world.bob.id)
    sessions.add_handoff(
        "code", session_id=parent.id, host="a-b.ussy.localhost", next_path="/x", expires_at=NOW + 60, now=NOW
    )
    handoff = sessions.redeem_handoff("code", "a-b.ussy.localhost", NOW)
    assert handoff is not None
    assert handoff.next_path == "/x"
    assert handoff.session_id == parent.id
    assert sessions.redeem_handoff("code", "a-b.ussy.localhost", NOW) is None


def test_handoff_expires(world: World) -> None:
    sessions = Sessions(world.store)
    parent = sessions.add("p", host="ussy.localhost", expires_at=NOW + 600, now=NOW, user_id=world.bob.id)
    sessions.add_handoff(
        "code", session_id=parent.id, host="a-b.ussy.localhost", next_path="/", expires_at=NOW + 60, now=NOW
    )
    assert sessions.redeem_handoff("code", "a-b.ussy.localhost", NOW + 60) is None


def test_emails_set_and_verify(world: World) -> None:
    emails = Emails(world.store)
    assert emails.get(world.bob.id) is None
    assert emails.set(world.bob.id, "bob@example.org").verified is False
    assert emails.find_verified_user("bob@example.org") is None
    assert emails.mark_verified(world.bob.id).verified is True
    assert emails.find_verified_user("bob@example.org") == world.bob.id
    assert emails.set(world.bob.id, "bob@example.com").verified is False
    assert emails.clear(world.bob.id) is True
    assert emails.clear(world.bob.id) is False


def test_emails_verified_address_unique(world: World) -> None:
    emails = Emails(world.store)
    emails.set(world.bob.id, "same@example.org")
    emails.set(world.carol.id, "same@example.org")
    emails.mark_verified(world.bob.id)
    with pytest.raises(Conflict):
        emails.mark_verified(world.carol.id)


def test_emails_verify_without_address(world: World) -> None:
    with pytest.raises(NotFound, match="no email address"):
        Emails(world.store).mark_verified(world.bob.id)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Ann@Example.ORG", "ann@example.org"), (" a.b+c@x-y.example.co ", "a.b+c@x-y.example.co")],
)
def test_check_email_accepts(text: str, expected: str) -> None:
    assert check_email(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ann",
        "ann@",
        "@example.org",
        "ann@example",
        "a b@example.org",
        "a@b@example.org",
        "a{x}@example.org",
        "a@exa\nmple.org",
        "a<b>@example.org",
        "a" * 65 + "@example.org",
        "a@" + "b" * 250 + ".org",
    ],
)
def test_check_email_rejects(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid email address"):
        check_email(text)


def test_audit_entries_filter(world: World) -> None:
    audit = AuditLog(world.store)
    audit.add(
        actor_id=world.alice.id, actor="alice", action="share.add", target="mild-owl", detail="user bob"
    )
    audit.add(
        actor_id=None,
        actor="anonymous from 127.0.0.1",
        action="access.denied",
        target="bold-fox.ussy.localhost",
    )
    assert [entry.action for entry in audit.entries()] == ["access.denied", "share.add"]
    assert [entry.detail for entry in audit.entries(target="mild-owl")] == ["user bob"]
    assert len(audit.entries(action="access.denied")) == 1
    assert audit.entries()[0].created_at.endswith("Z")


def test_migration_keeps_secrets_hashed_only(world: World) -> None:
    columns = {
        table: [row[1] for row in world.store.execute(f"PRAGMA table_info({table})")]
        for table in ("sessions", "share_links", "login_links", "login_handoffs")
    }
    for table, names in columns.items():
        assert not [name for name in names if name in ("token", "code", "secret")], table
    assert isinstance(world.store.execute("SELECT 1").fetchone(), sqlite3.Row)
