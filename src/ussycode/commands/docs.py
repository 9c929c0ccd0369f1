"""The `doc` command: the user documentation, rendered from the Markdown files in ussycode/docs/user."""

from __future__ import annotations

import argparse
import difflib
import re
from importlib import resources

from ussycode.commands.base import ArgumentParser, Command, CommandContext, CommandResult
from ussycode.commands.markdown import render, title
from ussycode.commands.render import Style
from ussycode.errors import NotFound

# Topics in reading order; files not listed here follow in alphabetical order.
ORDER = ("getting-started", "https-and-ports", "sharing", "api-and-tokens", "ssh-tips", "llm", "agents")


def topics() -> dict[str, str]:
    """Return each topic's Markdown by topic name (the file name without .md), in reading order."""
    folder = resources.files("ussycode").joinpath("docs", "user")
    found = {
        entry.name.removesuffix(".md"): entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".md")
    }
    ordered = [name for name in ORDER if name in found] + sorted(set(found) - set(ORDER))
    return {name: found[name] for name in ordered}


def find_topic(name: str, available: dict[str, str]) -> str:
    """Return the topic `name`, or the one topic it is a prefix of.

    :raise NotFound: no topic or several match; the message lists the topics.
    """
    if name in available:
        return name
    prefixed = [topic for topic in available if topic.startswith(name)]
    if len(prefixed) == 1:
        return prefixed[0]
    close = difflib.get_close_matches(name, list(available), n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    raise NotFound(f'no doc topic "{name}": {hint}topics are {", ".join(available)}')


def localize(markdown: str, ctx: CommandContext) -> str:
    """Replace the placeholders HOST and DOMAIN and the default port 2224 with this server's values."""
    config = ctx.services.config
    text = re.sub(r"\bHOST\b", config.ssh_host, markdown)
    text = re.sub(r"\bDOMAIN\b", config.domain, text)
    return re.sub(r"\b2224\b", str(config.ssh_addr[1]), text)


def _doc_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("topic", nargs="?", metavar="TOPIC", help="topic to read (default: list the topics)")


async def doc(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    available = topics()
    style = Style.of(ctx)
    if args.topic is None:
        data = [{"topic": name, "title": title(text)} for name, text in available.items()]
        width = max(len(name) for name in available)
        lines = [
            f"{style.paint(name.ljust(width), 'cyan')}  {title(text)}" for name, text in available.items()
        ]
        lines += ["", 'Read one with "doc TOPIC", e.g. "doc getting-started".']
        return CommandResult(data, "\n".join(lines))
    name = find_topic(args.topic, available)
    markdown = localize(available[name], ctx)
    return CommandResult(
        {"topic": name, "title": title(markdown), "markdown": markdown}, render(markdown, style)
    )


COMMANDS = [
    Command(
        "doc",
        "Read the user documentation: getting started, HTTPS and ports, sharing, API, SSH tips.",
        doc,
        group="learn",
        arguments=_doc_arguments,
        examples=["doc", "doc getting-started", "doc ssh-tips", "doc sharing --json"],
    ),
]
