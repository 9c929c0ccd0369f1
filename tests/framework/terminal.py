"""A real terminal for REPL tests: tmux running the OpenSSH client inside the platform's namespace.

tmux renders what a person would see, so tests assert on the screen (`screen()`), not on raw
escape sequences. The tmux server runs inside the namespace, with its own socket in the test's
directory, and is ended by its PID at `close()`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.framework.netns import NetNS, end_pid

KEYS = {
    "enter": "Enter",
    "tab": "Tab",
    "up": "Up",
    "down": "Down",
    "left": "Left",
    "right": "Right",
    "home": "Home",
    "end": "End",
    "ctrl-a": "C-a",
    "ctrl-c": "C-c",
    "ctrl-d": "C-d",
    "ctrl-e": "C-e",
    "ctrl-u": "C-u",
    "ctrl-w": "C-w",
}


class Terminal:
    """One tmux window of `width` x `height` running `argv`."""

    def __init__(
        self,
        ns: NetNS,
        workdir: Path,
        argv: Sequence[str],
        *,
        width: int = 100,
        height: int = 40,
        env: dict[str, str] | None = None,
    ) -> None:
        self.socket = workdir / f"tmux-{os.getpid()}-{time.monotonic_ns()}.sock"
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM": "xterm-256color",
            "HOME": str(workdir),
            **(env or {}),
        }
        command = shlex.join(argv) + "; echo '[exited '$?']'; sleep 600"
        ns.run(
            [
                "tmux", "-S", str(self.socket), "-f", "/dev/null", "new-session", "-d",
                "-x", str(width), "-y", str(height), command,
            ],
            env=env,
        )  # fmt: skip
        self.pid = int(self._tmux("display-message", "-p", "#{pid}").strip())

    def _tmux(self, *args: str) -> str:
        completed = subprocess.run(
            ["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, check=True, timeout=30
        )
        return completed.stdout

    def type(self, text: str) -> None:
        """Type `text` literally, without pressing Enter."""
        self._tmux("send-keys", "-t", "0", "-l", text)

    def press(self, *keys: str) -> None:
        """Press keys by name: enter, tab, up, ctrl-c, … (see KEYS)."""
        self._tmux("send-keys", "-t", "0", *(KEYS[key] for key in keys))

    def line(self, text: str) -> None:
        self.type(text)
        self.press("enter")

    def screen(self, *, escapes: bool = False) -> str:
        """Return the visible screen and the scrollback, as plain text or with colour escapes."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-2000", "-t", "0", *(["-e"] if escapes else []))

    def wait_for(self, text: str, timeout: float = 30.0, *, count: int = 1) -> str:
        """Wait until `text` shows at least `count` times; return the screen.

        :raise AssertionError: not within `timeout` seconds; the message contains the screen.
        """
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {text!r} on the screen:\n{screen}")

    def prompt_line(self) -> str:
        """Return the last line of the screen that starts with the REPL prompt."""
        lines = [line.rstrip() for line in self.screen().splitlines() if line.startswith("ussy>")]
        return lines[-1] if lines else ""

    def close(self) -> None:
        end_pid(self.pid, timeout=5)
        self.socket.unlink(missing_ok=True)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
