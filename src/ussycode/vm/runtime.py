"""The interface between the VM manager and a hypervisor.

The manager owns VM state and persistence; a runtime only starts, stops and finds hypervisor
processes. Runtimes keep no state of their own between calls: everything they need to find a VM
again, after a restart of the server, is in the VM's `run_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class VMSpec:
    """Everything a runtime needs to boot one VM.

    `cmdline` is the full kernel command line. `run_dir` is owned by the runtime while the VM
    runs and contains its pidfile, QMP socket, console log and recorded command line.
    """

    vm_id: int
    name: str
    cpus: int
    memory_mb: int
    disk: Path
    kernel: Path
    initrd: Path
    cmdline: str
    tap: str
    mac: str
    run_dir: Path


@dataclass(frozen=True)
class RuntimeUsage:
    """Counters of one running VM's hypervisor: totals since it started, and memory now."""

    cpu_seconds: float
    rss_bytes: int
    disk_read_bytes: int
    disk_write_bytes: int


class VMRuntime(Protocol):
    """A hypervisor driver, such as `ussycode.vm.qemu.QemuRuntime`."""

    name: str

    async def start(self, spec: VMSpec) -> int:
        """Start the hypervisor and return its PID once it runs; the guest may still be booting.

        :raise Conflict: the VM's hypervisor is already running.
        :raise RuntimeFailure: the hypervisor failed to start.
        """
        ...

    async def stop(self, spec: VMSpec, *, timeout: float = 30.0) -> None:
        """Stop the hypervisor in stages, starting with a graceful guest shutdown.

        `timeout` is how many seconds the guest gets to shut down on its own. Stopping a VM
        that is not running does nothing.

        :raise RuntimeFailure: the process survived every stage, including SIGKILL.
        """
        ...

    def pid(self, spec: VMSpec) -> int | None:
        """Return the PID of this VM's live hypervisor process, or None if it is not running."""
        ...

    def console_tail(self, spec: VMSpec, max_bytes: int = 8192) -> str:
        """Return the last `max_bytes` of the VM's serial console output of the current boot."""
        ...

    async def snapshot_disk(self, spec: VMSpec, overlay: Path) -> None:
        """Make the running VM write to `overlay`, a new qcow2 file whose backing file is the
        disk it wrote to until now; that disk becomes read-only.

        :raise RuntimeFailure: the hypervisor rejected the switch; the VM still writes to its
            old disk.
        """
        ...

    async def grow_disk(self, spec: VMSpec, size_bytes: int) -> None:
        """Grow the running VM's disk to `size_bytes`; the guest sees the new size at once.

        :raise RuntimeFailure: the hypervisor rejected the change.
        """
        ...

    async def usage(self, spec: VMSpec) -> RuntimeUsage | None:
        """Return the VM's CPU, memory and disk counters, or None if it is not running."""
        ...

    # Suspend and resume.

    def saved_state(self, spec: VMSpec) -> Path | None:
        """Return the VM's complete saved state file, or None if it has none."""
        ...

    def discard_state(self, spec: VMSpec) -> None:
        """Delete the VM's saved state, complete or partial."""
        ...

    async def save_state(self, spec: VMSpec) -> int:
        """Save the running VM's memory and device state next to its disk, end the hypervisor,
        and return the size of the state in bytes.

        :raise RuntimeFailure: the save failed; the VM runs on.
        """
        ...

    async def restore_state(self, spec: VMSpec) -> int:
        """Start the hypervisor from the saved state, which is used up, and return its PID.

        :raise NotFound: the VM has no saved state.
        :raise RuntimeFailure: the state did not load; the VM can still boot from its disk.
        """
        ...

    async def continue_guest(self, spec: VMSpec) -> None:
        """Let a paused guest run again.

        :raise RuntimeFailure: the hypervisor is not running or rejected the command.
        """
        ...
