"""Login links, the handoff to VM hosts and share-link sessions, with a clock the test moves."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.sharing.conftest import World
from ussycode.auth.login import (
    HANDOFF_SECONDS,
    LOGIN_LINK_SECONDS,
    Logins,
    check_next,
    share_link_url,
    token_from_link,
)
from ussycode.auth.random_tokens import hash_token, looks_like_token, new_token
from ussycode.errors import InvalidInput
from ussycode.store.sessions import Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def logins(world: World, clock: Clock) -> Logins:
    return Logins(world.store, world.config, clock)


def code_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["code"][0]


def test_tokens_random_and_hashed() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(looks_like_token(token) for token in tokens)
    assert all(len(token) == 43 for token in tokens)
    token = tokens.pop()
    assert hash_token(token) != token
    assert len(hash_token(token)) == 64


def test_tokens_never_start_with_dash() -> None:
    # One token in 64 would start with "-" and read as an option in `share remove-link VM TOKEN`;
    # 3000 tokens all pass only if none can (else about 1 in 10^20).
    assert not any(new_token().startswith("-") for _ in range(3000))


def test_login_link_url_and_storage(world: World, logins: Logins) -> None:
    link = logins.create_login_link(world.alice)
    assert link.url == f"https://ussy.localhost/__ussycode/login?token={link.token}"
    assert link.expires_at == int(logins.now()) + LOGIN_LINK_SECONDS
    stored = [row[0] for row in world.store.execute("SELECT token_hash FROM login_links")]
    assert stored == [hash_token(link.token)]


def test_login_link_redeemed_once(world: World, logins: Logins) -> None:
    link = logins.create_login_link(world.alice)
    new = logins.redeem_login_link(link.url)
    assert new is not None
    assert new.session.user_id == world.alice.id
    assert new.session.host == "ussy.localhost"
    assert new.max_age == world.config.session_days * 86400
    assert logins.redeem_login_link(link.url) is None


def test_login_link_expires(world: World, logins: Logins, clock: Clock) -> None:
    link = logins.create_login_link(world.alice)
    clock.now += LOGIN_LINK_SECONDS
    assert logins.redeem_login_link(link.token) is None


@pytest.mark.parametrize("text", ["", "x", "https://ussy.localhost/__ussycode/login?token=short", "a" * 44])
def test_login_link_malformed(logins: Logins, text: str) -> None:
    assert logins.redeem_login_link(text) is None


def test_token_from_link_forms() -> None:
    token = new_token()
    assert token_from_link(token) == token
    assert token_from_link(f"  https://ussy.localhost/__ussycode/login?a=1&token={token}\n") == token
    assert token_from_link("https://ussy.localhost/__ussycode/login?token=") is None


def test_handoff_to_vm_host(world: World, logins: Logins) -> None:
    main = logins.redeem_login_link(logins.create_login_link(world.alice).token)
    assert main is not None
    url = logins.start_handoff(main.session, "https://mild-owl.ussy.localhost/app?x=1")
    assert url.startswith("https://mild-owl.ussy.localhost/__ussycode/callback?code=")
    assert main.token not in url

    result = logins.finish_handoff(code_of(url), "mild-owl.ussy.localhost:443")

    assert result is not None
    host_session, next_path = result
    assert next_path == "/app?x=1"
    assert host_session.session.host == "mild-owl.ussy.localhost"
    assert host_session.session.user_id == world.alice.id
    assert host_session.session.parent_id == main.session.id
    assert host_session.token != main.token
    assert logins.finish_handoff(code_of(url), "mild-owl.ussy.localhost") is None


def test_handoff_other_host_rejected(world: World, logins: Logins) -> None:
    main = logins.redeem_login_link(logins.create_login_link(world.alice).token)
    assert main is not None
    url = logins.start_handoff(main.session, "https://mild-owl.ussy.localhost/")
    assert logins.finish_handoff(code_of(url), "bold-fox.ussy.localhost") is None
    assert logins.finish_handoff(code_of(url), "mild-owl.ussy.localhost") is None


def test_handoff_expires(world: World, logins: Logins, clock: Clock) -> None:
    main = logins.redeem_login_link(logins.create_login_link(world.alice).token)
    assert main is not None
    url = logins.start_handoff(main.session, "https://mild-owl.ussy.localhost/")
    clock.now += HANDOFF_SECONDS
    assert logins.finish_handoff(code_of(url), "mild-owl.ussy.localhost") is None


def test_handoff_after_logout_rejected(world: World, logins: Logins) -> None:
    main = logins.redeem_login_link(logins.create_login_link(world.alice).token)
    assert main is not None
    url = logins.start_handoff(main.session, "https://mild-owl.ussy.localhost/")
    logins.end(main.session)
    assert logins.finish_handoff(code_of(url), "mild-owl.ussy.localhost") is None


def test_handoff_rejects_foreign_url(world: World, logins: Logins) -> None:
    main = logins.redeem_login_link(logins.create_login_link(world.alice).token)
    assert main is not None
    with pytest.raises(InvalidInput, match="invalid return URL"):
        logins.start_handoff(main.session, "https://evil.example/")


def test_logout_main_ends_host_sessions(world: World, logins: Logins) -> None:
    main = logins.redeem_login_link(logins.create_login_link(world.alice).token)
    assert main is not None
    result = logins.finish_handoff(
        code_of(logins.start_handoff(main.session, "https://mild-owl.ussy.localhost/")),
        "mild-owl.ussy.localhost",
    )
    assert result is not None
    logins.end(main.session)
    assert Sessions(world.store).get(result[0].session.id, logins.now()) is None


def test_share_link_session(world: World, logins: Logins) -> None:
    link, token = logins.create_share_link(world.owl.id, world.alice)
    assert link.label == token[:8]
    assert share_link_url(world.config, "mild-owl", token) == (
        f"https://mild-owl.ussy.localhost/__ussycode/share?token={token}"
    )
    new = logins.open_share_link(token, "mild-owl.ussy.localhost", None)
    assert new is not None
    assert new.session.link_id == link.id
    assert new.session.user_id is None
    assert logins.open_share_link(token, "mild-owl--3000.ussy.localhost", None) is not None
    assert logins.open_share_link(token, "bold-fox.ussy.localhost", None) is None
    assert logins.open_share_link(new_token(), "mild-owl.ussy.localhost", None) is None
    assert logins.open_share_link("bad", "mild-owl.ussy.localhost", None) is None


def test_share_link_keeps_identity(world: World, logins: Logins) -> None:
    _, token = logins.create_share_link(world.owl.id, world.alice)
    first = logins.open_share_link(token, "mild-owl.ussy.localhost", None)
    assert first is not None
    current = Sessions(world.store).add(
        "x",
        host="mild-owl.ussy.localhost",
        expires_at=int(logins.now()) + 60,
        now=int(logins.now()),
        user_id=world.bob.id,
    )
    second = logins.open_share_link(token, "mild-owl.ussy.localhost", current)
    assert second is not None
    assert second.session.user_id == world.bob.id


def test_check_next_drops_bad_urls(world: World) -> None:
    assert check_next(world.config, None) is None
    assert check_next(world.config, "https://evil.example/") is None
    assert (
        check_next(world.config, "https://mild-owl.ussy.localhost/x") == "https://mild-owl.ussy.localhost/x"
    )
