"""Fixtures for the sharing tests: a store with users and VM rows, and the loopback stack."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sharing.stack import Stack, load_config, running_stack
from ussycode.config import Config
from ussycode.store import VM, Store, User


@dataclass
class World:
    """A store with three users and two VMs: alice owns mild-owl, bob owns bold-fox."""

    store: Store
    config: Config
    alice: User
    bob: User
    carol: User
    owl: VM
    fox: VM


def add_vm(store: Store, name: str, owner: User, ip: str) -> VM:
    return store.create_vm(
        name=name,
        owner_id=owner.id,
        state="running",
        image="ussyuntu",
        image_path="/nonexistent",
        cpus=1,
        memory_mb=512,
        disk_bytes=1 << 30,
        ip=ip,
        mac="52:54:00:00:00:" + ip.rsplit(".", maxsplit=1)[-1].zfill(2),
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = Store(tmp_path / "ussycode.db")
    alice, bob, carol = (
        store.create_user(name, f"SHA256:{name}", f"ssh-ed25519 AAAA{name}")
        for name in ("alice", "bob", "carol")
    )
    owl = add_vm(store, "mild-owl", alice, "10.0.0.2")
    fox = add_vm(store, "bold-fox", bob, "10.0.0.3")
    try:
        yield World(store, load_config(tmp_path, 443, 80, 9090), alice, bob, carol, owl, fox)
    finally:
        store.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One loopback stack per test module; each test adds users and VMs with its own names."""
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running
