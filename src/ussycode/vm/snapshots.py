"""Copy-on-write snapshots of VM disks, for `cp`.

A VM's disk is a chain of qcow2 files: its own writable overlay on top, read-only layers below,
and the image's raw root filesystem at the bottom. `freeze_disk` turns the current overlay into
a read-only layer in `<data-dir>/layers` and gives the VM a new empty overlay over it, so that a
copy can get its own overlay over the same layer. Both steps write only qcow2 headers, so a copy
takes the same time whatever the size of the disk or the data on it.

A running VM keeps running: QEMU switches its writes to the new overlay (QMP
blockdev-snapshot-sync) after the old one has been renamed, which QEMU does not notice because it
holds the file open. Layers that no disk refers to any more are deleted by `remove_unused_layers`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from ussycode.errors import UssycodeError
from ussycode.vm import disks
from ussycode.vm.runtime import VMRuntime, VMSpec

log = logging.getLogger(__name__)

LAYER_SUFFIX = ".qcow2"


async def freeze_disk(runtime: VMRuntime, spec: VMSpec, layers_dir: Path) -> Path:
    """Make the VM's current overlay a read-only layer and put a new overlay over it.

    Returns the layer. The caller holds the VM's lock, so it does not start or stop meanwhile.
    On failure the VM keeps writing to its old overlay, under its old name.

    :raise RuntimeFailure: qemu-img failed or QEMU rejected the switch.
    """
    disk, layer = _new_layer_path(spec, layers_dir)
    size = disks.qcow2_virtual_size(disk)
    running = runtime.pid(spec) is not None

    os.rename(disk, layer)
    try:
        await disks.create_overlay(layer, disk, size)
        if running:
            # NOTE: if the QMP reply is lost after QEMU switched, this rollback deletes the file
            # QEMU now writes to. QEMU replies within milliseconds, so only a server crash at
            # that moment can cause it.
            await runtime.snapshot_disk(spec, disk)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(disk)
        os.rename(layer, disk)
        raise
    os.chmod(layer, 0o400)
    log.info("vm=%s disk frozen into layer %s (running=%s)", spec.name, layer.name, running)
    return layer


def _new_layer_path(spec: VMSpec, layers_dir: Path) -> tuple[Path, Path]:
    """Return the VM's disk as an absolute path and a new, unused layer name in `layers_dir`."""
    layers_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    layer = layers_dir.absolute() / f"{spec.vm_id}-{secrets.token_hex(6)}{LAYER_SUFFIX}"
    return spec.disk.absolute(), layer


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
