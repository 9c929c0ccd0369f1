"""Command lookup with suggestions, and help as text and data."""

from __future__ import annotations

import pytest

from ussycode.commands.dispatch import REGISTRY, UnknownCommand, closest_command, edit_distance, find_command
from ussycode.errors import NotFound


@pytest.mark.parametrize(
    ("first", "second", "distance"),
    [
        ("", "", 0),
        ("ls", "ls", 0),
        ("sl", "ls", 1),
        ("new", "nwe", 1),
        ("stop", "stp", 1),
        ("cp", "rm", 2),
        ("abc", "", 3),
    ],
)
def test_edit_distance(first: str, second: str, distance: int) -> None:
    assert edit_distance(first, second) == distance


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("sl", "ls"),
        ("nwe", "new"),
        ("strat", "start"),
        ("tut", "tutorial"),
        ("vmlogs", "vm-logs"),
        ("frobnicate", None),
        ("x", None),
    ],
)
def test_closest_command(typed: str, meant: str | None) -> None:
    assert closest_command(typed) == meant


def test_find_command_suggests() -> None:
    with pytest.raises(UnknownCommand) as close:
        find_command("sl")
    assert str(close.value) == 'unknown command "sl": did you mean "ls"? Run "help" to list commands'
    with pytest.raises(UnknownCommand) as far:
        find_command("frobnicate")
    assert str(far.value) == 'unknown command "frobnicate": run "help" to list commands'


def test_every_command_describes_itself() -> None:
    for command in REGISTRY.values():
        data = command.describe()
        assert data["name"] == command.name
        assert data["summary"]
        assert data["usage"].startswith(command.name)
        assert data["examples"], command.name
        for argument in data["arguments"]:
            assert argument["help"], (command.name, argument["name"])
        for action in command.subcommands:
            described, text = command.help_for(action)
            assert described["name"] == f"{command.name} {action}"
            assert text.startswith(f"usage: {command.name} {action}")


def test_help_for_unknown_action() -> None:
    with pytest.raises(NotFound) as caught:
        REGISTRY["ssh-key"].help_for("frob")
    assert (
        str(caught.value)
        == '"ssh-key" has no action "frob": its actions are list, add, remove, rename, generate-api-key'
    )


def test_describe_flags_with_units() -> None:
    arguments = {argument["name"]: argument for argument in REGISTRY["new"].describe()["arguments"]}
    assert "MiB if no unit" in arguments["--memory"]["help"]
    assert "GiB if no unit" in arguments["--disk"]["help"]
    assert arguments["--env"]["repeatable"]
    assert arguments["--tag"]["repeatable"]
    assert arguments["--setup-script"]["metavar"] == "FILE|-"
