"""VM commands: new, ls, start, stop, restart, rm."""

from __future__ import annotations

import argparse

from ussycode.commands.base import ArgumentParser, Command, CommandContext, CommandResult
from ussycode.commands.render import table, vm_data, vm_text
from ussycode.errors import InvalidInput
from ussycode.names import check_vm_name


def _name_argument(parser: ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="VM name")


def _new_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--name", help="VM name (default: a generated adjective-noun name)")
    parser.add_argument("--image", help="guest image (default: the server's default image)")


async def new(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    services = ctx.services
    if args.name is not None:
        check_vm_name(args.name)
    vm = await services.manager.create(
        ctx.user, name=args.name, image=args.image, progress=ctx.terminal.progress
    )
    data = vm_data(services.config, vm)
    text = (
        f"{vm_text(services.config, vm)}\n\n"
        f"Open a shell:   {data['ssh_command']}\n"
        f"Serve your app on port 8080 and open {data['https_url']}"
    )
    return CommandResult(data, text)


def _ls_arguments(parser: ArgumentParser) -> None:
    del parser


async def ls(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    del args
    config = ctx.services.config
    vms = ctx.services.store.list_vms(owner_id=ctx.user.id)
    data = [vm_data(config, vm) for vm in vms]
    if not vms:
        return CommandResult(data, 'You have no VMs yet. Create one with "new".')
    rows = [[vm.name, vm.state, vm.ip, config.vm_https_url(vm.name)] for vm in vms]
    return CommandResult(data, table(["name", "state", "ip", "url"], rows))


async def start(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = await manager.start(manager.get_owned(ctx.user, args.name), ctx.terminal.progress)
    return CommandResult(vm_data(ctx.services.config, vm), vm_text(ctx.services.config, vm))


async def stop(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = await manager.stop(manager.get_owned(ctx.user, args.name), ctx.terminal.progress)
    return CommandResult(vm_data(ctx.services.config, vm), f'vm "{vm.name}" stopped')


async def restart(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = await manager.restart(manager.get_owned(ctx.user, args.name), ctx.terminal.progress)
    return CommandResult(vm_data(ctx.services.config, vm), vm_text(ctx.services.config, vm))


def _rm_arguments(parser: ArgumentParser) -> None:
    _name_argument(parser)
    parser.add_argument("--force", "-f", action="store_true", help="remove without asking to type the name")


async def rm(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = manager.get_owned(ctx.user, args.name)
    if not args.force:
        if not ctx.terminal.interactive:
            raise InvalidInput(
                f'rm needs confirmation: type the command in the REPL, or add --force: "rm {vm.name} --force"'
            )
        answer = await ctx.terminal.prompt(
            f'This deletes vm "{vm.name}" and its disk for good. Type its name to confirm: '
        )
        if (answer or "").strip() != vm.name:
            raise InvalidInput(f'rm cancelled: the typed name did not match "{vm.name}"')
    await manager.remove(vm)
    return CommandResult({"name": vm.name, "removed": True}, f'vm "{vm.name}" removed')


COMMANDS = [
    Command(
        "new",
        "Create a VM and boot it; prints its HTTPS URL and SSH command.",
        new,
        group="vms",
        arguments=_new_arguments,
        examples=["new", "new --name mild-owl", "new --name api --image ussyuntu --json"],
    ),
    Command(
        "ls",
        "List your VMs.",
        ls,
        group="vms",
        arguments=_ls_arguments,
        examples=["ls", "ls --json"],
    ),
    Command(
        "start",
        "Boot a stopped VM.",
        start,
        group="vms",
        arguments=_name_argument,
        examples=["start mild-owl"],
    ),
    Command(
        "stop",
        "Shut a VM down; its disk is kept.",
        stop,
        group="vms",
        arguments=_name_argument,
        examples=["stop mild-owl"],
    ),
    Command(
        "restart",
        "Stop a VM and boot it again.",
        restart,
        group="vms",
        arguments=_name_argument,
        examples=["restart mild-owl"],
    ),
    Command(
        "rm",
        "Delete a VM and its disk. Asks to type the name unless --force is given.",
        rm,
        group="vms",
        arguments=_rm_arguments,
        examples=["rm mild-owl", "rm mild-owl --force"],
    ),
]
