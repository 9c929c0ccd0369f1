"""Copy-on-write snapshots of VM disks, for `cp`.

A VM's disk is a chain of qcow2 files: its own writable overlay on top, read-only layers below,
and the image's raw root filesystem at the bottom. `freeze_disk` puts a new empty overlay on top
of the VM's current one, which from then on is a read-only layer that a copy can get its own
overlay over. Both steps write only qcow2 headers, so a copy takes the same time whatever the
size of the disk or the data on it.

A running VM keeps running: QEMU switches its writes to the new overlay (QMP
blockdev-snapshot-sync). No file is renamed, because QEMU reopens the old overlay by its path
when it makes it read-only. Files that no disk refers to any more are deleted by
`remove_unused_layers`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ussycode.errors import UssycodeError
from ussycode.vm import disks
from ussycode.vm.runtime import VMRuntime, VMSpec

log = logging.getLogger(__name__)

LAYER_SUFFIX = ".qcow2"


async def freeze_disk(
    runtime: VMRuntime, spec: VMSpec, new_top: Path, repoint: Callable[[Path], None]
) -> Path:
    """Put the new empty overlay `new_top` over the VM's disk and return the old disk, now a layer.

    `repoint(path)` records which file is the VM's disk. It is called with `new_top` before a
    running VM switches to it, and with the old disk if the switch fails, so a crash in between
    leaves the VM's next boot on `new_top`, which shows everything written to the old disk. The
    caller holds the VM's lock, so the VM does not start or stop meanwhile.

    :raise RuntimeFailure: qemu-img failed or QEMU rejected the switch.
    """
    layer = _absolute(spec.disk)
    size = disks.qcow2_virtual_size(layer)
    running = runtime.pid(spec) is not None

    await disks.create_overlay(layer, new_top, size)
    try:
        repoint(new_top)
        if running:
            # NOTE: if the QMP reply is lost after QEMU switched, this rollback deletes the file
            # QEMU now writes to. QEMU replies within milliseconds, so only a server crash at
            # that moment can cause it.
            await runtime.snapshot_disk(spec, _absolute(new_top))
    except BaseException:
        repoint(layer)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new_top)
        raise
    log.info(
        "vm=%s disk %s is a layer under %s now (running=%s)", spec.name, layer.name, new_top.name, running
    )
    return layer


def _absolute(path: Path) -> Path:
    return path.absolute()


def referenced_layers(disk_paths: Iterable[Path]) -> set[Path]:
    """Return every file in the backing chains of `disk_paths` (missing disks are skipped).

    :raise InvalidInput: a disk is not a qcow2 image or its chain has a loop.
    """
    referenced: set[Path] = set()
    for disk in disk_paths:
        if not disk.exists():
            continue
        referenced.update(path.absolute() for path in disks.backing_chain(disk))
    return referenced


def remove_unused_layers(layers_dir: Path, disk_paths: Iterable[Path]) -> list[Path]:
    """Delete the layers in `layers_dir` that no disk in `disk_paths` refers to.

    `disk_paths` must list every VM disk; the caller holds the lock that `cp` takes while it
    makes a layer. Returns the deleted layers. A chain that cannot be read deletes nothing.
    """
    if not layers_dir.is_dir():
        return []
    try:
        referenced = referenced_layers(disk_paths)
    except UssycodeError as exc:
        log.warning("not deleting unused disk layers: a backing chain is unreadable: %s", exc)
        return []
    removed = []
    for layer in sorted(layers_dir.glob(f"*{LAYER_SUFFIX}")):
        if layer.absolute() not in referenced:
            layer.unlink(missing_ok=True)
            removed.append(layer)
            log.info("deleted unused disk layer %s", layer.name)
    return removed
