"""Account and session commands: whoami, help, exit."""

from __future__ import annotations

import argparse

from ussycode.commands.base import ArgumentParser, Command, CommandContext, CommandResult
from ussycode.commands.render import table


async def whoami(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    del args
    store = ctx.services.store
    keys = store.list_keys(ctx.user.id)
    vm_count = len(store.list_vms(owner_id=ctx.user.id))
    data = {
        "handle": ctx.user.handle,
        "user_id": ctx.user.id,
        "created_at": ctx.user.created_at,
        "ssh_keys": [{"fingerprint": k.fingerprint, "name": k.name} for k in keys],
        "vms": vm_count,
    }
    lines = [
        f"handle:   {ctx.user.handle}",
        f"since:    {ctx.user.created_at}",
        f"vms:      {vm_count}",
        "ssh keys:",
        *[f"  {k.fingerprint}  {k.name}".rstrip() for k in keys],
    ]
    return CommandResult(data, "\n".join(lines))


def _help_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("command", nargs="?", metavar="COMMAND", help="command to describe")


async def help_command(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    from ussycode.commands.dispatch import REGISTRY, find_command

    if args.command:
        command = find_command(args.command)
        usage = {
            "name": command.name,
            "summary": command.summary,
            "usage": command.usage(),
            "examples": command.examples,
        }
        return CommandResult(usage, command.usage())
    rows = [[command.name, command.summary] for command in REGISTRY.values()]
    data = [
        {"name": command.name, "group": command.group, "summary": command.summary}
        for command in REGISTRY.values()
    ]
    text = (
        table(["command", "summary"], rows)
        + '\n\nRun "help COMMAND" or "COMMAND --help" for details. Every command takes --json.'
    )
    del ctx
    return CommandResult(data, text)


async def exit_command(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    del ctx, args
    return CommandResult({"exit": True}, "bye", exit_session=True)


COMMANDS = [
    Command("whoami", "Show your handle and SSH keys.", whoami, group="account", examples=["whoami"]),
    Command(
        "help",
        "List commands, or describe one.",
        help_command,
        arguments=_help_arguments,
        examples=["help", "help new"],
    ),
    Command("exit", "Leave the REPL.", exit_command, examples=["exit"]),
]
