"""Commands that show what a VM does: stat (resource use) and vm-logs (console and setup output)."""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from typing import Any

from ussycode.commands.base import ArgumentParser, Command, CommandContext, CommandResult
from ussycode.commands.render import Style, bucket, human_bytes, human_duration, sparkline, table
from ussycode.commands.vm import uptime_seconds
from ussycode.config import format_size
from ussycode.errors import InvalidInput
from ussycode.store import VM
from ussycode.vm import qemu
from ussycode.vm.stats import HISTORY_SECONDS, Rates, Sample, allocated_bytes, rates, series

CHART_COLUMNS = 60
# Two samples closer than this give noisy rates, so `stat` waits for a second one.
MIN_RATE_SECONDS = 1.0
DEFAULT_LOG_LINES = 40
MAX_LOG_LINES = 2000
MAX_LOG_BYTES = 256 * 1024
_ESCAPE_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _vm_argument(parser: ArgumentParser) -> None:
    parser.add_argument("name", metavar="VM", help="VM name")


async def _now(ctx: CommandContext, vm: VM, history: list[Sample]) -> tuple[Sample | None, Rates | None]:
    """Take a sample now and return it with the use since the last one (waiting 1 s if needed)."""
    stats = ctx.services.manager.stats
    current = await stats.sample(vm)
    if current is None:
        return None, None
    previous = history[-1] if history else None
    if previous is None or current.time - previous.time < MIN_RATE_SECONDS:
        previous = current
        await asyncio.sleep(MIN_RATE_SECONDS)
        current = await stats.sample(vm) or previous
    return current, rates(previous, current)


def _sample_data(sample: Sample, use: Rates | None, cpus: int) -> dict[str, Any]:
    return {
        "time": round(sample.time, 1),
        "cpu_percent": None if use is None else round(use.cpu_percent / cpus, 1),
        "memory_bytes": sample.rss_bytes,
        "disk_allocated_bytes": sample.disk_allocated_bytes,
        "disk_read_bytes_per_second": None if use is None else round(use.disk_read_per_second),
        "disk_write_bytes_per_second": None if use is None else round(use.disk_write_per_second),
        "net_rx_bytes_per_second": None if use is None else round(use.net_rx_per_second),
        "net_tx_bytes_per_second": None if use is None else round(use.net_tx_per_second),
    }


def _rate(value: float) -> str:
    return f"{human_bytes(value)}/s"


async def stat(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = manager.get_owned(ctx.user, args.name)
    history = manager.stats.history(vm)
    current, use = await _now(ctx, vm, history)
    points = series(history)
    cpus = vm.cpus
    data: dict[str, Any] = {
        "name": vm.name,
        "state": vm.state,
        "cpus": cpus,
        "memory": format_size(vm.memory_mb * 1024**2),
        "disk": format_size(vm.disk_bytes),
        "interval_seconds": manager.stats.interval,
        "now": None if current is None else _sample_data(current, use, cpus),
        "history": [_sample_data(sample, step, cpus) for sample, step in points],
    }

    style = Style.of(ctx)
    uptime = uptime_seconds(vm)
    heading = f"{style.paint(vm.name, 'bold')}  {style.state(vm.state)}"
    if uptime is not None:
        heading += f"  up {human_duration(uptime)}"
    disk_used = current.disk_allocated_bytes if current else allocated_bytes(manager.disk_path(vm))
    lines = [heading]
    if current is None or use is None:
        lines.append(f'Not running: no live numbers. Start it with "start {vm.name}".')
    columns = CHART_COLUMNS
    if style.width is not None:
        columns = max(10, min(CHART_COLUMNS, style.width - 48))
    end = time.time()
    start = end - HISTORY_SECONDS

    def chart(value: Any) -> str:
        return sparkline(
            bucket([(sample.time, value(sample, step)) for sample, step in points], start, end, columns)
        )

    def peak(value: Any) -> float:
        return max((value(sample, step) for sample, step in points), default=0.0)

    def cpu(sample: Sample, step: Rates) -> float:
        return step.cpu_percent / cpus

    def memory(sample: Sample, step: Rates) -> float:
        return float(sample.rss_bytes)

    def disk_io(sample: Sample, step: Rates) -> float:
        return step.disk_read_per_second + step.disk_write_per_second

    def network(sample: Sample, step: Rates) -> float:
        return step.net_rx_per_second + step.net_tx_per_second

    limit = f"{format_size(vm.memory_mb * 1024**2)}"
    now = {
        "cpu": "-"
        if use is None
        else f"{use.cpu_percent / cpus:.1f}% of {cpus} vCPU" + ("s" if cpus > 1 else ""),
        "memory": "-" if current is None else f"{human_bytes(current.rss_bytes)} of {limit}",
        "disk io": "-"
        if use is None
        else f"read {_rate(use.disk_read_per_second)}, write {_rate(use.disk_write_per_second)}",
        "network": "-"
        if use is None
        else f"in {_rate(use.net_rx_per_second)}, out {_rate(use.net_tx_per_second)}",
    }
    rows = [
        ["cpu", now["cpu"], chart(cpu), f"{peak(cpu):.0f}%"],
        ["memory", now["memory"], chart(memory), human_bytes(peak(memory))],
        ["disk io", now["disk io"], chart(disk_io), _rate(peak(disk_io))],
        ["network", now["network"], chart(network), _rate(peak(network))],
    ]
    lines.append(
        table(
            ["", "now", "last hour", "peak"], rows, style, paint={2: lambda text: style.paint(text, "cyan")}
        )
    )
    lines.append(
        f"disk      {human_bytes(disk_used)} written of {format_size(vm.disk_bytes)}"
        " (the VM's own disk layers on the host)"
    )
    if not points:
        lines.append(f"The chart fills as the server samples the VM every {manager.stats.interval:g} s.")
    return CommandResult(data, "\n".join(lines))


def clean_log(text: str) -> str:
    """Remove terminal escape sequences and control characters other than tab and newline."""
    # Serial consoles end lines with "\r\r\n"; a lone "\r" only moves the cursor.
    return _CONTROL_RE.sub("", _ESCAPE_RE.sub("", text.replace("\r\n", "\n").replace("\r", "")))


def _tail_lines(text: str, count: int) -> str:
    lines = text.splitlines()
    return "\n".join(lines[-count:])


def _read_tail(path: Any, max_bytes: int = MAX_LOG_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _logs_arguments(parser: ArgumentParser) -> None:
    _vm_argument(parser)
    parser.add_argument(
        "--lines",
        "-n",
        metavar="N",
        type=int,
        default=DEFAULT_LOG_LINES,
        help="console lines to show (default 40)",
    )
    parser.add_argument(
        "--previous", action="store_true", help="show the console of the boot before the last one"
    )


async def vm_logs(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = manager.get_owned(ctx.user, args.name)
    if not 1 <= args.lines <= MAX_LOG_LINES:
        raise InvalidInput(f"invalid --lines {args.lines}: choose 1 to {MAX_LOG_LINES}")
    console_name = qemu.CONSOLE_LOG + (".1" if args.previous else "")
    console = clean_log(_tail_lines(_read_tail(manager.vm_dir(vm) / console_name), args.lines))
    details = manager.details.get(vm.id)
    setup_output = clean_log(_read_tail(manager.setup_log_path(vm)))
    events = ctx.services.store.list_events(vm.name, limit=10)
    data = {
        "name": vm.name,
        "console": console,
        "boot": "previous" if args.previous else "current",
        "setup_script": None
        if details.setup_script is None
        else {
            "status": details.setup_status or "pending",
            "exit_status": details.setup_exit_status,
            "updated_at": details.setup_updated_at,
            "output": setup_output,
        },
        "events": [
            {"time": event.created_at, "kind": event.kind, "detail": event.detail} for event in events
        ],
    }

    style = Style.of(ctx)
    boot = "previous boot" if args.previous else "current boot"
    lines = [style.paint(f"== console ({boot}, last {args.lines} lines) ==", "bold")]
    lines.append(console or "(no console output)")
    if details.setup_script is not None:
        status = details.setup_status or "pending (runs at first boot)"
        if details.setup_exit_status is not None:
            status += f", exit status {details.setup_exit_status}"
        lines += ["", style.paint(f"== setup script: {status} ==", "bold"), setup_output or "(no output yet)"]
    lines += ["", style.paint("== events ==", "bold")]
    lines += [f"{event.created_at}  {event.kind}  {event.detail}".rstrip() for event in reversed(events)]
    return CommandResult(data, "\n".join(lines))


COMMANDS = [
    Command(
        "stat",
        "Show a VM's CPU, memory, disk and network use now and over the last hour.",
        stat,
        group="vms",
        arguments=_vm_argument,
        examples=["stat mild-owl", "stat mild-owl --json"],
    ),
    Command(
        "vm-logs",
        "Show a VM's console (boot log), its setup script's output and its recent events.",
        vm_logs,
        group="vms",
        arguments=_logs_arguments,
        examples=["vm-logs mild-owl", "vm-logs mild-owl -n 200", "vm-logs mild-owl --previous"],
    ),
]
