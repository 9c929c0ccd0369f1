from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ussycode.errors import Conflict, NotFound
from ussycode.store import Store


def make_vm(store: Store, owner_id: int, name: str = "mild-owl", ip: str = "10.0.0.2") -> int:
    vm = store.create_vm(
        name=name,
        owner_id=owner_id,
        state="starting",
        image="ussyuntu",
        image_path="/x",
        cpus=1,
        memory_mb=512,
        disk_bytes=4 << 30,
        ip=ip,
        mac="52:54:00:00:00:" + ip.rsplit(".", maxsplit=1)[-1].zfill(2),
    )
    return vm.id


def test_store_wal_and_schema_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "u.db")
    mode = sqlite3.connect(tmp_path / "u.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.schema_version >= 1


def test_store_migrate_twice_is_noop(tmp_path: Path) -> None:
    Store(tmp_path / "u.db").close()
    store = Store(tmp_path / "u.db")
    version = store.schema_version
    store.migrate()
    assert store.schema_version == version


def test_store_user_and_key_lookup(tmp_path: Path) -> None:
    store = Store(tmp_path / "u.db")
    user = store.create_user("alice", "SHA256:abc", "ssh-ed25519 AAAA", "laptop")
    assert store.find_user_by_fingerprint("SHA256:abc") == user
    assert store.find_user_by_handle("alice") == user
    assert store.find_user_by_fingerprint("SHA256:other") is None
    assert [k.name for k in store.list_keys(user.id)] == ["laptop"]


def test_store_duplicate_fingerprint_conflict(tmp_path: Path) -> None:
    store = Store(tmp_path / "u.db")
    store.create_user("alice", "SHA256:abc", "k")
    with pytest.raises(Conflict):
        store.create_user("bob", "SHA256:abc", "k")
    assert store.find_user_by_handle("bob") is None


def test_store_vm_name_unique(tmp_path: Path) -> None:
    store = Store(tmp_path / "u.db")
    alice = store.create_user("alice", "SHA256:a", "k")
    bob = store.create_user("bob", "SHA256:b", "k")
    make_vm(store, alice.id)
    with pytest.raises(Conflict):
        make_vm(store, bob.id, ip="10.0.0.3")


def test_store_vm_state_and_delete(tmp_path: Path) -> None:
    store = Store(tmp_path / "u.db")
    alice = store.create_user("alice", "SHA256:a", "k")
    vm_id = make_vm(store, alice.id)
    vm = store.set_vm_state(vm_id, "running", started=True)
    assert vm.state == "running"
    assert vm.started_at is not None
    assert store.used_ips() == {"10.0.0.2"}
    assert store.find_vm_by_ip("10.0.0.2") == vm
    store.add_event(vm_id, "mild-owl", alice.id, "running")
    store.delete_vm(vm_id)
    assert store.find_vm("mild-owl") is None
    assert store.used_ips() == set()
    assert [e.kind for e in store.list_events("mild-owl")] == ["running"]
    with pytest.raises(NotFound):
        store.get_vm(vm_id)


def test_store_facts(tmp_path: Path) -> None:
    store = Store(tmp_path / "u.db")
    assert store.get_fact("kvm") is None
    store.set_fact("kvm", "no")
    store.set_fact("kvm", "yes")
    assert store.get_fact("kvm") == "yes"
