"""Commands that change an existing VM: cp, rename, tag, comment, resize."""

from __future__ import annotations

import argparse

from ussycode.commands.base import ArgumentParser, Command, CommandContext, CommandResult
from ussycode.commands.render import Style
from ussycode.commands.vm import created_result, describe_vm
from ussycode.config import format_size
from ussycode.errors import InvalidInput, NotFound
from ussycode.names import check_vm_name
from ussycode.store import VM
from ussycode.vm import attributes, resources
from ussycode.vm.idle import format_idle, parse_idle

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f'expected true or false, not "{text}"')


def _cp_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("source", metavar="VM", help="the VM to copy")
    parser.add_argument("new_name", nargs="?", metavar="NEW", help="name of the copy (default: generated)")
    parser.add_argument(
        "--copy-tags",
        metavar="BOOL",
        type=_boolean,
        default=True,
        help="give the copy the source's tags: true or false (default true)",
    )
    parser.add_argument(
        "--disk", metavar="SIZE", help="disk size of the copy, at least the source's; GiB if no unit"
    )


async def cp(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    if args.new_name is not None:
        check_vm_name(args.new_name)
    disk = resources.parse_disk(args.disk, ctx.services.config) if args.disk is not None else None
    source = manager.get_owned(ctx.user, args.source)
    vm = await manager.copy(
        ctx.user,
        source,
        name=args.new_name,
        disk_bytes=disk,
        copy_tags=args.copy_tags,
        progress=ctx.terminal.progress,
    )
    result = created_result(ctx, vm)
    result.text = f'Copied "{source.name}" to "{vm.name}".\n{result.text}'
    return result


def _rename_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("old", metavar="VM", help="the VM's current name")
    parser.add_argument("new", metavar="NEW", help="its new name")


async def rename(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = manager.get_owned(ctx.user, args.old)
    renamed = await manager.rename(vm, args.new)
    data = describe_vm(ctx, renamed)
    text = (
        f'Renamed "{args.old}" to "{renamed.name}".\n'
        f"  https:  {data['https_url']}\n"
        f"  ssh:    {data['ssh_command']}"
    )
    if renamed.state == "running":
        text += (
            "\nUSSYCODE_VM_NAME and USSYCODE_PUBLIC_URL in the VM change at its next start:"
            f' "restart {renamed.name}"'
        )
    return CommandResult(data, text)


def _tag_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "-d", dest="delete", action="store_true", help="remove the tags instead of adding them"
    )
    parser.add_argument("name", metavar="VM", help="VM name")
    parser.add_argument("tags", nargs="+", metavar="TAG", help="tags, separated by spaces or commas")


async def tag(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = manager.get_owned(ctx.user, args.name)
    requested = attributes.parse_tags(args.tags)
    if not requested:
        raise InvalidInput('tag needs at least one tag, such as "tag mild-owl web"')
    current = set(manager.details.get(vm.id).tags)
    if args.delete:
        missing = sorted(set(requested) - current)
        if missing:
            have = ", ".join(sorted(current)) or "none"
            raise NotFound(f'vm "{vm.name}" has no tag "{missing[0]}": its tags are {have}')
        tags = current - set(requested)
    else:
        tags = current | set(requested)
        attributes.check_tag_count(tags, vm.name)
    manager.details.set_tags(vm.id, tuple(tags))
    listed = ", ".join(sorted(tags)) or "none"
    return CommandResult({"name": vm.name, "tags": sorted(tags)}, f'vm "{vm.name}" tags: {listed}')


def _comment_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("name", metavar="VM", help="VM name")
    parser.add_argument("text", nargs="+", metavar="TEXT", help='the note, up to 200 bytes; "" clears it')


async def comment(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = manager.get_owned(ctx.user, args.name)
    text = attributes.check_comment(" ".join(args.text).strip())
    manager.details.set_comment(vm.id, text)
    message = f'vm "{vm.name}" comment: {text}' if text else f'vm "{vm.name}" comment cleared'
    return CommandResult({"name": vm.name, "comment": text}, message)


def _resize_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("name", metavar="VM", help="VM name")
    parser.add_argument("--cpu", metavar="N", help="vCPUs; applies at the next start")
    parser.add_argument(
        "--memory", metavar="SIZE", help="memory, e.g. 2G or 512M; MiB if no unit; applies at the next start"
    )
    parser.add_argument(
        "--disk",
        metavar="SIZE",
        help="disk size, e.g. 20G; GiB if no unit; only grows, at once, with the root filesystem",
    )
    parser.add_argument(
        "--idle",
        metavar="DURATION|never",
        help='suspend the VM after this long unused, e.g. 30m or 2h; "never" turns it off, "default"'
        " restores the server's setting",
    )


def _set_idle(ctx: CommandContext, vm: VM, text: str | None, seconds: int | None, lines: list[str]) -> None:
    """Store the VM's idle timeout of `--idle TEXT`, if given, and add a line about it to `lines`."""
    if text is None:
        return
    manager = ctx.services.manager
    manager.suspend_store.set_idle_seconds(vm.id, seconds)
    lines.append(f"idle:    suspends after {format_idle(manager.idle_timeout(vm))} unused")


async def resize(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    config = ctx.services.config
    manager = ctx.services.manager
    if args.cpu is None and args.memory is None and args.disk is None and args.idle is None:
        raise InvalidInput(f'resize needs --cpu, --memory, --disk or --idle: "resize {args.name} --disk 20G"')
    cpus = resources.parse_cpus(args.cpu, config) if args.cpu is not None else None
    memory_mb = resources.parse_memory_mb(args.memory, config) if args.memory is not None else None
    disk = resources.parse_disk(args.disk, config) if args.disk is not None else None
    idle = None
    if args.idle is not None and args.idle.strip().lower() != "default":
        idle = parse_idle(args.idle)
    vm = manager.get_owned(ctx.user, args.name)
    before = vm
    lines: list[str] = []
    if cpus is None and memory_mb is None and disk is None:
        _set_idle(ctx, vm, args.idle, idle, lines)
        data = describe_vm(ctx, vm)
        data["restart_needed"] = False
        return CommandResult(data, "\n".join(lines))
    # The idle timeout is stored after the resize, so that a rejected resize changes nothing.
    result = await manager.resize(
        vm, cpus=cpus, memory_mb=memory_mb, disk_bytes=disk, progress=ctx.terminal.progress
    )
    _set_idle(ctx, result.vm, args.idle, idle, lines)

    style = Style.of(ctx)
    vm = result.vm
    if disk is not None and disk != before.disk_bytes:
        line = f"disk:    {format_size(before.disk_bytes)} → {format_size(vm.disk_bytes)}"
        if result.filesystem_grown is True:
            line += ", root filesystem grown"
        elif result.filesystem_grown is False:
            line += f', the root filesystem grows at the next start: "restart {vm.name}"'
        else:
            line += ", the root filesystem grows when the VM starts"
        lines.append(line)
    pending = result.pending
    if cpus is not None:
        target = pending.get("cpus", vm.cpus)
        lines.append(
            f"cpus:    {before.cpus} → {target}" + (" (at the next start)" if "cpus" in pending else "")
        )
    if memory_mb is not None:
        target = pending.get("memory_mb", vm.memory_mb)
        lines.append(
            f"memory:  {format_size(before.memory_mb * 1024**2)} → {format_size(target * 1024**2)}"
            + (" (at the next start)" if "memory_mb" in pending else "")
        )
    if pending:
        lines.append(style.paint(f'Restart to apply: "restart {vm.name}"', "yellow"))
    data = describe_vm(ctx, vm)
    data["restart_needed"] = bool(pending)
    return CommandResult(data, "\n".join(lines))


COMMANDS = [
    Command(
        "cp",
        "Copy a VM: a copy-on-write copy of its disk with a new name, address and host keys.",
        cp,
        group="vms",
        arguments=_cp_arguments,
        examples=[
            "cp mild-owl",
            "cp mild-owl mild-owl-2 --copy-tags=false",
            "cp mild-owl big-owl --disk 40G",
        ],
    ),
    Command(
        "rename",
        "Rename a VM; its URL and SSH login follow.",
        rename,
        group="vms",
        arguments=_rename_arguments,
        examples=["rename mild-owl calm-fox"],
    ),
    Command(
        "tag",
        "Add tags to a VM, or remove them with -d.",
        tag,
        group="vms",
        arguments=_tag_arguments,
        examples=["tag mild-owl web demo", "tag mild-owl web,api", "tag -d mild-owl demo"],
    ),
    Command(
        "comment",
        "Set a VM's comment (up to 200 bytes), shown by ls -l.",
        comment,
        group="vms",
        arguments=_comment_arguments,
        examples=["comment mild-owl staging API for the demo", "comment mild-owl ''"],
    ),
    Command(
        "resize",
        "Change a VM's vCPUs, memory or disk; disks only grow.",
        resize,
        group="vms",
        arguments=_resize_arguments,
        examples=["resize mild-owl --disk 20G", "resize mild-owl --cpu 2 --memory 4G"],
    ),
]
