"""Parse a command line with shell quoting rules and run the named command."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from dataclasses import dataclass
from typing import Any

from ussycode.commands import account, browser, keys, share, ssh, vm
from ussycode.commands.base import Command, CommandContext
from ussycode.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RuntimeFailure,
    UssycodeError,
)

log = logging.getLogger(__name__)

REGISTRY: dict[str, Command] = {
    command.name: command
    for command in [
        *vm.COMMANDS,
        *ssh.COMMANDS,
        *share.COMMANDS,
        *account.COMMANDS,
        *browser.COMMANDS,
        *keys.COMMANDS,
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


def find_command(name: str) -> Command:
    command = REGISTRY.get(name)
    if command is None:
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
    """Return whether `argv` is `COMMAND --help` or `COMMAND ACTION --help`.

    Checked before parsing, because a command whose ACTION or arguments are required would
    otherwise fail on the missing argument. A later `-h` is left alone, since `ssh VM ls -h`
    passes it to the VM.
    """
    flags = ("--help", "-h")
    if len(argv) > 1 and argv[1] in flags:
        return True
    return len(argv) > 2 and argv[1] in command.subcommands and argv[2] in flags


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
            raise InvalidInput(f'{command.name}: {exc}; run "{command.name} --help" for usage') from exc
        if args is None or args.help:
            if json_output:
                usage = {"name": command.name, "summary": command.summary, "usage": command.usage()}
                return Outcome(0, json.dumps(usage, indent=2) + "\n", "", data=usage)
            return Outcome(0, command.usage() + "\n", "")
        json_output = ctx.json_output = bool(args.json)
        log.info("conn=%s user=%s command=%s", ctx.conn_id, ctx.user.handle, command.name)
        result = await command.handler(ctx, args)
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
