"""Command definitions, argument parsing and the context a command runs in."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from ussycode.errors import InvalidInput

if TYPE_CHECKING:
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


@dataclass
class CommandContext:
    services: Services
    user: User
    terminal: Terminal
    conn_id: str = "-"
    json_output: bool = False


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser that raises `InvalidInput` instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise InvalidInput(f'{self.prog}: {message}; run "{self.prog} --help" for usage')

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise InvalidInput(message or f"{self.prog}: invalid arguments")


def add_subcommand(actions: Any, name: str, summary: str) -> ArgumentParser:
    """Add a subcommand parser that also takes --json and --help, like every command."""
    parser: ArgumentParser = actions.add_parser(name, help=summary, description=summary, add_help=False)
    parser.add_argument("--help", "-h", action="store_true", help="show this help")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
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
        parser.add_argument("--help", "-h", action="store_true", help="show this help")
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        self.arguments(parser)
        return parser

    def usage(self) -> str:
        return self.parser().format_help().rstrip()
