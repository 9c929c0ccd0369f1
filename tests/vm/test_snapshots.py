"""Tests of disk layers for `cp`, with the real qemu-img, qemu-io and an idle QEMU holding a disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.vm.test_qemu import QEMU, make_spec
from ussycode.errors import InvalidInput, NotFound, RuntimeFailure
from ussycode.vm import disks, snapshots
from ussycode.vm.qemu import QemuRuntime, qmp_execute
from ussycode.vm.runtime import VMSpec

MiB = 1024**2
GiB = 1024**3


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A sparse 64 MiB raw image."""
    path = tmp_path / "rootfs.ext4"
    with path.open("wb") as image:
        image.truncate(64 * MiB)
    return path


def qemu_io(path: Path, command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(path)],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def holds_pattern(path: Path, offset: int, pattern: int) -> bool:
    """Return whether the MiB at `offset` of the disk `path` is filled with byte `pattern`."""
    result = qemu_io(path, f"read -P {pattern:#x} {offset} 1M", check=False)
    return result.returncode == 0 and "Pattern verification failed" not in result.stdout


def make_disk(base: Path, path: Path, size: int = 128 * MiB) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(disks.create_disk(base, path, size))
    return path


@pytest.fixture
def holding_qemu(tmp_path: Path, base: Path) -> Iterator[VMSpec]:
    """An idle, paused QEMU of VM 9 with the disk of its spec attached as "disk0"."""
    spec = make_spec(tmp_path / "vm9", vm_id=9, files=tmp_path / "files9")
    make_disk(base, spec.disk)
    run_dir = spec.run_dir.absolute()
    run_dir.mkdir(parents=True)
    argv = [
        QEMU,
        "-name", f"ussycode-vm-{spec.vm_id},process=ussy-idle",
        "-M", "pc", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-S",
        "-drive", f"file={spec.disk},if=none,id=disk0,format=qcow2",
        "-device", "virtio-blk-pci,drive=disk0",
        "-qmp", f"unix:{run_dir / 'qmp.sock'},server=on,wait=off",
        "-pidfile", str(run_dir / "qemu.pid"),
        "-daemonize",
    ]  # fmt: skip
    subprocess.run(argv, check=True, timeout=30, capture_output=True)
    pidfd = os.pidfd_open(int((run_dir / "qemu.pid").read_text()))
    try:
        yield spec
    finally:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)


def quit_qemu(spec: VMSpec) -> None:
    runtime = QemuRuntime()
    pid = runtime.pid(spec)
    asyncio.run(qmp_execute(spec.run_dir / "qmp.sock", "quit"))
    deadline = time.monotonic() + 10
    while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_qcow2_header_fields(base: Path, tmp_path: Path) -> None:
    disk = make_disk(base, tmp_path / "disk.qcow2", 3 * GiB)
    assert disks.qcow2_virtual_size(disk) == 3 * GiB
    assert disks.backing_file(disk) == base.absolute()
    assert disks.backing_chain(disk) == [disk, base.absolute()]
    assert disks.is_qcow2(disk)
    assert not disks.is_qcow2(base)


def test_qcow2_header_errors(base: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not found"):
        disks.qcow2_virtual_size(tmp_path / "missing.qcow2")
    with pytest.raises(InvalidInput, match="is not a qcow2 image"):
        disks.backing_file(base)
    short = tmp_path / "short.qcow2"
    short.write_bytes(b"QFI\xfb")
    with pytest.raises(InvalidInput, match="cut short"):
        disks.qcow2_virtual_size(short)


def test_grow_disk_offline(base: Path, tmp_path: Path) -> None:
    disk = make_disk(base, tmp_path / "disk.qcow2", 128 * MiB)
    asyncio.run(disks.grow_disk(disk, 256 * MiB))
    assert disks.qcow2_virtual_size(disk) == 256 * MiB
    with pytest.raises(InvalidInput, match="cannot shrink"):
        asyncio.run(disks.grow_disk(disk, 128 * MiB))
    assert disks.qcow2_virtual_size(disk) == 256 * MiB


def test_create_overlay_errors(base: Path, tmp_path: Path) -> None:
    disk = make_disk(base, tmp_path / "disk.qcow2")
    with pytest.raises(NotFound, match="disk layer"):
        asyncio.run(disks.create_overlay(tmp_path / "missing.qcow2", tmp_path / "copy.qcow2", MiB))
    with pytest.raises(RuntimeFailure):
        asyncio.run(disks.create_overlay(disk, tmp_path / "copy.qcow2", -1))
    assert not (tmp_path / "copy.qcow2").exists()
    assert not (tmp_path / "copy.qcow2.partial").exists()


class Pointer:
    """Records the disk a VM boots from, as the manager's disk link does."""

    def __init__(self, disk: Path) -> None:
        self.history = [disk]

    def __call__(self, path: Path) -> None:
        self.history.append(path)


def test_freeze_stopped_disk(base: Path, tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "vm7", files=tmp_path / "files")
    make_disk(base, spec.disk)
    qemu_io(spec.disk, "write -P 0xab 0 1M")
    new_top = tmp_path / "disks" / "top.qcow2"
    new_top.parent.mkdir()
    pointer = Pointer(spec.disk)

    layer = asyncio.run(snapshots.freeze_disk(QemuRuntime(), spec, new_top, pointer))

    assert layer == spec.disk.absolute()
    assert pointer.history == [spec.disk, new_top]
    assert disks.backing_file(new_top) == layer
    assert disks.qcow2_virtual_size(new_top) == 128 * MiB
    assert holds_pattern(new_top, 0, 0xAB)
    copy = tmp_path / "disks" / "copy.qcow2"
    asyncio.run(disks.create_overlay(layer, copy, 256 * MiB))
    assert holds_pattern(copy, 0, 0xAB)
    assert disks.qcow2_virtual_size(copy) == 256 * MiB


def test_freeze_running_disk(holding_qemu: VMSpec, tmp_path: Path) -> None:
    spec = holding_qemu
    monitor = spec.run_dir / "qmp.sock"

    def through_qemu(command: str) -> str:
        return str(
            asyncio.run(
                qmp_execute(monitor, "human-monitor-command", {"command-line": f'qemu-io disk0 "{command}"'})
            )
        )

    through_qemu("write -P 0x11 0 1M")
    new_top = tmp_path / "top.qcow2"
    layer = asyncio.run(snapshots.freeze_disk(QemuRuntime(), spec, new_top, Pointer(spec.disk)))
    through_qemu("write -P 0x22 1M 1M")
    # QEMU reopened the layer read-only by its path; reads through the chain still find the
    # data written before the switch.
    assert "Pattern verification failed" not in through_qemu("read -P 0x11 0 1M")
    assert "Pattern verification failed" not in through_qemu("read -P 0x22 1M 1M")
    quit_qemu(spec)

    assert disks.backing_file(new_top) == layer
    assert holds_pattern(new_top, 0, 0x11)
    assert holds_pattern(new_top, MiB, 0x22)
    assert holds_pattern(layer, 0, 0x11)
    assert holds_pattern(layer, MiB, 0x00)


def test_freeze_rolls_back_when_qemu_rejects(holding_qemu: VMSpec, tmp_path: Path) -> None:
    spec = holding_qemu

    class RejectingRuntime(QemuRuntime):
        async def snapshot_disk(self, spec: VMSpec, overlay: Path) -> None:
            raise RuntimeFailure("QMP error GenericError: rejected for the test")

    new_top = tmp_path / "top.qcow2"
    pointer = Pointer(spec.disk)
    with pytest.raises(RuntimeFailure, match="rejected for the test"):
        asyncio.run(snapshots.freeze_disk(RejectingRuntime(), spec, new_top, pointer))

    assert pointer.history == [spec.disk, new_top, spec.disk.absolute()]
    assert not new_top.exists()
    assert disks.backing_file(spec.disk) == (tmp_path / "rootfs.ext4").absolute()


@pytest.mark.parametrize("size", [2 * GiB, 100 * GiB])
def test_freeze_time_independent_of_size(base: Path, tmp_path: Path, size: int) -> None:
    spec = make_spec(tmp_path / "vm7", files=tmp_path / "files")
    make_disk(base, spec.disk, size)
    qemu_io(spec.disk, "write -P 0x33 0 32M")

    started = time.monotonic()
    layer = asyncio.run(
        snapshots.freeze_disk(QemuRuntime(), spec, tmp_path / "top.qcow2", Pointer(spec.disk))
    )
    asyncio.run(disks.create_overlay(layer, tmp_path / "copy.qcow2", size))
    elapsed = time.monotonic() - started
    print(f"copy of a {size // GiB} GiB disk in {elapsed * 1000:.0f} ms")

    assert elapsed < 2.0


def test_remove_unused_layers(base: Path, tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "vm7", files=tmp_path / "files")
    layers = tmp_path / "disks"
    layers.mkdir()
    make_disk(base, layers / "first.qcow2")
    runtime = QemuRuntime()
    second = layers / "second.qcow2"
    third = layers / "third.qcow2"
    spec = replace(spec, disk=layers / "first.qcow2")
    first = asyncio.run(snapshots.freeze_disk(runtime, spec, second, Pointer(spec.disk)))
    asyncio.run(snapshots.freeze_disk(runtime, replace(spec, disk=second), third, Pointer(second)))
    copy = layers / "copy.qcow2"
    asyncio.run(disks.create_overlay(first, copy, 128 * MiB))
    orphan = layers / "orphan.qcow2"
    asyncio.run(disks.create_overlay(second, orphan, 128 * MiB))

    removed = snapshots.remove_unused_layers(layers, [third, copy])

    assert removed == [orphan]
    assert first.exists()
    assert second.exists()
    copy.unlink()
    assert snapshots.remove_unused_layers(layers, [third]) == []
    third.unlink()
    assert sorted(snapshots.remove_unused_layers(layers, [third])) == sorted([first, second])


def test_remove_unused_layers_unreadable_chain(base: Path, tmp_path: Path) -> None:
    layers = tmp_path / "layers"
    layers.mkdir()
    kept = layers / "1-000000000000.qcow2"
    make_disk(base, kept)
    broken = tmp_path / "broken.qcow2"
    broken.write_bytes(b"QFI\xfb")
    assert snapshots.remove_unused_layers(layers, [broken]) == []
    assert kept.exists()
