"""Parse a command line with shell quoting rules and run the named command."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from dataclasses import dataclass
from typing import Any

from ussycode.commands import (
    account,
    admin,
    browser,
    docs,
    edit,
    keys,
    llm,
    observe,
    settings,
    share,
    ssh,
    suspend,
    tutorial,
    vm,
)
from ussycode.commands.base import Command, CommandContext, without_values
from ussycode.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RuntimeFailure,
    UssycodeError,
)
from ussycode.store.history import HistoryStore

log = logging.getLogger(__name__)

REGISTRY: dict[str, Command] = {
    command.name: command
    for command in [
        *vm.COMMANDS,
        *suspend.COMMANDS,
        *edit.COMMANDS,
        *observe.COMMANDS,
        *ssh.COMMANDS,
        *share.COMMANDS,
        *account.COMMANDS,
        *settings.COMMANDS,
        *admin.COMMANDS,
        *browser.COMMANDS,
        *keys.COMMANDS,
        *llm.COMMANDS,
        *docs.COMMANDS,
        *tutorial.COMMANDS,
    ]
}

_ERROR_CODES: tuple[tuple[type[UssycodeError], str], ...] = (
    (InvalidInput, "invalid_input"),
    (NotFound, "not_found"),
    (Conflict, "conflict"),
    (PermissionDenied, "permission_denied"),
    (QuotaExceeded, "quota_exceeded"),
    (RuntimeFailure, "runtime_failure"),
)


class UnknownCommand(NotFound):
    """The first word of the line names no command."""


def edit_distance(first: str, second: str) -> int:
    """Return the optimal string alignment distance: insertions, deletions, substitutions and
    swaps of two neighbouring characters each count 1."""
    previous2: list[int] = []
    previous = list(range(len(second) + 1))
    for i, char in enumerate(first, start=1):
        current = [i] + [0] * len(second)
        for j, other in enumerate(second, start=1):
            cost = 0 if char == other else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and char == second[j - 2] and first[i - 2] == other:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def closest_command(name: str) -> str | None:
    """Return the command the user probably meant by `name`, or None if none is close."""
    prefixed = [command for command in REGISTRY if len(name) >= 2 and command.startswith(name)]
    if len(prefixed) == 1:
        return prefixed[0]
    best = min(sorted(REGISTRY), key=lambda command: edit_distance(name, command))
    limit = 1 if len(name) <= 4 else 2
    return best if edit_distance(name, best) <= limit else None


def find_command(name: str) -> Command:
    """Return the command `name`.

    :raise UnknownCommand: no command has that name; the message suggests the closest one.
    """
    command = REGISTRY.get(name)
    if command is None:
        close = closest_command(name)
        if close:
            raise UnknownCommand(
                f'unknown command "{name}": did you mean "{close}"? Run "help" to list commands'
            )
        raise UnknownCommand(f'unknown command "{name}": run "help" to list commands')
    return command


def error_code(exc: UssycodeError) -> str:
    for kind, code in _ERROR_CODES:
        if isinstance(exc, kind):
            return "unknown_command" if isinstance(exc, UnknownCommand) else code
    return "error"


@dataclass
class Outcome:
    """Output of one command: `stdout` and `stderr` text and the exit status."""

    status: int
    stdout: str
    stderr: str
    exit_session: bool = False
    data: Any = None
    error: UssycodeError | None = None


def split_line(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise InvalidInput(f"cannot parse the command line: {exc}") from exc


def _wants_json(argv: list[str]) -> bool:
    """Guess `--json` before parsing, for errors that happen before the parser runs."""
    return "--json" in argv


def _asks_help(command: Command, argv: list[str]) -> bool:
    """Return whether `argv` is `COMMAND --help` or `COMMAND ACTION --help`, with or without --json.

    Checked before parsing, because a command whose ACTION or arguments are required would
    otherwise fail on the missing argument. A later `-h` is left alone, since `ssh VM ls -h`
    passes it to the VM.
    """
    flags = ("--help", "-h")
    words = [word for word in argv if word != "--json"]
    if len(words) > 1 and words[1] in flags:
        return True
    return len(words) > 2 and words[1] in command.subcommands and words[2] in flags


def _help_action(command: Command, argv: list[str]) -> str | None:
    """Return the ACTION of `COMMAND ACTION --help`, or None for the command's own help."""
    words = [word for word in argv if word != "--json"]
    return words[1] if len(words) > 2 and words[1] in command.subcommands else None


def _record_run(ctx: CommandContext, command: Command, argv: list[str], *, succeeded: bool) -> None:
    """Log the command's name for the tutorial's checks; a store failure does not fail the command."""
    try:
        HistoryStore(ctx.services.store).add_run(
            ctx.user.id,
            command.permission_name([word for word in argv if word != "--json"]),
            succeeded=succeeded,
        )
    except UssycodeError as exc:
        log.warning("conn=%s user=%s recording the command failed: %s", ctx.conn_id, ctx.user.handle, exc)


async def execute(ctx: CommandContext, argv: list[str]) -> Outcome:
    """Run one command and render its result, or its `UssycodeError` as an error outcome."""
    json_output = _wants_json(argv)
    ctx.json_output = json_output
    try:
        if not argv:
            return Outcome(0, "", "")
        command = find_command(argv[0])
        wants_help = _asks_help(command, argv)
        parser = command.parser()
        try:
            args = None if wants_help else parser.parse_args(argv[1:])
        except argparse.ArgumentError as exc:
            # The parser has exit_on_error=False, so an invalid choice raises instead of calling error().
            message = without_values(str(exc)) if command.secret_arguments else str(exc)
            raise InvalidInput(f'{command.name}: {message}; run "{command.name} --help" for usage') from exc
        if args is None or args.help:
            usage, text = command.help_for(_help_action(command, argv))
            if json_output:
                return Outcome(0, json.dumps(usage, indent=2) + "\n", "", data=usage)
            return Outcome(0, text + "\n", "")
        json_output = ctx.json_output = bool(args.json)
        log.info("conn=%s user=%s command=%s", ctx.conn_id, ctx.user.handle, command.name)
        try:
            result = await command.handler(ctx, args)
        except UssycodeError:
            _record_run(ctx, command, argv, succeeded=False)
            raise
        _record_run(ctx, command, argv, succeeded=True)
    except UssycodeError as exc:
        log.info("conn=%s user=%s command failed: %s", ctx.conn_id, ctx.user.handle, exc.message)
        stdout = ""
        if json_output:
            document = {"error": {"code": error_code(exc), "message": exc.message}}
            stdout = json.dumps(document, indent=2) + "\n"
        return Outcome(1, stdout, f"error: {exc.message}\n", error=exc)
    if json_output:
        return Outcome(
            result.exit_status, json.dumps(result.data, indent=2) + "\n", "", result.exit_session, result.data
        )
    text = result.text + "\n" if result.text else ""
    return Outcome(result.exit_status, text, "", result.exit_session, result.data)
