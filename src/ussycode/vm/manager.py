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
import shutil
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from ussycode.config import Config
from ussycode.errors import Conflict, NotFound, RuntimeFailure, UssycodeError
from ussycode.names import check_vm_name, generate_name
from ussycode.store import VM, Store, User
from ussycode.vm import disks
from ussycode.vm.image import ImageManifest, find_image
from ussycode.vm.network import Network
from ussycode.vm.runtime import VMRuntime, VMSpec
from ussycode.vm.state import VMState, check_transition

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

READY_POLL_SECONDS = 1.0
SUPERVISE_INTERVAL_SECONDS = 2.0
GUEST_USER = "ussycode"


def _no_progress(message: str) -> None:
    del message


class VMListener(Protocol):
    """Receives every VM change; the server routes them to Caddy."""

    async def vm_changed(self, vm: VM) -> None: ...

    async def vm_removed(self, name: str) -> None: ...


class VMManager:
    """Creates, starts, stops and removes VMs, and finds running ones again after a restart."""

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

    # Paths and specs.

    def vm_dir(self, vm: VM) -> Path:
        return self.config.data_dir / "vms" / str(vm.id)

    def disk_path(self, vm: VM) -> Path:
        return self.vm_dir(vm) / "disk.qcow2"

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
        progress: Progress = _no_progress,
    ) -> VM:
        """Create a VM and boot it until its sshd accepts a login; on failure nothing of it remains."""
        image_name = image or self.config.image
        manifest = self.resolve_image(image_name)
        async with self._create_lock:
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
                image=image_name,
                image_path=str(manifest.directory),
                cpus=self.config.vm_cpus,
                memory_mb=self.config.vm_memory // (1024 * 1024),
                disk_bytes=self.config.vm_disk,
                ip=ip,
                mac=Network.mac_for_ip(ip),
            )
        self.store.add_event(vm.id, vm.name, owner.id, "created", f"image={image_name} ip={ip}")
        log.info("vm=%s user=%s created ip=%s image=%s", vm.name, owner.handle, ip, image_name)
        async with self._lock(vm):
            try:
                progress(f"creating disk ({self.config.vm_disk // 1024**3} GiB, copy-on-write)")
                self.vm_dir(vm).mkdir(parents=True, exist_ok=True)
                await disks.create_disk(manifest.rootfs, self.disk_path(vm), vm.disk_bytes)
                return await self._boot(vm, progress)
            except BaseException as exc:
                log.warning("vm=%s create failed, removing it: %s", vm.name, exc)
                await self._destroy(vm)
                self.store.add_event(None, vm.name, owner.id, "create_failed", str(exc)[:500])
                raise

    async def start(self, vm: VM, progress: Progress = _no_progress) -> VM:
        async with self._lock(vm):
            vm = self.store.get_vm(vm.id)
            if vm.state == VMState.RUNNING:
                raise Conflict(f'vm "{vm.name}" is already running')
            check_transition(vm.name, vm.state, VMState.STARTING)
            try:
                return await self._boot(vm, progress)
            except UssycodeError:
                await self._halt(vm)
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
            try:
                return await self._boot(vm, progress)
            except UssycodeError:
                await self._halt(vm)
                raise

    async def remove(self, vm: VM) -> None:
        """Stop the VM if needed and delete its disk, TAP device, route and row."""
        async with self._lock(vm):
            vm = self.store.get_vm(vm.id)
            await self._destroy(vm)
            self.store.add_event(None, vm.name, vm.owner_id, "removed")
            log.info("vm=%s removed", vm.name)
        self._locks.pop(vm.id, None)

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

    async def _wait_ready(self, vm: VM, spec: VMSpec, progress: Progress, started_at: float) -> None:
        deadline = started_at + self.config.boot_timeout
        last_report = 0.0
        while True:
            if self.runtime.pid(spec) is None:
                tail = self.runtime.console_tail(spec, 2000)
                raise RuntimeFailure(f'vm "{vm.name}" exited during boot; console tail:\n{tail}', output=tail)
            if await self.probe_ssh(vm):
                return
            now = time.monotonic()
            if now >= deadline:
                raise RuntimeFailure(
                    f'vm "{vm.name}" did not respond on SSH within {self.config.boot_timeout:g} s;'
                    f" see the console log in {spec.run_dir / 'console.log'}"
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

    async def connect_guest(self, vm: VM, *, timeout: float = 10.0) -> asyncssh.SSHClientConnection:
        """Open an SSH connection to the guest's sshd as the guest user, pinning its host keys.

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
        with contextlib.suppress(FileNotFoundError):
            await disks.delete_disk(self.disk_path(vm))
        shutil.rmtree(self.vm_dir(vm), ignore_errors=True)
        self.store.delete_vm(vm.id)
        try:
            await self.listener.vm_removed(vm.name)
        except UssycodeError as exc:
            log.error("vm=%s route removal failed: %s", vm.name, exc)

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
        """Mark VMs stopped whose hypervisor exited on its own (guest poweroff or crash)."""
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


def _manifest_at(directory: Path) -> ImageManifest:
    try:
        data = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise NotFound(f"image files missing in {directory}: {exc}") from exc
    return ImageManifest.from_json(data, directory)
