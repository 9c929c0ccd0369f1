"""Queries on `vm_suspend`: per-VM idle timeouts and the size of saved states."""

from __future__ import annotations

from ussycode.store.db import Store


class SuspendStore:
    """Reads and writes `vm_suspend`; a VM without a row uses the server's idle timeout."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def idle_seconds(self, vm_id: int) -> int | None:
        """Return the VM's own idle timeout in seconds (0 is never), or None for the server's."""
        row = self.store.execute("SELECT idle_seconds FROM vm_suspend WHERE vm_id = ?", (vm_id,)).fetchone()
        if row is None or row["idle_seconds"] is None:
            return None
        return int(row["idle_seconds"])

    def set_idle_seconds(self, vm_id: int, seconds: int | None) -> None:
        self._ensure(vm_id)
        self.store.execute("UPDATE vm_suspend SET idle_seconds = ? WHERE vm_id = ?", (seconds, vm_id))

    def set_state_bytes(self, vm_id: int, size: int) -> None:
        self._ensure(vm_id)
        self.store.execute("UPDATE vm_suspend SET state_bytes = ? WHERE vm_id = ?", (size, vm_id))

    def state_bytes_of_vm(self, vm_id: int) -> int:
        row = self.store.execute("SELECT state_bytes FROM vm_suspend WHERE vm_id = ?", (vm_id,)).fetchone()
        return 0 if row is None else int(row["state_bytes"])

    def state_bytes_of_owner(self, owner_id: int, *, excluding: int | None = None) -> int:
        """Return the bytes of the saved states of the owner's VMs, leaving out VM `excluding`."""
        row = self.store.execute(
            "SELECT COALESCE(SUM(vm_suspend.state_bytes), 0) AS total FROM vm_suspend"
            " JOIN vms ON vms.id = vm_suspend.vm_id WHERE vms.owner_id = ? AND vms.id IS NOT ?",
            (owner_id, excluding),
        ).fetchone()
        return int(row["total"])

    def _ensure(self, vm_id: int) -> None:
        self.store.execute("INSERT OR IGNORE INTO vm_suspend (vm_id) VALUES (?)", (vm_id,))
