"""The warm pool: booted VMs of the default image that no user owns yet, for a fast `new`.

The pool boots VMs one at a time in the background, owned by the store's `_pool` user, which
nobody can log in as. No route leads to them, no user sees them in a listing, and no quota counts
them. Once a pool VM has booted, the host uploads its own copy of the guest agent
(`ussycode_init.py`) and starts it with `--reidentify --wait` over an SSH connection it keeps
open. The agent stages new sshd host keys, reports them and waits.

`new` without options that need a fresh boot takes a ready VM: the manager gives it the owner,
name and settings in the store and records the staged keys as the VM's host keys, then the agent
fetches the new identity from the metadata service, applies it (hostname, authorized_keys,
environment), swaps in the staged host keys and restarts sshd. No reboot happens. The connection
stays open for the VM's first SSH session. The pool then boots a replacement.

The pool's target size is the number of `new` requests that a pool VM could serve during the
last `DEMAND_WINDOW_SECONDS`, at least `--pool-size` and at most `--pool-max`. The pool boots no
VM that would leave the host with less available memory than `--memory-reserve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources as package_files
from typing import TYPE_CHECKING, Any

import asyncssh

from ussycode.config import format_size
from ussycode.errors import RuntimeFailure, UssycodeError
from ussycode.store import VM, User
from ussycode.vm import resources
from ussycode.vm.image import ImageManifest

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ussycode.vm.manager import NewVMOptions, VMManager

log = logging.getLogger(__name__)

POOL_HANDLE = "_pool"
# `new` requests within this many seconds count as demand that grows the pool towards --pool-max.
DEMAND_WINDOW_SECONDS = 600.0
# How often the pool checks its VMs and its size when nothing wakes it earlier.
CHECK_INTERVAL_SECONDS = 5.0
# Seconds to wait after a failed pool boot before the next one, so a broken image does not loop.
FAILURE_BACKOFF_SECONDS = 30.0
AGENT_PATH = "/run/ussycode/ussycode_init.py"
# Python's start and two ssh-keygen runs take several seconds under TCG emulation.
AGENT_READY_SECONDS = 120.0
AGENT_DONE_SECONDS = 30.0
# A connection kept for a handed-out VM's first session is closed if no session takes it.
SPARE_CONNECTION_SECONDS = 120.0


def _agent_source() -> str:
    return package_files.files("ussycode.vm").joinpath("guest/ussycode_init.py").read_text()


@dataclass
class PooledVM:
    """A booted pool VM whose agent has staged new host keys and waits for "go"."""

    vm: VM
    conn: asyncssh.SSHClientConnection
    agent: asyncssh.SSHClientProcess[str]
    staged_keys: list[str]
    ready_at: float

    def alive(self) -> bool:
        return not self.conn.is_closed() and self.agent.exit_status is None


@dataclass(frozen=True)
class PoolStatus:
    """The pool of one image, for `admin pool`."""

    image: str
    ready: int
    booting: int
    target: int
    pool_size: int
    pool_max: int
    recent_requests: int
    memory_available: int | None
    memory_reserve: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "ready": self.ready,
            "booting": self.booting,
            "target": self.target,
            "pool_size": self.pool_size,
            "pool_max": self.pool_max,
            "recent_requests": self.recent_requests,
            "memory_available": self.memory_available,
            "memory_reserve": self.memory_reserve,
        }


class WarmPool:
    """Keeps booted VMs of the default image ready and hands them out; see the module docstring."""

    def __init__(self, manager: VMManager, describe: Callable[[VM], dict[str, Any]]) -> None:
        """`describe` returns a VM's metadata document, as the metadata service serves it."""
        self.manager = manager
        self.describe = describe
        self.config = manager.config
        # NOTE: only the default image is pooled; `new --image` of another image boots cold.
        self.image = self.config.image
        self._ready: deque[PooledVM] = deque()
        self._booting = 0
        # Monotonic times of recent `new` requests that a pool VM could serve.
        self._requests: deque[float] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._agent = _agent_source()
        # One sudo and one session: head copies exactly the agent's bytes from stdin, which then
        # carries the "go" line to the agent.
        self._agent_command = (
            "sudo -n sh -c 'install -d -m 0700 /run/ussycode"
            f" && head -c {len(self._agent.encode())} > {AGENT_PATH}"
            f" && exec python3 -I -S {AGENT_PATH} --reidentify --wait'"
        )
        self._memory_warned = False
        self._background: set[asyncio.Task[None]] = set()
        self._handing_out = 0
        self._adopting = 0

    # Lifecycle.

    async def start(self) -> None:
        """Adopt or discard the pool VMs of an earlier run, then fill the pool in the background."""
        for vm in self.manager.store.list_vms():
            if not self.manager.is_pooled(vm):
                continue
            if self.enabled and await self.manager.adopt_pooled(vm):
                # Its agent ended with the old server's connection: start a new one meanwhile.
                self._adopting += 1
                self._spawn(self._adopt(vm))
            else:
                await self.manager.discard(vm, "pool VM left over from before a restart")
        if self.enabled:
            self._task = asyncio.create_task(self._run())
        else:
            log.info("warm pool off (--pool-size 0): new boots every VM")

    async def _adopt(self, vm: VM) -> None:
        try:
            self._ready.append(await self._prepare(vm))
            log.info("vm=%s pool VM adopted after a restart", vm.name)
        except RuntimeFailure as exc:
            log.warning("vm=%s pool VM from before the restart is unusable: %s", vm.name, exc)
            await self.manager.discard(vm, "pool VM left over from before a restart is unusable")
        finally:
            self._adopting -= 1
            self._wake.set()

    @property
    def enabled(self) -> bool:
        return self.config.pool_size > 0

    async def close(self) -> None:
        """Stop filling; ready VMs keep running and are adopted at the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for pooled in self._ready:
            pooled.conn.close()
        self._ready.clear()

    # Hand-out.

    def cold_reason(self, image: str, disk_bytes: int, options: NewVMOptions) -> str | None:
        """Return why `new` with these options needs a fresh boot, or None if a pool VM fits."""
        manifest = self.manager.resolve_image(image)
        if image != self.image:
            return f"image {image} is not pooled"
        if disk_bytes != self.manager.pooled_disk_bytes(manifest):
            return f"--disk {format_size(disk_bytes)} differs from the pool's"
        if options.setup_script is not None:
            return "a setup script runs at first boot"
        if options.agent_prompt is not None:
            return "--prompt starts the agent at first boot"
        if options.cpus is not None and options.cpus != self.config.vm_cpus:
            return "--cpu differs from the default"
        if options.memory_mb is not None and options.memory_mb * 1024 * 1024 != self.config.vm_memory:
            return "--memory differs from the default"
        return None

    async def hand_out(
        self,
        owner: User,
        *,
        name: str | None,
        image: str,
        disk_bytes: int,
        options: NewVMOptions,
        progress: Callable[[str], None],
    ) -> VM | None:
        """Give a ready pool VM to `owner`, or return None when `new` must boot one instead.

        :raise Conflict, QuotaExceeded, PermissionDenied: as `VMManager.create` does; the pool
            VM then stays in the pool.
        """
        if not self.enabled:
            return None
        reason = self.cold_reason(image, disk_bytes, options)
        if reason is None:
            self._record_demand()
            if not self._take_ready_exists():
                reason = "no pool VM is ready"
        if reason is not None:
            log.info("user=%s new boots a VM: %s", owner.handle, reason)
            return None

        pooled = self._ready.popleft()
        self._handing_out += 1
        try:
            return await self._hand_out(pooled, owner, name=name, options=options, progress=progress)
        finally:
            self._handing_out -= 1
            # The replacement boots after the hand-out, so that it does not take the CPU from it.
            self._wake.set()

    async def _hand_out(
        self,
        pooled: PooledVM,
        owner: User,
        *,
        name: str | None,
        options: NewVMOptions,
        progress: Callable[[str], None],
    ) -> VM | None:
        started = time.monotonic()
        progress("taking a booted VM from the warm pool")
        try:
            vm = await self.manager.assign_pooled(
                pooled.vm, owner, name=name, options=options, host_keys=pooled.staged_keys
            )
        except BaseException:
            self._ready.appendleft(pooled)
            raise
        try:
            progress("applying your keys, hostname and environment")
            # The URL's route is added while the guest works.
            _, vm = await asyncio.gather(
                self._reidentify(pooled, vm), self.manager.mark_handed_out(vm, pooled.conn)
            )
        except (UssycodeError, asyncio.CancelledError) as exc:
            # A half-applied identity leaves the VM neither in the pool nor usable.
            pooled.conn.close()
            await self.manager.discard(vm, f"hand-out failed: {exc}")
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("vm=%s hand-out failed, booting a VM instead: %s", vm.name, exc)
            return None
        asyncio.get_running_loop().call_later(
            SPARE_CONNECTION_SECONDS, self.manager.drop_spare_connection, vm.id
        )
        elapsed = time.monotonic() - started
        log.info("vm=%s user=%s handed out from the pool in %.2f s", vm.name, owner.handle, elapsed)
        progress(f"running after {elapsed:.1f} s")
        return vm

    def _take_ready_exists(self) -> bool:
        """Drop ready VMs whose agent or connection ended; return whether one is left."""
        while self._ready and not self._ready[0].alive():
            dead = self._ready.popleft()
            log.warning("vm=%s pool agent ended; discarding the VM", dead.vm.name)
            self._spawn(self.manager.discard(dead.vm, "pool agent ended"))
        return bool(self._ready)

    async def _reidentify(self, pooled: PooledVM, vm: VM) -> None:
        """Tell the waiting agent to apply the identity the metadata service now serves."""
        try:
            # The document saves the guest a request to the metadata service.
            pooled.agent.stdin.write(f"go {json.dumps(self.describe(vm))}\n")
            message = await _read_message(pooled.agent, {"done"}, AGENT_DONE_SECONDS)
        except (OSError, asyncssh.Error) as exc:
            raise RuntimeFailure(f'the agent in vm "{vm.name}" failed: {exc}') from exc
        if sorted(message.get("host_keys", [])) != sorted(pooled.staged_keys):
            raise RuntimeFailure(f'vm "{vm.name}" installed other host keys than it staged')

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _record_demand(self) -> None:
        now = time.monotonic()
        self._requests.append(now)
        while self._requests and self._requests[0] < now - DEMAND_WINDOW_SECONDS:
            self._requests.popleft()

    # Size.

    def target(self) -> int:
        """Return how many VMs the pool aims to hold: the recent requests it could serve, at least
        --pool-size and at most --pool-max."""
        if self.config.pool_size == 0:
            return 0
        now = time.monotonic()
        recent = sum(1 for moment in self._requests if moment >= now - DEMAND_WINDOW_SECONDS)
        return min(self.config.pool_max, max(self.config.pool_size, recent))

    def status(self) -> list[PoolStatus]:
        self._take_ready_exists()
        try:
            available: int | None = resources.host_memory_available()
        except RuntimeFailure:
            available = None
        now = time.monotonic()
        return [
            PoolStatus(
                image=self.image,
                ready=len(self._ready),
                booting=self._booting + self._adopting,
                target=self.target(),
                pool_size=self.config.pool_size,
                pool_max=self.config.pool_max,
                recent_requests=sum(1 for moment in self._requests if moment >= now - DEMAND_WINDOW_SECONDS),
                memory_available=available,
                memory_reserve=self.config.memory_reserve,
            )
        ]

    def _memory_allows_boot(self) -> bool:
        """Return whether one more VM leaves the host at least --memory-reserve available."""
        try:
            available = resources.host_memory_available()
        except RuntimeFailure as exc:
            log.warning("pool not filled: %s", exc)
            return False
        needed = self.config.vm_memory + self.config.memory_reserve
        if available < needed:
            if not self._memory_warned:
                log.warning(
                    "pool not filled: %s available, a VM needs %s plus the reserve of %s",
                    format_size(available),
                    format_size(self.config.vm_memory),
                    format_size(self.config.memory_reserve),
                )
                self._memory_warned = True
            return False
        self._memory_warned = False
        return True

    # Filling.

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            delay = CHECK_INTERVAL_SECONDS
            try:
                delay = await self._adjust()
            except UssycodeError as exc:
                log.error("pool: %s", exc)
                delay = FAILURE_BACKOFF_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _adjust(self) -> float:
        """Boot one VM if the pool is short, or discard one if it is over its target; return the
        seconds until the next check."""
        self._take_ready_exists()
        target = self.target()
        if len(self._ready) > target:
            extra = self._ready.pop()
            extra.conn.close()
            await self.manager.discard(extra.vm, f"pool shrinks to {target}")
            return 0.0
        if len(self._ready) + self._adopting >= target or self._handing_out or not self._memory_allows_boot():
            return CHECK_INTERVAL_SECONDS
        manifest = self.manager.resolve_image(self.image)
        self._booting += 1
        try:
            pooled = await self._boot_one(manifest)
        except RuntimeFailure as exc:
            log.error("pool VM boot failed: %s", exc)
            return FAILURE_BACKOFF_SECONDS
        finally:
            self._booting -= 1
        self._ready.append(pooled)
        log.info("vm=%s pool VM ready (%d of %d)", pooled.vm.name, len(self._ready), self.target())
        return 0.0

    async def _boot_one(self, manifest: ImageManifest) -> PooledVM:
        vm = await self.manager.boot_pooled(manifest, f"_pool-{secrets.token_hex(4)}")
        try:
            return await self._prepare(vm)
        except BaseException as exc:
            await self.manager.discard(vm, f"pool agent failed: {exc}")
            raise

    async def _prepare(self, vm: VM) -> PooledVM:
        """Upload the agent into a booted pool VM, start it and wait until it has staged host keys.

        The host's own copy of the agent is uploaded so that it speaks this server's protocol
        whatever image the VM booted.

        :raise RuntimeFailure: the guest is unreachable or the agent failed.
        """
        conn = await self.manager.connect_guest(vm, timeout=10.0)
        try:
            agent = await conn.create_process(self._agent_command)
            agent.stdin.write(self._agent)
            message = await _read_message(agent, {"ready"}, AGENT_READY_SECONDS)
        except (OSError, asyncssh.Error, TimeoutError, RuntimeFailure) as exc:
            conn.close()
            if isinstance(exc, RuntimeFailure):
                raise
            raise RuntimeFailure(f'starting the agent in vm "{vm.name}" failed: {exc}') from exc
        keys = [str(key) for key in message.get("host_keys", [])]
        return PooledVM(vm=vm, conn=conn, agent=agent, staged_keys=keys, ready_at=time.monotonic())


async def _read_message(
    agent: asyncssh.SSHClientProcess[str], kinds: set[str], timeout: float
) -> dict[str, Any]:
    """Read the agent's output until a "@kind {json}" line of `kinds`; log the other lines.

    :raise RuntimeFailure: an "@error" line, the end of output, or `timeout` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeFailure(f"the pool agent sent no {'/'.join(sorted(kinds))} within {timeout:g} s")
        try:
            line = await asyncio.wait_for(agent.stdout.readline(), remaining)
        except TimeoutError:
            continue
        if not line:
            stderr = ""
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                stderr = await asyncio.wait_for(agent.stderr.read(), 1.0)
            raise RuntimeFailure(f"the pool agent ended early: {stderr.strip()[-300:] or 'no output'}")
        if not line.startswith("@"):
            log.debug("pool agent: %s", line.rstrip())
            continue
        kind, _, body = line[1:].partition(" ")
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise RuntimeFailure(f"the pool agent sent an unreadable line: {line[:200]!r}") from exc
        if kind == "error":
            raise RuntimeFailure(f"the pool agent failed: {document.get('message', '')}")
        if kind in kinds and isinstance(document, dict):
            return document
