"""Idle detection: suspends running VMs that were not used for their idle timeout.

A VM counts as used at a check when any of these holds:

- a TCP connection from this host to the VM is established. The SSH gateway's sessions and
  port forwards, the `ssh` command and Caddy's proxied HTTPS requests all are such connections,
  public VM URLs included (Caddy keeps its connection to the app open for a while after each
  request). Connections the VM opens to the host, such as to the metadata service, do not count;
- a request to its URL passed the platform's access check (`touch`);
- its hypervisor used more than `IDLE_CPU_PERCENT` of one host CPU since the last check;
- the manager is changing it (its lock is held).

Only VMs owned by a user are suspended (`VMManager.owned_by_user`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ussycode.errors import InvalidInput, UssycodeError
from ussycode.store import VM
from ussycode.vm.state import VMState

if TYPE_CHECKING:
    from ussycode.vm.manager import VMManager

log = logging.getLogger(__name__)

NEVER = "never"
MIN_IDLE_SECONDS = 10
MAX_IDLE_SECONDS = 30 * 24 * 3600
CHECK_INTERVAL_SECONDS = 5.0
# CPU use of the hypervisor, in percent of one host CPU, above which a VM counts as busy.
# NOTE: an estimate. A booted guest of the default image that runs only a shell loop stayed
# below it under TCG (QEMU 7.2, 1 vCPU) in tests/vm/test_suspend.py. It was not measured closer.
IDLE_CPU_PERCENT = 10.0

# ASCII digits only: \d would also take other scripts' digits, which int() reads.
_DURATION_RE = re.compile(r"([0-9]+)([smhd])")
# More digits than any count within MAX_IDLE_SECONDS needs; longer counts are out of range
# without int(), which refuses strings of thousands of digits.
_MAX_COUNT_DIGITS = 8
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TCP_ESTABLISHED = "01"
_TCP_LISTEN = "0A"


def parse_idle(text: str, *, what: str = "--idle") -> int:
    """Parse an idle timeout such as "30m", "1h30m", "90s" or "never" into seconds; 0 is never.

    :raise InvalidInput: the text is no duration with units s, m, h or d, or is outside
        10 seconds to 30 days.
    """
    value = text.strip().lower()
    if value == NEVER:
        return 0
    parts = _DURATION_RE.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise InvalidInput(
            f'invalid {what} "{text}": use a duration with units s, m, h or d, such as 30m or 1h30m,'
            f' or "{NEVER}"'
        )
    too_long = any(len(number.lstrip("0")) > _MAX_COUNT_DIGITS for number, _ in parts)
    seconds = 0 if too_long else sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if too_long or not MIN_IDLE_SECONDS <= seconds <= MAX_IDLE_SECONDS:
        raise InvalidInput(
            f'invalid {what} "{text}": choose between {MIN_IDLE_SECONDS}s and {MAX_IDLE_SECONDS // 86400}d,'
            f' or "{NEVER}"'
        )
    return seconds


def format_idle(seconds: float | None) -> str:
    """Format an idle timeout in seconds as parse_idle reads it; None or 0 is "never"."""
    if not seconds:
        return NEVER
    remaining = int(seconds)
    text = ""
    for unit in ("d", "h", "m", "s"):
        count, remaining = divmod(remaining, _UNIT_SECONDS[unit])
        if count:
            text += f"{count}{unit}"
    return text


def host_connected_ips(proc_tcp: Path = Path("/proc/net/tcp")) -> set[str]:
    """Return the IPv4 addresses that this network namespace has outgoing TCP connections to.

    A connection is outgoing when its local port is not one this namespace listens on.
    """
    try:
        lines = proc_tcp.read_text().splitlines()[1:]
    except OSError as exc:
        log.warning("cannot read %s: %s", proc_tcp, exc)
        return set()
    listening: set[str] = set()
    established: list[tuple[str, str]] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        local, remote, state = fields[1], fields[2], fields[3]
        if state == _TCP_LISTEN:
            listening.add(local.partition(":")[2])
        elif state == _TCP_ESTABLISHED:
            established.append((local.partition(":")[2], remote))
    addresses = set()
    for local_port, remote in established:
        if local_port in listening:
            continue
        address = remote.partition(":")[0]
        # /proc/net/tcp prints the address as a native-endian 32-bit hex number.
        addresses.add(socket.inet_ntoa(struct.pack("=I", int(address, 16))))
    return addresses


class IdleMonitor:
    """Tracks when each running VM was last used and suspends those idle for their timeout."""

    def __init__(self, manager: VMManager) -> None:
        self.manager = manager
        self._last_used: dict[int, float] = {}
        self._cpu_samples: dict[int, tuple[float, float]] = {}
        self._suspending: set[int] = set()

    def touch(self, vm_id: int) -> None:
        """Record that VM `vm_id` is in use now."""
        self._last_used[vm_id] = time.monotonic()

    def idle_seconds(self, vm: VM) -> float | None:
        """Return the seconds since `vm` was last seen in use, or None if it is not tracked."""
        last = self._last_used.get(vm.id)
        return None if last is None else time.monotonic() - last

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_SECONDS)
            await self.check()

    async def check(self) -> None:
        """Update every running VM's last use and start suspending those idle long enough."""
        manager = self.manager
        now = time.monotonic()
        connected = host_connected_ips()
        running = set()
        for vm in manager.store.list_vms():
            if vm.state != VMState.RUNNING:
                continue
            running.add(vm.id)
            last = self._last_used.setdefault(vm.id, now)
            if vm.ip in connected or manager._lock(vm).locked() or await self._cpu_busy(vm, now):
                self._last_used[vm.id] = last = now
            timeout = manager.idle_timeout(vm)
            if timeout is None or now - last < timeout or vm.id in self._suspending:
                continue
            if not manager.owned_by_user(vm):
                continue
            log.info(
                "vm=%s idle for %.0f s (timeout %s); suspending", vm.name, now - last, format_idle(timeout)
            )
            self._suspending.add(vm.id)
            manager._spawn(self._suspend(vm, now - last))
        for vm_id in set(self._last_used) - running:
            del self._last_used[vm_id]
            self._cpu_samples.pop(vm_id, None)

    async def _cpu_busy(self, vm: VM, now: float) -> bool:
        usage = await self.manager.runtime.usage(self.manager.spec(vm))
        if usage is None:
            return False
        previous = self._cpu_samples.get(vm.id)
        self._cpu_samples[vm.id] = (now, usage.cpu_seconds)
        if previous is None or now <= previous[0]:
            return False
        percent = 100.0 * (usage.cpu_seconds - previous[1]) / (now - previous[0])
        return percent > IDLE_CPU_PERCENT

    async def _suspend(self, vm: VM, idle_for: float) -> None:
        try:
            current = self.manager.store.get_vm(vm.id)
            if current.state == VMState.RUNNING:
                await self.manager.suspend(current, reason=f"idle for {format_idle(round(idle_for))}")
        except UssycodeError as exc:
            log.warning("vm=%s idle suspend failed: %s", vm.name, exc)
            self.touch(vm.id)
        finally:
            self._suspending.discard(vm.id)
