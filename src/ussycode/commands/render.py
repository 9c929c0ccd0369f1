"""Text rendering helpers shared by commands: styles, tables, sizes, charts and VM descriptions.

Output for a terminal (a PTY) may use ANSI colours and is fitted to the terminal's width. Piped
output is plain text without escape sequences. JSON is rendered by the dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ussycode.config import Config, format_size
from ussycode.store import VM

if TYPE_CHECKING:
    from ussycode.commands.base import CommandContext

_RESET = "\x1b[0m"
_CODES = {
    "bold": "1",
    "dim": "2",
    "underline": "4",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "cyan": "36",
}
_STATE_COLORS = {
    "running": "green",
    "starting": "yellow",
    "stopping": "yellow",
    "stopped": "dim",
    "suspending": "yellow",
    "suspended": "cyan",
}
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
ELLIPSIS = "…"
MIN_SHRUNK_WIDTH = 8


@dataclass(frozen=True)
class Style:
    """How to render for one output: with colours or not, and the width in columns if known."""

    color: bool = False
    width: int | None = None

    @classmethod
    def of(cls, ctx: CommandContext) -> Style:
        return cls(color=ctx.color and not ctx.json_output, width=ctx.width)

    def paint(self, text: str, *names: str) -> str:
        """Wrap `text` in the ANSI codes of `names` (bold, dim, red, green, …) if colours are on."""
        if not self.color or not names or not text:
            return text
        codes = ";".join(_CODES[name] for name in names)
        return f"\x1b[{codes}m{text}{_RESET}"

    def state(self, state: str) -> str:
        return self.paint(state, _STATE_COLORS.get(state, "bold"))


PLAIN = Style()


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    style: Style = PLAIN,
    *,
    paint: Mapping[int, Callable[[str], str]] | None = None,
    shrink: Sequence[int] = (),
) -> str:
    """Render rows as left-aligned columns separated by two spaces.

    With `style.width`, the columns in `shrink` (tried in that order) are cut with "…" until
    the table fits, down to 8 characters each. `paint` maps a column to a function that colours
    its cells; widths are counted without the colour codes.
    """
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    if style.width is not None:
        excess = sum(widths) + 2 * (len(widths) - 1) - style.width
        for index in shrink:
            if excess <= 0:
                break
            cut = min(excess, widths[index] - max(MIN_SHRUNK_WIDTH, len(headers[index])))
            if cut > 0:
                widths[index] -= cut
                excess -= cut

    def fit(text: str, width: int) -> str:
        return text if len(text) <= width else text[: width - 1] + ELLIPSIS

    header_cells = [
        style.paint(fit(h.upper(), w).ljust(w), "bold") for h, w in zip(headers, widths, strict=True)
    ]
    lines = ["  ".join(header_cells).rstrip()]
    for row in rows:
        cells = []
        for index, (cell, width) in enumerate(zip(row, widths, strict=True)):
            text = fit(cell, width)
            painter = (paint or {}).get(index)
            shown = painter(text) if painter is not None and style.color else text
            cells.append(shown + " " * (width - len(text)))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def human_bytes(count: float) -> str:
    """Render a byte count with a binary unit and one decimal, e.g. `1.5 GiB` or `512 B`."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_duration(seconds: float) -> str:
    """Render a duration compactly, e.g. `45s`, `12m`, `3h 5m` or `2d 4h`."""
    total = int(max(0, seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def sparkline(values: Sequence[float | None], top: float | None = None) -> str:
    """Render values as block characters scaled to `top` (default: their maximum).

    None is a gap (no sample), shown as a space.
    """
    known = [value for value in values if value is not None]
    scale = top if top is not None else max(known, default=0.0)
    blocks = []
    for value in values:
        if value is None:
            blocks.append(" ")
        elif scale <= 0:
            blocks.append(SPARK_BLOCKS[0])
        else:
            level = round(min(value, scale) / scale * (len(SPARK_BLOCKS) - 1))
            blocks.append(SPARK_BLOCKS[max(0, level)])
    return "".join(blocks)


def bucket(points: Sequence[tuple[float, float]], start: float, end: float, count: int) -> list[float | None]:
    """Average (time, value) points into `count` equal time slots from `start` to `end`."""
    sums = [0.0] * count
    counts = [0] * count
    span = end - start
    for time, value in points:
        if not start <= time <= end or span <= 0:
            continue
        index = min(count - 1, int((time - start) / span * count))
        sums[index] += value
        counts[index] += 1
    return [sums[i] / counts[i] if counts[i] else None for i in range(count)]


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


def vm_text(config: Config, vm: VM, style: Style = PLAIN) -> str:
    data = vm_data(config, vm)
    return "\n".join(
        [
            f"{style.paint(vm.name, 'bold')}  ({style.state(vm.state)})",
            f"  https:  {data['https_url']}",
            f"  ssh:    {data['ssh_command']}",
            f"  image:  {vm.image}   cpus: {vm.cpus}   memory: {data['memory']}   disk: {data['disk']}",
        ]
    )
