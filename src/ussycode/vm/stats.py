"""Resource use of running VMs, sampled by the server into a one-hour ring buffer per VM.

Each sample contains counters as measured on the host: QEMU's CPU time and resident memory (from
/proc), the bytes its disk device read and wrote (QMP query-blockstats), the bytes through the
VM's TAP device (sysfs), and the bytes allocated in the VM's own disk layers. Rates come from the
difference of two samples. Samples live in memory only, so a server restart starts a new hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ussycode.errors import UssycodeError
from ussycode.store import VM
from ussycode.vm import disks
from ussycode.vm.network import Network
from ussycode.vm.state import VMState

if TYPE_CHECKING:
    from ussycode.vm.manager import VMManager

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_SECONDS = 10.0
HISTORY_SECONDS = 3600.0
MAX_SAMPLES = int(HISTORY_SECONDS / SAMPLE_INTERVAL_SECONDS) + 1
SYSFS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class Sample:
    """Counters of one VM at `time` (Unix seconds); every byte and CPU counter is a total."""

    time: float
    cpu_seconds: float
    rss_bytes: int
    disk_read_bytes: int
    disk_write_bytes: int
    disk_allocated_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int


@dataclass(frozen=True)
class Rates:
    """Use between two samples: CPU as a percentage of one vCPU, the rest in bytes per second."""

    seconds: float
    cpu_percent: float
    disk_read_per_second: float
    disk_write_per_second: float
    net_rx_per_second: float
    net_tx_per_second: float


def rates(before: Sample, after: Sample) -> Rates | None:
    """Return the use between two samples, or None if they are not in time order.

    A counter that went down (the hypervisor restarted) counts as zero use.
    """
    seconds = after.time - before.time
    if seconds <= 0:
        return None

    def per_second(first: float, second: float) -> float:
        return max(0.0, second - first) / seconds

    return Rates(
        seconds=seconds,
        cpu_percent=100 * per_second(before.cpu_seconds, after.cpu_seconds),
        disk_read_per_second=per_second(before.disk_read_bytes, after.disk_read_bytes),
        disk_write_per_second=per_second(before.disk_write_bytes, after.disk_write_bytes),
        net_rx_per_second=per_second(before.net_rx_bytes, after.net_rx_bytes),
        net_tx_per_second=per_second(before.net_tx_bytes, after.net_tx_bytes),
    )


def series(samples: Sequence[Sample]) -> list[tuple[Sample, Rates]]:
    """Pair each sample after the first with the use since the one before it."""
    pairs = []
    for before, after in itertools.pairwise(samples):
        use = rates(before, after)
        if use is not None:
            pairs.append((after, use))
    return pairs


def _read_counter(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def allocated_bytes(disk: Path) -> int:
    """Return the bytes allocated on the host by the qcow2 layers of `disk`, without the image.

    Layers shared with copies count fully for each VM that uses them.
    """
    total = 0
    try:
        chain = disks.backing_chain(disk)
    except UssycodeError:
        return 0
    for path in chain:
        if disks.is_qcow2(path):
            with contextlib.suppress(UssycodeError):
                total += disks.disk_usage(path)
    return total


class StatsSampler:
    """Samples every running VM every 10 seconds and keeps the last hour per VM."""

    def __init__(self, manager: VMManager, *, interval: float = SAMPLE_INTERVAL_SECONDS) -> None:
        self.manager = manager
        self.interval = interval
        self._samples: dict[int, deque[Sample]] = {}

    def history(self, vm: VM) -> list[Sample]:
        """Return the VM's samples of the last hour, oldest first."""
        cutoff = time.time() - HISTORY_SECONDS
        return [sample for sample in self._samples.get(vm.id, ()) if sample.time >= cutoff]

    async def sample(self, vm: VM) -> Sample | None:
        """Take one sample of `vm` now, or return None if its hypervisor is not running."""
        spec = self.manager.spec(vm)
        usage = await self.manager.runtime.usage(spec)
        if usage is None:
            return None
        statistics = SYSFS_NET / Network.tap_name(vm.id) / "statistics"
        # The TAP device receives what the guest sends and transmits what it receives. The
        # sample is from the guest's point of view, so the counters are swapped.
        return Sample(
            time=time.time(),
            cpu_seconds=usage.cpu_seconds,
            rss_bytes=usage.rss_bytes,
            disk_read_bytes=usage.disk_read_bytes,
            disk_write_bytes=usage.disk_write_bytes,
            disk_allocated_bytes=allocated_bytes(spec.disk),
            net_rx_bytes=_read_counter(statistics / "tx_bytes"),
            net_tx_bytes=_read_counter(statistics / "rx_bytes"),
        )

    def record(self, vm: VM, sample: Sample) -> None:
        self._samples.setdefault(vm.id, deque(maxlen=MAX_SAMPLES)).append(sample)

    async def sample_all(self) -> None:
        """Sample every running VM once and forget the samples of removed VMs."""
        vms = self.manager.store.list_vms()
        for gone in set(self._samples) - {vm.id for vm in vms}:
            del self._samples[gone]
        for vm in vms:
            if vm.state != VMState.RUNNING:
                continue
            try:
                sample = await self.sample(vm)
            except (UssycodeError, OSError, ValueError, KeyError, IndexError) as exc:
                # A VM that stops while it is sampled, or an odd QMP reply, skips one sample.
                log.debug("vm=%s sampling failed: %s", vm.name, exc)
                continue
            if sample is not None:
                self.record(vm, sample)

    async def run(self) -> None:
        """Sample every `interval` seconds until cancelled."""
        while True:
            await self.sample_all()
            await asyncio.sleep(self.interval)
