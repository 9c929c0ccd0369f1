"""Detect whether KVM works by booting a real kernel under it.

A /dev/kvm that opens is not enough: on some hosts (nested or paravirtualized) QEMU starts with
`-accel kvm` and the guest then hangs as soon as its kernel runs. The probe boots the guest
kernel with no root disk and no initrd. Under a working KVM the kernel reaches its "unable to
mount root" panic within seconds, and `panic=-1` with `-no-reboot` then makes QEMU exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from pathlib import Path

from ussycode.errors import NotFound

log = logging.getLogger(__name__)

KVM_DEVICE = Path("/dev/kvm")
# Lines that a kernel prints only after it ran far enough to look for its root file system.
_ROOT_PANIC_MARKERS = (b"Unable to mount root", b"Kernel panic")
_KERNEL_BANNER = b"Linux version"
_OUTPUT_WINDOW = 64 * 1024


async def probe_kvm(
    *, qemu_binary: str, kernel: Path, timeout: float = 20.0, device: Path = KVM_DEVICE
) -> bool:
    """Return True if `kernel` boots under `qemu_binary -accel kvm` within `timeout` seconds.

    Returns False if `device` cannot be opened, QEMU is missing or fails, or the guest hangs.
    QEMU itself always opens /dev/kvm: `device` only decides whether the probe runs at all.

    :raise NotFound: `kernel` does not exist.
    """
    if not _device_opens(device):
        return False
    if not kernel.is_file():  # noqa: ASYNC240 (one stat call)
        raise NotFound(f"kernel {kernel} for the KVM probe not found")

    argv = [
        qemu_binary,
        "-M", "pc", "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", "256M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", "stdio",
        "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1",
    ]  # fmt: skip
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except OSError as exc:
        log.warning("KVM probe cannot run %s: %s", qemu_binary, exc)
        return False

    try:
        works = await _watch_boot(process, timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log.info("KVM probe: guest kernel %s under KVM", "booted" if works else "did not boot")
    return works


def _device_opens(device: Path) -> bool:
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        log.info("KVM not available: cannot open %s: %s", device, exc.strerror)
        return False
    return True


async def _watch_boot(process: asyncio.subprocess.Process, timeout: float) -> bool:
    """Read the serial console until the root panic, QEMU's exit or `timeout`."""
    assert process.stdout is not None
    output = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await process.stdout.read(4096):
                output = (output + chunk)[-_OUTPUT_WINDOW:]
                if any(marker in output for marker in _ROOT_PANIC_MARKERS):
                    return True
            returncode = await process.wait()
    except TimeoutError:
        log.info("KVM probe timed out after %g s; last output: %r", timeout, output[-200:])
        return False
    # The panic message can be lost when QEMU exits at once; a clean exit after the kernel
    # banner still shows that the kernel ran.
    if returncode == 0 and _KERNEL_BANNER in output:
        return True
    log.info("KVM probe: qemu exited with code %d; output: %r", returncode, output[-500:])
    return False
