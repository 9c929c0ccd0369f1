"""Tests of the QEMU runtime and the KVM probe, with the real qemu-system-x86_64.

Fast tests drive an idle QEMU (paused with -S, no devices) started by the test with the same
-name and -pidfile markers as `QemuRuntime.command`. Tests that create a TAP device or boot the
guest image run in a network namespace of their own. The image is built separately into
/var/cache/ussycode-test/images (or USSYCODE_TEST_IMAGE_DIR), and tests that need it skip
without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.framework.netns import NetNS
from tests.framework.platform import image_dir, wait_until
from tests.vm.test_network import inside, require_root
from ussycode.errors import ConfigError, Conflict, InvalidInput, NotFound, RuntimeFailure
from ussycode.vm import disks
from ussycode.vm.image import ImageManifest, find_image
from ussycode.vm.kvm import probe_kvm
from ussycode.vm.network import Network
from ussycode.vm.qemu import QemuRuntime, qmp_execute
from ussycode.vm.runtime import VMRuntime, VMSpec

QEMU = "qemu-system-x86_64"
GiB = 1024**3


def make_spec(run_dir: Path, *, vm_id: int = 7, files: Path | None = None) -> VMSpec:
    """A spec whose disk, kernel and initrd live in `files` (default: `run_dir`'s parent)."""
    files = files or run_dir.parent
    return VMSpec(
        vm_id=vm_id,
        name="mild-owl",
        cpus=2,
        memory_mb=1024,
        disk=files / "disk.qcow2",
        kernel=files / "vmlinuz",
        initrd=files / "initrd.img",
        cmdline="root=/dev/vda rw console=ttyS0 ussy.ip=10.77.0.7/24",
        tap="ussyt7",
        mac="52:54:00:4d:00:07",
        run_dir=run_dir,
    )


def touch_boot_files(spec: VMSpec) -> None:
    for path in (spec.disk, spec.kernel, spec.initrd):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def option(argv: list[str], name: str) -> list[str]:
    """Return every value given to the command-line option `name`."""
    return [argv[i + 1] for i in range(len(argv) - 1) if argv[i] == name]


def exited(pidfd: int) -> bool:
    readable, _, _ = select.select([pidfd], [], [], 0)
    return bool(readable)


def start_idle_qemu(spec: VMSpec) -> int:
    """Start a paused QEMU marked as `spec`'s, with no disk, network or kernel; return its PID."""
    run_dir = spec.run_dir.absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        QEMU,
        "-name", f"ussycode-vm-{spec.vm_id},process=ussy-idle",
        "-M", "pc", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-S",
        "-qmp", f"unix:{run_dir / 'qmp.sock'},server=on,wait=off",
        "-pidfile", str(run_dir / "qemu.pid"),
        "-daemonize",
    ]  # fmt: skip
    subprocess.run(argv, check=True, timeout=30, capture_output=True)
    return int((run_dir / "qemu.pid").read_text())


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[tuple[VMSpec, int, int]]:
    """An idle QEMU for VM 8: its spec, PID and a pidfd that stays valid after it exits."""
    spec = make_spec(tmp_path / "vm8", vm_id=8)
    pid = start_idle_qemu(spec)
    pidfd = os.pidfd_open(pid)
    try:
        yield spec, pid, pidfd
    finally:
        # The pidfd names this exact process, so a reused PID cannot be hit.
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)


@pytest.fixture
def foreign() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not QEMU."""
    process = subprocess.Popen(["sleep", "300"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


# Command line.


def test_qemu_command_tcg(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "run")

    argv = QemuRuntime(accel="tcg").command(spec)

    run = str(tmp_path / "run")
    assert argv[0] == QEMU
    assert option(argv, "-name") == ["ussycode-vm-7,process=ussy-mild-owl"]
    assert option(argv, "-M") == ["pc"]
    assert option(argv, "-accel") == ["tcg,tb-size=256"]
    assert option(argv, "-cpu") == ["max"]
    assert option(argv, "-smp") == ["2"]
    assert option(argv, "-m") == ["1024M"]
    assert {"-nodefaults", "-no-user-config", "-daemonize"} <= set(argv)
    assert option(argv, "-display") == ["none"]
    assert option(argv, "-serial") == [f"file:{run}/console.log"]
    assert option(argv, "-kernel") == [str(tmp_path / "vmlinuz")]
    assert option(argv, "-initrd") == [str(tmp_path / "initrd.img")]
    assert option(argv, "-append") == [spec.cmdline]
    assert option(argv, "-qmp") == [f"unix:{run}/qmp.sock,server=on,wait=off"]
    assert option(argv, "-pidfile") == [f"{run}/qemu.pid"]


def test_qemu_command_devices(tmp_path: Path) -> None:
    argv = QemuRuntime().command(make_spec(tmp_path / "run"))

    drive = option(argv, "-drive")[0].split(",")
    netdev = option(argv, "-netdev")[0].split(",")
    devices = option(argv, "-device")
    assert f"file={tmp_path}/disk.qcow2" in drive
    assert {"if=none", "id=disk0", "format=qcow2", "cache=writeback", "discard=unmap"} <= set(drive)
    assert netdev[0] == "tap"
    assert {"ifname=ussyt7", "script=no", "downscript=no", "vhost=off"} <= set(netdev)
    assert "virtio-blk-pci,drive=disk0" in devices
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:4d:00:07" in devices
    assert "virtio-rng-pci,rng=rng0" in devices
    assert option(argv, "-object") == ["rng-random,id=rng0,filename=/dev/urandom"]


def test_qemu_command_kvm(tmp_path: Path) -> None:
    argv = QemuRuntime(accel="kvm").command(make_spec(tmp_path / "run"))

    assert option(argv, "-accel") == ["kvm"]
    assert option(argv, "-cpu") == ["host"]


def test_qemu_command_binary(tmp_path: Path) -> None:
    argv = QemuRuntime(binary="/opt/qemu/bin/qemu-system-x86_64").command(make_spec(tmp_path))

    assert argv[0] == "/opt/qemu/bin/qemu-system-x86_64"


def test_qemu_command_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = make_spec(Path("run"), files=Path("files"))

    argv = QemuRuntime().command(spec)

    assert option(argv, "-kernel") == [str(tmp_path / "files" / "vmlinuz")]
    assert option(argv, "-pidfile") == [str(tmp_path / "run" / "qemu.pid")]
    assert f"file={tmp_path}/files/disk.qcow2" in option(argv, "-drive")[0]


def test_qemu_command_escapes_commas(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "a,b", files=tmp_path / "c,d")

    argv = QemuRuntime().command(spec)

    assert option(argv, "-drive")[0].startswith(f"file={tmp_path}/c,,d/disk.qcow2,if=none")
    assert option(argv, "-qmp") == [f"unix:{tmp_path}/a,,b/qmp.sock,server=on,wait=off"]
    assert option(argv, "-pidfile") == [f"{tmp_path}/a,b/qemu.pid"]


def test_qemu_command_long_run_dir(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / ("x" * 120))

    with pytest.raises(InvalidInput, match="longer than 107 bytes"):
        QemuRuntime().command(spec)


@pytest.mark.parametrize(("cpus", "memory_mb"), [(0, 512), (1, 0), (-1, 512)])
def test_qemu_command_invalid_resources(tmp_path: Path, cpus: int, memory_mb: int) -> None:
    spec = replace(make_spec(tmp_path / "run"), cpus=cpus, memory_mb=memory_mb)

    with pytest.raises(InvalidInput, match="positive CPU count and memory"):
        QemuRuntime().command(spec)


@pytest.mark.parametrize("accel", ["", "hvf", "KVM", "kvm,tcg"])
def test_qemu_invalid_accel(accel: str) -> None:
    with pytest.raises(ConfigError, match="invalid QEMU accelerator"):
        QemuRuntime(accel=accel)


def test_qemu_implements_runtime() -> None:
    runtime: VMRuntime = QemuRuntime()

    assert runtime.name == "qemu"


# pid()


def test_qemu_pid_no_pidfile(tmp_path: Path) -> None:
    assert QemuRuntime().pid(make_spec(tmp_path / "run")) is None


@pytest.mark.parametrize("content", ["", "abc", "-5", "0", "12 13"])
def test_qemu_pid_invalid_pidfile(tmp_path: Path, content: str) -> None:
    spec = make_spec(tmp_path / "run")
    spec.run_dir.mkdir()
    (spec.run_dir / "qemu.pid").write_text(content)

    assert QemuRuntime().pid(spec) is None


def test_qemu_pid_foreign_process(tmp_path: Path, foreign: subprocess.Popen[bytes]) -> None:
    spec = make_spec(tmp_path / "run")
    spec.run_dir.mkdir()
    (spec.run_dir / "qemu.pid").write_text(f"{foreign.pid}\n")

    assert QemuRuntime().pid(spec) is None


def test_qemu_pid_own_vm(idle: tuple[VMSpec, int, int]) -> None:
    spec, pid, _ = idle

    assert QemuRuntime().pid(spec) == pid


def test_qemu_pid_other_vm(tmp_path: Path, idle: tuple[VMSpec, int, int]) -> None:
    _, pid, _ = idle
    other = make_spec(tmp_path / "vm7", vm_id=7)
    other.run_dir.mkdir()
    (other.run_dir / "qemu.pid").write_text(f"{pid}\n")

    assert QemuRuntime().pid(other) is None


def test_qemu_pid_same_dir_other_id(idle: tuple[VMSpec, int, int]) -> None:
    spec, _, _ = idle

    assert QemuRuntime().pid(replace(spec, vm_id=9)) is None


# QMP and stop()


def test_qmp_execute_query(idle: tuple[VMSpec, int, int]) -> None:
    spec, _, _ = idle

    status = asyncio.run(qmp_execute(spec.run_dir / "qmp.sock", "query-status"))

    assert status["status"] == "prelaunch"


def test_qmp_execute_unknown_command(idle: tuple[VMSpec, int, int]) -> None:
    spec, _, _ = idle

    with pytest.raises(RuntimeFailure, match="CommandNotFound"):
        asyncio.run(qmp_execute(spec.run_dir / "qmp.sock", "no-such-command"))


def test_qmp_execute_no_socket(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match=r"QMP query-status on .* failed"):
        asyncio.run(qmp_execute(tmp_path / "absent.sock", "query-status"))


def test_qemu_stop_not_running(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "run")

    asyncio.run(QemuRuntime().stop(spec))

    assert not spec.run_dir.exists()


def test_qemu_stop_stale_pidfile(tmp_path: Path, foreign: subprocess.Popen[bytes]) -> None:
    spec = make_spec(tmp_path / "run")
    spec.run_dir.mkdir()
    (spec.run_dir / "qemu.pid").write_text(f"{foreign.pid}\n")

    asyncio.run(QemuRuntime().stop(spec, timeout=1.0))

    assert foreign.poll() is None
    assert not (spec.run_dir / "qemu.pid").exists()


def test_qemu_stop_escalates_to_quit(idle: tuple[VMSpec, int, int]) -> None:
    # A paused guest accepts the ACPI power-down request but never acts on it.
    spec, _, pidfd = idle
    runtime = QemuRuntime()

    started = time.monotonic()
    asyncio.run(runtime.stop(spec, timeout=1.0))
    elapsed = time.monotonic() - started

    assert exited(pidfd)
    assert 1.0 <= elapsed < 4.0
    assert runtime.pid(spec) is None
    assert not (spec.run_dir / "qemu.pid").exists()
    assert not (spec.run_dir / "qmp.sock").exists()


def test_qemu_stop_without_grace(idle: tuple[VMSpec, int, int]) -> None:
    spec, _, pidfd = idle

    started = time.monotonic()
    asyncio.run(QemuRuntime().stop(spec, timeout=0))

    assert exited(pidfd)
    assert time.monotonic() - started < 1.0


def test_qemu_stop_without_qmp(idle: tuple[VMSpec, int, int]) -> None:
    spec, _, pidfd = idle
    (spec.run_dir / "qmp.sock").unlink()

    started = time.monotonic()
    asyncio.run(QemuRuntime().stop(spec, timeout=10.0))

    assert exited(pidfd)
    assert time.monotonic() - started < 2.0


def test_qemu_stop_ignores_sigterm(tmp_path: Path) -> None:
    # A process that carries the VM's markers, ignores SIGTERM and has no QMP socket.
    spec = make_spec(tmp_path / "run", vm_id=5)
    spec.run_dir.mkdir()
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(300)\n"
    )
    pidfile = spec.run_dir / "qemu.pid"
    process = subprocess.Popen(
        [sys.executable, "-c", script, "-name", "ussycode-vm-5,process=x", "-pidfile", str(pidfile)],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        pidfile.write_text(f"{process.pid}\n")
        assert QemuRuntime().pid(spec) == process.pid

        started = time.monotonic()
        asyncio.run(QemuRuntime().stop(spec, timeout=0))
        elapsed = time.monotonic() - started

        assert process.wait(timeout=5) == -signal.SIGKILL
        assert 5.0 <= elapsed < 7.0
    finally:
        process.kill()
        process.wait()


# start() failures, in a namespace because a real QEMU would create the TAP device.


def test_qemu_start_missing_files(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "run")
    touch_boot_files(spec)
    spec.initrd.unlink()

    with pytest.raises(NotFound, match=r"initrd .*initrd\.img of vm \"mild-owl\" not found"):
        asyncio.run(QemuRuntime().start(spec))
    assert not (spec.run_dir / "qemu.cmdline").exists()


def test_qemu_start_running(idle: tuple[VMSpec, int, int]) -> None:
    spec, pid, _ = idle

    with pytest.raises(Conflict, match=f'vm "mild-owl" is already running \\(pid {pid}\\)'):
        asyncio.run(QemuRuntime().start(spec))


def test_qemu_start_exit_code(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "run")
    touch_boot_files(spec)

    with pytest.raises(RuntimeFailure) as failure:
        asyncio.run(QemuRuntime(binary="false").start(spec))

    assert failure.value.returncode == 1
    assert "with exit code 1" in str(failure.value)
    assert "command line: false -name" in str(failure.value)


def test_qemu_start_missing_binary(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "run")
    touch_boot_files(spec)

    with pytest.raises(RuntimeFailure, match="command not found"):
        asyncio.run(QemuRuntime(binary="/nonexistent/qemu").start(spec))


@pytest.mark.netns
def test_qemu_start_bad_disk(tmp_path: Path) -> None:
    require_root()
    spec = make_spec(tmp_path / "run")
    touch_boot_files(spec)
    spec.disk.write_bytes(b"not a qcow2 image")

    with NetNS("qemu") as server, inside(server), pytest.raises(RuntimeFailure) as failure:
        asyncio.run(QemuRuntime().start(spec))

    message = str(failure.value)
    assert 'qemu failed to start vm "mild-owl" with exit code 1' in message
    assert "qcow2" in failure.value.output
    assert f"command line: {QEMU} -name" in message
    recorded = (spec.run_dir / "qemu.cmdline").read_text()
    assert shlex.split(recorded) == QemuRuntime().command(spec)


# console_tail()


def test_console_tail_missing(tmp_path: Path) -> None:
    assert QemuRuntime().console_tail(make_spec(tmp_path / "run")) == ""


def test_console_tail_last_bytes(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "run")
    spec.run_dir.mkdir()
    (spec.run_dir / "console.log").write_bytes(b"early line\r\n" + b"x" * 100 + b"\r\nlast line\r\n")

    tail = QemuRuntime().console_tail(spec, 20)

    assert tail == "xxxxxxx\nlast line\n"


def test_console_tail_invalid_utf8(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "run")
    spec.run_dir.mkdir()
    (spec.run_dir / "console.log").write_bytes(b"ok \xff\xfe done")

    assert QemuRuntime().console_tail(spec) == "ok \ufffd\ufffd done"


def test_console_tail_zero(tmp_path: Path) -> None:
    spec = make_spec(tmp_path / "run")
    spec.run_dir.mkdir()
    (spec.run_dir / "console.log").write_bytes(b"some output")

    assert QemuRuntime().console_tail(spec, 0) == ""


# The KVM probe.


def guest_image() -> ImageManifest:
    manifest = find_image(image_dir(), "ussyuntu")
    if manifest is None:
        pytest.skip(f"no ussyuntu guest image in {image_dir()}: build it with `ussycode image build`")
    return manifest


def test_probe_kvm_bounded() -> None:
    kernel = guest_image().kernel

    started = time.monotonic()
    works = asyncio.run(probe_kvm(qemu_binary=QEMU, kernel=kernel, timeout=10.0))
    elapsed = time.monotonic() - started

    print(f"probe_kvm returned {works} after {elapsed:.1f} s")
    assert elapsed < 15.0


def test_probe_kvm_no_device(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"")

    works = asyncio.run(probe_kvm(qemu_binary=QEMU, kernel=kernel, device=tmp_path / "absent-kvm"))

    assert works is False


def test_probe_kvm_missing_binary(tmp_path: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm cannot be opened here, so the probe stops before running QEMU")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"")

    assert asyncio.run(probe_kvm(qemu_binary="/nonexistent/qemu", kernel=kernel)) is False


def test_probe_kvm_missing_kernel(tmp_path: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm cannot be opened here, so the probe stops before the kernel check")

    with pytest.raises(NotFound, match=r"kernel .* not found"):
        asyncio.run(probe_kvm(qemu_binary=QEMU, kernel=tmp_path / "absent"))


def test_probe_kvm_not_a_kernel(tmp_path: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm cannot be opened here, so the probe stops before running QEMU")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\0" * 4096)

    assert asyncio.run(probe_kvm(qemu_binary=QEMU, kernel=kernel, timeout=10.0)) is False


# A real guest: boot, adoption by a new runtime, graceful stop, restart.


def port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


def parent_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid in /proc/{pid}/status")


@pytest.mark.vm
@pytest.mark.netns
def test_qemu_guest_lifecycle(tmp_path: Path) -> None:
    require_root()
    manifest = guest_image()
    network = Network(bridge="ussybr0", subnet=ipaddress.IPv4Network("10.77.0.0/24"), metadata_port=8083)
    ip = "10.77.0.2"
    run_dir = tmp_path / "vm"
    run_dir.mkdir()
    spec = VMSpec(
        vm_id=1,
        name="boot-test",
        cpus=1,
        memory_mb=512,
        disk=run_dir / "disk.qcow2",
        kernel=manifest.kernel,
        initrd=manifest.initrd,
        cmdline=f"{manifest.kernel_cmdline} ussy.ip={ip}/24 ussy.gw={network.bridge_ip}"
        f" ussy.dns={network.bridge_ip}",
        tap=Network.tap_name(1),
        mac=Network.mac_for_ip(ip),
        run_dir=run_dir,
    )
    runtime = QemuRuntime(accel="tcg")

    with NetNS("qemu") as server, inside(server):
        try:
            asyncio.run(network.setup())
            asyncio.run(network.create_tap(spec.tap, ip, spec.mac))
            asyncio.run(disks.create_disk(manifest.rootfs, spec.disk, 4 * GiB))

            started = time.monotonic()
            pid = asyncio.run(runtime.start(spec))
            start_seconds = time.monotonic() - started
            pidfd = os.pidfd_open(pid)
            parent = parent_pid(pid)
            wait_until(lambda: port_open(ip, 22), 300.0, "the guest's sshd", interval=1.0)
            boot_seconds = time.monotonic() - started

            adopted = QemuRuntime(accel="tcg")
            adopted_pid = adopted.pid(spec)
            with pytest.raises(Conflict, match="already running"):
                asyncio.run(adopted.start(spec))

            stopping = time.monotonic()
            asyncio.run(adopted.stop(spec, timeout=60.0))
            stop_seconds = time.monotonic() - stopping
            console = adopted.console_tail(spec, 1_000_000)

            restarted = asyncio.run(runtime.start(spec))
            asyncio.run(runtime.stop(spec, timeout=0))
        finally:
            if runtime.pid(spec) is not None:
                asyncio.run(runtime.stop(spec, timeout=0))

    vm_exited = exited(pidfd)
    os.close(pidfd)
    print(f"start {start_seconds:.2f} s, sshd after {boot_seconds:.1f} s, stop {stop_seconds:.1f} s")
    assert start_seconds < 10.0
    assert parent != os.getpid()
    assert adopted_pid == pid
    assert vm_exited
    assert restarted != pid
    assert (run_dir / "console.log.1").exists()
    assert runtime.pid(spec) is None
    # The graceful stage needs a guest that acts on the ACPI power button (systemd-logind).
    assert stop_seconds < 60.0, "the guest ignored the ACPI power button"
    assert "reboot: Power down" in console
