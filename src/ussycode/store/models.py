"""Rows of the store as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    id: int
    handle: str
    created_at: str


@dataclass(frozen=True)
class SSHKey:
    id: int
    user_id: int
    fingerprint: str
    public_key: str
    name: str
    created_at: str
    last_used_at: str | None = None


@dataclass(frozen=True)
class Image:
    name: str
    recipe_hash: str
    path: str
    created_at: str


@dataclass(frozen=True)
class VM:
    id: int
    name: str
    owner_id: int
    state: str
    image: str
    image_path: str
    cpus: int
    memory_mb: int
    disk_bytes: int
    ip: str
    mac: str
    host_keys: str
    created_at: str
    updated_at: str
    started_at: str | None


@dataclass(frozen=True)
class Event:
    id: int
    vm_id: int | None
    vm_name: str
    user_id: int | None
    kind: str
    detail: str
    created_at: str
