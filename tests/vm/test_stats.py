"""Rates between resource samples and the allocated size of a disk chain."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from ussycode.vm import disks
from ussycode.vm.stats import Sample, allocated_bytes, rates, series

MiB = 1024**2


def sample(time: float, cpu: float = 0.0, disk_write: int = 0, net_rx: int = 0) -> Sample:
    return Sample(
        time=time,
        cpu_seconds=cpu,
        rss_bytes=100 * MiB,
        disk_read_bytes=0,
        disk_write_bytes=disk_write,
        disk_allocated_bytes=0,
        net_rx_bytes=net_rx,
        net_tx_bytes=0,
    )


def test_rates_per_second() -> None:
    use = rates(sample(100.0, cpu=1.0, disk_write=0), sample(110.0, cpu=6.0, disk_write=10 * MiB, net_rx=500))
    assert use is not None
    assert use.seconds == 10.0
    assert use.cpu_percent == 50.0
    assert use.disk_write_per_second == MiB
    assert use.net_rx_per_second == 50.0


def test_rates_counter_reset_counts_zero() -> None:
    use = rates(sample(100.0, cpu=50.0), sample(110.0, cpu=1.0))
    assert use is not None
    assert use.cpu_percent == 0.0


def test_rates_out_of_order() -> None:
    assert rates(sample(110.0), sample(100.0)) is None
    assert rates(sample(100.0), sample(100.0)) is None


def test_series_pairs() -> None:
    samples = [sample(0.0, cpu=0.0), sample(10.0, cpu=1.0), sample(10.0, cpu=1.0), sample(20.0, cpu=11.0)]
    pairs = series(samples)
    assert [pair[0].time for pair in pairs] == [10.0, 20.0]
    assert [round(pair[1].cpu_percent) for pair in pairs] == [10, 100]


def test_allocated_bytes_skips_image(tmp_path: Path) -> None:
    base = tmp_path / "rootfs.ext4"
    with base.open("wb") as image:
        image.write(b"\x01" * (8 * MiB))
    disk = tmp_path / "disk.qcow2"
    asyncio.run(disks.create_disk(base, disk, 64 * MiB))
    empty = allocated_bytes(disk)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5 0 4M", str(disk)], check=True, capture_output=True
    )
    written = allocated_bytes(disk)
    assert empty < MiB
    assert written - empty >= 4 * MiB
    assert written < 8 * MiB
    assert allocated_bytes(tmp_path / "missing.qcow2") == 0
