"""Suspend and resume commands: save a VM's memory to disk, and bring it back."""

from __future__ import annotations

import argparse

from ussycode.commands.base import ArgumentParser, Command, CommandContext, CommandResult
from ussycode.commands.render import Style, vm_text
from ussycode.commands.vm import describe_vm
from ussycode.config import format_size


def _vm_argument(parser: ArgumentParser) -> None:
    parser.add_argument("name", metavar="VM", help="VM name")


async def suspend(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = await manager.suspend(manager.get_owned(ctx.user, args.name), ctx.terminal.progress)
    data = describe_vm(ctx, vm)
    state_bytes = manager.suspend_store.state_bytes_of_vm(vm.id)
    data["state_bytes"] = state_bytes
    text = (
        f'vm "{vm.name}" suspended ({format_size(state_bytes)} of saved state).\n'
        f'It resumes on the next SSH login, request to its URL or "resume {vm.name}".'
    )
    return CommandResult(data, text)


async def resume(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = await manager.resume(manager.get_owned(ctx.user, args.name), ctx.terminal.progress)
    return CommandResult(describe_vm(ctx, vm), vm_text(ctx.services.config, vm, Style.of(ctx)))


COMMANDS = [
    Command(
        "suspend",
        "Save a running VM's memory next to its disk and stop its hypervisor; resume brings it back.",
        suspend,
        group="vms",
        arguments=_vm_argument,
        examples=["suspend mild-owl"],
    ),
    Command(
        "resume",
        "Restore a suspended VM with its processes; boots it from its disk if the saved state fails.",
        resume,
        group="vms",
        arguments=_vm_argument,
        examples=["resume mild-owl"],
    ),
]
