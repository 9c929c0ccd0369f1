"""The QEMU runtime: one daemonized `qemu-system-x86_64` per VM.

QEMU runs detached (`-daemonize`), so VMs keep running while `ussycode serve` restarts. Each VM's
`run_dir` contains what is needed to find and control the process again:

    qemu.pid       PID written by QEMU; `pid()` trusts it only if /proc/PID/cmdline names this file
    qmp.sock       QMP control socket, used for ACPI power-down and quit
    console.log    serial console of the current boot (console.log.1 holds the previous boot)
    qemu.cmdline   the command line of the last start, one shell-quoted line
    state.qemu     saved memory and device state of a suspended VM (with state.argv, the
                   command line that saved it); see `save_state` and `restore_state`

The machine is `pc`: `microvm` has no usable clock source under TCG and the guest hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ussycode import proc
from ussycode.errors import ConfigError, Conflict, InvalidInput, NotFound, RuntimeFailure
from ussycode.vm.runtime import RuntimeUsage, VMSpec

log = logging.getLogger(__name__)

PIDFILE = "qemu.pid"
QMP_SOCKET = "qmp.sock"
CONSOLE_LOG = "console.log"
CMDLINE_FILE = "qemu.cmdline"

ACCELERATORS = ("kvm", "tcg")
# TCG translation cache per VM, in MiB. QEMU 7.2 defaults to 1 GiB, which a long-running guest
# can fill. 256 MiB is an estimate with room for a booted Debian guest; a full cache is flushed
# and refilled, which costs speed, not correctness.
TCG_TB_SIZE_MB = 256
# Longest AF_UNIX socket path: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

START_TIMEOUT = 30.0  # until the daemonizing parent process exits
PIDFILE_TIMEOUT = 5.0
QMP_TIMEOUT = 5.0
STAGE_TIMEOUT = 5.0  # per stage after the graceful one: QMP quit, SIGTERM, SIGKILL
DISK_DEVICE = "disk0"  # the -drive id, which QMP block commands take as the device name

# Suspend and resume: files in `run_dir` next to the disk link.
STATE_FILE = "state.qemu"  # complete saved state (QEMU migration stream: memory and devices)
STATE_PARTIAL = "state.qemu.partial"  # being written; never restored
STATE_LOADING = "state.qemu.loading"  # being read by a restoring QEMU; deleted afterwards
STATE_ARGV_FILE = "state.argv"  # JSON command line of the QEMU that saved the state
# Bytes per second for writing a state file. QEMU 7.2 limits migrations to 128 MiB/s by default,
# which is meant for networks, not for a local file.
SAVE_BANDWIDTH = 8 * 1024**3
SAVE_TIMEOUT = 300.0
RESTORE_TIMEOUT = 120.0


def _escape_option(value: str) -> str:
    """Escape `value` for a comma-separated QEMU option string, where ',,' is a literal comma."""
    return value.replace(",", ",,")


def _guest_name(spec: VMSpec) -> str:
    return f"ussycode-vm-{spec.vm_id}"


class QemuRuntime:
    """Start, stop and find QEMU processes, one per VM."""

    name = "qemu"

    def __init__(self, *, binary: str = "qemu-system-x86_64", accel: str = "tcg") -> None:
        """Use the QEMU `binary` with accelerator `accel` ("kvm" or "tcg").

        :raise ConfigError: `accel` is neither "kvm" nor "tcg".
        """
        if accel not in ACCELERATORS:
            raise ConfigError(f"invalid QEMU accelerator {accel!r}: use kvm or tcg")
        self.binary = binary
        self.accel = accel

    # Command line.

    def command(self, spec: VMSpec) -> list[str]:
        """Return the QEMU command line that boots `spec`.

        The `-name` and `-pidfile` arguments mark the process as this VM's, for `pid()`.

        :raise InvalidInput: the CPU count or memory is not positive, or `run_dir` is so long
            that the QMP socket path would not fit in a unix socket address.
        """
        if spec.cpus <= 0 or spec.memory_mb <= 0:
            raise InvalidInput(
                f'vm "{spec.name}" needs a positive CPU count and memory,'
                f" not {spec.cpus} CPUs and {spec.memory_mb} MiB"
            )
        run_dir = spec.run_dir.absolute()
        qmp_socket = run_dir / QMP_SOCKET
        if len(os.fsencode(qmp_socket)) > MAX_SOCKET_PATH:
            raise InvalidInput(
                f"QMP socket path {qmp_socket} is longer than {MAX_SOCKET_PATH} bytes:"
                " use a shorter data directory"
            )

        if self.accel == "kvm":
            accel = ["-accel", "kvm", "-cpu", "host"]
        else:
            accel = ["-accel", f"tcg,tb-size={TCG_TB_SIZE_MB}", "-cpu", "max"]
        drive = ",".join(
            [
                f"file={_escape_option(str(spec.disk.absolute()))}",
                "if=none",
                f"id={DISK_DEVICE}",
                "format=qcow2",
                "cache=writeback",
                "aio=threads",
                "discard=unmap",
                "detect-zeroes=unmap",
            ]
        )
        netdev = ",".join(
            [
                "tap",
                "id=net0",
                f"ifname={_escape_option(spec.tap)}",
                "script=no",
                "downscript=no",
                "vhost=off",
            ]
        )
        return [
            self.binary,
            "-name", f"{_guest_name(spec)},process={_escape_option('ussy-' + spec.name)}",
            "-M", "pc",
            *accel,
            "-smp", str(spec.cpus),
            "-m", f"{spec.memory_mb}M",
            "-nodefaults", "-no-user-config", "-display", "none",
            # Deny obsolete and scheduler-control system calls; "spawn" and
            # "elevateprivileges" stay allowed because -daemonize needs them (QEMU 7.2).
            "-sandbox", "on,obsolete=deny,resourcecontrol=deny",
            # NOTE: QEMU truncates console.log at each start but does not bound it during a
            # boot, so a guest that floods its serial console fills the data disk.
            "-serial", f"file:{run_dir / CONSOLE_LOG}",
            "-kernel", str(spec.kernel.absolute()),
            "-initrd", str(spec.initrd.absolute()),
            "-append", spec.cmdline,
            "-drive", drive,
            "-device", f"virtio-blk-pci,drive={DISK_DEVICE}",
            "-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=net0,mac={spec.mac}",
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-pci,rng=rng0",
            "-qmp", f"unix:{_escape_option(str(qmp_socket))},server=on,wait=off",
            "-pidfile", str(run_dir / PIDFILE),
            "-daemonize",
        ]  # fmt: skip

    # Lifecycle.

    async def start(self, spec: VMSpec) -> int:
        """Start QEMU for `spec` and return its PID once the daemonized process runs.

        :raise Conflict: this VM's QEMU is already running.
        :raise NotFound: the disk, kernel or initrd is missing.
        :raise InvalidInput: see `command`.
        :raise RuntimeFailure: QEMU exited with an error or wrote no valid pidfile.
        """
        running = self.pid(spec)
        if running is not None:
            raise Conflict(f'vm "{spec.name}" is already running (pid {running}): stop it first')
        argv = self.command(spec)
        log.info("vm=%s starting qemu (%s)", spec.name, self.accel)
        pid = await self._launch(spec, argv, "start")
        log.info("vm=%s qemu running pid=%d", spec.name, pid)
        return pid

    async def _launch(self, spec: VMSpec, argv: list[str], action: str) -> int:
        """Run the daemonizing QEMU command `argv`, record it in the run directory, return the PID.

        :raise RuntimeFailure: QEMU exited with an error or did not daemonize in time.
        """
        run_dir = self._prepare_run_dir(spec)
        command_text = shlex.join(argv)
        (run_dir / CMDLINE_FILE).write_text(command_text + "\n")
        log.debug("vm=%s command line: %s", spec.name, command_text)
        try:
            result = await proc.run(argv, check=False, timeout=START_TIMEOUT)
        except RuntimeFailure:
            # A timeout ends only the parent; a daemon it forked may be running.
            self._kill_leftover(spec)
            raise
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()[-proc.OUTPUT_TAIL_CHARS :]
            raise RuntimeFailure(
                f'qemu failed to {action} vm "{spec.name}" with exit code {result.returncode}:'
                f" {output or '(no output)'}\ncommand line: {command_text}",
                output=output,
                returncode=result.returncode,
            )
        return await self._wait_for_pid(spec)

    def _prepare_run_dir(self, spec: VMSpec) -> Path:
        for path, what in ((spec.disk, "disk"), (spec.kernel, "kernel"), (spec.initrd, "initrd")):
            if not path.is_file():
                raise NotFound(f'{what} {path} of vm "{spec.name}" not found')
        run_dir = spec.run_dir.absolute()
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in (PIDFILE, QMP_SOCKET):
            (run_dir / stale).unlink(missing_ok=True)
        console = run_dir / CONSOLE_LOG
        if console.exists():
            os.replace(console, run_dir / f"{CONSOLE_LOG}.1")
        return run_dir

    async def _wait_for_pid(self, spec: VMSpec) -> int:
        # QEMU writes the pidfile before the parent process exits, so this loop normally
        # returns at once; the polling covers a slow file system.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PIDFILE_TIMEOUT
        while True:
            pid = self.pid(spec)
            if pid is not None:
                return pid
            if loop.time() >= deadline:
                raise RuntimeFailure(
                    f'qemu of vm "{spec.name}" exited right after starting or wrote no pidfile;'
                    f" console output: {self.console_tail(spec, 2000) or '(none)'}"
                )
            await asyncio.sleep(0.05)

    def _kill_leftover(self, spec: VMSpec) -> None:
        pid = self.pid(spec)
        if pid is not None:
            log.warning("vm=%s killing qemu pid=%d left by a failed start", spec.name, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def stop(self, spec: VMSpec, *, timeout: float = 30.0) -> None:
        """Stop QEMU in stages: ACPI power-down, QMP quit, SIGTERM, SIGKILL.

        The guest gets `timeout` seconds to power down on its own (none if `timeout` <= 0);
        each later stage gets 5 seconds. Stopping a VM that is not running does nothing.

        :raise RuntimeFailure: the process is still alive after SIGKILL.
        """
        pid = self.pid(spec)
        if pid is None:
            self._remove_runtime_files(spec)
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._remove_runtime_files(spec)
            return
        if self.pid(spec) != pid:
            # The process exited, and its PID may have been reused, before the pidfd was opened.
            os.close(pidfd)
            self._remove_runtime_files(spec)
            return

        try:
            if timeout > 0 and await self._stage_qmp(spec, "system_powerdown"):
                if await _wait_exit(pidfd, timeout):
                    log.info("vm=%s powered down", spec.name)
                    return
                log.warning("vm=%s did not power down within %g s", spec.name, timeout)
            if await self._stage_qmp(spec, "quit") and await _wait_exit(pidfd, STAGE_TIMEOUT):
                log.info("vm=%s stopped by QMP quit", spec.name)
                return
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, sig)
                if await _wait_exit(pidfd, STAGE_TIMEOUT):
                    log.warning("vm=%s stopped by %s", spec.name, sig.name)
                    return
            raise RuntimeFailure(f'qemu of vm "{spec.name}" (pid {pid}) survived SIGKILL')
        finally:
            os.close(pidfd)
            if self.pid(spec) is None:
                self._remove_runtime_files(spec)

    async def _stage_qmp(self, spec: VMSpec, command: str) -> bool:
        """Send `command` over QMP and return whether QEMU accepted it."""
        try:
            await qmp_execute(spec.run_dir.absolute() / QMP_SOCKET, command)
        except RuntimeFailure as exc:
            log.warning("vm=%s QMP %s failed: %s", spec.name, command, exc)
            return False
        return True

    def _remove_runtime_files(self, spec: VMSpec) -> None:
        for name in (PIDFILE, QMP_SOCKET):
            (spec.run_dir / name).unlink(missing_ok=True)

    # Disk changes while the VM runs.

    async def snapshot_disk(self, spec: VMSpec, overlay: Path) -> None:
        """Switch the running VM's writes to `overlay`, an absolute path, which must exist and name
        the current disk as its backing file (QMP blockdev-snapshot-sync in "existing" mode).

        :raise RuntimeFailure: QEMU is not running or rejected the switch.
        """
        arguments = {
            "device": DISK_DEVICE,
            "snapshot-file": str(overlay),
            "format": "qcow2",
            "mode": "existing",
        }
        await qmp_execute(self._qmp_socket(spec), "blockdev-snapshot-sync", arguments)
        log.info("vm=%s writes to %s from now on", spec.name, overlay)

    async def grow_disk(self, spec: VMSpec, size_bytes: int) -> None:
        """Grow the running VM's disk (QMP block_resize); virtio-blk notifies the guest at once.

        :raise RuntimeFailure: QEMU is not running or rejected the size.
        """
        await qmp_execute(self._qmp_socket(spec), "block_resize", {"device": DISK_DEVICE, "size": size_bytes})
        log.info("vm=%s disk grown to %d bytes", spec.name, size_bytes)

    def _qmp_socket(self, spec: VMSpec) -> Path:
        if self.pid(spec) is None:
            raise RuntimeFailure(f'vm "{spec.name}" is not running')
        return spec.run_dir.absolute() / QMP_SOCKET

    # Inspection.

    async def usage(self, spec: VMSpec) -> RuntimeUsage | None:
        """Return QEMU's CPU time and resident memory from /proc and the disk's byte counters
        from QMP query-blockstats, or None if the VM is not running or exits meanwhile."""
        pid = self.pid(spec)
        process = _process_usage(pid) if pid is not None else None
        if process is None:
            return None
        cpu_seconds, rss_bytes = process
        read_bytes = write_bytes = 0
        try:
            devices = await qmp_execute(self._qmp_socket(spec), "query-blockstats")
        except RuntimeFailure as exc:
            log.debug("vm=%s query-blockstats failed: %s", spec.name, exc)
        else:
            for device in devices:
                if device.get("device") == DISK_DEVICE:
                    read_bytes = int(device["stats"]["rd_bytes"])
                    write_bytes = int(device["stats"]["wr_bytes"])
        return RuntimeUsage(cpu_seconds, rss_bytes, read_bytes, write_bytes)

    def pid(self, spec: VMSpec) -> int | None:
        """Return the PID of this VM's live QEMU, or None.

        The pidfile alone is not trusted: the process must still exist and its command line
        must carry this VM's `-name` and `-pidfile` arguments, because PIDs are reused.
        """
        pidfile = spec.run_dir.absolute() / PIDFILE
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid <= 0:
            return None
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # A zombie has an empty command line, which fails the checks below.
        argv = [os.fsdecode(arg) for arg in raw.split(b"\0")]
        name_prefix = f"{_guest_name(spec)},"
        if not _has_option(argv, "-pidfile", lambda value: value == str(pidfile)):
            return None
        if not _has_option(argv, "-name", lambda value: value.startswith(name_prefix)):
            return None
        return pid

    def console_tail(self, spec: VMSpec, max_bytes: int = 8192) -> str:
        """Return up to the last `max_bytes` of the current boot's console output, or ""."""
        path = spec.run_dir / CONSOLE_LOG
        try:
            with path.open("rb") as console:
                size = console.seek(0, os.SEEK_END)
                console.seek(max(0, size - max(0, max_bytes)))
                data = console.read()
        except FileNotFoundError:
            return ""
        return data.decode(errors="replace").replace("\r", "")

    # Saving and restoring the VM's state (suspend and resume).

    def saved_state(self, spec: VMSpec) -> Path | None:
        """Return the VM's complete saved state file, or None if it has none."""
        path = spec.run_dir.absolute() / STATE_FILE
        if path.is_file() and (spec.run_dir.absolute() / STATE_ARGV_FILE).is_file():
            return path
        return None

    def discard_state(self, spec: VMSpec) -> None:
        """Delete the VM's saved state and every partial or consumed copy of it."""
        run_dir = spec.run_dir.absolute()
        for name in (STATE_FILE, STATE_PARTIAL, STATE_LOADING, STATE_ARGV_FILE):
            (run_dir / name).unlink(missing_ok=True)

    async def save_state(self, spec: VMSpec, *, timeout: float = SAVE_TIMEOUT) -> int:
        """Pause the guest, write its memory and device state next to its disk, and end QEMU.

        The state goes to a partial file first (QMP `migrate` to an `exec:` pipe, the only file
        target QEMU 7.2 has), which is synced and then renamed to `state.qemu`. A crash before
        the rename leaves a running or paused QEMU and no state, so the VM can always boot
        from its disk. Returns the size of the state file in bytes.

        :raise RuntimeFailure: QEMU is not running or the save failed; the guest runs on.
        """
        pid = self.pid(spec)
        if pid is None:
            raise RuntimeFailure(f'vm "{spec.name}" is not running')
        run_dir = spec.run_dir.absolute()
        socket = run_dir / QMP_SOCKET
        partial = run_dir / STATE_PARTIAL
        partial.unlink(missing_ok=True)
        argv = _without_option(_process_argv(pid), "-incoming")

        await qmp_execute(socket, "stop")
        try:
            await qmp_execute(socket, "migrate-set-parameters", {"max-bandwidth": SAVE_BANDWIDTH})
            await qmp_execute(socket, "migrate", {"uri": f"exec:cat > {shlex.quote(str(partial))}"})
            await _wait_migration(socket, spec.name, timeout)
            size = _fsync_file(partial)
        except BaseException:
            partial.unlink(missing_ok=True)
            with contextlib.suppress(RuntimeFailure):
                await qmp_execute(socket, "cont")
            raise

        # The command line is kept first: a state file is only used together with it.
        _write_synced(run_dir / STATE_ARGV_FILE, json.dumps(argv).encode())
        os.replace(partial, run_dir / STATE_FILE)
        _fsync_dir(run_dir)
        log.info("vm=%s state saved (%d bytes); ending qemu pid=%d", spec.name, size, pid)
        await self.stop(spec, timeout=0)
        return size

    async def restore_state(self, spec: VMSpec, *, timeout: float = RESTORE_TIMEOUT) -> int:
        """Start QEMU from the saved state and return its PID once the guest runs again.

        QEMU gets the command line that saved the state, because the devices must match.
        The state file is renamed before QEMU reads it and deleted afterwards, whatever
        happens: after the guest has run, the disk no longer matches the saved memory, so a
        state is used at most once.

        :raise NotFound: the VM has no saved state.
        :raise RuntimeFailure: QEMU failed to start or to load the state; the state is gone,
            and the VM can boot from its disk.
        """
        state = self.saved_state(spec)
        if state is None:
            raise NotFound(f'vm "{spec.name}" has no saved state')
        running = self.pid(spec)
        if running is not None:
            raise Conflict(f'vm "{spec.name}" is already running (pid {running}): stop it first')
        run_dir = spec.run_dir.absolute()
        argv_file = run_dir / STATE_ARGV_FILE
        loading = run_dir / STATE_LOADING
        try:
            argv = [str(arg) for arg in json.loads(argv_file.read_text())]
        except (OSError, ValueError) as exc:
            self.discard_state(spec)
            raise RuntimeFailure(f'the saved command line of vm "{spec.name}" is unreadable: {exc}') from exc
        # The disk file may have changed while the VM was suspended (cp freezes the disk and
        # moves it to a new top file), and so may the name: those come from the current spec.
        argv = _replace_options(argv, self.command(spec), ("-drive", "-name"))
        os.replace(state, loading)
        _fsync_dir(run_dir)
        argv += ["-incoming", f"exec:cat {shlex.quote(str(loading))}"]

        try:
            return await self._start_incoming(spec, argv, timeout)
        finally:
            loading.unlink(missing_ok=True)
            argv_file.unlink(missing_ok=True)

    async def continue_guest(self, spec: VMSpec) -> None:
        """Let a paused guest run again (QMP cont), as after a save that was cut short.

        :raise RuntimeFailure: QEMU is not running or rejected the command.
        """
        await qmp_execute(self._qmp_socket(spec), "cont")

    async def _start_incoming(self, spec: VMSpec, argv: list[str], timeout: float) -> int:
        log.info("vm=%s restoring qemu from its saved state", spec.name)
        pid = await self._launch(spec, argv, "restore")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.pid(spec) is None:
                raise RuntimeFailure(f'qemu of vm "{spec.name}" exited while loading the saved state')
            try:
                status = await qmp_execute(spec.run_dir.absolute() / QMP_SOCKET, "query-status")
            except RuntimeFailure as exc:
                log.debug("vm=%s query-status during restore failed: %s", spec.name, exc)
                status = {}
            if status.get("status") == "running":
                log.info("vm=%s restored, qemu pid=%d", spec.name, pid)
                return pid
            if status.get("status") == "paused":
                # The state was saved from a paused guest, and QEMU keeps the run state it loads.
                await qmp_execute(spec.run_dir.absolute() / QMP_SOCKET, "cont")
                continue
            if loop.time() >= deadline:
                self._kill_leftover(spec)
                raise RuntimeFailure(
                    f'vm "{spec.name}" did not finish loading its saved state within {timeout:g} s'
                )
            await asyncio.sleep(0.05)


def _process_usage(pid: int) -> tuple[float, int] | None:
    """Return the CPU seconds and resident bytes of process `pid`, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    fields = stat.rsplit(")", 1)[1].split()
    cpu_seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu_seconds, int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _wait_migration(socket: Path, name: str, timeout: float) -> None:
    """Poll QMP query-migrate until the outgoing migration completed.

    :raise RuntimeFailure: it failed, was cancelled or ran over `timeout` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await qmp_execute(socket, "query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise RuntimeFailure(
                f'saving the state of vm "{name}" {status}: {info.get("error-desc", "no details")}'
            )
        if loop.time() >= deadline:
            with contextlib.suppress(RuntimeFailure):
                await qmp_execute(socket, "migrate_cancel")
            raise RuntimeFailure(f'saving the state of vm "{name}" ran over {timeout:g} s')
        await asyncio.sleep(0.05)


def _fsync_file(path: Path) -> int:
    """Flush `path` to stable storage and return its size in bytes."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
        return os.fstat(handle.fileno()).st_size


def _fsync_dir(path: Path) -> None:
    """Flush the directory entries of `path`, so that a rename in it survives a crash."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a synced temporary file and an atomic rename."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _process_argv(pid: int) -> list[str]:
    """Return the command line of process `pid`.

    :raise RuntimeFailure: the process is gone.
    """
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError as exc:
        raise RuntimeFailure(f"cannot read the command line of pid {pid}: {exc}") from exc
    return [os.fsdecode(arg) for arg in raw.split(b"\0") if arg]


def _without_option(argv: list[str], option: str) -> list[str]:
    """Return `argv` without `option` and its value, such as the -incoming of a restored QEMU."""
    result: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        else:
            result.append(arg)
    return result


def _replace_options(argv: list[str], source: list[str], options: tuple[str, ...]) -> list[str]:
    """Return `argv` with the value of each of `options` taken from `source`, where both have it."""
    values = {
        source[index]: source[index + 1] for index in range(len(source) - 1) if source[index] in options
    }
    result = list(argv)
    for index in range(len(result) - 1):
        if result[index] in values:
            result[index + 1] = values[result[index]]
    return result


def _has_option(argv: list[str], option: str, matches: Callable[[str], bool]) -> bool:
    return any(argv[index] == option and matches(argv[index + 1]) for index in range(len(argv) - 1))


async def _wait_exit(pidfd: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for the process behind `pidfd` to exit."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not exited.done():
            exited.set_result(None)

    # A pidfd becomes readable when its process exits, whether or not it is our child.
    loop.add_reader(pidfd, on_readable)
    try:
        await asyncio.wait_for(exited, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
    return True


async def qmp_execute(socket_path: Path, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """Run one QMP command on the QEMU listening at `socket_path` and return its "return" value.

    :raise RuntimeFailure: the socket cannot be reached, QEMU replied with an error, or no
        reply came within 5 seconds.
    """
    request: dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    try:
        async with asyncio.timeout(QMP_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            try:
                greeting = await _read_qmp_message(reader)
                if "QMP" not in greeting:
                    raise RuntimeFailure(f"unexpected QMP greeting on {socket_path}: {greeting}")
                await _send_qmp(writer, {"execute": "qmp_capabilities"})
                await _read_qmp_reply(reader)
                await _send_qmp(writer, request)
                return await _read_qmp_reply(reader)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError as exc:
        raise RuntimeFailure(f"QMP {command} on {socket_path} timed out") from exc
    except (OSError, ValueError) as exc:
        raise RuntimeFailure(f"QMP {command} on {socket_path} failed: {exc}") from exc


async def _send_qmp(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


async def _read_qmp_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        raise RuntimeFailure("QMP connection closed by QEMU")
    message: dict[str, Any] = json.loads(line)
    return message


async def _read_qmp_reply(reader: asyncio.StreamReader) -> Any:
    """Read messages up to the reply of the last command, skipping asynchronous events."""
    while True:
        message = await _read_qmp_message(reader)
        if "return" in message:
            return message["return"]
        if "error" in message:
            error = message["error"]
            raise RuntimeFailure(f"QMP error {error.get('class')}: {error.get('desc')}")
