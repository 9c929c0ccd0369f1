"""The REPL in a real terminal: tmux running the OpenSSH client with a PTY against the gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.framework.platform import Platform, SSHUser
from tests.framework.terminal import Terminal

pytestmark = pytest.mark.netns


@pytest.fixture
def alice(platform: Platform) -> SSHUser:
    user = platform.make_user("alice")
    assert platform.ssh(user, "whoami").status == 0
    return user


@pytest.fixture
def term(platform: Platform, alice: SSHUser) -> Iterator[Terminal]:
    with Terminal(platform.ns, platform.workdir, platform.ssh_argv(alice, tty=True)) as terminal:
        terminal.wait_for("ussy> ")
        yield terminal


def settle(term: Terminal, expected: str, timeout: float = 10.0) -> None:
    """Wait until the prompt line reads `expected`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if term.prompt_line() == expected:
            return
        time.sleep(0.1)
    assert term.prompt_line() == expected


def test_repl_line_editing(term: Terminal) -> None:
    term.type("ami")
    term.press("home")
    term.type("who")
    settle(term, "ussy> whoami")
    term.press("ctrl-a")
    term.type("x")
    term.press("ctrl-e")
    term.type(" extra")
    settle(term, "ussy> xwhoami extra")
    term.press("ctrl-w")
    settle(term, "ussy> xwhoami")
    term.press("ctrl-a", "right", "ctrl-u")
    settle(term, "ussy> whoami")
    term.press("left", "left", "end", "enter")
    term.wait_for("handle:   alice")


def test_repl_history_kept_across_sessions(platform: Platform, alice: SSHUser) -> None:
    argv = platform.ssh_argv(alice, tty=True)
    with Terminal(platform.ns, platform.workdir, argv) as first:
        first.wait_for("ussy> ")
        first.line("whoami")
        first.wait_for("handle:   alice")
        first.line("help new")
        first.wait_for("examples:")
        first.line("exit")
        first.wait_for("[exited 0]")
    with Terminal(platform.ns, platform.workdir, argv) as second:
        second.wait_for("ussy> ")
        second.press("up")
        settle(second, "ussy> exit")
        second.press("up")
        settle(second, "ussy> help new")
        second.press("up")
        settle(second, "ussy> whoami")
        second.press("down")
        settle(second, "ussy> help new")
        second.press("up", "enter")
        second.wait_for("handle:   alice")


def test_repl_tab_completion(term: Terminal) -> None:
    term.type("whoa")
    term.press("tab")
    settle(term, "ussy> whoami")
    term.press("ctrl-u")
    term.type("new --mem")
    term.press("tab")
    settle(term, "ussy> new --memory")
    term.press("ctrl-u")
    term.type("ssh-key re")
    term.press("tab")
    screen = term.wait_for("rename")
    assert "remove" in screen.splitlines()[-2] or "remove" in screen
    settle(term, "ussy> ssh-key re")
    term.type("n")
    term.press("tab")
    settle(term, "ussy> ssh-key rename")
    term.press("ctrl-u")
    term.type("doc ssh")
    term.press("tab")
    settle(term, "ussy> doc ssh-tips")


def test_repl_ctrl_c_cancels_line(term: Terminal) -> None:
    term.type("frobnicate")
    term.press("ctrl-c")
    term.wait_for("frobnicate^C")
    settle(term, "ussy>")
    term.line("whoami")
    screen = term.wait_for("handle:   alice")
    assert "unknown command" not in screen


def test_repl_ctrl_d_leaves(term: Terminal) -> None:
    term.press("ctrl-d")
    term.wait_for("[exited 0]")


def test_repl_errors_one_line_with_suggestion(term: Terminal) -> None:
    term.line("sl")
    screen = term.wait_for("did you mean")
    assert 'error: unknown command "sl": did you mean "ls"? Run "help" to list commands' in screen
    term.line("start nope")
    screen = term.wait_for('no VM named "nope"')
    assert 'error: no VM named "nope": run "ls" to see your VMs' in screen.splitlines()


def test_repl_colour_on_terminal(term: Terminal) -> None:
    term.line("help")
    term.wait_for("Every command takes --json")
    coloured = term.screen(escapes=True)
    assert "\x1b[1mVMs" in coloured
    assert "\x1b[36m" in coloured


def test_repl_text_fits_narrow_terminal(platform: Platform, alice: SSHUser) -> None:
    with Terminal(platform.ns, platform.workdir, platform.ssh_argv(alice, tty=True), width=60) as narrow:
        narrow.wait_for("ussy> ")
        narrow.line("doc getting-started")
        narrow.wait_for("tutorial")
        narrow.line("tutorial")
        narrow.wait_for("Lesson 1 of 10")
        narrow.wait_for("ussy>", count=3)
        lines = narrow.screen().splitlines()
    prose = [line for line in lines if not line.startswith("    ")]
    assert max(len(line) for line in prose) <= 60


def test_repl_setup_script_paste_ends_with_dot(term: Terminal) -> None:
    term.line("new --setup-script -")
    term.wait_for('Paste the setup script, then a line with only "."')
    term.line(".")
    term.wait_for("error: --setup-script -: no script on stdin")
    settle(term, "ussy>")


def test_repl_without_pty_plain(platform: Platform, alice: SSHUser) -> None:
    result = platform.repl(alice, ["help", "sl", "exit"])
    assert "\x1b[" not in result.stdout
    assert "did you mean" in result.stderr
