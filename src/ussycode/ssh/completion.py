"""Tab completion for the REPL: command names, actions, flags and the user's VM names.

Words are split on spaces without shell quoting, which is enough for command names, flags and VM
names. Positionals are completed from their metavar: `VM` with VM names, `COMMAND` with command
names and `TOPIC` with documentation topics.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ussycode.commands.base import Command

# A value source for a positional metavar, such as the user's VM names for "VM".
Sources = Mapping[str, Callable[[], Sequence[str]]]


@dataclass(frozen=True)
class Completion:
    """Candidates for the word that starts at `start` in the text before the cursor."""

    start: int
    candidates: list[str]


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action
        for action in parser._actions
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction)
    ]


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = action.choices.get(name)
            return found if isinstance(found, argparse.ArgumentParser) else None
    return None


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def _flag_names(parser: argparse.ArgumentParser) -> list[str]:
    """Return each option's long flag, or its short one if it has no long flag."""
    names = []
    for action in parser._actions:
        if not action.option_strings:
            continue
        long = [flag for flag in action.option_strings if flag.startswith("--")]
        names.append(long[0] if long else action.option_strings[0])
    return sorted(names)


def _next_positional(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Action | None:
    """Return the positional that the next word fills, given the words so far.

    None after an option that takes a value, and for free-form arguments such as the command
    of `ssh VM COMMAND`.
    """
    options = _options(parser)
    filled = 0
    skip_value = False
    for word in words:
        if skip_value:
            skip_value = False
            continue
        if word.startswith("-"):
            action = options.get(word.split("=", 1)[0])
            skip_value = action is not None and action.nargs != 0 and "=" not in word
            continue
        filled += 1
    if skip_value:
        return None
    for slot, action in enumerate(_positionals(parser)):
        if action.nargs == argparse.REMAINDER:
            return None
        if action.nargs in ("+", "*") or filled == slot:
            return action
    return None


def complete(text: str, registry: Mapping[str, Command], sources: Sources) -> Completion:
    """Return the candidates for the last word of `text`, the line up to the cursor."""
    start = len(text) - len(text.rsplit(" ", maxsplit=1)[-1])
    current = text[start:]
    words = text[:start].split()
    if not words:
        return Completion(start, sorted(name for name in registry if name.startswith(current)))
    command = registry.get(words[0])
    if command is None:
        return Completion(start, [])
    parser: argparse.ArgumentParser = command.parser()
    rest = words[1:]
    if command.subcommands:
        if not rest and not current.startswith("-"):
            return Completion(start, [name for name in command.subcommands if name.startswith(current)])
        sub = _subparser(parser, rest[0]) if rest else None
        if sub is not None:
            parser, rest = sub, rest[1:]
    if current.startswith("-"):
        return Completion(start, [flag for flag in _flag_names(parser) if flag.startswith(current)])
    action = _next_positional(parser, rest)
    if action is None:
        return Completion(start, [])
    if action.choices is not None:
        values: Sequence[str] = [str(choice) for choice in action.choices]
    else:
        source = sources.get(str(action.metavar))
        values = source() if source is not None else []
    return Completion(start, sorted(value for value in values if value.startswith(current)))
