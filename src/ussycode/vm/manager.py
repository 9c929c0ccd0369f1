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
from ussycode.store.vm_details import VMDetailsStore
from ussycode.vm import disks, snapshots
from ussycode.vm.image import ImageManifest, find_image
from ussycode.vm.network import Network
from ussycode.vm.runtime import VMRuntime, VMSpec
from ussycode.vm.state import VMState, check_transition
from ussycode.vm.stats import StatsSampler

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

READY_POLL_SECONDS = 1.0
SUPERVISE_INTERVAL_SECONDS = 2.0
GUEST_USER = "ussycode"
GUEST_COMMAND_TIMEOUT = 30.0

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
        async with self._create_lock:
            # A taken name is the more specific error, so it is reported before any limit.
            if name is None:
                name = generate_name(lambda candidate: self.store.find_vm(candidate) is not None)
            check_vm_name(name)
            if self.store.find_vm(name) is not None:
                raise Conflict(f'a VM named "{name}" already exists: choose another name')
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
            if name is None:
                name = generate_name(lambda candidate: self.store.find_vm(candidate) is not None)
            check_vm_name(name)
            if self.store.find_vm(name) is not None:
                raise Conflict(f'a VM named "{name}" already exists: choose another name')
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

    # Steps.

    async def _set_state(self, vm: VM, state: VMState, *, started: bool = False) -> VM:
        vm = self.store.set_vm_state(vm.id, state, started=started)
        self.store.add_event(vm.id, vm.name, vm.owner_id, state.value)
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
        host_keys = self.known_host_keys(vm)
        if not host_keys:
            raise RuntimeFailure(f'vm "{vm.name}" has not reported its SSH host keys yet')
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
        """Shut the guest down in stages and mark it stopped."""
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

    # Restart recovery and supervision.

    async def reconcile(self) -> None:
        """Find VMs again after a server start: adopt live hypervisors, boot the rest that should run."""
        for vm in self.store.list_vms():
            spec = self.spec(vm)
            alive = self.runtime.pid(spec) is not None
            if vm.state == VMState.RUNNING and alive:
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
        """Mark VMs stopped whose hypervisor exited on its own (guest poweroff or crash), and
        sample the resource use of running VMs for `stat`."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch_exits())
            group.create_task(self.stats.run())

    async def _watch_exits(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL_SECONDS)
            for vm in self.store.list_vms():
                if vm.state != VMState.RUNNING or self._lock(vm).locked():
                    continue
                if self.runtime.pid(self.spec(vm)) is None:
                    log.warning("vm=%s hypervisor exited; marking it stopped", vm.name)
                    async with self._lock(vm):
                        current = self.store.get_vm(vm.id)
                        if current.state == VMState.RUNNING:
                            self.store.add_event(vm.id, vm.name, vm.owner_id, "exited")
                            await self._set_state(current, VMState.STOPPED)

    async def close(self) -> None:
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
