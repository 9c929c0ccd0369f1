"""VM states and the transitions the manager allows between them."""

from __future__ import annotations

from enum import StrEnum

from ussycode.errors import Conflict


class VMState(StrEnum):
    STARTING = "starting"  # the hypervisor runs; the guest's sshd has not accepted a login yet
    RUNNING = "running"  # sshd accepts logins; the URL is routed to port 8080
    STOPPING = "stopping"
    STOPPED = "stopped"
    SUSPENDING = "suspending"  # the guest is paused and its memory is being saved
    SUSPENDED = "suspended"  # memory and devices are saved next to the disk; no hypervisor runs


ALLOWED: dict[VMState, frozenset[VMState]] = {
    VMState.STARTING: frozenset({VMState.RUNNING, VMState.STOPPING, VMState.STOPPED}),
    VMState.RUNNING: frozenset({VMState.STOPPING, VMState.STOPPED, VMState.STARTING, VMState.SUSPENDING}),
    VMState.STOPPING: frozenset({VMState.STOPPED}),
    VMState.STOPPED: frozenset({VMState.STARTING}),
    # A failed save lets the guest run on; a server crash without a saved state leaves it stopped.
    VMState.SUSPENDING: frozenset({VMState.SUSPENDED, VMState.RUNNING, VMState.STOPPED}),
    # Resuming passes through STARTING; stopping a suspended VM discards its saved memory.
    VMState.SUSPENDED: frozenset({VMState.STARTING, VMState.STOPPING, VMState.STOPPED}),
}


def check_transition(name: str, current: str, target: VMState) -> None:
    """Raise `Conflict` naming both states when `current` may not move to `target`."""
    state = VMState(current)
    if target not in ALLOWED[state]:
        hint = {
            VMState.STOPPED: f'run "start {name}" first',
            VMState.STARTING: "wait until it is running",
            VMState.STOPPING: "wait until it has stopped",
            VMState.RUNNING: f'run "stop {name}" first',
            VMState.SUSPENDING: "wait until it is suspended",
            VMState.SUSPENDED: f'run "resume {name}" first',
        }[state]
        raise Conflict(f'vm "{name}" is {state.value}: {hint}')
