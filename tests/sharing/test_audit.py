"""The rate-limited audit record of denied requests."""

from __future__ import annotations

from tests.sharing.conftest import World
from ussycode.auth.audit import Action, DeniedRequestLog
from ussycode.store.audit import AuditLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def deny(log: DeniedRequestLog, client: str = "10.0.0.9", host: str = "mild-owl.ussy.localhost") -> bool:
    return log.record(
        actor_id=None, actor="anonymous", client=client, host=host, status=401, reason="login required"
    )


def test_denied_first_written(world: World) -> None:
    log = DeniedRequestLog(AuditLog(world.store), clock=Clock())
    assert deny(log) is True
    entry = AuditLog(world.store).entries()[0]
    assert entry.action == Action.DENIED
    assert entry.actor == "anonymous from 10.0.0.9"
    assert entry.target == "mild-owl.ussy.localhost"
    assert entry.detail == "401 login required"


def test_denied_repeats_not_written(world: World) -> None:
    log = DeniedRequestLog(AuditLog(world.store), clock=Clock())
    results = [deny(log) for _ in range(50)]
    assert results[0] is True
    assert not any(results[1:])
    assert len(AuditLog(world.store).entries()) == 1


def test_denied_window_cap(world: World) -> None:
    log = DeniedRequestLog(AuditLog(world.store), max_per_window=3, clock=Clock())
    written = [deny(log, client=f"10.0.0.{index}") for index in range(10)]
    assert written == [True] * 3 + [False] * 7


def test_denied_next_window_counts_left_out(world: World) -> None:
    clock = Clock()
    audit = AuditLog(world.store)
    log = DeniedRequestLog(audit, window=60, clock=clock)
    for _ in range(5):
        deny(log)
    clock.now += 60
    assert deny(log) is True
    actions = [entry.action for entry in audit.entries()]
    assert actions == [Action.DENIED, Action.DENIED_NOT_RECORDED, Action.DENIED]
    assert audit.entries(action=Action.DENIED_NOT_RECORDED)[0].detail.startswith("4 denied requests")


def test_denied_quiet_window_no_summary(world: World) -> None:
    clock = Clock()
    audit = AuditLog(world.store)
    log = DeniedRequestLog(audit, window=60, clock=clock)
    deny(log)
    clock.now += 61
    deny(log)
    assert audit.entries(action=Action.DENIED_NOT_RECORDED) == []
    assert len(audit.entries(action=Action.DENIED)) == 2
