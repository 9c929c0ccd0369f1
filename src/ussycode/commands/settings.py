"""The `settings` command: show and change the user's own settings."""

from __future__ import annotations

import argparse

from ussycode.auth.audit import Action
from ussycode.commands.base import (
    ArgumentParser,
    Command,
    CommandContext,
    CommandResult,
    add_subcommand,
    add_subcommands,
)
from ussycode.store.audit import AuditLog
from ussycode.store.user_settings import SETTINGS, UserSettings


def _settings_arguments(parser: ArgumentParser) -> None:
    actions = add_subcommands(parser)
    add_subcommand(actions, "show", "show every setting with its value")
    for setting in SETTINGS.values():
        action = add_subcommand(actions, setting.key, setting.summary)
        action.add_argument("value", metavar="|".join(setting.choices), help=f"default: {setting.default}")


async def settings(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    store = UserSettings(ctx.services.store)
    if args.action != "show":
        store.set(ctx.user.id, args.action, args.value)
        AuditLog(ctx.services.store).add(
            actor_id=ctx.user.id,
            actor=ctx.user.handle,
            action=Action.SET_SETTING,
            target=ctx.user.handle,
            detail=f"{args.action}={args.value}",
        )
        text = f"{args.action} is {args.value}: {SETTINGS[args.action].takes_effect}"
        return CommandResult({args.action: args.value}, text)

    values = store.all(ctx.user.id)
    width = max(len(key) for key in values)
    lines = [f"{key.ljust(width)}  {value:<3}  {SETTINGS[key].summary}" for key, value in values.items()]
    return CommandResult(values, "\n".join(lines))


COMMANDS = [
    Command(
        "settings",
        "Show or change your settings, such as whether logging into a VM starts the coding agent.",
        settings,
        group="account",
        arguments=_settings_arguments,
        subcommands=("show", *SETTINGS),
        examples=["settings show", "settings agent-on-login off"],
    ),
]
