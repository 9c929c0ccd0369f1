"""The access decision for VM URLs and SSH logins, on a real store."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.sharing.conftest import World
from ussycode.auth.access import Decision, Verdict, decide, vm_for_ssh
from ussycode.auth.cookies import SESSION_COOKIE
from ussycode.auth.login import Logins
from ussycode.auth.random_tokens import new_token
from ussycode.errors import NotFound
from ussycode.store.emails import Emails
from ussycode.store.sharing import Sharing

BROWSER = {
    "Accept": "text/html,application/xhtml+xml",
    "X-Forwarded-Uri": "/page?q=1",
    "X-Forwarded-Method": "GET",
}
CLIENT = {"Accept": "*/*", "X-Forwarded-Uri": "/", "X-Forwarded-Method": "GET"}


def host_session(world: World, user_id: int | None, host: str = "mild-owl.ussy.localhost") -> str:
    """Log `user_id` in on the main domain and hand the login to `host`; return the host's cookie value."""
    logins = Logins(world.store, world.config)
    assert user_id is not None
    main = logins.redeem_login_link(logins.create_login_link(world.store.get_user(user_id)).token)
    assert main is not None
    url = logins.start_handoff(main.session, f"https://{host}/")
    result = logins.finish_handoff(parse_qs(urlsplit(url).query)["code"][0], host)
    assert result is not None
    return result[0].token


def ask(world: World, host: str, token: str | None = None, headers: dict[str, str] = CLIENT) -> Decision:
    cookies = {SESSION_COOKIE: [token]} if token else {}
    return decide(world.store, world.config, host, headers, cookies)


def test_decide_unknown_host(world: World) -> None:
    for host in ("ghost.ussy.localhost", "ussy.localhost", "evil.example", "a.b.ussy.localhost"):
        decision = ask(world, host)
        assert decision.verdict is Verdict.DENY
        assert decision.status == 404


def test_decide_private_client_401(world: World) -> None:
    decision = ask(world, "mild-owl.ussy.localhost")
    assert decision.verdict is Verdict.DENY
    assert decision.status == 401
    assert decision.identity is None


def test_decide_private_browser_redirect(world: World) -> None:
    decision = ask(world, "mild-owl.ussy.localhost", headers=BROWSER)
    assert decision.verdict is Verdict.REDIRECT
    assert decision.status == 302
    assert decision.location is not None
    parts = urlsplit(decision.location)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "ussy.localhost", "/__ussycode/login")
    assert parse_qs(parts.query)["next"] == ["https://mild-owl.ussy.localhost/page?q=1"]


def test_decide_post_not_redirected(world: World) -> None:
    headers = {**BROWSER, "X-Forwarded-Method": "POST"}
    assert ask(world, "mild-owl.ussy.localhost", headers=headers).status == 401


def test_decide_odd_uri_redirects_to_root(world: World) -> None:
    headers = {**BROWSER, "X-Forwarded-Uri": "//evil.example/x"}
    decision = ask(world, "mild-owl.ussy.localhost", headers=headers)
    assert decision.location is not None
    assert parse_qs(urlsplit(decision.location).query)["next"] == ["https://mild-owl.ussy.localhost/"]
    headers = {**BROWSER, "X-Forwarded-Uri": "x\\y"}
    decision = ask(world, "mild-owl.ussy.localhost", headers=headers)
    assert decision.location is not None
    assert parse_qs(urlsplit(decision.location).query)["next"] == ["https://mild-owl.ussy.localhost/"]


def test_decide_public_allows_anyone(world: World) -> None:
    Sharing(world.store).set_public(world.owl.id, True, world.alice.id)
    decision = ask(world, "mild-owl.ussy.localhost")
    assert decision.verdict is Verdict.ALLOW
    assert decision.identity is None


def test_decide_port_host_never_public(world: World) -> None:
    Sharing(world.store).set_public(world.owl.id, True, world.alice.id)
    assert ask(world, "mild-owl--3000.ussy.localhost").status == 401


def test_decide_owner_allowed(world: World) -> None:
    token = host_session(world, world.alice.id)
    decision = ask(world, "mild-owl.ussy.localhost", token)
    assert decision.verdict is Verdict.ALLOW
    assert decision.identity is not None
    assert decision.identity.handle == "alice"
    assert decision.identity.user_id == world.alice.id
    assert decision.identity.email is None
    assert decision.reason == "owner"


def test_decide_identity_email_verified_only(world: World) -> None:
    emails = Emails(world.store)
    emails.set(world.alice.id, "alice@example.org")
    token = host_session(world, world.alice.id)
    decision = ask(world, "mild-owl.ussy.localhost", token)
    assert decision.identity is not None
    assert decision.identity.email is None
    emails.mark_verified(world.alice.id)
    decision = ask(world, "mild-owl.ussy.localhost", token)
    assert decision.identity is not None
    assert decision.identity.email == "alice@example.org"


def test_decide_stranger_forbidden(world: World) -> None:
    token = host_session(world, world.bob.id)
    decision = ask(world, "mild-owl.ussy.localhost", token, headers=BROWSER)
    assert decision.verdict is Verdict.DENY
    assert decision.status == 403
    assert decision.identity is not None
    assert decision.identity.handle == "bob"


def test_decide_shared_user_allowed(world: World) -> None:
    Sharing(world.store).add_user(world.owl.id, world.bob.id, message="", added_by=world.alice.id)
    token = host_session(world, world.bob.id)
    assert ask(world, "mild-owl.ussy.localhost", token).reason == "shared"
    port_token = host_session(world, world.bob.id, "mild-owl--3000.ussy.localhost")
    assert ask(world, "mild-owl--3000.ussy.localhost", port_token).verdict is Verdict.ALLOW


def test_decide_share_removed_takes_effect(world: World) -> None:
    sharing = Sharing(world.store)
    share = sharing.add_user(world.owl.id, world.bob.id, message="", added_by=world.alice.id)
    token = host_session(world, world.bob.id)
    sharing.remove(share.id)
    assert ask(world, "mild-owl.ussy.localhost", token).status == 403


def test_decide_session_of_other_host(world: World) -> None:
    token = host_session(world, world.alice.id, "mild-owl--3000.ussy.localhost")
    assert ask(world, "mild-owl.ussy.localhost", token).status == 401
    assert ask(world, "mild-owl--3000.ussy.localhost", token).verdict is Verdict.ALLOW


def test_decide_main_session_not_valid_on_vm(world: World) -> None:
    logins = Logins(world.store, world.config)
    main = logins.redeem_login_link(logins.create_login_link(world.alice).token)
    assert main is not None
    assert ask(world, "mild-owl.ussy.localhost", main.token).status == 401


def test_decide_garbage_cookies(world: World) -> None:
    for value in ("", "x", new_token(), "' OR 1=1 --"):
        assert ask(world, "mild-owl.ussy.localhost", value).status == 401


def test_decide_link_session(world: World) -> None:
    logins = Logins(world.store, world.config)
    link, token = logins.create_share_link(world.owl.id, world.alice)
    new = logins.open_share_link(token, "mild-owl.ussy.localhost", None)
    assert new is not None
    decision = ask(world, "mild-owl.ussy.localhost", new.token)
    assert decision.verdict is Verdict.ALLOW
    assert decision.identity is None
    assert decision.link_id == link.id

    Sharing(world.store).remove_link(link.id)

    assert ask(world, "mild-owl.ussy.localhost", new.token).status == 401


def test_decide_vm_recreated_for_other_owner(world: World) -> None:
    token = host_session(world, world.alice.id)
    world.store.delete_vm(world.owl.id)
    world.store.create_vm(
        name="mild-owl",
        owner_id=world.bob.id,
        state="running",
        image="ussyuntu",
        image_path="/nonexistent",
        cpus=1,
        memory_mb=512,
        disk_bytes=1 << 30,
        ip="10.0.0.9",
        mac="52:54:00:00:00:09",
    )
    assert ask(world, "mild-owl.ussy.localhost", token).status == 403


def test_vm_for_ssh_rules(world: World) -> None:
    assert vm_for_ssh(world.store, world.alice, "mild-owl").id == world.owl.id
    with pytest.raises(NotFound, match='no VM named "mild-owl"'):
        vm_for_ssh(world.store, world.bob, "mild-owl")
    sharing = Sharing(world.store)
    share = sharing.add_user(world.owl.id, world.bob.id, message="", added_by=world.alice.id)
    with pytest.raises(NotFound):
        vm_for_ssh(world.store, world.bob, "mild-owl")
    sharing.set_ssh_access(share.id, True)
    assert vm_for_ssh(world.store, world.bob, "mild-owl").id == world.owl.id
    with pytest.raises(NotFound, match='no VM named "ghost"'):
        vm_for_ssh(world.store, world.bob, "ghost")
