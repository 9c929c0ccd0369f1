"""Command definitions, argument parsing and the context a command runs in."""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, runtime_checkable

from ussycode.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    import asyncssh

    from ussycode.config import Config
    from ussycode.store import Store, User
    from ussycode.vm.manager import VMManager


@dataclass
class CommandResult:
    """Output of a command: `data` for `--json`, `text` for people."""

    data: Any
    text: str
    exit_session: bool = False
    exit_status: int = 0


@dataclass
class Services:
    """Platform objects that commands act on."""

    config: Config
    store: Store
    manager: VMManager


class Terminal(Protocol):
    """The user's side of a command: prompts and progress lines."""

    interactive: bool

    async def prompt(self, question: str) -> str | None:
        """Ask a question and return the typed line, or None at end of input."""

    def progress(self, message: str) -> None:
        """Show a progress line (not part of the command's result)."""


# Opens an SSH connection into a VM; the argument is the path of a forwarded ssh-agent socket.
GuestConnector = Callable[["str | None"], Awaitable["asyncssh.SSHClientConnection"]]


@runtime_checkable
class InputTerminal(Protocol):
    """A terminal that can pass the user's input to a command, such as a script on stdin."""

    async def read_input(self, hint: str, max_bytes: int) -> str | None:
        """Return text the user sends, up to end of input, or None if there is none to read.

        `hint` shows an interactive user how to end the input.
        :raise InvalidInput: the input is over `max_bytes` bytes.
        """


@runtime_checkable
class AttachTerminal(Protocol):
    """A terminal that can hand its keyboard and screen to a session inside a VM."""

    can_attach: bool

    async def attach(self, connect: GuestConnector, command: str | None) -> int:
        """Run a shell (`command` None) or `command` in the VM on this terminal; return its exit status."""


@dataclass
class CommandContext:
    """What a command runs with: the platform, the user, and how output is shown.

    `color` allows ANSI colours and `width` is the terminal's width in columns. Both are set
    only for a terminal (a PTY), so piped output and JSON stay plain.
    """

    services: Services
    user: User
    terminal: Terminal
    conn_id: str = "-"
    json_output: bool = False
    color: bool = False
    width: int | None = None


def without_values(message: str) -> str:
    """Return an argparse error message without the argument values it repeats."""
    if message.startswith("unrecognized arguments:"):
        return "unexpected extra arguments"
    return re.sub(r"invalid choice: .*? \(choose from", "invalid choice (choose from", message, flags=re.S)


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser that raises `InvalidInput` instead of printing and exiting."""

    # A command whose arguments may hold a secret sets this, so errors (which are logged) do not
    # repeat the arguments.
    hides_values = False

    def error(self, message: str) -> NoReturn:
        if self.hides_values:
            message = without_values(message)
        raise InvalidInput(f'{self.prog}: {message}; run "{self.prog} --help" for usage')

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise InvalidInput(message or f"{self.prog}: invalid arguments")


def add_subcommand(actions: Any, name: str, summary: str) -> ArgumentParser:
    """Add a subcommand parser that also takes --json and --help, like every command."""
    parser: ArgumentParser = actions.add_parser(name, help=summary, description=summary, add_help=False)
    # SUPPRESS keeps an absent flag from overwriting the same flag given before the action, as
    # in "share --json show VM", because argparse applies a subparser's defaults last.
    parser.add_argument("--help", "-h", action="store_true", default=argparse.SUPPRESS, help="show this help")
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document"
    )
    return parser


def add_subcommands(parser: ArgumentParser) -> Any:
    """Add the ACTION positional that subcommands hang off; returns argparse's subparsers action."""
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=ArgumentParser)


Handler = Callable[[CommandContext, argparse.Namespace], Awaitable[CommandResult]]


@dataclass
class Command:
    """One user command: its name, help, argument definitions and handler."""

    name: str
    summary: str
    handler: Handler
    group: str = "general"
    arguments: Callable[[ArgumentParser], None] = lambda parser: None
    examples: list[str] = field(default_factory=list)
    subcommands: tuple[str, ...] = ()
    # The arguments may hold a secret: parse errors do not repeat them.
    secret_arguments: bool = False

    def permission_name(self, argv: list[str]) -> str:
        """Return the name a token's `cmds` must list to run `argv`, e.g. "ssh-key list"."""
        if len(argv) > 1 and argv[1] in self.subcommands:
            return f"{self.name} {argv[1]}"
        return self.name

    def parser(self) -> ArgumentParser:
        parser = ArgumentParser(
            prog=self.name,
            description=self.summary,
            add_help=False,
            exit_on_error=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=("examples:\n  " + "\n  ".join(self.examples)) if self.examples else None,
        )
        parser.hides_values = self.secret_arguments
        parser.add_argument("--help", "-h", action="store_true", help="show this help")
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        self.arguments(parser)
        return parser

    def usage(self) -> str:
        return self.parser().format_help().rstrip()

    def describe(self) -> dict[str, Any]:
        """Return the command's help as data: what `help CMD --json` and `CMD --help --json` print."""
        parser = self.parser()
        data: dict[str, Any] = {
            "name": self.name,
            "summary": self.summary,
            "group": self.group,
            "usage": parser.format_usage().removeprefix("usage: ").strip(),
            "help": self.usage(),
            "arguments": _describe_arguments(parser),
            "examples": self.examples,
        }
        subparsers = _subparsers(parser)
        if subparsers is not None:
            data["subcommands"] = [
                {
                    "name": name,
                    "summary": sub.description or "",
                    "usage": sub.format_usage().removeprefix("usage: ").strip(),
                    "arguments": _describe_arguments(sub),
                }
                for name, sub in subparsers.choices.items()
            ]
        return data

    def help_for(self, action: str | None = None) -> tuple[dict[str, Any], str]:
        """Return the help of the command, or of one of its actions, as data and as text.

        :raise NotFound: the command has no such action.
        """
        if action is None:
            return self.describe(), self.usage()
        for sub in self.describe().get("subcommands", []):
            if sub["name"] == action:
                text = f"usage: {sub['usage']}\n\n{sub['summary']}"
                arguments = [f"  {arg['name']:<20} {arg['help']}" for arg in sub["arguments"]]
                if arguments:
                    text += "\n\narguments:\n" + "\n".join(arguments)
                return {
                    "name": f"{self.name} {action}",
                    **{k: v for k, v in sub.items() if k != "name"},
                }, text
        actions = ", ".join(self.subcommands) or "none"
        raise NotFound(f'"{self.name}" has no action "{action}": its actions are {actions}')


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _describe_arguments(parser: argparse.ArgumentParser) -> list[dict[str, Any]]:
    """Return each option and positional of `parser` as data, except --help and subcommands."""
    arguments = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or "--help" in action.option_strings:
            continue
        takes_value = action.nargs != 0
        entry: dict[str, Any] = {
            "name": action.option_strings[0] if action.option_strings else (action.metavar or action.dest),
            "flags": list(action.option_strings),
            "positional": not action.option_strings,
            "metavar": (action.metavar or action.dest.upper()) if takes_value else None,
            "help": action.help or "",
            "required": bool(action.required),
            "repeatable": isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*"),
        }
        if takes_value and action.default not in (None, argparse.SUPPRESS, [], False):
            entry["default"] = action.default
        arguments.append(entry)
    return arguments
