"""Store modules of the command surface: VM details, REPL history, command runs, tutorial."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.store.test_db import make_vm
from ussycode.errors import Conflict
from ussycode.store import Store
from ussycode.store.history import MAX_HISTORY_LINES, HistoryStore
from ussycode.store.tokens import TokenStore
from ussycode.store.tutorial import TutorialProgress, TutorialStore
from ussycode.store.vm_details import VMDetails, VMDetailsStore


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "u.db")


def test_vm_details_defaults_and_create(store: Store) -> None:
    user = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    vm_id = make_vm(store, user.id)
    details = VMDetailsStore(store)
    assert details.get(vm_id) == VMDetails(vm_id)
    created = details.create(vm_id, comment="hi", tags=("web", "db"), env={"A": "1"}, setup_script="echo")
    assert created.tags == ("db", "web")
    assert created.env == {"A": "1"}
    assert created.setup_script == "echo"
    assert details.for_owner(user.id) == {vm_id: created}


def test_vm_details_updates(store: Store) -> None:
    user = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    vm_id = make_vm(store, user.id)
    details = VMDetailsStore(store)
    details.set_comment(vm_id, "note")
    details.set_tags(vm_id, ("b", "a", "b"))
    details.set_pending(vm_id, cpus=2, memory_mb=None)
    details.set_setup_status(vm_id, "failed", 3)
    current = details.get(vm_id)
    assert current.comment == "note"
    assert current.tags == ("a", "b")
    assert current.pending_cpus == 2
    assert current.pending_memory_mb is None
    assert current.setup_status == "failed"
    assert current.setup_exit_status == 3
    assert current.setup_updated_at is not None


def test_vm_details_set_resources_clears_pending(store: Store) -> None:
    user = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    vm = store.get_vm(make_vm(store, user.id))
    details = VMDetailsStore(store)
    details.set_pending(vm.id, cpus=4, memory_mb=2048)
    changed = details.set_resources(vm, cpus=4, memory_mb=2048, disk_bytes=8 << 30)
    assert (changed.cpus, changed.memory_mb, changed.disk_bytes) == (4, 2048, 8 << 30)
    assert details.get(vm.id).pending_cpus is None
    assert details.get(vm.id).pending_memory_mb is None


def test_vm_details_rename_moves_scoped_tokens(store: Store) -> None:
    user = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    vm = store.get_vm(make_vm(store, user.id))
    other = store.get_vm(make_vm(store, user.id, name="other-vm", ip="10.0.0.3"))
    tokens = TokenStore(store)
    token = tokens.add(user_id=user.id, kind="key", token_hash="h", vm_name="mild-owl")
    renamed = VMDetailsStore(store).rename(vm, "calm-fox")
    assert renamed.name == "calm-fox"
    assert tokens.get(token.id).vm_name == "calm-fox"
    with pytest.raises(Conflict):
        VMDetailsStore(store).rename(other, "calm-fox")
    assert store.get_vm(other.id).name == "other-vm"


def test_vm_details_removed_with_vm(store: Store) -> None:
    user = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    vm_id = make_vm(store, user.id)
    VMDetailsStore(store).create(vm_id, comment="gone soon")
    store.delete_vm(vm_id)
    assert store.execute("SELECT COUNT(*) FROM vm_details").fetchone()[0] == 0


def test_history_lines_bounded(store: Store) -> None:
    user = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    other = store.create_user("bob", "SHA256:b", "ssh-ed25519 BBBB")
    history = HistoryStore(store)
    for number in range(MAX_HISTORY_LINES + 5):
        history.add_line(user.id, f"line {number}")
    history.add_line(other.id, "bob's line")
    lines = history.lines(user.id)
    assert len(lines) == MAX_HISTORY_LINES
    assert lines[0] == "line 5"
    assert lines[-1] == f"line {MAX_HISTORY_LINES + 4}"
    assert history.lines(other.id) == ["bob's line"]
    assert history.lines(user.id, limit=2) == [
        f"line {MAX_HISTORY_LINES + 3}",
        f"line {MAX_HISTORY_LINES + 4}",
    ]


def test_history_command_runs(store: Store) -> None:
    user = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    history = HistoryStore(store)
    history.add_run(user.id, "stat", succeeded=False)
    assert not history.ran_since(user.id, "stat", "2000-01-01T00:00:00Z")
    history.add_run(user.id, "stat", succeeded=True)
    assert history.ran_since(user.id, "stat", "2000-01-01T00:00:00Z")
    assert not history.ran_since(user.id, "stat", "2999-01-01T00:00:00Z")
    assert not history.ran_since(user.id, "ls", "2000-01-01T00:00:00Z")


def test_tutorial_progress_roundtrip(store: Store) -> None:
    user = store.create_user("alice", "SHA256:a", "ssh-ed25519 AAAA")
    tutorial = TutorialStore(store)
    assert tutorial.get(user.id) is None
    saved = tutorial.save(
        TutorialProgress(user.id, current=3, completed=(2, 1, 2), context={"vm": "mild-owl"})
    )
    assert saved.current == 3
    assert saved.completed == (1, 2)
    assert saved.context == {"vm": "mild-owl"}
    assert saved.lesson_started_at
    tutorial.reset(user.id)
    assert tutorial.get(user.id) is None
