"""Tests of qcow2 overlay disks, with the real qemu-img and qemu-io."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from ussycode.errors import Conflict, InvalidInput, NotFound, RuntimeFailure
from ussycode.vm import disks

MiB = 1024**2
GiB = 1024**3


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A sparse 64 MiB raw image whose first MiB is 0x11 bytes."""
    path = tmp_path / "rootfs.ext4"
    with path.open("wb") as image:
        image.write(b"\x11" * MiB)
        image.truncate(64 * MiB)
    return path


def image_info(path: Path) -> dict[str, object]:
    result = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    info: dict[str, object] = json.loads(result.stdout)
    return info


def test_create_disk_overlay(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"

    started = time.monotonic()
    asyncio.run(disks.create_disk(base, disk, 10 * GiB))
    elapsed = time.monotonic() - started
    print(f"overlay created in {elapsed * 1000:.0f} ms")

    info = image_info(disk)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 10 * GiB
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "raw"
    assert elapsed < 1.0


def test_create_disk_relative_base(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    disk = tmp_path / "disk.qcow2"

    asyncio.run(disks.create_disk(Path(base.name), disk, 64 * MiB))

    assert image_info(disk)["backing-filename"] == str(base)


def test_create_disk_equal_size(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"

    asyncio.run(disks.create_disk(base, disk, 64 * MiB))

    assert image_info(disk)["virtual-size"] == 64 * MiB


def test_create_disk_rounds_to_sector(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"

    asyncio.run(disks.create_disk(base, disk, 64 * MiB + 1))

    assert image_info(disk)["virtual-size"] == 64 * MiB + 512


def test_create_disk_copy_on_write(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    asyncio.run(disks.create_disk(base, disk, GiB))
    base_before = base.read_bytes()

    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 1M", str(disk)],
        capture_output=True,
        check=True,
    )
    read_back = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0x22 0 1M", "-c", "read -P 0x00 1M 1M", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert read_back.returncode == 0
    assert "Pattern verification failed" not in read_back.stdout
    assert base.read_bytes() == base_before


def test_create_disk_reads_base(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    asyncio.run(disks.create_disk(base, disk, GiB))

    result = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 1M", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0
    assert "Pattern verification failed" not in result.stdout


def test_create_disk_smaller_than_base(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"

    with pytest.raises(InvalidInput, match="smaller than the image"):
        asyncio.run(disks.create_disk(base, disk, 64 * MiB - 512))
    assert not disk.exists()


@pytest.mark.parametrize("size", [0, -1])
def test_create_disk_size_not_positive(base: Path, tmp_path: Path, size: int) -> None:
    with pytest.raises(InvalidInput, match="must be positive"):
        asyncio.run(disks.create_disk(base, tmp_path / "disk.qcow2", size))


def test_create_disk_missing_base(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not found"):
        asyncio.run(disks.create_disk(tmp_path / "absent.ext4", tmp_path / "disk.qcow2", GiB))


def test_create_disk_base_directory(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not a regular file"):
        asyncio.run(disks.create_disk(tmp_path, tmp_path / "disk.qcow2", GiB))


def test_create_disk_exists(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"keep me")

    with pytest.raises(Conflict, match="exists already"):
        asyncio.run(disks.create_disk(base, disk, GiB))
    assert disk.read_bytes() == b"keep me"


def test_create_disk_failure_cleans_up(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "no-such-dir" / "disk.qcow2"

    with pytest.raises(RuntimeFailure, match="qemu-img"):
        asyncio.run(disks.create_disk(base, disk, GiB))
    assert not disk.exists()
    assert not disk.with_name("disk.qcow2.partial").exists()


def test_create_disk_replaces_partial(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    partial = tmp_path / "disk.qcow2.partial"
    partial.write_bytes(b"left by a crash")

    asyncio.run(disks.create_disk(base, disk, GiB))

    assert image_info(disk)["format"] == "qcow2"
    assert not partial.exists()


def test_disk_usage_new_overlay(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    asyncio.run(disks.create_disk(base, disk, 10 * GiB))

    usage = disks.disk_usage(disk)

    assert 0 < usage < MiB


def test_disk_usage_grows_with_writes(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    asyncio.run(disks.create_disk(base, disk, GiB))
    before = disks.disk_usage(disk)

    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 8M", str(disk)],
        capture_output=True,
        check=True,
    )

    assert disks.disk_usage(disk) >= before + 8 * MiB


def test_disk_usage_sparse_file(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as sparse:
        sparse.truncate(GiB)

    assert disks.disk_usage(path) == os.stat(path).st_blocks * 512
    assert disks.disk_usage(path) < MiB


def test_disk_usage_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not found"):
        disks.disk_usage(tmp_path / "absent.qcow2")


def test_delete_disk(base: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    asyncio.run(disks.create_disk(base, disk, GiB))

    asyncio.run(disks.delete_disk(disk))

    assert not disk.exists()
    assert base.exists()


def test_delete_disk_missing(tmp_path: Path) -> None:
    asyncio.run(disks.delete_disk(tmp_path / "absent.qcow2"))

    assert not (tmp_path / "absent.qcow2").exists()


def test_delete_disk_partial(tmp_path: Path) -> None:
    partial = tmp_path / "disk.qcow2.partial"
    partial.write_bytes(b"half")

    asyncio.run(disks.delete_disk(tmp_path / "disk.qcow2"))

    assert not partial.exists()
