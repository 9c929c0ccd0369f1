"""Account and session commands: whoami, email, help, exit."""

from __future__ import annotations

import argparse

from ussycode import quota
from ussycode.auth.audit import Action
from ussycode.commands.base import (
    ArgumentParser,
    Command,
    CommandContext,
    CommandResult,
    add_subcommand,
    add_subcommands,
)
from ussycode.commands.render import Style
from ussycode.errors import InvalidInput
from ussycode.store.audit import AuditLog
from ussycode.store.emails import Emails, UserEmail, check_email

UNVERIFIED_NOTE = (
    "unverified: verification by mail is not available on this server yet, and until an address "
    "is verified, invitations made to it by email do not reach you"
)


def _email_data(address: UserEmail | None) -> dict[str, object] | None:
    if address is None:
        return None
    return {"address": address.email, "verified": address.verified, "updated_at": address.updated_at}


def _email_text(address: UserEmail | None) -> str:
    if address is None:
        return 'none (set one with "email set ADDRESS")'
    return f"{address.email} ({'verified' if address.verified else 'unverified'})"


async def whoami(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    del args
    store = ctx.services.store
    keys = store.list_keys(ctx.user.id)
    vm_count = len(store.list_vms(owner_id=ctx.user.id))
    address = Emails(store).get(ctx.user.id)
    data = {
        "handle": ctx.user.handle,
        "user_id": ctx.user.id,
        "email": _email_data(address),
        "created_at": ctx.user.created_at,
        "ssh_keys": [{"fingerprint": k.fingerprint, "name": k.name} for k in keys],
        "vms": vm_count,
    }
    trust_data, trust_lines = quota.describe(store, ctx.services.config, ctx.user)
    data.update(trust_data)
    lines = [
        f"handle:   {ctx.user.handle}",
        f"email:    {_email_text(address)}",
        f"since:    {ctx.user.created_at}",
        f"vms:      {vm_count}",
        "ssh keys:",
        *[f"  {k.fingerprint}  {k.name}".rstrip() for k in keys],
        *trust_lines,
    ]
    return CommandResult(data, "\n".join(lines))


def _email_arguments(parser: ArgumentParser) -> None:
    actions = add_subcommands(parser)
    add_subcommand(actions, "show", "show your email address and whether it is verified")
    set_parser = add_subcommand(
        actions, "set", "store your email address (unverified until verified by mail)"
    )
    set_parser.add_argument("address", metavar="ADDRESS", help="an address such as ann@example.org")
    add_subcommand(actions, "clear", "remove your email address")


async def email(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    emails = Emails(ctx.services.store)
    audit = AuditLog(ctx.services.store)
    if args.action == "set":
        address = emails.set(ctx.user.id, check_email(args.address))
        audit.add(
            actor_id=ctx.user.id, actor=ctx.user.handle, action=Action.SET_EMAIL, target=ctx.user.handle
        )
        return CommandResult(_email_data(address), f"email set to {address.email} ({UNVERIFIED_NOTE})")
    if args.action == "clear":
        removed = emails.clear(ctx.user.id)
        if removed:
            audit.add(
                actor_id=ctx.user.id, actor=ctx.user.handle, action=Action.CLEAR_EMAIL, target=ctx.user.handle
            )
        return CommandResult(None, "email address removed" if removed else "you had no email address")
    current = emails.get(ctx.user.id)
    text = _email_text(current)
    if current is not None and not current.verified:
        text = f"{current.email} ({UNVERIFIED_NOTE})"
    return CommandResult(_email_data(current), text)


GROUP_TITLES = {
    "vms": "VMs",
    "sharing": "Sharing",
    "account": "Account and keys",
    "api": "API",
    "llm": "LLM gateway",
    "learn": "Help and learning",
    "general": "Session",
}


def _help_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "command", nargs="*", metavar="COMMAND", help='command to describe, e.g. "new" or "ssh-key add"'
    )


async def help_command(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    from ussycode.commands.dispatch import REGISTRY, find_command

    style = Style.of(ctx)
    if args.command:
        if len(args.command) > 2:
            raise InvalidInput('help takes a command and at most one action, e.g. "help ssh-key add"')
        command = find_command(args.command[0])
        data, text = command.help_for(args.command[1] if len(args.command) > 1 else None)
        return CommandResult(data, text)
    groups: dict[str, list[Command]] = {}
    for command in REGISTRY.values():
        groups.setdefault(command.group, []).append(command)
    order = [group for group in GROUP_TITLES if group in groups] + sorted(set(groups) - set(GROUP_TITLES))
    width = max(len(name) for name in REGISTRY)
    lines: list[str] = []
    for group in order:
        if lines:
            lines.append("")
        lines.append(style.paint(GROUP_TITLES.get(group, group.capitalize()), "bold"))
        for command in groups[group]:
            lines.append(f"{style.paint(command.name.ljust(width), 'cyan')}  {command.summary}")
    lines += ["", 'Run "help COMMAND" or "COMMAND --help" for details. Every command takes --json.']
    listing = [
        {"name": command.name, "group": command.group, "summary": command.summary}
        for group in order
        for command in groups[group]
    ]
    return CommandResult(listing, "\n".join(lines))


async def exit_command(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    del ctx, args
    return CommandResult({"exit": True}, "bye", exit_session=True)


COMMANDS = [
    Command(
        "whoami",
        "Show your handle, email, SSH keys, trust tier, limits and use.",
        whoami,
        group="account",
        examples=["whoami"],
    ),
    Command(
        "email",
        "Show, set or clear your email address.",
        email,
        group="account",
        arguments=_email_arguments,
        subcommands=("show", "set", "clear"),
        examples=["email show", "email set ann@example.org", "email clear"],
    ),
    Command(
        "help",
        "List commands by group, or describe one with its flags and examples.",
        help_command,
        group="learn",
        arguments=_help_arguments,
        examples=["help", "help new", "help ssh-key add", "help cp --json"],
    ),
    Command("exit", "Leave the REPL.", exit_command, examples=["exit"]),
]
