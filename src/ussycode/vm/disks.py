"""VM disks: qcow2 copy-on-write overlays on top of a read-only raw image.

A new disk holds only a qcow2 header that points at the image's root file system by absolute
path, so creating one takes tens of milliseconds whatever its size. The base image must stay in
place, unchanged, for as long as any disk refers to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ussycode import proc
from ussycode.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)

QEMU_IMG_TIMEOUT = 60.0


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
    partial = _partial_path(path)
    partial.unlink(missing_ok=True)
    argv = [
        "qemu-img", "create", "-q", "-f", "qcow2",
        "-F", "raw", "-b", str(base),
        str(partial), str(size_bytes),
    ]  # fmt: skip
    try:
        await proc.run(argv, timeout=QEMU_IMG_TIMEOUT)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
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
