"""CPU, memory and disk amounts that users ask for, checked against the server's limits.

Sizes are binary: `10G` is 10 GiB and `512M` is 512 MiB. A bare number is read in the flag's
default unit (GiB for disks, MiB for memory).
"""

from __future__ import annotations

from ussycode.config import Config, format_size, parse_size
from ussycode.errors import InvalidInput, QuotaExceeded, RuntimeFailure

MIB = 1024**2
# Below this a Debian guest with systemd and sshd runs out of memory while it boots.
MIN_MEMORY_MB = 256


def parse_cpus(text: str, config: Config, flag: str = "--cpu") -> int:
    """Parse a vCPU count from 1 to the `--max-vm-cpus` setting.

    :raise InvalidInput: not a whole number, or below 1.
    :raise QuotaExceeded: above the limit.
    """
    try:
        cpus = int(text)
    except ValueError:
        raise InvalidInput(f'invalid {flag} "{text}": expected a whole number of vCPUs, such as 2') from None
    if cpus < 1:
        raise InvalidInput(f'invalid {flag} "{text}": a VM needs at least 1 vCPU')
    if cpus > config.max_vm_cpus:
        raise QuotaExceeded(f"{flag} {cpus} is over the limit of {config.max_vm_cpus} vCPUs per VM")
    return cpus


def _size(text: str, flag: str, default_unit: str, example: str) -> int:
    try:
        return parse_size(text, default_unit=default_unit)
    except ValueError:
        raise InvalidInput(f'invalid {flag} "{text}": expected a size such as {example}') from None


def parse_memory_mb(text: str, config: Config, flag: str = "--memory") -> int:
    """Parse a memory size (MiB if no unit) into whole MiB, from 256 MiB to `--max-vm-memory`.

    :raise InvalidInput: not a size, not whole MiB, or below the minimum.
    :raise QuotaExceeded: above the limit.
    """
    size = _size(text, flag, "M", "512M or 2G")
    if size % MIB:
        raise InvalidInput(f'invalid {flag} "{text}": memory must be a whole number of MiB')
    memory_mb = size // MIB
    if memory_mb < MIN_MEMORY_MB:
        raise InvalidInput(f"{flag} {format_size(size)} is below the minimum of {MIN_MEMORY_MB}M")
    if size > config.max_vm_memory:
        raise QuotaExceeded(
            f"{flag} {format_size(size)} is over the limit of {format_size(config.max_vm_memory)} per VM"
        )
    return memory_mb


def parse_disk(text: str, config: Config, flag: str = "--disk") -> int:
    """Parse a disk size (GiB if no unit), rounded up to whole MiB, up to `--max-vm-disk`.

    The lower bound depends on the image or the current disk, so callers check it.

    :raise InvalidInput: not a size.
    :raise QuotaExceeded: above the limit.
    """
    size = _size(text, flag, "G", "20G")
    size = -(-size // MIB) * MIB
    if size > config.max_vm_disk:
        raise QuotaExceeded(
            f"{flag} {format_size(size)} is over the limit of {format_size(config.max_vm_disk)} per VM"
        )
    return size


def host_memory_available(meminfo: str = "/proc/meminfo") -> int:
    """Return the host's available memory in bytes (MemAvailable: what can be allocated without
    swapping, page cache that can be dropped included).

    :raise RuntimeFailure: the file cannot be read or has no MemAvailable line.
    """
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError) as exc:
        raise RuntimeFailure(f"cannot read the host's available memory from {meminfo}: {exc}") from exc
    raise RuntimeFailure(f"no MemAvailable line in {meminfo}")
