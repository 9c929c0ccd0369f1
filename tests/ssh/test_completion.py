"""Tab completion of commands, actions, flags and VM names, and its use in the line editor."""

from __future__ import annotations

import pytest

from ussycode.commands.dispatch import REGISTRY
from ussycode.ssh.completion import complete
from ussycode.ssh.lineedit import EventKind, LineEditor

VMS = ["mild-owl", "mild-cat", "calm-fox"]
SOURCES = {"VM": lambda: VMS, "COMMAND": lambda: list(REGISTRY), "TOPIC": lambda: ["ssh-tips", "sharing"]}


@pytest.mark.parametrize(
    ("text", "start", "candidates"),
    [
        ("", 0, sorted(REGISTRY)),
        ("res", 0, ["resize", "restart", "resume"]),
        ("vm-", 0, ["vm-logs"]),
        ("zzz", 0, []),
        ("start ", 6, VMS[:0] + sorted(VMS)),
        ("start mi", 6, ["mild-cat", "mild-owl"]),
        ("start mild-owl ", 15, []),
        ("rm mild-owl ca", 12, ["calm-fox"]),
        ("new --me", 4, ["--memory"]),
        (
            "new --",
            4,
            sorted(
                [
                    "--help",
                    "--json",
                    "--name",
                    "--image",
                    "--cpu",
                    "--memory",
                    "--disk",
                    "--env",
                    "--setup-script",
                    "--prompt",
                    "--tag",
                    "--comment",
                    "--idle",
                ]
            ),
        ),
        ("new --name ", 11, []),
        ("ls -", 3, ["--help", "--json", "--tag", "-l"]),
        ("ssh-key re", 8, ["remove", "rename"]),
        ("ssh-key rename --", 15, ["--help", "--json"]),
        ("share add ", 10, sorted(VMS)),
        ("share access ", 13, ["allow", "disallow"]),
        ("share access allow c", 19, ["calm-fox"]),
        ("ssh mild-owl ", 13, []),
        ("ssh mild-owl ls ", 16, []),
        ("help st", 5, ["start", "stat", "stop"]),
        ("doc s", 4, ["sharing", "ssh-tips"]),
        ("tag mild-owl ", 13, []),
        ("cp m", 3, ["mild-cat", "mild-owl"]),
        ("cp mild-owl --disk 20G --copy-", 23, ["--copy-tags"]),
        ("nope ", 5, []),
    ],
)
def test_complete_cases(text: str, start: int, candidates: list[str]) -> None:
    completion = complete(text, REGISTRY, SOURCES)
    assert completion.start == start
    assert completion.candidates == candidates


def make_editor() -> LineEditor:
    editor = LineEditor(width=40)

    def completer(text: str) -> tuple[int, list[str]]:
        found = complete(text, REGISTRY, SOURCES)
        return found.start, found.candidates

    editor.completer = completer
    editor.start("ussy> ")
    return editor


def line_after(editor: LineEditor, data: bytes) -> str:
    _, events = editor.feed(data + b"\r")
    return [event.text for event in events if event.kind is EventKind.LINE][-1]


def test_lineedit_tab_single_candidate() -> None:
    assert line_after(make_editor(), b"vm-\t") == "vm-logs "


def test_lineedit_tab_common_prefix() -> None:
    assert line_after(make_editor(), b"start mi\t") == "start mild-"


def test_lineedit_tab_lists_candidates() -> None:
    editor = make_editor()
    echo, _ = editor.feed(b"start mild-\t")
    assert b"mild-cat" in echo
    assert b"mild-owl" in echo
    assert echo.count(b"ussy> ") == 1
    assert editor.line == "start mild-"


def test_lineedit_tab_no_candidate_rings() -> None:
    editor = make_editor()
    echo, _ = editor.feed(b"zzz\t")
    assert echo.endswith(b"\a")
    assert editor.line == "zzz"


def test_lineedit_tab_mid_line() -> None:
    editor = make_editor()
    editor.feed(b"sta mild-owl")
    editor.feed(b"\x1b[D" * 9)
    assert line_after(editor, b"r\t") == "start  mild-owl"


def test_lineedit_tab_without_completer() -> None:
    editor = LineEditor()
    editor.start("> ")
    echo, _ = editor.feed(b"ls\t")
    assert echo.endswith(b"\a")
    assert editor.line == "ls"


def test_lineedit_answer_not_recorded() -> None:
    editor = LineEditor()
    editor.start("> ", record=False)
    editor.feed(b"secret answer\r")
    editor.start("> ")
    editor.feed(b"ls\r")
    assert editor.history == ["ls"]
