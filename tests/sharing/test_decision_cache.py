"""The forward-auth decision cache on a real store: hits, and every change that must end them."""

from __future__ import annotations

from tests.sharing.conftest import World
from tests.sharing.test_access import host_session
from ussycode.auth.access import Decision, Verdict, decide
from ussycode.auth.cookies import SESSION_COOKIE, parse_cookie_header
from ussycode.auth.decision_cache import DecisionCache
from ussycode.store import Store
from ussycode.store.sessions import Sessions
from ussycode.store.sharing import Sharing

HOST = "mild-owl.ussy.localhost"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lookup(world: World, cache: DecisionCache, headers: list[tuple[str, str]]) -> tuple[Decision, bool]:
    """Decide as the forward-auth endpoint does; return the decision and whether it came from the cache."""
    key = cache.key(HOST, headers)
    cached = cache.get(key)
    if cached is not None:
        return cached, True
    cookies = parse_cookie_header([value for name, value in headers if name.lower() == "cookie"])
    decision = decide(world.store, world.config, HOST, dict(headers), cookies)
    cache.put(key, decision)
    return decision, False


def cookie(token: str) -> list[tuple[str, str]]:
    return [("Cookie", f"{SESSION_COOKIE}={token}")]


def test_cache_hit_same_credentials(world: World) -> None:
    cache = DecisionCache(world.store)
    token = host_session(world, world.alice.id)
    first, first_cached = lookup(world, cache, cookie(token))
    second, second_cached = lookup(world, cache, cookie(token))
    assert first.verdict is Verdict.ALLOW
    assert not first_cached
    assert second_cached
    assert second == first


def test_cache_other_credentials_miss(world: World) -> None:
    cache = DecisionCache(world.store)
    alice = host_session(world, world.alice.id)
    carol = host_session(world, world.carol.id)
    lookup(world, cache, cookie(alice))
    decision, cached = lookup(world, cache, cookie(carol))
    assert not cached
    assert decision.status == 403
    _, cached_without_cookie = lookup(world, cache, [])
    assert not cached_without_cookie


def test_cache_repeated_header_own_key(world: World) -> None:
    once = DecisionCache.key(HOST, [("Authorization", "Bearer usy1.a")])
    twice = DecisionCache.key(HOST, [("Authorization", "Bearer usy1.a"), ("Authorization", "Bearer usy1.b")])
    other_host = DecisionCache.key("bold-fox.ussy.localhost", [("Authorization", "Bearer usy1.a")])
    assert once != twice
    assert once != other_host
    assert DecisionCache.key(HOST, [("X-Forwarded-Uri", "/a")]) == DecisionCache.key(HOST, [])


def test_cache_denial_not_kept(world: World) -> None:
    cache = DecisionCache(world.store)
    token = host_session(world, world.carol.id)
    lookup(world, cache, cookie(token))
    assert len(cache) == 0


def test_cache_set_private_ends_hit(world: World) -> None:
    cache = DecisionCache(world.store)
    sharing = Sharing(world.store)
    sharing.set_public(world.owl.id, True, world.alice.id)
    public, _ = lookup(world, cache, [])
    assert public.reason == "public"
    assert lookup(world, cache, [])[1]

    sharing.set_public(world.owl.id, False, world.alice.id)
    decision, cached = lookup(world, cache, [])
    assert not cached
    assert decision.status == 401


def test_cache_share_removed_ends_hit(world: World) -> None:
    cache = DecisionCache(world.store)
    sharing = Sharing(world.store)
    share = sharing.add_user(world.owl.id, world.carol.id, message="", added_by=world.alice.id)
    token = host_session(world, world.carol.id)
    assert lookup(world, cache, cookie(token))[0].reason == "shared"
    assert lookup(world, cache, cookie(token))[1]

    sharing.remove(share.id)
    decision, cached = lookup(world, cache, cookie(token))
    assert not cached
    assert decision.status == 403


def test_cache_logout_ends_hit(world: World) -> None:
    cache = DecisionCache(world.store)
    token = host_session(world, world.alice.id)
    allowed, _ = lookup(world, cache, cookie(token))
    assert allowed.verdict is Verdict.ALLOW
    session_id = world.store.execute("SELECT id FROM sessions WHERE host = ?", (HOST,)).fetchone()[0]

    Sessions(world.store).delete(session_id)
    decision, cached = lookup(world, cache, cookie(token))
    assert not cached
    assert decision.status == 401


def test_cache_change_by_other_connection(world: World) -> None:
    cache = DecisionCache(world.store)
    token = host_session(world, world.alice.id)
    lookup(world, cache, cookie(token))
    other = Store(world.store.path)
    try:
        other.execute("DELETE FROM sessions WHERE host = ?", (HOST,))
    finally:
        other.close()
    decision, cached = lookup(world, cache, cookie(token))
    assert not cached
    assert decision.status == 401


def test_cache_entry_expires(world: World) -> None:
    clock = FakeClock()
    cache = DecisionCache(world.store, ttl=2.0, clock=clock)
    token = host_session(world, world.alice.id)
    lookup(world, cache, cookie(token))
    clock.now += 1.9
    assert lookup(world, cache, cookie(token))[1]
    clock.now += 0.2
    assert not lookup(world, cache, cookie(token))[1]


def test_cache_zero_ttl_keeps_nothing(world: World) -> None:
    cache = DecisionCache(world.store, ttl=0)
    token = host_session(world, world.alice.id)
    lookup(world, cache, cookie(token))
    assert not lookup(world, cache, cookie(token))[1]
    assert len(cache) == 0


def test_cache_bounded_size(world: World) -> None:
    cache = DecisionCache(world.store, max_entries=2)
    tokens = [host_session(world, world.alice.id) for _ in range(3)]
    for token in tokens:
        lookup(world, cache, cookie(token))
    assert len(cache) == 2
    assert not lookup(world, cache, cookie(tokens[0]))[1]
