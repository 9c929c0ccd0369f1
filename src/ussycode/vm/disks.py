"""VM disks: qcow2 copy-on-write overlays on top of a read-only raw image.

A new disk holds only a qcow2 header that points at the image's root file system by absolute
path, so creating one takes tens of milliseconds whatever its size. The base image must stay in
place, unchanged, for as long as any disk refers to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from pathlib import Path

from ussycode import proc
from ussycode.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)

QEMU_IMG_TIMEOUT = 60.0
QCOW2_MAGIC = b"QFI\xfb"
# The qcow2 header fields read here, big-endian: magic, version, backing file offset and
# length, cluster bits, virtual size (docs/interop/qcow2.txt in the QEMU sources).
_QCOW2_HEADER = struct.Struct(">4sIQIIQ")
MAX_BACKING_NAME_BYTES = 1023


def _partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _check_new_disk(base: Path, path: Path, size_bytes: int) -> Path:
    """Validate the arguments of `create_disk` and return `base` as an absolute path."""
    base = base.absolute()
    try:
        base_size = base.stat().st_size
    except FileNotFoundError as exc:
        raise NotFound(f"base image {base} not found: build or install the image first") from exc
    if not base.is_file():
        raise NotFound(f"base image {base} is not a regular file")
    if size_bytes <= 0:
        raise InvalidInput(f"disk size must be positive, not {size_bytes} bytes")
    if size_bytes < base_size:
        raise InvalidInput(
            f"disk size {size_bytes} bytes is smaller than the image {base} ({base_size} bytes):"
            " choose a size of at least the image size"
        )
    if path.exists():
        raise Conflict(f"disk {path} exists already: delete it first")
    return base


async def create_disk(base: Path, path: Path, size_bytes: int) -> None:
    """Create the qcow2 overlay `path` of `size_bytes` over the raw image `base`.

    qemu-img rounds the size up to a multiple of 512 bytes. The overlay is written under a
    temporary name and renamed, so `path` never contains a half-made disk.

    :raise NotFound: `base` does not exist or is not a regular file.
    :raise InvalidInput: `size_bytes` is not positive or is smaller than `base`.
    :raise Conflict: `path` exists already.
    :raise RuntimeFailure: qemu-img failed.
    """
    base = _check_new_disk(base, path, size_bytes)
    await _qemu_img_create(path, ["-F", "raw", "-b", str(base)], size_bytes)
    log.info("created disk %s (%d bytes) over %s", path, size_bytes, base)


async def delete_disk(path: Path) -> None:
    """Delete the disk `path` and any half-made copy of it; a missing disk is not an error."""
    for candidate in (path, _partial_path(path)):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            log.info("deleted disk %s", candidate)


def disk_usage(path: Path) -> int:
    """Return the bytes that the file system has allocated for `path`.

    :raise NotFound: `path` does not exist.
    """
    try:
        blocks = path.stat().st_blocks
    except FileNotFoundError as exc:
        raise NotFound(f"disk {path} not found") from exc
    # st_blocks counts 512-byte units on Linux, whatever the file system's block size.
    return blocks * 512


async def _qemu_img_create(path: Path, backing_args: list[str], size_bytes: int) -> None:
    """Write a qcow2 file under a temporary name and rename it to `path`, so no half-made disk exists."""
    partial = _partial_path(path)
    partial.unlink(missing_ok=True)
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", *backing_args, str(partial), str(size_bytes)]
    try:
        await proc.run(argv, timeout=QEMU_IMG_TIMEOUT)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


async def create_overlay(backing: Path, path: Path, size_bytes: int) -> None:
    """Create the qcow2 overlay `path` of `size_bytes` over the qcow2 layer `backing`.

    qemu-img does not open `backing` (`-u`), so this works while a running QEMU has it open, and
    takes the same time whatever the size of the layers below.

    :raise NotFound: `backing` does not exist.
    :raise Conflict: `path` exists already.
    :raise RuntimeFailure: qemu-img failed.
    """
    backing = _check_overlay(backing, path)
    await _qemu_img_create(path, ["-F", "qcow2", "-b", str(backing), "-u"], size_bytes)
    log.info("created disk %s (%d bytes) over layer %s", path, size_bytes, backing)


def _check_overlay(backing: Path, path: Path) -> Path:
    backing = backing.absolute()
    if not backing.is_file():
        raise NotFound(f"disk layer {backing} not found")
    if path.exists():
        raise Conflict(f"disk {path} exists already: delete it first")
    return backing


async def grow_disk(path: Path, size_bytes: int) -> None:
    """Grow the virtual size of the qcow2 disk `path` of a stopped VM to `size_bytes`.

    :raise InvalidInput: `size_bytes` is smaller than the disk.
    :raise RuntimeFailure: qemu-img failed, for example because a running QEMU has `path` open.
    """
    current = qcow2_virtual_size(path)
    if size_bytes < current:
        raise InvalidInput(f"disk {path} is {current} bytes: it cannot shrink to {size_bytes} bytes")
    if size_bytes == current:
        return
    await proc.run(
        ["qemu-img", "resize", "-q", "-f", "qcow2", str(path), str(size_bytes)], timeout=QEMU_IMG_TIMEOUT
    )
    log.info("grew disk %s from %d to %d bytes", path, current, size_bytes)


def _read_header(path: Path) -> tuple[int, int, int]:
    """Return (backing name offset, backing name length, virtual size) from a qcow2 header.

    :raise NotFound: `path` does not exist.
    :raise InvalidInput: `path` is not a qcow2 image.
    """
    try:
        with path.open("rb") as image:
            header = image.read(_QCOW2_HEADER.size)
    except FileNotFoundError as exc:
        raise NotFound(f"disk {path} not found") from exc
    if len(header) < _QCOW2_HEADER.size:
        raise InvalidInput(f"disk {path} is not a qcow2 image: the header is cut short")
    magic, _version, offset, length, _cluster_bits, size = _QCOW2_HEADER.unpack(header)
    if magic != QCOW2_MAGIC:
        raise InvalidInput(f"disk {path} is not a qcow2 image")
    return offset, length, size


def qcow2_virtual_size(path: Path) -> int:
    """Return the virtual size in bytes that the qcow2 header of `path` records."""
    return _read_header(path)[2]


def backing_file(path: Path) -> Path | None:
    """Return the backing file that the header of the qcow2 image `path` names, or None.

    A relative name is resolved against the directory of `path`, as QEMU does.

    :raise NotFound: `path` does not exist.
    :raise InvalidInput: `path` is not a qcow2 image or its backing name is unreadable.
    """
    offset, length, _size = _read_header(path)
    if offset == 0 or length == 0:
        return None
    if length > MAX_BACKING_NAME_BYTES:
        raise InvalidInput(f"disk {path} names a backing file of {length} bytes")
    with path.open("rb") as image:
        image.seek(offset)
        name = image.read(length)
    backing = Path(os.fsdecode(name))
    return backing if backing.is_absolute() else path.parent / backing


def is_qcow2(path: Path) -> bool:
    try:
        with path.open("rb") as image:
            return image.read(len(QCOW2_MAGIC)) == QCOW2_MAGIC
    except OSError:
        return False


def backing_chain(path: Path) -> list[Path]:
    """Return `path` and every image below it, top first, down to the first non-qcow2 file.

    :raise InvalidInput: the chain has a loop or is over 256 images deep.
    """
    chain = [path]
    current = path
    while is_qcow2(current):
        below = backing_file(current)
        if below is None:
            break
        if below in chain or len(chain) > 256:
            raise InvalidInput(f"disk {path} has a backing chain with a loop or over 256 images")
        chain.append(below)
        current = below
    return chain
