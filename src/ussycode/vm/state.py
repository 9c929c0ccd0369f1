"""VM states and the transitions the manager allows between them."""

from __future__ import annotations

from enum import StrEnum

from ussycode.errors import Conflict


class VMState(StrEnum):
    STARTING = "starting"  # the hypervisor runs; the guest's sshd has not accepted a login yet
    RUNNING = "running"  # sshd accepts logins; the URL is routed to port 8080
    STOPPING = "stopping"
    STOPPED = "stopped"


ALLOWED: dict[VMState, frozenset[VMState]] = {
    VMState.STARTING: frozenset({VMState.RUNNING, VMState.STOPPING, VMState.STOPPED}),
    VMState.RUNNING: frozenset({VMState.STOPPING, VMState.STOPPED, VMState.STARTING}),
    VMState.STOPPING: frozenset({VMState.STOPPED}),
    VMState.STOPPED: frozenset({VMState.STARTING}),
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
        }[state]
        raise Conflict(f'vm "{name}" is {state.value}: {hint}')
