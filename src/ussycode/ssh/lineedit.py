"""A small terminal line editor for the REPL.

It consumes raw bytes from an SSH channel with a PTY and returns what to echo and which lines
were completed. Supported keys: printable text, Backspace, Delete, Left/Right, Home/End,
Up/Down (history), Ctrl-A/E (start/end), Ctrl-B/F (left/right), Ctrl-U/K (kill to start/end),
Ctrl-W (kill word), Ctrl-L (redraw), Ctrl-C (cancel line), Ctrl-D (end of input on an empty line),
Tab (completion through `completer`: one candidate is inserted, several are extended to their
common prefix or, if that adds nothing, listed below the line).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum


class EventKind(Enum):
    LINE = "line"
    INTERRUPT = "interrupt"
    EOF = "eof"


@dataclass(frozen=True)
class Event:
    kind: EventKind
    text: str = ""


# Returns where the word to complete starts in the given text (the line up to the cursor), and
# the candidates for it.
Completer = Callable[[str], tuple[int, Sequence[str]]]


@dataclass
class LineEditor:
    """Line editing state for one terminal; `feed` returns bytes to echo and completed events.

    `width` is the terminal's width in columns, used to lay out completion lists.
    """

    prompt: str = ""
    history: list[str] = field(default_factory=list)
    max_history: int = 500
    max_line_chars: int = 16 * 1024
    completer: Completer | None = None
    width: int = 80
    _record: bool = True
    _buffer: list[str] = field(default_factory=list)
    _cursor: int = 0
    _history_index: int | None = None
    _saved: str = ""
    _pending: bytes = b""
    _escape: str = ""

    def start(self, prompt: str, *, record: bool = True) -> bytes:
        """Begin a new line with `prompt` and return the bytes that draw it.

        With `record` False the line is not added to the history (answers to questions).
        """
        self.prompt = prompt
        self._record = record
        self._buffer = []
        self._cursor = 0
        self._history_index = None
        return prompt.encode()

    @property
    def line(self) -> str:
        return "".join(self._buffer)

    def _redraw(self) -> bytes:
        text = self.prompt + self.line
        back = len(self._buffer) - self._cursor
        move = f"\x1b[{back}D" if back else ""
        return f"\r{text}\x1b[K{move}".encode()

    def _set_line(self, text: str) -> bytes:
        self._buffer = list(text)
        self._cursor = len(self._buffer)
        return self._redraw()

    def _finish(self) -> Event:
        text = self.line
        if self._record and text.strip() and (not self.history or self.history[-1] != text):
            self.history.append(text)
            del self.history[: -self.max_history]
        self._buffer, self._cursor, self._history_index = [], 0, None
        return Event(EventKind.LINE, text)

    def _history_move(self, step: int) -> bytes:
        if not self.history:
            return b""
        if self._history_index is None:
            if step > 0:
                return b""
            self._saved = self.line
            index = len(self.history) - 1
        else:
            index = self._history_index + step
        if index < 0:
            return b""
        if index >= len(self.history):
            self._history_index = None
            return self._set_line(self._saved)
        self._history_index = index
        return self._set_line(self.history[index])

    def _kill_word(self) -> bytes:
        start = self._cursor
        while start > 0 and self._buffer[start - 1] == " ":
            start -= 1
        while start > 0 and self._buffer[start - 1] != " ":
            start -= 1
        del self._buffer[start : self._cursor]
        self._cursor = start
        return self._redraw()

    def _complete(self) -> bytes:
        if self.completer is None:
            return b"\a"
        before = "".join(self._buffer[: self._cursor])
        start, candidates = self.completer(before)
        word = before[start:]
        if not candidates:
            return b"\a"
        if len(candidates) == 1:
            return self._insert(candidates[0][len(word) :] + " ")
        # commonprefix compares strings character by character, which is what is needed here.
        common = os.path.commonprefix(list(candidates))  # noqa: RUF071
        if len(common) > len(word):
            return self._insert(common[len(word) :])
        return self._list(candidates)

    def _insert(self, text: str) -> bytes:
        self._buffer[self._cursor : self._cursor] = list(text)
        self._cursor += len(text)
        return self._redraw()

    def _list(self, candidates: Sequence[str]) -> bytes:
        """Print the candidates in columns below the line, then draw the line again."""
        column = max(len(candidate) for candidate in candidates) + 2
        per_row = max(1, self.width // column)
        rows = [
            "".join(candidate.ljust(column) for candidate in candidates[index : index + per_row]).rstrip()
            for index in range(0, len(candidates), per_row)
        ]
        return ("\r\n" + "\r\n".join(rows) + "\r\n").encode() + self._redraw()

    def _escape_sequence(self, sequence: str) -> bytes:
        actions = {
            "[D": lambda: self._move(-1),
            "[C": lambda: self._move(1),
            "[A": lambda: self._history_move(-1),
            "[B": lambda: self._history_move(1),
            "[H": lambda: self._move_to(0),
            "[F": lambda: self._move_to(len(self._buffer)),
            "OH": lambda: self._move_to(0),
            "OF": lambda: self._move_to(len(self._buffer)),
            "[1~": lambda: self._move_to(0),
            "[4~": lambda: self._move_to(len(self._buffer)),
            "[3~": self._delete_forward,
        }
        action = actions.get(sequence)
        return action() if action else b""

    def _move(self, step: int) -> bytes:
        return self._move_to(self._cursor + step)

    def _move_to(self, position: int) -> bytes:
        self._cursor = max(0, min(len(self._buffer), position))
        return self._redraw()

    def _delete_forward(self) -> bytes:
        if self._cursor < len(self._buffer):
            del self._buffer[self._cursor]
        return self._redraw()

    def feed(self, data: bytes) -> tuple[bytes, list[Event]]:
        """Process input bytes; return the echo and any completed events, in order."""
        output = bytearray()
        events: list[Event] = []
        data = self._pending + data
        self._pending = b""
        text, rest = _decode_prefix(data)
        self._pending = rest
        for char in text:
            if self._escape:
                self._escape += char
                body = self._escape[1:]
                if body in ("[", "O") or (
                    body.startswith("[") and not body[-1].isalpha() and body[-1] != "~"
                ):
                    continue
                output += self._escape_sequence(body)
                self._escape = ""
                continue
            if char == "\x1b":
                self._escape = char
            elif char in ("\r", "\n"):
                if char == "\n" and output.endswith(b"\r\n"):
                    continue
                output += b"\r\n"
                events.append(self._finish())
            elif char == "\x03":
                output += b"^C\r\n"
                self._buffer, self._cursor = [], 0
                events.append(Event(EventKind.INTERRUPT))
            elif char == "\x04":
                if not self._buffer:
                    events.append(Event(EventKind.EOF))
                else:
                    output += self._delete_forward()
            elif char in ("\x7f", "\x08"):
                if self._cursor > 0:
                    self._cursor -= 1
                    del self._buffer[self._cursor]
                    output += self._redraw()
            elif char == "\x01":
                output += self._move_to(0)
            elif char == "\x05":
                output += self._move_to(len(self._buffer))
            elif char == "\x02":
                output += self._move(-1)
            elif char == "\x06":
                output += self._move(1)
            elif char == "\x15":
                del self._buffer[: self._cursor]
                self._cursor = 0
                output += self._redraw()
            elif char == "\x0b":
                del self._buffer[self._cursor :]
                output += self._redraw()
            elif char == "\x17":
                output += self._kill_word()
            elif char == "\x0c":
                output += b"\x1b[H\x1b[2J" + self._redraw()
            elif char == "\t":
                output += self._complete()
            elif char.isprintable():
                if len(self._buffer) >= self.max_line_chars:
                    output += b"\a"
                    continue
                self._buffer.insert(self._cursor, char)
                self._cursor += 1
                if self._cursor == len(self._buffer):
                    output += char.encode()
                else:
                    output += self._redraw()
        return bytes(output), events


def _decode_prefix(data: bytes) -> tuple[str, bytes]:
    """Decode UTF-8, keeping an incomplete trailing sequence for the next call."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode(), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode(errors="replace"), b""
