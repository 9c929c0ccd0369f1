"""Text rendering helpers shared by commands: tables and VM descriptions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ussycode.config import Config, format_size
from ussycode.store import VM


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render rows as left-aligned columns separated by two spaces."""
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def vm_data(config: Config, vm: VM) -> dict[str, Any]:
    """Return the JSON form of a VM, as `--json` prints it."""
    return {
        "name": vm.name,
        "state": vm.state,
        "image": vm.image,
        "ip": vm.ip,
        "https_url": config.vm_https_url(vm.name),
        "ssh_command": config.ssh_command(vm.name),
        "cpus": vm.cpus,
        "memory": format_size(vm.memory_mb * 1024 * 1024),
        "disk": format_size(vm.disk_bytes),
        "created_at": vm.created_at,
        "started_at": vm.started_at,
    }


def vm_text(config: Config, vm: VM) -> str:
    data = vm_data(config, vm)
    return "\n".join(
        [
            f"{vm.name}  ({vm.state})",
            f"  https:  {data['https_url']}",
            f"  ssh:    {data['ssh_command']}",
            f"  image:  {vm.image}   cpus: {vm.cpus}   memory: {data['memory']}   disk: {data['disk']}",
        ]
    )
