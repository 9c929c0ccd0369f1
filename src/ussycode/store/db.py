"""SQLite access: one connection in WAL mode, migrations by `PRAGMA user_version`.

Migrations are the numbered `migrations/NNNN_*.sql` files of this package; each runs once, in
order, inside a transaction, and sets `user_version` to its number.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from ussycode.errors import Conflict, NotFound, StoreError
from ussycode.store.models import VM, Event, Image, SSHKey, User

log = logging.getLogger(__name__)


def utc_now() -> str:
    """Return the current UTC time as ISO 8601 with seconds, e.g. 2026-12-04T20:00:00Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("ussycode.store").joinpath("migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text()))
    return sorted(found)


class Store:
    """Typed access to the store; every method translates sqlite3 errors to `StoreError`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        self.migrate()

    def close(self) -> None:
        self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Apply every migration newer than the store's `user_version`."""
        current = self.schema_version
        for number, name, sql in _migrations():
            if number <= current:
                continue
            log.info("applying store migration %s", name)
            try:
                self._db.executescript(f"BEGIN;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK") if self._db.in_transaction else None
                raise StoreError(f"store migration {name} failed: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the enclosed statements atomically."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"store transaction failed to start: {exc}") from exc
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def change_marker(self) -> tuple[int, int]:
        """Return a value that differs after any row changed, through this connection or another.

        `total_changes` counts the rows this connection inserted, updated or deleted;
        `PRAGMA data_version` changes when another connection commits to the database file.
        """
        try:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"store query failed: {exc}") from exc
        return self._db.total_changes, int(version)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Run one statement; a constraint failure raises `Conflict`, any other error `StoreError`."""
        try:
            return self._db.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"store constraint failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"store query failed: {exc}") from exc

    # Users and keys.

    def create_user(self, handle: str, fingerprint: str, public_key: str, key_name: str = "") -> User:
        """Create a user together with their first SSH key."""
        now = utc_now()
        with self.transaction():
            cursor = self.execute("INSERT INTO users (handle, created_at) VALUES (?, ?)", (handle, now))
            user_id = int(cursor.lastrowid or 0)
            self.execute(
                "INSERT INTO ssh_keys (user_id, fingerprint, public_key, name, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (user_id, fingerprint, public_key, key_name, now),
            )
        return User(user_id, handle, now)

    def get_user(self, user_id: int) -> User:
        row = self.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None:
            raise NotFound(f"user {user_id} not found")
        return User(**dict(row))

    def find_user_by_handle(self, handle: str) -> User | None:
        row = self.execute("SELECT * FROM users WHERE handle = ?", (handle,)).fetchone()
        return User(**dict(row)) if row else None

    def find_user_by_fingerprint(self, fingerprint: str) -> User | None:
        row = self.execute(
            "SELECT users.* FROM users JOIN ssh_keys ON ssh_keys.user_id = users.id"
            " WHERE ssh_keys.fingerprint = ?",
            (fingerprint,),
        ).fetchone()
        return User(**dict(row)) if row else None

    def add_key(self, user_id: int, fingerprint: str, public_key: str, name: str = "") -> None:
        """Register another key for a user; a fingerprint that is taken raises `Conflict`."""
        self.execute(
            "INSERT INTO ssh_keys (user_id, fingerprint, public_key, name, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (user_id, fingerprint, public_key, name, utc_now()),
        )

    def rename_key(self, key_id: int, name: str) -> None:
        self.execute("UPDATE ssh_keys SET name = ? WHERE id = ?", (name, key_id))

    def delete_key(self, key_id: int) -> None:
        self.execute("DELETE FROM ssh_keys WHERE id = ?", (key_id,))

    def list_keys(self, user_id: int) -> list[SSHKey]:
        rows = self.execute("SELECT * FROM ssh_keys WHERE user_id = ? ORDER BY id", (user_id,))
        return [SSHKey(**dict(row)) for row in rows]

    # Images.

    def upsert_image(self, name: str, recipe_hash: str, path: str) -> Image:
        now = utc_now()
        self.execute(
            "INSERT INTO images (name, recipe_hash, path, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET recipe_hash = excluded.recipe_hash,"
            " path = excluded.path, created_at = excluded.created_at",
            (name, recipe_hash, path, now),
        )
        return Image(name, recipe_hash, path, now)

    def find_image(self, name: str) -> Image | None:
        row = self.execute("SELECT * FROM images WHERE name = ?", (name,)).fetchone()
        return Image(**dict(row)) if row else None

    def list_images(self) -> list[Image]:
        return [Image(**dict(row)) for row in self.execute("SELECT * FROM images ORDER BY name")]

    # VMs.

    def create_vm(
        self,
        *,
        name: str,
        owner_id: int,
        state: str,
        image: str,
        image_path: str,
        cpus: int,
        memory_mb: int,
        disk_bytes: int,
        ip: str,
        mac: str,
    ) -> VM:
        """Insert a VM row; a taken name, IP or MAC raises `Conflict`."""
        now = utc_now()
        cursor = self.execute(
            "INSERT INTO vms (name, owner_id, state, image, image_path, cpus, memory_mb, disk_bytes,"
            " ip, mac, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                owner_id,
                state,
                image,
                image_path,
                cpus,
                memory_mb,
                disk_bytes,
                ip,
                mac,
                now,
                now,
            ),
        )
        return self.get_vm(int(cursor.lastrowid or 0))

    def get_vm(self, vm_id: int) -> VM:
        row = self.execute("SELECT * FROM vms WHERE id = ?", (vm_id,)).fetchone()
        if row is None:
            raise NotFound(f"vm {vm_id} not found")
        return VM(**dict(row))

    def find_vm(self, name: str) -> VM | None:
        row = self.execute("SELECT * FROM vms WHERE name = ?", (name,)).fetchone()
        return VM(**dict(row)) if row else None

    def find_vm_by_ip(self, ip: str) -> VM | None:
        row = self.execute("SELECT * FROM vms WHERE ip = ?", (ip,)).fetchone()
        return VM(**dict(row)) if row else None

    def list_vms(self, owner_id: int | None = None) -> list[VM]:
        if owner_id is None:
            rows = self.execute("SELECT * FROM vms ORDER BY id")
        else:
            rows = self.execute("SELECT * FROM vms WHERE owner_id = ? ORDER BY id", (owner_id,))
        return [VM(**dict(row)) for row in rows]

    def used_ips(self) -> set[str]:
        return {row[0] for row in self.execute("SELECT ip FROM vms")}

    def set_vm_state(self, vm_id: int, state: str, *, started: bool = False) -> VM:
        now = utc_now()
        if started:
            self.execute(
                "UPDATE vms SET state = ?, updated_at = ?, started_at = ? WHERE id = ?",
                (state, now, now, vm_id),
            )
        else:
            self.execute("UPDATE vms SET state = ?, updated_at = ? WHERE id = ?", (state, now, vm_id))
        return self.get_vm(vm_id)

    def set_vm_host_keys(self, vm_id: int, host_keys: str) -> None:
        self.execute(
            "UPDATE vms SET host_keys = ?, updated_at = ? WHERE id = ?",
            (host_keys, utc_now(), vm_id),
        )

    def delete_vm(self, vm_id: int) -> None:
        self.execute("DELETE FROM vms WHERE id = ?", (vm_id,))

    # Events.

    def add_event(
        self, vm_id: int | None, vm_name: str, user_id: int | None, kind: str, detail: str = ""
    ) -> None:
        self.execute(
            "INSERT INTO events (vm_id, vm_name, user_id, kind, detail, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (vm_id, vm_name, user_id, kind, detail, utc_now()),
        )

    def list_events(self, vm_name: str | None = None, limit: int = 100) -> list[Event]:
        if vm_name is None:
            rows = self.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self.execute(
                "SELECT * FROM events WHERE vm_name = ? ORDER BY id DESC LIMIT ?", (vm_name, limit)
            )
        return [Event(**dict(row)) for row in rows]

    # Facts about the host, such as the result of the KVM probe.

    def get_fact(self, key: str) -> str | None:
        row = self.execute("SELECT value FROM host_facts WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_fact(self, key: str, value: str) -> None:
        self.execute(
            "INSERT INTO host_facts (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (key, value, utc_now()),
        )
