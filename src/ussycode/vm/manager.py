"""The VM manager: owns VM state, persistence and the order of lifecycle steps.

The runtime (QEMU) only drives the hypervisor and the network module only plumbs devices. This
module decides what happens when, records every change in the store and the event log, and
notifies its listener (the Caddy integration) of each change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncssh

from ussycode import quota
from ussycode.config import Config, format_size
from ussycode.errors import Conflict, InvalidInput, NotFound, RuntimeFailure, UssycodeError
from ussycode.names import check_vm_name, generate_name
from ussycode.store import VM, Store, User
from ussycode.store.suspend import SuspendStore
from ussycode.store.vm_details import VMDetailsStore
from ussycode.vm import disks, snapshots
from ussycode.vm.idle import IdleMonitor
from ussycode.vm.image import ImageManifest, find_image
from ussycode.vm.network import Network
from ussycode.vm.pool import POOL_HANDLE, WarmPool
from ussycode.vm.runtime import VMRuntime, VMSpec
from ussycode.vm.state import VMState, check_transition
from ussycode.vm.stats import StatsSampler

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

READY_POLL_SECONDS = 1.0
SUPERVISE_INTERVAL_SECONDS = 2.0
GUEST_USER = "ussycode"
GUEST_COMMAND_TIMEOUT = 30.0
# Seconds after a pool hand-out during which a refused SSH connection to the guest is retried.
SSHD_RESTART_SECONDS = 15.0
# Pool VMs boot at this niceness, so that users' VMs and requests get the CPU first.
POOL_NICENESS = 10
# Seconds a request to a suspended VM's URL waits for the VM to resume.
WAKE_TIMEOUT = 60.0

T = TypeVar("T")


def _no_progress(message: str) -> None:
    del message


class VMListener(Protocol):
    """Receives every VM change; the server routes them to Caddy."""

    async def vm_changed(self, vm: VM) -> None: ...

    async def vm_removed(self, name: str) -> None: ...


@dataclass(frozen=True)
class NewVMOptions:
    """Settings of a new VM; None means the server's default."""

    cpus: int | None = None
    memory_mb: int | None = None
    disk_bytes: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    setup_script: str | None = None
    agent_prompt: str | None = None
    tags: tuple[str, ...] = ()
    comment: str = ""
    idle_seconds: int | None = None  # 0: never suspend when idle


@dataclass(frozen=True)
class ResizeResult:
    """The VM after `resize`, what waits for its next start, and what happened to its disk."""

    vm: VM
    pending: dict[str, int]
    filesystem_grown: bool | None


class VMManager:
    """Creates, starts, stops, copies, resizes and removes VMs, and finds running ones again
    after a restart."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        network: Network,
        runtime: VMRuntime,
        gateway_key: asyncssh.SSHKey,
        listener: VMListener,
    ) -> None:
        self.config = config
        self.store = store
        self.network = network
        self.runtime = runtime
        self.gateway_key = gateway_key
        self.listener = listener
        self._locks: dict[int, asyncio.Lock] = {}
        self._create_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._host_key_events: dict[int, asyncio.Event] = {}
        # Held while a disk file is made and recorded, and while unused disk files are deleted.
        self._layers_lock = asyncio.Lock()
        self.details = VMDetailsStore(store)
        self.stats = StatsSampler(self)
        # Set by the server. `create` offers each request to the warm pool before it boots a VM.
        self.pool: WarmPool | None = None
        pool_user = store.find_user_by_handle(POOL_HANDLE)
        self.pool_owner_id = pool_user.id if pool_user is not None else None
        # Connections to guests left open by a pool hand-out, for the VM's first session.
        self._spare_connections: dict[int, asyncssh.SSHClientConnection] = {}
        # Monotonic times until which a VM's sshd may refuse connections while it restarts.
        self._sshd_restarts: dict[int, float] = {}
        self.suspend_store = SuspendStore(store)
        self.idle = IdleMonitor(self)
        self._wakes: dict[int, asyncio.Task[VM]] = {}
        # Ids of the VMs that a resume is restoring now, whichever command or wake started it.
        self._resuming: set[int] = set()

    # Paths and specs.

    def vm_dir(self, vm: VM) -> Path:
        return self.config.data_dir / "vms" / str(vm.id)

    def disk_link(self, vm: VM) -> Path:
        """Symbolic link to the VM's disk, the top qcow2 file of its chain in `disks_dir`."""
        return self.vm_dir(vm) / "disk"

    def disk_path(self, vm: VM) -> Path:
        """Return the VM's disk: the file its link points at, or vm_dir/disk.qcow2 without a link.

        QEMU gets this resolved path, never the link, because it reopens a disk by the path it
        was given when a snapshot makes the disk read-only.
        """
        link = self.disk_link(vm)
        if link.is_symlink():
            return Path(os.path.realpath(link))
        return self.vm_dir(vm) / "disk.qcow2"

    def _new_disk_path(self, vm: VM) -> Path:
        return self.disks_dir / f"vm{vm.id}-{secrets.token_hex(6)}.qcow2"

    def _point_disk(self, vm: VM, path: Path) -> None:
        """Make the VM's disk link point at `path`, replacing the link atomically."""
        link = self.disk_link(vm)
        temporary = link.with_name(link.name + ".new")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(path.absolute())
        os.replace(temporary, link)

    def setup_log_path(self, vm: VM) -> Path:
        """Output of the VM's first-boot setup script, as the guest reported it."""
        return self.vm_dir(vm) / "setup.log"

    @property
    def disks_dir(self) -> Path:
        """Every VM's qcow2 files: tops and the layers that copies share."""
        return self.config.data_dir / "disks"

    def spec(self, vm: VM) -> VMSpec:
        image = _manifest_at(Path(vm.image_path))
        prefix = self.config.subnet.prefixlen
        cmdline = (
            f"{image.kernel_cmdline} ussy.ip={vm.ip}/{prefix} ussy.gw={self.network.bridge_ip}"
            f" ussy.dns={','.join(self.config.vm_dns)}"
        )
        return VMSpec(
            vm_id=vm.id,
            name=vm.name,
            cpus=vm.cpus,
            memory_mb=vm.memory_mb,
            disk=self.disk_path(vm),
            kernel=image.kernel,
            initrd=image.initrd,
            cmdline=cmdline,
            tap=Network.tap_name(vm.id),
            mac=vm.mac,
            run_dir=self.vm_dir(vm),
        )

    def _lock(self, vm: VM) -> asyncio.Lock:
        return self._locks.setdefault(vm.id, asyncio.Lock())

    # Lookups.

    def get_owned(self, owner: User, name: str) -> VM:
        """Return the VM `name` if `owner` owns it; other users' VMs are reported as not found."""
        vm = self.store.find_vm(name)
        if vm is None or vm.owner_id != owner.id:
            raise NotFound(f'no VM named "{name}": run "ls" to see your VMs')
        return vm

    def resolve_image(self, name: str) -> ImageManifest:
        image = find_image(self.config.image_dir, name)
        if image is None:
            raise NotFound(
                f'image "{name}" not found in {self.config.image_dir}:'
                f' build it with "ussycode image build --name {name}"'
            )
        return image

    # Lifecycle.

    async def create(
        self,
        owner: User,
        *,
        name: str | None = None,
        image: str | None = None,
        options: NewVMOptions | None = None,
        progress: Progress = _no_progress,
    ) -> VM:
        """Create a VM and boot it until its sshd accepts a login; on failure nothing of it remains.

        :raise InvalidInput: the disk is smaller than the image's root filesystem.
        """
        options = options or NewVMOptions()
        image_name = image or self.config.image
        manifest = self.resolve_image(image_name)
        disk_bytes = options.disk_bytes or max(self.config.vm_disk, manifest.rootfs_size_bytes)
        if disk_bytes < manifest.rootfs_size_bytes:
            minimum = format_size(manifest.rootfs_size_bytes)
            raise InvalidInput(
                f"--disk {format_size(disk_bytes)} is smaller than the image {image_name} ({minimum}):"
                f" choose at least {minimum}"
            )
        if self.pool is not None:
            pooled = await self.pool.hand_out(
                owner, name=name, image=image_name, disk_bytes=disk_bytes, options=options, progress=progress
            )
            if pooled is not None:
                if options.idle_seconds is not None:
                    self.suspend_store.set_idle_seconds(pooled.id, options.idle_seconds)
                return pooled
        async with self._create_lock:
            # A taken name is the more specific error, so it is reported before any limit.
            name = self._free_name(name)
            quota.check_new(
                self.store,
                self.config,
                owner,
                cpus=options.cpus or self.config.vm_cpus,
                memory_mb=options.memory_mb or self.config.vm_memory // (1024 * 1024),
                disk_bytes=disk_bytes,
            )
            ip = self.network.allocate_ip(self.store.used_ips())
            vm = self.store.create_vm(
                name=name,
                owner_id=owner.id,
                state=VMState.STARTING,
                image=image_name,
                image_path=str(manifest.directory),
                cpus=options.cpus or self.config.vm_cpus,
                memory_mb=options.memory_mb or self.config.vm_memory // (1024 * 1024),
                disk_bytes=disk_bytes,
                ip=ip,
                mac=Network.mac_for_ip(ip),
            )
            self.details.create(
                vm.id,
                comment=options.comment,
                tags=options.tags,
                env=options.env,
                setup_script=options.setup_script,
                agent_prompt=options.agent_prompt,
            )
            if options.idle_seconds is not None:
                self.suspend_store.set_idle_seconds(vm.id, options.idle_seconds)
        self.store.add_event(vm.id, vm.name, owner.id, "created", f"image={image_name} ip={ip}")
        log.info("vm=%s user=%s created ip=%s image=%s", vm.name, owner.handle, ip, image_name)
        async with self._lock(vm):
            try:
                progress(f"creating disk ({format_size(vm.disk_bytes)}, copy-on-write)")
                self.vm_dir(vm).mkdir(parents=True, exist_ok=True)
                self.disks_dir.mkdir(parents=True, exist_ok=True)
                async with self._layers_lock:
                    disk = self._new_disk_path(vm)
                    await disks.create_disk(manifest.rootfs, disk, vm.disk_bytes)
                    self._point_disk(vm, disk)
                return await self._boot(vm, progress)
            except BaseException as exc:
                await self._discard_new(vm, owner, exc)
                raise

    def _free_name(self, name: str | None) -> str:
        """Return `name`, or a generated one if None, once it is valid and no VM has it.

        :raise InvalidInput: the name is not a valid VM name.
        :raise Conflict: a VM has that name.
        """
        if name is None:
            return generate_name(lambda candidate: self.store.find_vm(candidate) is not None)
        check_vm_name(name)
        if self.store.find_vm(name) is not None:
            raise Conflict(f'a VM named "{name}" already exists: choose another name')
        return name

    async def _discard_new(self, vm: VM, owner: User, exc: BaseException) -> None:
        """Remove a VM whose creation or copy failed or was cancelled."""
        reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else str(exc)
        log.warning("vm=%s create failed, removing it: %s", vm.name, reason)
        await self._destroy(vm)
        self.store.add_event(None, vm.name, owner.id, "create_failed", reason[:500])
        await self.remove_unused_layers()

    async def start(self, vm: VM, progress: Progress = _no_progress) -> VM:
        async with self._lock(vm):
            vm = self.store.get_vm(vm.id)
            if vm.state == VMState.RUNNING:
                raise Conflict(f'vm "{vm.name}" is already running')
            check_transition(vm.name, vm.state, VMState.STARTING)
            if vm.state == VMState.SUSPENDED:
                return await self._resume_locked(vm, progress)
            self._check_start(vm)
            try:
                return await self._boot(vm, progress)
            except (UssycodeError, asyncio.CancelledError):
                await self._halt(self.store.get_vm(vm.id))
                raise

    async def stop(self, vm: VM, progress: Progress = _no_progress) -> VM:
        async with self._lock(vm):
            vm = self.store.get_vm(vm.id)
            if vm.state == VMState.STOPPED:
                raise Conflict(f'vm "{vm.name}" is already stopped')
            check_transition(vm.name, vm.state, VMState.STOPPING)
            progress("shutting down the guest")
            return await self._halt(vm)

    async def restart(self, vm: VM, progress: Progress = _no_progress) -> VM:
        async with self._lock(vm):
            vm = self.store.get_vm(vm.id)
            if vm.state != VMState.STOPPED:
                check_transition(vm.name, vm.state, VMState.STOPPING)
                progress("shutting down the guest")
                vm = await self._halt(vm)
            else:
                self._check_start(vm)
            try:
                return await self._boot(vm, progress)
            except (UssycodeError, asyncio.CancelledError):
                await self._halt(self.store.get_vm(vm.id))
                raise

    async def remove(self, vm: VM) -> None:
        """Stop the VM if needed and delete its disk, TAP device, route and row."""
        async with self._lock(vm):
            vm = self.store.get_vm(vm.id)
            await self._destroy(vm)
            self.store.add_event(None, vm.name, vm.owner_id, "removed")
            log.info("vm=%s removed", vm.name)
        self._locks.pop(vm.id, None)
        await self.remove_unused_layers()

    async def remove_unused_layers(self) -> None:
        """Delete the disk files that no VM's disk chain refers to any more."""
        async with self._layers_lock:
            disk_paths = [self.disk_path(vm) for vm in self.store.list_vms()]
            snapshots.remove_unused_layers(self.disks_dir, disk_paths)

    def _check_start(self, vm: VM) -> None:
        """Check the owner's limits for booting a stopped VM, with its pending resize."""
        details = self.details.get(vm.id)
        cpus, memory_mb = details.pending_cpus or vm.cpus, details.pending_memory_mb or vm.memory_mb
        quota.check_start(self.store, self.config, vm, cpus=cpus, memory_mb=memory_mb)

    # Changes to an existing VM.

    async def copy(
        self,
        owner: User,
        source: VM,
        *,
        name: str | None = None,
        disk_bytes: int | None = None,
        copy_tags: bool = True,
        progress: Progress = _no_progress,
    ) -> VM:
        """Create a VM whose disk is a copy-on-write copy of `source`'s, and boot it.

        The copy gets its own name, address, MAC address and instance id, from which the guest
        makes new sshd host keys. `source` may be running: its disk is snapshotted live, after a
        `sync` in the guest. On failure or cancellation nothing of the copy remains.

        :raise Conflict: `source` is starting or stopping, or the name is taken.
        :raise InvalidInput: `disk_bytes` is smaller than the disk of `source`.
        """
        if disk_bytes is not None and disk_bytes < source.disk_bytes:
            raise InvalidInput(
                f'--disk {format_size(disk_bytes)} is smaller than the disk of vm "{source.name}"'
                f" ({format_size(source.disk_bytes)}): a copy's disk is at least as large"
            )
        source_details = self.details.get(source.id)
        async with self._create_lock:
            quota.check_new(
                self.store,
                self.config,
                owner,
                cpus=source.cpus,
                memory_mb=source.memory_mb,
                disk_bytes=disk_bytes or source.disk_bytes,
            )
            name = self._free_name(name)
            ip = self.network.allocate_ip(self.store.used_ips())
            vm = self.store.create_vm(
                name=name,
                owner_id=owner.id,
                state=VMState.STARTING,
                image=source.image,
                image_path=source.image_path,
                cpus=source.cpus,
                memory_mb=source.memory_mb,
                disk_bytes=disk_bytes or source.disk_bytes,
                ip=ip,
                mac=Network.mac_for_ip(ip),
            )
            self.details.create(
                vm.id,
                comment=source_details.comment,
                tags=source_details.tags if copy_tags else (),
                env=source_details.env,
                # The disk is copied after the source ran its setup script, and the guest runs
                # it at most once per disk, so the copy has none of its own.
                copied_from=source.name,
            )
        self.store.add_event(vm.id, vm.name, owner.id, "created", f"copy of {source.name} ip={ip}")
        log.info("vm=%s user=%s copying vm=%s ip=%s", vm.name, owner.handle, source.name, ip)
        async with self._lock(vm):
            try:
                self.vm_dir(vm).mkdir(parents=True, exist_ok=True)
                await self._copy_disk(source, vm, progress)
                return await self._boot(vm, progress)
            except BaseException as exc:
                await self._discard_new(vm, owner, exc)
                raise

    async def _copy_disk(self, source: VM, copy: VM, progress: Progress) -> None:
        async with self._lock(source):
            source = self.store.get_vm(source.id)
            if source.state in (VMState.STARTING, VMState.STOPPING):
                raise Conflict(f'vm "{source.name}" is {source.state}: wait until it is running or stopped')
            spec = self.spec(source)
            if self.runtime.pid(spec) is not None:
                progress(f'flushing the file systems of "{source.name}"')
                await self._guest_run(source, "sync", check=False)
            progress(f'snapshotting the disk of "{source.name}" (copy-on-write)')
            self.disks_dir.mkdir(parents=True, exist_ok=True)
            async with self._layers_lock:

                def repoint(path: Path) -> None:
                    self._point_disk(source, path)

                freeze = snapshots.freeze_disk(self.runtime, spec, self._new_disk_path(source), repoint)
                layer = await _uncancellable(freeze)
                disk = self._new_disk_path(copy)
                await disks.create_overlay(layer, disk, copy.disk_bytes)
                self._point_disk(copy, disk)

    async def rename(self, vm: VM, new_name: str) -> VM:
        """Rename a VM: its URL follows at once; the guest's hostname too if it runs.

        :raise InvalidInput: `new_name` is not a valid VM name or is the current name.
        :raise Conflict: `new_name` is taken, or the VM is starting or stopping.
        """
        check_vm_name(new_name)
        async with self._create_lock, self._lock(vm):
            vm = self.store.get_vm(vm.id)
            if new_name == vm.name:
                raise InvalidInput(f'vm "{vm.name}" already has that name')
            if self.store.find_vm(new_name) is not None:
                raise Conflict(f'a VM named "{new_name}" already exists: choose another name')
            if vm.state in (VMState.STARTING, VMState.STOPPING):
                raise Conflict(f'vm "{vm.name}" is {vm.state}: wait until it is running or stopped')
            renamed = self.details.rename(vm, new_name)
            self.store.add_event(vm.id, new_name, vm.owner_id, "renamed", f"from {vm.name}")
            log.info("vm=%s renamed to %s", vm.name, new_name)
            try:
                await self.listener.vm_removed(vm.name)
                await self.listener.vm_changed(renamed)
            except UssycodeError as exc:
                log.error("vm=%s route update after rename failed: %s", new_name, exc)
            if renamed.state == VMState.RUNNING:
                await self._guest_run(renamed, _set_hostname_command(new_name), check=False)
        return renamed

    async def resize(
        self,
        vm: VM,
        *,
        cpus: int | None = None,
        memory_mb: int | None = None,
        disk_bytes: int | None = None,
        progress: Progress = _no_progress,
    ) -> ResizeResult:
        """Change a VM's vCPUs, memory or disk size.

        A stopped VM gets every change at its next start. A running VM's disk grows at once, and
        so does its root filesystem; its CPU and memory changes wait for its next start.

        :raise InvalidInput: `disk_bytes` is smaller than the disk, or nothing would change.
        :raise Conflict: the VM is starting or stopping.
        """
        async with self._lock(vm):
            vm = self.store.get_vm(vm.id)
            if disk_bytes is not None and disk_bytes < vm.disk_bytes:
                raise InvalidInput(
                    f'cannot shrink the disk of vm "{vm.name}" from {format_size(vm.disk_bytes)}'
                    f" to {format_size(disk_bytes)}: disks only grow"
                )
            if vm.state in (VMState.STARTING, VMState.STOPPING):
                raise Conflict(f'vm "{vm.name}" is {vm.state}: wait until it is running or stopped')
            if vm.state == VMState.SUSPENDED:
                # The saved memory belongs to the old disk size and memory size, so the VM
                # is resumed and then resized like a running one.
                vm = await self._resume_locked(vm, progress)
            details = self.details.get(vm.id)
            current_cpus = details.pending_cpus or vm.cpus
            current_memory = details.pending_memory_mb or vm.memory_mb
            new_cpus = cpus if cpus is not None else current_cpus
            new_memory = memory_mb if memory_mb is not None else current_memory
            new_disk = disk_bytes if disk_bytes is not None else vm.disk_bytes
            if (new_cpus, new_memory, new_disk) == (current_cpus, current_memory, vm.disk_bytes):
                raise InvalidInput(f'vm "{vm.name}" already has these resources: nothing to change')
            quota.check_resize(
                self.store, self.config, vm, cpus=new_cpus, memory_mb=new_memory, disk_bytes=new_disk
            )

            spec = self.spec(vm)
            running = self.runtime.pid(spec) is not None
            filesystem_grown: bool | None = None
            if new_disk != vm.disk_bytes:
                progress(f"growing the disk from {format_size(vm.disk_bytes)} to {format_size(new_disk)}")
                if running:
                    await self.runtime.grow_disk(spec, new_disk)
                    progress("growing the root filesystem")
                    filesystem_grown = await self._guest_run(vm, "sudo -n resize2fs /dev/vda", check=False)
                else:
                    await disks.grow_disk(self.disk_path(vm), new_disk)

            pending: dict[str, int] = {}
            if running:
                if new_cpus != vm.cpus:
                    pending["cpus"] = new_cpus
                if new_memory != vm.memory_mb:
                    pending["memory_mb"] = new_memory
                vm = self.details.set_resources(vm, cpus=vm.cpus, memory_mb=vm.memory_mb, disk_bytes=new_disk)
                self.details.set_pending(vm.id, cpus=pending.get("cpus"), memory_mb=pending.get("memory_mb"))
            else:
                vm = self.details.set_resources(vm, cpus=new_cpus, memory_mb=new_memory, disk_bytes=new_disk)
            detail = f"cpus={new_cpus} memory={new_memory}M disk={format_size(new_disk)}"
            self.store.add_event(vm.id, vm.name, vm.owner_id, "resized", detail)
            log.info("vm=%s resized: %s pending=%s", vm.name, detail, pending)
            return ResizeResult(vm, pending, filesystem_grown)

    async def _guest_run(self, vm: VM, command: str, *, check: bool = True) -> bool:
        """Run `command` in the guest as the guest user and return whether it exited with 0.

        :raise RuntimeFailure: with `check`, the guest is unreachable or the command failed.
        """
        try:
            conn = await self.connect_guest(vm, timeout=10.0)
            async with conn:
                result = await asyncio.wait_for(conn.run(command, check=False), GUEST_COMMAND_TIMEOUT)
        except (RuntimeFailure, OSError, asyncssh.Error, TimeoutError) as exc:
            log.info("vm=%s guest command %r failed: %s", vm.name, command, exc)
            if check:
                raise RuntimeFailure(f'running "{command}" in vm "{vm.name}" failed: {exc}') from exc
            return False
        if result.exit_status != 0:
            log.info("vm=%s guest command %r exited with %s", vm.name, command, result.exit_status)
            if check:
                raise RuntimeFailure(f'"{command}" in vm "{vm.name}" exited with {result.exit_status}')
            return False
        return True

    # Suspend and resume.

    def idle_timeout(self, vm: VM) -> float | None:
        """Return the seconds without use after which `vm` is suspended, or None for never."""
        own = self.suspend_store.idle_seconds(vm.id)
        seconds = self.config.idle_timeout if own is None else own
        return float(seconds) if seconds > 0 else None

    def owned_by_user(self, vm: VM) -> bool:
        """Return whether a user owns `vm`; only such VMs are suspended when idle.

        Warm pool VMs belong to the pool's own user and are never suspended.
        """
        if self.is_pooled(vm):
            return False
        try:
            self.store.get_user(vm.owner_id)
        except NotFound:
            return False
        return True

    async def suspend(
        self, vm: VM, progress: Progress = _no_progress, *, reason: str = "suspend command"
    ) -> VM:
        """Save the running VM's memory and device state next to its disk and end its hypervisor.

        :raise Conflict: the VM is not running.
        :raise RuntimeFailure: saving failed; the VM runs on.
        """
        async with self._lock(vm):
            vm = self.store.get_vm(vm.id)
            if vm.state == VMState.SUSPENDED:
                raise Conflict(f'vm "{vm.name}" is already suspended')
            check_transition(vm.name, vm.state, VMState.SUSPENDING)
            return await self._suspend_locked(vm, progress, reason)

    async def _suspend_locked(self, vm: VM, progress: Progress, reason: str) -> VM:
        spec = self.spec(vm)
        if self.runtime.pid(spec) is None:
            raise Conflict(f'vm "{vm.name}" has no running hypervisor: run "start {vm.name}" first')
        started_at = time.monotonic()
        # Files synced now survive even a state file that later fails to load.
        progress("flushing the guest's file systems")
        await self._guest_run(vm, "sync", check=False)
        vm = await self._set_state(vm, VMState.SUSPENDING)
        progress("saving memory and device state")
        try:
            size = await _uncancellable(self.runtime.save_state(spec))
        except (UssycodeError, OSError) as exc:
            log.warning("vm=%s suspend failed, the guest runs on: %s", vm.name, exc)
            self.store.add_event(vm.id, vm.name, vm.owner_id, "suspend_failed", str(exc)[:500])
            await self._set_state(vm, VMState.RUNNING)
            raise RuntimeFailure(f'suspending vm "{vm.name}" failed; it is still running: {exc}') from exc
        self.suspend_store.set_state_bytes(vm.id, size)
        vm = await self._set_state(vm, VMState.SUSPENDED)
        elapsed = time.monotonic() - started_at
        detail = f"{reason}: saved {format_size(size)} in {elapsed:.1f} s"
        self.store.add_event(vm.id, vm.name, vm.owner_id, "saved", detail)
        log.info("vm=%s suspended (%s)", vm.name, detail)
        progress(f"suspended after {elapsed:.1f} s ({format_size(size)} of state)")
        return vm

    async def resume(self, vm: VM, progress: Progress = _no_progress) -> VM:
        """Restore a suspended VM with its processes, or boot it from its disk if that fails.

        :raise Conflict: the VM is not suspended.
        :raise RuntimeFailure: neither the restore nor the boot from disk worked; the VM is stopped.
        """
        async with self._lock(vm):
            vm = self.store.get_vm(vm.id)
            if vm.state != VMState.SUSPENDED:
                hint = {
                    VMState.STOPPED: f'run "start {vm.name}" to boot it',
                    VMState.RUNNING: "nothing to do",
                }.get(VMState(vm.state), "wait until it is suspended or running")
                raise Conflict(f'vm "{vm.name}" is {vm.state}, not suspended: {hint}')
            return await self._resume_locked(vm, progress)

    async def wake(self, vm: VM, *, reason: str) -> VM:
        """Resume `vm` if it is suspended or being suspended, and return it as it is then.

        Callers that need a running VM (an SSH login, a request to its URL, the `ssh` command)
        call this first. Concurrent callers share one resume: a caller that comes while a resume
        runs waits for it.

        :raise RuntimeFailure: the VM could not be resumed or booted.
        """
        vm = self.store.get_vm(vm.id)
        if vm.state not in (VMState.SUSPENDED, VMState.SUSPENDING) and vm.id not in self._resuming:
            return vm
        async with self._lock(vm):
            vm = self.store.get_vm(vm.id)
            if vm.state != VMState.SUSPENDED:
                return vm
            log.info("vm=%s waking: %s", vm.name, reason)
            self.store.add_event(vm.id, vm.name, vm.owner_id, "wake", reason)
            return await self._resume_locked(vm, _no_progress)

    def _asleep(self, vm: VM) -> bool:
        """Return whether `vm` is suspended or being suspended, or a resume or wake of it runs."""
        suspended = vm.state in (VMState.SUSPENDED, VMState.SUSPENDING)
        return suspended or vm.id in self._wakes or vm.id in self._resuming

    def note_request(self, name: str) -> bool:
        """Record a request to VM `name`'s URL as use; return whether the VM must be resumed for it."""
        vm = self.store.find_vm(name)
        if vm is None:
            return False
        self.idle.touch(vm.id)
        return self._asleep(vm)

    async def request_allowed(self, name: str) -> str | None:
        """Resume VM `name` for a request to its URL if it is suspended, and wait for it.

        The request waits up to `WAKE_TIMEOUT` seconds; the resume goes on after that.
        Returns None when the VM runs, else a message for the visitor.
        """
        vm = self.store.find_vm(name)
        if vm is None:
            return None
        if not self._asleep(vm):
            return None
        vm_id = vm.id
        task = self._wakes.get(vm_id)
        if task is None or task.done():
            task = asyncio.create_task(self.wake(vm, reason="request to its URL"))
            self._wakes[vm_id] = task
            task.add_done_callback(lambda done: self._wake_finished(vm_id, done))
        try:
            async with asyncio.timeout(WAKE_TIMEOUT):
                vm = await asyncio.shield(task)
        except TimeoutError:
            return f'VM "{name}" is waking up from suspension and is not ready yet: reload this page shortly'
        except UssycodeError as exc:
            log.warning("vm=%s wake on request failed: %s", name, exc)
            return (
                f'VM "{name}" was suspended and could not be started again: its owner can run "start {name}"'
            )
        if vm.state != VMState.RUNNING:
            return f'VM "{name}" is {vm.state}: its owner can run "start {name}"'
        return None

    def _wake_finished(self, vm_id: int, task: asyncio.Task[VM]) -> None:
        self._wakes.pop(vm_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.debug("vm_id=%d wake ended with: %s", vm_id, task.exception())

    async def _resume_locked(self, vm: VM, progress: Progress) -> VM:
        self._resuming.add(vm.id)
        try:
            return await self._restore_locked(vm, progress)
        finally:
            self._resuming.discard(vm.id)

    async def _restore_locked(self, vm: VM, progress: Progress) -> VM:
        started_at = time.monotonic()
        vm = await self._set_state(vm, VMState.STARTING)
        spec = self.spec(vm)
        try:
            await self.network.create_tap(spec.tap, vm.ip, vm.mac)
            progress("restoring memory and device state")
            try:
                await self.runtime.restore_state(spec)
            except (UssycodeError, OSError) as exc:
                return await self._boot_after_failed_restore(vm, progress, exc)
            self.suspend_store.set_state_bytes(vm.id, 0)
            vm = await self._set_state(vm, VMState.RUNNING)
            # The guest runs from here on, so a waiting request or login can go ahead while its
            # clock and hostname are set in the background.
            self._spawn(self._update_resumed_guest(vm, spec, started_at))
        except (UssycodeError, asyncio.CancelledError):
            await self._halt(self.store.get_vm(vm.id))
            raise
        elapsed = time.monotonic() - started_at
        self.store.add_event(vm.id, vm.name, vm.owner_id, "resumed", f"in {elapsed:.2f} s")
        log.info("vm=%s resumed after %.2f s", vm.name, elapsed)
        progress(f"running after {elapsed:.1f} s")
        return vm

    async def _boot_after_failed_restore(self, vm: VM, progress: Progress, exc: Exception) -> VM:
        """Boot `vm` from its disk after its saved state failed to load, and record that in its events."""
        spec = self.spec(vm)
        log.warning("vm=%s restoring the saved state failed, booting from disk: %s", vm.name, exc)
        detail = f"saved state not restored ({exc}); booted from disk, processes were lost"
        self.store.add_event(vm.id, vm.name, vm.owner_id, "resume_failed", detail[:500])
        progress("the saved state could not be restored: booting from the disk instead")
        if self.runtime.pid(spec) is not None:
            await self.runtime.stop(spec, timeout=0)
        self.runtime.discard_state(spec)
        self.suspend_store.set_state_bytes(vm.id, 0)
        return await self._boot(vm, progress)

    async def _update_resumed_guest(self, vm: VM, spec: VMSpec, started_at: float) -> None:
        """Set the guest's clock to the host's once its sshd accepts a login after a resume,
        because the clock stood still while the VM was suspended, and its hostname to the VM's
        name, which `rename` may have changed meanwhile. Failures are logged."""
        deadline = started_at + self.config.boot_timeout
        while True:
            if self.runtime.pid(spec) is None:
                log.warning("vm=%s exited before its clock was set after the resume", vm.name)
                return
            try:
                conn = await self.connect_guest(vm, timeout=15.0)
                async with conn:
                    result = await asyncio.wait_for(_send_host_time(conn), GUEST_COMMAND_TIMEOUT)
                    # NOTE: a rename that lands between this read and the command below sets
                    # the new hostname first, which this older name then replaces.
                    name = self.store.get_vm(vm.id).name
                    renamed = await asyncio.wait_for(
                        conn.run(_set_hostname_command(name), check=False), GUEST_COMMAND_TIMEOUT
                    )
            except (RuntimeFailure, OSError, asyncssh.Error, TimeoutError) as exc:
                log.debug("vm=%s not responding on SSH after the resume yet: %s", vm.name, exc)
            except NotFound:
                log.info("vm=%s removed before its clock and hostname were set after the resume", vm.name)
                return
            else:
                if result.exit_status != 0:
                    log.warning("vm=%s setting the guest clock exited with %s", vm.name, result.exit_status)
                if renamed.exit_status != 0:
                    log.warning("vm=%s setting the guest hostname exited with %s", name, renamed.exit_status)
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "vm=%s did not respond on SSH within %g s after the resume; its clock is behind",
                    vm.name,
                    self.config.boot_timeout,
                )
                return
            await asyncio.sleep(READY_POLL_SECONDS)

    def _discard_saved_state(self, vm: VM) -> None:
        """Delete a suspended VM's saved state, as `stop` does: its memory is lost, its disk kept."""
        self.runtime.discard_state(self.spec(vm))
        self.suspend_store.set_state_bytes(vm.id, 0)
        log.info("vm=%s saved state discarded", vm.name)

    async def _reconcile_suspended(self, vm: VM, alive: bool) -> None:
        """Bring a VM that was suspending or suspended when the server stopped to a clear state."""
        spec = self.spec(vm)
        saved = self.runtime.saved_state(spec) is not None
        if saved:
            if alive:
                log.warning("vm=%s has a saved state and a hypervisor; ending the hypervisor", vm.name)
                await self.runtime.stop(spec, timeout=0)
            if vm.state != VMState.SUSPENDED:
                vm = await self._set_state(vm, VMState.SUSPENDED)
            await self.listener.vm_changed(vm)
            return
        if alive and vm.state == VMState.SUSPENDING:
            log.warning("vm=%s was being suspended when the server stopped; letting it run on", vm.name)
            await self.runtime.continue_guest(spec)
            await self.network.create_tap(spec.tap, vm.ip, vm.mac)
            await self._set_state(vm, VMState.RUNNING)
            return
        log.warning("vm=%s was %s but its saved state is missing; marking it stopped", vm.name, vm.state)
        self.store.add_event(
            vm.id, vm.name, vm.owner_id, "resume_failed", "saved state missing after restart"
        )
        self._spawn(self._recover_halt(vm))

    # Steps.

    async def _set_state(self, vm: VM, state: VMState, *, started: bool = False) -> VM:
        vm = self.store.set_vm_state(vm.id, state, started=started)
        self.store.add_event(vm.id, vm.name, vm.owner_id, state.value)
        if self.is_pooled(vm):
            return vm
        try:
            await self.listener.vm_changed(vm)
        except UssycodeError as exc:
            log.error("vm=%s route update failed: %s", vm.name, exc)
        return vm

    async def _boot(self, vm: VM, progress: Progress) -> VM:
        started_at = time.monotonic()
        if vm.state != VMState.STARTING:
            vm = await self._set_state(vm, VMState.STARTING)
        spec = self.spec(vm)
        if self.runtime.pid(spec) is None:
            vm = self._apply_pending(vm)
            spec = self.spec(vm)
            self.runtime.discard_state(spec)
        progress("attaching network")
        await self.network.create_tap(spec.tap, vm.ip, vm.mac)
        if self.runtime.pid(spec) is None:
            progress(f"booting ({self.runtime.name})")
            pid = await self.runtime.start(spec)
            log.info("vm=%s hypervisor started pid=%d", vm.name, pid)
        await self._wait_ready(vm, spec, progress, started_at)
        vm = await self._set_state(vm, VMState.RUNNING, started=True)
        elapsed = time.monotonic() - started_at
        log.info("vm=%s running after %.1f s", vm.name, elapsed)
        progress(f"running after {elapsed:.1f} s")
        return vm

    def _apply_pending(self, vm: VM) -> VM:
        """Move CPU and memory changes made while the VM ran into its row, before it boots."""
        details = self.details.get(vm.id)
        if details.pending_cpus is None and details.pending_memory_mb is None:
            return vm
        log.info(
            "vm=%s applying resize: cpus=%s memory_mb=%s",
            vm.name,
            details.pending_cpus,
            details.pending_memory_mb,
        )
        return self.details.set_resources(
            vm,
            cpus=details.pending_cpus or vm.cpus,
            memory_mb=details.pending_memory_mb or vm.memory_mb,
            disk_bytes=vm.disk_bytes,
        )

    async def _wait_ready(self, vm: VM, spec: VMSpec, progress: Progress, started_at: float) -> None:
        deadline = started_at + self.config.boot_timeout
        last_report = 0.0
        while True:
            if self.runtime.pid(spec) is None:
                tail = self.runtime.console_tail(spec, 2000)
                log.warning("vm=%s exited during boot; console tail:\n%s", vm.name, tail)
                raise RuntimeFailure(
                    f'vm "{vm.name}" exited during boot: run "vm-logs {vm.name}" to see its console',
                    output=tail,
                )
            if await self.probe_ssh(vm):
                return
            now = time.monotonic()
            if now >= deadline:
                raise RuntimeFailure(
                    f'vm "{vm.name}" did not respond on SSH within {self.config.boot_timeout:g} s:'
                    f' run "vm-logs {vm.name}" to see its console'
                )
            if now - last_report >= 5:
                progress(f"waiting for the guest's sshd ({now - started_at:.0f} s)")
                last_report = now
            await asyncio.sleep(READY_POLL_SECONDS)

    def known_host_keys(self, vm: VM) -> list[asyncssh.SSHKey]:
        keys = []
        for line in self.store.get_vm(vm.id).host_keys.splitlines():
            with contextlib.suppress(asyncssh.KeyImportError, ValueError):
                keys.append(asyncssh.import_public_key(line))
        return keys

    async def connect_guest(
        self, vm: VM, *, timeout: float = 10.0, agent_path: str | None = None
    ) -> asyncssh.SSHClientConnection:
        """Open an SSH connection to the guest's sshd as the guest user, pinning its host keys.

        `agent_path` is the path of a user's forwarded ssh-agent socket on this host. Sessions on
        the connection forward that agent into the guest, but it is not used to log in.

        :raise RuntimeFailure: the guest has not reported host keys yet or did not accept us.
        """
        # The spare was verified against the host keys the VM had in the pool, before the hand-out
        # replaced them. It leads into the same VM, and every later connection checks the new keys.
        spare = self._spare_connections.pop(vm.id, None)
        if spare is not None:
            if agent_path is None and not spare.is_closed():
                log.debug("vm=%s using the connection left open by the pool hand-out", vm.name)
                return spare
            spare.close()
        host_keys = self.known_host_keys(vm)
        if not host_keys:
            raise RuntimeFailure(f'vm "{vm.name}" has not reported its SSH host keys yet')
        while True:
            try:
                return await asyncssh.connect(
                    vm.ip,
                    22,
                    username=GUEST_USER,
                    client_keys=[self.gateway_key],
                    known_hosts=(host_keys, [], []),
                    agent_path=None,
                    agent_forwarding=agent_path or False,
                    config=None,
                    connect_timeout=timeout,
                    login_timeout=timeout,
                )
            except ConnectionRefusedError as exc:
                # Right after a pool hand-out, sshd restarts with the new host keys.
                if time.monotonic() < self._sshd_restarts.get(vm.id, 0.0):
                    await asyncio.sleep(0.1)
                    continue
                raise RuntimeFailure(f'cannot reach the sshd of vm "{vm.name}": {exc}') from exc
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                raise RuntimeFailure(f'cannot reach the sshd of vm "{vm.name}": {exc}') from exc

    async def probe_ssh(self, vm: VM) -> bool:
        """Return True when the guest's sshd accepts the gateway key and runs a command."""
        try:
            conn = await self.connect_guest(vm, timeout=5.0)
        except RuntimeFailure as exc:
            log.debug("vm=%s not ready: %s", vm.name, exc)
            return False
        try:
            async with conn:
                result = await asyncio.wait_for(conn.run("true", check=False), 10)
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            log.debug("vm=%s not ready: %s", vm.name, exc)
            return False
        return result.exit_status == 0

    async def _halt(self, vm: VM) -> VM:
        """Shut the guest down in stages and mark it stopped; a suspended VM loses its saved memory."""
        if vm.state == VMState.SUSPENDED:
            self._discard_saved_state(vm)
        if vm.state != VMState.STOPPING:
            vm = await self._set_state(vm, VMState.STOPPING)
        spec = self.spec(vm)
        if self.runtime.pid(spec) is not None:
            await self._guest_poweroff(vm)
            await self.runtime.stop(spec, timeout=30.0)
        return await self._set_state(vm, VMState.STOPPED)

    async def _guest_poweroff(self, vm: VM) -> None:
        """Ask the guest to power off so that its filesystems are synced; best effort."""
        try:
            conn = await self.connect_guest(vm, timeout=5.0)
        except RuntimeFailure as exc:
            log.info("vm=%s graceful poweroff skipped: %s", vm.name, exc)
            return
        try:
            async with conn:
                await asyncio.wait_for(
                    conn.run("sync; sudo -n systemctl --no-block poweroff", check=False), 10
                )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            log.info("vm=%s graceful poweroff request failed: %s", vm.name, exc)

    async def _destroy(self, vm: VM) -> None:
        self.drop_spare_connection(vm.id)
        self._sshd_restarts.pop(vm.id, None)
        spec = self.spec(vm)
        if self.runtime.pid(spec) is not None:
            await self.runtime.stop(spec, timeout=5.0)
        await self.network.delete_tap(spec.tap)
        self._delete_files(vm)
        self.store.delete_vm(vm.id)
        try:
            await self.listener.vm_removed(vm.name)
        except UssycodeError as exc:
            log.error("vm=%s route removal failed: %s", vm.name, exc)

    def _delete_files(self, vm: VM) -> None:
        """Delete the VM's directory and its disk, but no file that another VM's disk chain uses.

        Such a file is a disk made before the disks directory existed that a copy uses as a
        layer. It stays until `remove_unused_layers` finds it unused.
        """
        others = [self.disk_path(other) for other in self.store.list_vms() if other.id != vm.id]
        try:
            shared = snapshots.referenced_layers(others)
        except UssycodeError as exc:
            log.warning("vm=%s keeping its disk files: a backing chain is unreadable: %s", vm.name, exc)
            return
        disk = self.disk_path(vm).absolute()
        if disk not in shared:
            with contextlib.suppress(FileNotFoundError):
                disk.unlink()
                log.info("vm=%s deleted disk %s", vm.name, disk)
        vm_dir = self.vm_dir(vm)
        if not vm_dir.is_dir():
            return
        for entry in vm_dir.iterdir():
            if entry.absolute() in shared:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            vm_dir.rmdir()

    # Host keys reported by the guest through the metadata service.

    def record_host_keys(self, vm: VM, keys: list[str]) -> None:
        self.store.set_vm_host_keys(vm.id, "\n".join(keys))
        log.info("vm=%s reported %d host keys", vm.name, len(keys))

    # Warm pool: VMs booted ahead of requests, owned by the pool's user until `new` takes one.
    # ussycode.vm.pool decides when these methods run, and they change the store and the VM.

    def is_pooled(self, vm: VM) -> bool:
        """Return whether `vm` belongs to the warm pool, which no user may see or reach."""
        return vm.owner_id == self.pool_owner_id

    async def boot_pooled(self, image: ImageManifest, name: str) -> VM:
        """Create and boot a VM of the pool's user with the default resources; no route, no quota.

        On failure or cancellation nothing of it remains.
        """
        if self.pool_owner_id is None:
            raise RuntimeFailure(f'the store has no user "{POOL_HANDLE}": its migrations did not run')
        owner = self.store.get_user(self.pool_owner_id)
        async with self._create_lock:
            ip = self.network.allocate_ip(self.store.used_ips())
            vm = self.store.create_vm(
                name=name,
                owner_id=owner.id,
                state=VMState.STARTING,
                image=image.name,
                image_path=str(image.directory),
                cpus=self.config.vm_cpus,
                memory_mb=self.config.vm_memory // (1024 * 1024),
                disk_bytes=self.pooled_disk_bytes(image),
                ip=ip,
                mac=Network.mac_for_ip(ip),
            )
        log.info("vm=%s pool VM created ip=%s image=%s", vm.name, ip, image.name)
        async with self._lock(vm):
            try:
                self.vm_dir(vm).mkdir(parents=True, exist_ok=True)
                self.disks_dir.mkdir(parents=True, exist_ok=True)
                async with self._layers_lock:
                    disk = self._new_disk_path(vm)
                    await disks.create_disk(image.rootfs, disk, vm.disk_bytes)
                    self._point_disk(vm, disk)
                renice = asyncio.create_task(self._renice_when_started(vm, POOL_NICENESS))
                try:
                    return await self._boot(vm, _no_progress)
                finally:
                    renice.cancel()
            except BaseException as exc:
                await self._discard_new(vm, owner, exc)
                raise

    async def _renice_when_started(self, vm: VM, niceness: int) -> None:
        """Set the niceness of the VM's hypervisor as soon as it runs, polling for up to 30 s."""
        spec = self.spec(vm)
        for _ in range(300):
            pid = self.runtime.pid(spec)
            if pid is not None:
                _renice(pid, niceness)
                log.debug("vm=%s hypervisor pid=%d runs at niceness %d", vm.name, pid, niceness)
                return
            await asyncio.sleep(0.1)

    def pooled_disk_bytes(self, image: ImageManifest) -> int:
        """Return the disk size of pool VMs: the one `new` gives without `--disk`."""
        return max(self.config.vm_disk, image.rootfs_size_bytes)

    async def assign_pooled(
        self, vm: VM, owner: User, *, name: str | None, options: NewVMOptions, host_keys: list[str]
    ) -> VM:
        """Give pooled `vm` its owner, name, settings and next host keys in the store, after the
        checks of `create`. The guest takes the new identity afterwards.

        :raise Conflict: the name is taken.
        :raise QuotaExceeded, PermissionDenied: as for `create`.
        """
        async with self._create_lock:
            name = self._free_name(name)
            quota.check_new(
                self.store, self.config, owner, cpus=vm.cpus, memory_mb=vm.memory_mb, disk_bytes=vm.disk_bytes
            )
            with self.store.transaction():
                self.store.execute(
                    "UPDATE vms SET name = ?, owner_id = ?, host_keys = ? WHERE id = ?",
                    (name, owner.id, "\n".join(host_keys), vm.id),
                )
                self.details.create(vm.id, comment=options.comment, tags=options.tags, env=options.env)
            assigned = self.store.get_vm(vm.id)
        self.store.add_event(assigned.id, assigned.name, owner.id, "created", f"from the pool ip={vm.ip}")
        log.info("vm=%s user=%s created from pool vm=%s ip=%s", assigned.name, owner.handle, vm.name, vm.ip)
        return assigned

    async def mark_handed_out(self, vm: VM, spare: asyncssh.SSHClientConnection | None) -> VM:
        """Mark a VM taken from the pool running since now, route its URL, and keep `spare`, a
        connection into it, for its first session."""
        if spare is not None:
            self._spare_connections[vm.id] = spare
        self._sshd_restarts[vm.id] = time.monotonic() + SSHD_RESTART_SECONDS
        pid = self.runtime.pid(self.spec(vm))
        if pid is not None:
            _renice(pid, 0)
        return await self._set_state(vm, VMState.RUNNING, started=True)

    def drop_spare_connection(self, vm_id: int) -> None:
        """Close the connection kept for a VM's first session if no session has taken it."""
        spare = self._spare_connections.pop(vm_id, None)
        if spare is not None:
            spare.close()

    async def discard(self, vm: VM, reason: str) -> None:
        """Remove a VM (pooled, or one whose hand-out failed) with its process, TAP, disk and row."""
        async with self._lock(vm):
            try:
                vm = self.store.get_vm(vm.id)
            except NotFound:
                return
            log.info("vm=%s discarded: %s", vm.name, reason)
            await self._destroy(vm)
            self.store.add_event(None, vm.name, vm.owner_id, "discarded", reason[:500])
        self._locks.pop(vm.id, None)
        await self.remove_unused_layers()

    async def adopt_pooled(self, vm: VM) -> bool:
        """Find a pool VM again after a server restart; return False if its hypervisor is gone."""
        spec = self.spec(vm)
        if vm.state != VMState.RUNNING or self.runtime.pid(spec) is None:
            return False
        await self.network.create_tap(spec.tap, vm.ip, vm.mac)
        return True

    # Restart recovery and supervision.

    async def reconcile(self) -> None:
        """Find VMs again after a server start: adopt live hypervisors, boot the rest that should run."""
        for vm in self.store.list_vms():
            if self.is_pooled(vm):
                continue  # the warm pool adopts or discards its own VMs
            spec = self.spec(vm)
            alive = self.runtime.pid(spec) is not None
            if vm.state in (VMState.SUSPENDING, VMState.SUSPENDED):
                await self._reconcile_suspended(vm, alive)
            elif vm.state == VMState.RUNNING and alive:
                log.info("vm=%s adopted running hypervisor", vm.name)
                await self.network.create_tap(spec.tap, vm.ip, vm.mac)
                await self.listener.vm_changed(vm)
            elif vm.state in (VMState.RUNNING, VMState.STARTING):
                log.info("vm=%s was %s before the restart; booting it", vm.name, vm.state)
                self._spawn(self._recover_boot(vm))
            elif vm.state == VMState.STOPPING or alive:
                self._spawn(self._recover_halt(vm))
            else:
                await self.listener.vm_changed(vm)

    async def _recover_boot(self, vm: VM) -> None:
        try:
            async with self._lock(vm):
                await self._boot(self.store.get_vm(vm.id), _no_progress)
        except UssycodeError as exc:
            log.error("vm=%s boot after restart failed: %s", vm.name, exc)
            async with self._lock(vm):
                await self._halt(self.store.get_vm(vm.id))

    async def _recover_halt(self, vm: VM) -> None:
        try:
            async with self._lock(vm):
                await self._halt(self.store.get_vm(vm.id))
        except UssycodeError as exc:
            log.error("vm=%s stop after restart failed: %s", vm.name, exc)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def supervise(self) -> None:
        """Mark VMs stopped whose hypervisor exited on its own (guest poweroff or crash), sample
        the resource use of running VMs for `stat`, and suspend idle VMs."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch_exits())
            group.create_task(self.stats.run())
            group.create_task(self.idle.run())

    async def _watch_exits(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL_SECONDS)
            for vm in self.store.list_vms():
                if vm.state != VMState.RUNNING or self._lock(vm).locked() or self.is_pooled(vm):
                    continue
                if self.runtime.pid(self.spec(vm)) is None:
                    log.warning("vm=%s hypervisor exited; marking it stopped", vm.name)
                    async with self._lock(vm):
                        current = self.store.get_vm(vm.id)
                        if current.state == VMState.RUNNING:
                            self.store.add_event(vm.id, vm.name, vm.owner_id, "exited")
                            await self._set_state(current, VMState.STOPPED)

    async def close(self) -> None:
        for conn in self._spare_connections.values():
            conn.close()
        self._spare_connections.clear()
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _uncancellable(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end even if the caller is cancelled meanwhile, then re-raise the
    cancellation; for steps whose half-done state would need repair."""
    task = asyncio.ensure_future(coroutine)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


def _renice(pid: int, niceness: int) -> None:
    """Set the niceness of every thread of process `pid`; QEMU runs each vCPU in a thread."""
    try:
        threads = [int(entry) for entry in os.listdir(f"/proc/{pid}/task")]
    except OSError as exc:
        log.debug("pid=%d not reniced: %s", pid, exc)
        return
    for thread in threads:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, thread, niceness)


# Prints a line once sudo has started and then sets the clock to the time read from stdin, so
# the host sends its time only when the guest is ready to use it.
_SET_CLOCK_COMMAND = """sudo -n sh -c 'echo ready; read t; date -u -s "@$t" >/dev/null'"""


async def _send_host_time(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHCompletedProcess:
    """Set the guest's clock to the host's time over `conn`; late by one round trip at most."""
    process = await conn.create_process(_SET_CLOCK_COMMAND)
    try:
        await process.stdout.readline()
        process.stdin.write(f"{time.time():.3f}\n")
        process.stdin.write_eof()
        return await process.wait(check=False)
    finally:
        process.close()


def _set_hostname_command(name: str) -> str:
    """Return a guest command that sets the running hostname, as ussycode-init does at boot."""
    return (
        f"sudo -n hostname {name} && echo {name} | sudo -n tee /etc/hostname >/dev/null"
        f" && sudo -n sed -i 's/^127\\.0\\.1\\.1\\s.*/127.0.1.1\\t{name}/' /etc/hosts"
    )


def _manifest_at(directory: Path) -> ImageManifest:
    try:
        data = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise NotFound(f"image files missing in {directory}: {exc}") from exc
    return ImageManifest.from_json(data, directory)
