"""Queries on `vm_details` (tags, comment, environment, setup script, pending resources) and
the edits of `vms` rows that rename and resize make."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ussycode.store.db import Store, utc_now
from ussycode.store.models import VM


@dataclass(frozen=True)
class VMDetails:
    """Settings of one VM beyond its `vms` row; a VM without a row has the defaults."""

    vm_id: int
    comment: str = ""
    tags: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    setup_script: str | None = None
    setup_status: str = ""
    setup_exit_status: int | None = None
    setup_updated_at: str | None = None
    pending_cpus: int | None = None
    pending_memory_mb: int | None = None
    copied_from: str | None = None
    agent_prompt: str | None = None


def _from_row(row: dict[str, object]) -> VMDetails:
    return VMDetails(
        vm_id=int(str(row["vm_id"])),
        comment=str(row["comment"]),
        tags=tuple(json.loads(str(row["tags"]))),
        env=dict(json.loads(str(row["env"]))),
        setup_script=None if row["setup_script"] is None else str(row["setup_script"]),
        setup_status=str(row["setup_status"]),
        setup_exit_status=None if row["setup_exit_status"] is None else int(str(row["setup_exit_status"])),
        setup_updated_at=None if row["setup_updated_at"] is None else str(row["setup_updated_at"]),
        pending_cpus=None if row["pending_cpus"] is None else int(str(row["pending_cpus"])),
        pending_memory_mb=None if row["pending_memory_mb"] is None else int(str(row["pending_memory_mb"])),
        copied_from=None if row["copied_from"] is None else str(row["copied_from"]),
        agent_prompt=None if row["agent_prompt"] is None else str(row["agent_prompt"]),
    )


class VMDetailsStore:
    """Reads and writes `vm_details`; every write creates the row if it is missing."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, vm_id: int) -> VMDetails:
        row = self.store.execute("SELECT * FROM vm_details WHERE vm_id = ?", (vm_id,)).fetchone()
        return _from_row(dict(row)) if row else VMDetails(vm_id)

    def for_owner(self, owner_id: int) -> dict[int, VMDetails]:
        """Return the details of every VM of `owner_id` that has a row, by VM id."""
        rows = self.store.execute(
            "SELECT vm_details.* FROM vm_details JOIN vms ON vms.id = vm_details.vm_id"
            " WHERE vms.owner_id = ?",
            (owner_id,),
        )
        return {int(row["vm_id"]): _from_row(dict(row)) for row in rows}

    def create(
        self,
        vm_id: int,
        *,
        comment: str = "",
        tags: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        setup_script: str | None = None,
        copied_from: str | None = None,
        agent_prompt: str | None = None,
    ) -> VMDetails:
        self.store.execute(
            "INSERT INTO vm_details (vm_id, comment, tags, env, setup_script, copied_from, agent_prompt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                vm_id,
                comment,
                json.dumps(sorted(tags)),
                json.dumps(env or {}),
                setup_script,
                copied_from,
                agent_prompt,
            ),
        )
        return self.get(vm_id)

    def _ensure(self, vm_id: int) -> None:
        self.store.execute("INSERT OR IGNORE INTO vm_details (vm_id) VALUES (?)", (vm_id,))

    def set_comment(self, vm_id: int, comment: str) -> None:
        self._ensure(vm_id)
        self.store.execute("UPDATE vm_details SET comment = ? WHERE vm_id = ?", (comment, vm_id))

    def set_tags(self, vm_id: int, tags: tuple[str, ...]) -> None:
        self._ensure(vm_id)
        self.store.execute(
            "UPDATE vm_details SET tags = ? WHERE vm_id = ?", (json.dumps(sorted(set(tags))), vm_id)
        )

    def set_pending(self, vm_id: int, *, cpus: int | None, memory_mb: int | None) -> None:
        self._ensure(vm_id)
        self.store.execute(
            "UPDATE vm_details SET pending_cpus = ?, pending_memory_mb = ? WHERE vm_id = ?",
            (cpus, memory_mb, vm_id),
        )

    def set_setup_status(self, vm_id: int, status: str, exit_status: int | None) -> None:
        self._ensure(vm_id)
        self.store.execute(
            "UPDATE vm_details SET setup_status = ?, setup_exit_status = ?, setup_updated_at = ?"
            " WHERE vm_id = ?",
            (status, exit_status, utc_now(), vm_id),
        )

    # Edits of the `vms` row.

    def set_resources(self, vm: VM, *, cpus: int, memory_mb: int, disk_bytes: int) -> VM:
        """Store the resources the VM boots with next and clear its pending changes."""
        with self.store.transaction():
            self.store.execute(
                "UPDATE vms SET cpus = ?, memory_mb = ?, disk_bytes = ?, updated_at = ? WHERE id = ?",
                (cpus, memory_mb, disk_bytes, utc_now(), vm.id),
            )
            self.store.execute(
                "UPDATE vm_details SET pending_cpus = NULL, pending_memory_mb = NULL WHERE vm_id = ?",
                (vm.id,),
            )
        return self.store.get_vm(vm.id)

    def rename(self, vm: VM, new_name: str) -> VM:
        """Rename the VM and move API keys scoped to its old name to the new one.

        :raise Conflict: a VM named `new_name` exists (the UNIQUE constraint).
        """
        with self.store.transaction():
            self.store.execute(
                "UPDATE vms SET name = ?, updated_at = ? WHERE id = ?", (new_name, utc_now(), vm.id)
            )
            self.store.execute(
                "UPDATE api_tokens SET vm_name = ? WHERE vm_name = ? AND user_id = ?",
                (new_name, vm.name, vm.owner_id),
            )
        return self.store.get_vm(vm.id)
