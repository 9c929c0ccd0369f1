"""VM commands: new, ls, start, stop, restart, rm."""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import time
from datetime import UTC, datetime
from typing import Any

from ussycode.commands.base import ArgumentParser, Command, CommandContext, CommandResult, InputTerminal
from ussycode.commands.render import Style, human_duration, table, vm_data, vm_text
from ussycode.config import format_size
from ussycode.errors import InvalidInput
from ussycode.names import check_vm_name
from ussycode.store import VM
from ussycode.store.vm_details import VMDetails
from ussycode.vm import attributes, resources
from ussycode.vm.idle import format_idle, parse_idle
from ussycode.vm.manager import NewVMOptions
from ussycode.vm.state import VMState

SETUP_SCRIPT_HINT = 'Paste the setup script, then a line with only "." (or press Ctrl-D):'
PROMPT_HINT = 'Type the first prompt for the agent, then a line with only "." (or press Ctrl-D):'


def _vm_argument(parser: ArgumentParser) -> None:
    parser.add_argument("name", metavar="VM", help="VM name")


def _new_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--name", help="VM name (default: a generated adjective-noun name)")
    parser.add_argument("--image", help="guest image (default: the server's default image)")
    parser.add_argument("--cpu", metavar="N", help="vCPUs (default: the server's default, usually 1)")
    parser.add_argument(
        "--memory", metavar="SIZE", help="memory, e.g. 2G or 512M; MiB if no unit (default: usually 1G)"
    )
    parser.add_argument(
        "--disk", metavar="SIZE", help="disk size, e.g. 20G; GiB if no unit (default: usually 10G)"
    )
    parser.add_argument(
        "--env",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="environment variable for login shells and services in the VM (repeatable)",
    )
    parser.add_argument(
        "--setup-script",
        metavar="FILE|-",
        help='script run once as user ussycode at first boot, up to 10 KiB; "-" reads it from stdin',
    )
    parser.add_argument(
        "--prompt",
        metavar="TEXT|-",
        help='start the coding agent pi at first boot in tmux session "agent" with this first'
        ' prompt, up to 16 KiB; "-" reads it from stdin',
    )
    parser.add_argument(
        "--tag", metavar="TAG", action="append", default=[], help="tag, repeatable or comma-separated"
    )
    parser.add_argument("--comment", metavar="TEXT", default="", help="a note about the VM, up to 200 bytes")
    parser.add_argument(
        "--idle",
        metavar="DURATION|never",
        help='suspend the VM after this long unused, e.g. 30m or 2h, or "never" (default: the server\'s)',
    )


async def read_setup_script(ctx: CommandContext, value: str | None) -> str | None:
    """Return the checked setup script named by `--setup-script VALUE`, or None without one.

    "-" reads the script from the terminal's input (stdin in exec mode, pasted lines in the
    REPL). A value with a line break is the script itself, which is how API clients send it.

    :raise InvalidInput: no input, a file name (the server cannot read the user's files), or
        an invalid script.
    """
    if value is None:
        return None
    if value == "-":
        if not isinstance(ctx.terminal, InputTerminal):
            raise InvalidInput(
                "--setup-script - reads stdin, which this client cannot send:"
                " pass the script text as the value"
            )
        script = await ctx.terminal.read_input(SETUP_SCRIPT_HINT, attributes.MAX_SETUP_SCRIPT_BYTES)
        if script is None:
            raise InvalidInput("--setup-script -: no script on stdin")
        return attributes.check_setup_script(script)
    if "\n" in value:
        return attributes.check_setup_script(value)
    command = ctx.services.config.ssh_command()
    raise InvalidInput(
        f'--setup-script "{value}": the server cannot read files on your machine;'
        f" send the script on stdin: {command} new --setup-script - < {value}"
    )


async def read_agent_prompt(ctx: CommandContext, value: str | None) -> str | None:
    """Return the checked prompt of `--prompt VALUE`, or None without one; "-" reads stdin.

    :raise InvalidInput: no input on stdin, or an invalid prompt.
    """
    if value is None:
        return None
    if value != "-":
        return attributes.check_agent_prompt(value)
    if not isinstance(ctx.terminal, InputTerminal):
        raise InvalidInput(
            "--prompt - reads stdin, which this client cannot send: pass the prompt text as the value"
        )
    prompt = await ctx.terminal.read_input(PROMPT_HINT, attributes.MAX_AGENT_PROMPT_BYTES)
    if prompt is None:
        raise InvalidInput("--prompt -: no prompt on stdin")
    return attributes.check_agent_prompt(prompt)


async def new(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    services = ctx.services
    config = services.config
    if args.name is not None:
        check_vm_name(args.name)
    options = NewVMOptions(
        cpus=resources.parse_cpus(args.cpu, config) if args.cpu is not None else None,
        memory_mb=resources.parse_memory_mb(args.memory, config) if args.memory is not None else None,
        disk_bytes=resources.parse_disk(args.disk, config) if args.disk is not None else None,
        env=attributes.parse_env(args.env),
        tags=attributes.parse_tags(args.tag),
        comment=attributes.check_comment(args.comment),
        idle_seconds=parse_idle(args.idle) if args.idle is not None else None,
    )
    attributes.check_tag_count(options.tags, args.name or "new")
    if args.setup_script == "-" and args.prompt == "-":
        raise InvalidInput("--setup-script - and --prompt - both read stdin: pass the prompt as text")
    script = await read_setup_script(ctx, args.setup_script)
    if script is not None:
        options = dataclasses.replace(options, setup_script=script)
    prompt = await read_agent_prompt(ctx, args.prompt)
    if prompt is not None:
        options = dataclasses.replace(options, agent_prompt=prompt)
    vm = await services.manager.create(
        ctx.user, name=args.name, image=args.image, options=options, progress=ctx.terminal.progress
    )
    return created_result(ctx, vm)


def created_result(ctx: CommandContext, vm: VM) -> CommandResult:
    """Return the result of `new` and `cp`: the VM, its URL and how to log in."""
    config = ctx.services.config
    data = describe_vm(ctx, vm)
    style = Style.of(ctx)
    text = (
        f"{vm_text(config, vm, style)}\n\n"
        f"Open a shell:   {data['ssh_command']}\n"
        f"Serve your app on port 8080 and open {data['https_url']}"
    )
    return CommandResult(data, text)


def uptime_seconds(vm: VM) -> float | None:
    """Return the seconds since the VM last became running, or None if it does not run."""
    if vm.state != VMState.RUNNING or not vm.started_at:
        return None
    started = datetime.strptime(vm.started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return max(0.0, time.time() - started.timestamp())


def describe_vm(ctx: CommandContext, vm: VM, details: VMDetails | None = None) -> dict[str, Any]:
    """Return the JSON form of a VM with its tags, comment, environment names and pending changes."""
    details = details or ctx.services.manager.details.get(vm.id)
    data = vm_data(ctx.services.config, vm)
    pending: dict[str, Any] = {}
    if details.pending_cpus is not None:
        pending["cpus"] = details.pending_cpus
    if details.pending_memory_mb is not None:
        pending["memory"] = format_size(details.pending_memory_mb * 1024 * 1024)
    uptime = uptime_seconds(vm)
    data.update(
        tags=list(details.tags),
        comment=details.comment,
        env=sorted(details.env),
        pending=pending,
        uptime_seconds=None if uptime is None else int(uptime),
        copied_from=details.copied_from,
        setup_script=None if details.setup_script is None else details.setup_status or "pending",
        idle_timeout=format_idle(ctx.services.manager.idle_timeout(vm)),
    )
    return data


def _ls_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "-l", dest="long", action="store_true", help="add resources, uptime, tags and comment"
    )
    parser.add_argument("pattern", nargs="?", metavar="PATTERN", help='shell glob on names, e.g. "web-*"')
    parser.add_argument("--tag", metavar="TAG", help="only VMs with this tag")


async def ls(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    config = ctx.services.config
    style = Style.of(ctx)
    vms = ctx.services.store.list_vms(owner_id=ctx.user.id)
    details = ctx.services.manager.details.for_owner(ctx.user.id)
    if args.pattern:
        vms = [vm for vm in vms if fnmatch.fnmatchcase(vm.name, args.pattern)]
    if args.tag:
        vms = [vm for vm in vms if args.tag in details.get(vm.id, VMDetails(vm.id)).tags]
    data = [describe_vm(ctx, vm, details.get(vm.id, VMDetails(vm.id))) for vm in vms]

    if not vms:
        if args.pattern or args.tag:
            return CommandResult(data, "No VMs match.")
        return CommandResult(data, 'You have no VMs yet. Create one with "new".')
    state_column = {1: style.state}
    if not args.long:
        rows = [[vm.name, vm.state, vm.ip, config.vm_https_url(vm.name)] for vm in vms]
        return CommandResult(
            data, table(["name", "state", "ip", "url"], rows, style, paint=state_column, shrink=[3])
        )

    rows = [_long_row(vm, entry) for vm, entry in zip(vms, data, strict=True)]
    headers = ["name", "state", "cpus", "memory", "disk", "uptime", "tags", "comment"]
    text = table(headers, rows, style, paint=state_column, shrink=[7, 6])
    if any(entry["pending"] for entry in data):
        text += "\n\n→ marks a resize that applies at the next start."
    return CommandResult(data, text)


def _long_row(vm: VM, entry: dict[str, Any]) -> list[str]:
    """Return the `ls -l` cells of a VM; a pending resize shows as "2→4"."""
    pending = entry["pending"]
    cpus = str(vm.cpus) + (f"→{pending['cpus']}" if "cpus" in pending else "")
    memory = entry["memory"] + (f"→{pending['memory']}" if "memory" in pending else "")
    uptime = entry["uptime_seconds"]
    return [
        vm.name,
        vm.state,
        cpus,
        memory,
        entry["disk"],
        "-" if uptime is None else human_duration(uptime),
        ",".join(entry["tags"]) or "-",
        entry["comment"] or "-",
    ]


async def start(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = await manager.start(manager.get_owned(ctx.user, args.name), ctx.terminal.progress)
    return CommandResult(describe_vm(ctx, vm), vm_text(ctx.services.config, vm, Style.of(ctx)))


async def stop(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = await manager.stop(manager.get_owned(ctx.user, args.name), ctx.terminal.progress)
    return CommandResult(describe_vm(ctx, vm), f'vm "{vm.name}" stopped')


async def restart(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = await manager.restart(manager.get_owned(ctx.user, args.name), ctx.terminal.progress)
    return CommandResult(describe_vm(ctx, vm), vm_text(ctx.services.config, vm, Style.of(ctx)))


def _rm_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="VM", help="VM names")
    parser.add_argument("--force", "-f", action="store_true", help="remove without asking for confirmation")


async def _confirm_rm(ctx: CommandContext, vms: list[VM]) -> None:
    names = [vm.name for vm in vms]
    if not ctx.terminal.interactive:
        raise InvalidInput(
            "rm needs confirmation: type the command in the REPL, or add --force:"
            f' "rm {" ".join(names)} --force"'
        )
    if len(vms) == 1:
        expected, what = names[0], "name"
        question = f'This deletes vm "{expected}" and its disk for good. Type its name to confirm: '
    else:
        expected, what = f"delete {len(vms)}", "text"
        question = (
            f"This deletes {len(vms)} VMs ({', '.join(names)}) and their disks for good."
            f' Type "{expected}" to confirm: '
        )
    answer = await ctx.terminal.prompt(question)
    if (answer or "").strip() != expected:
        raise InvalidInput(f'rm cancelled: the typed {what} did not match "{expected}"')


async def rm(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vms: list[VM] = []
    for name in dict.fromkeys(args.names):
        vms.append(manager.get_owned(ctx.user, name))
    if not args.force:
        await _confirm_rm(ctx, vms)
    removed = []
    for vm in vms:
        if len(vms) > 1:
            ctx.terminal.progress(f'removing "{vm.name}"')
        await manager.remove(vm)
        removed.append(vm.name)
    if len(removed) == 1:
        return CommandResult({"name": removed[0], "removed": True}, f'vm "{removed[0]}" removed')
    return CommandResult({"removed": removed}, f"removed {len(removed)} VMs: {', '.join(removed)}")


COMMANDS = [
    Command(
        "new",
        "Create a VM and boot it; prints its HTTPS URL and SSH command.",
        new,
        group="vms",
        arguments=_new_arguments,
        examples=[
            "new",
            "new --name mild-owl --cpu 2 --memory 2G --disk 20G",
            "new --name api --env PORT=8080 --env MODE=dev --tag web,demo --comment 'demo API'",
            "new --name api --setup-script - < setup.sh   (from your shell, with ssh)",
        ],
    ),
    Command(
        "ls",
        "List your VMs; -l adds resources, uptime, tags and comment.",
        ls,
        group="vms",
        arguments=_ls_arguments,
        examples=["ls", "ls -l", "ls 'web-*'", "ls --tag demo --json"],
    ),
    Command(
        "start",
        "Boot a stopped VM.",
        start,
        group="vms",
        arguments=_vm_argument,
        examples=["start mild-owl"],
    ),
    Command(
        "stop",
        "Shut a VM down; its disk is kept.",
        stop,
        group="vms",
        arguments=_vm_argument,
        examples=["stop mild-owl"],
    ),
    Command(
        "restart",
        "Stop a VM and boot it again; applies CPU and memory changes.",
        restart,
        group="vms",
        arguments=_vm_argument,
        examples=["restart mild-owl"],
    ),
    Command(
        "rm",
        "Delete VMs and their disks. Asks for confirmation unless --force is given.",
        rm,
        group="vms",
        arguments=_rm_arguments,
        examples=["rm mild-owl", "rm mild-owl calm-fox --force"],
    ),
]
