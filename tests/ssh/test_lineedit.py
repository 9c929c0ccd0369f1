from __future__ import annotations

from ussycode.ssh.lineedit import EventKind, LineEditor


def lines(editor: LineEditor, data: bytes) -> list[str]:
    _, events = editor.feed(data)
    return [event.text for event in events if event.kind is EventKind.LINE]


def test_lineedit_plain_line() -> None:
    editor = LineEditor()
    editor.start("ussy> ")
    echo, events = editor.feed(b"ls\r")
    assert echo.startswith(b"ls")
    assert [(e.kind, e.text) for e in events] == [(EventKind.LINE, "ls")]


def test_lineedit_backspace_and_cursor_moves() -> None:
    editor = LineEditor()
    editor.start("> ")
    assert lines(editor, b"lz\x7fs\r") == ["ls"]
    assert lines(editor, b"bc\x1b[D\x1b[Da\r") == ["abc"]
    assert lines(editor, b"world\x01hello \r") == ["hello world"]
    assert lines(editor, b"abc\x01\x1b[3~\r") == ["bc"]


def test_lineedit_kill_commands() -> None:
    editor = LineEditor()
    assert lines(editor, b"rm mild-owl\x17new\r") == ["rm new"]
    assert lines(editor, b"garbage\x15ls\r") == ["ls"]
    assert lines(editor, b"ls --json\x01\x06\x06\x0b\r") == ["ls"]


def test_lineedit_history_up_down() -> None:
    editor = LineEditor()
    lines(editor, b"first\r")
    lines(editor, b"second\r")
    assert lines(editor, b"\x1b[A\x1b[A\r") == ["first"]
    assert lines(editor, b"draft\x1b[A\x1b[B\r") == ["draft"]
    assert editor.history == ["first", "second", "first", "draft"]


def test_lineedit_ctrl_c_and_ctrl_d() -> None:
    editor = LineEditor()
    _, events = editor.feed(b"half\x03")
    assert [e.kind for e in events] == [EventKind.INTERRUPT]
    assert editor.line == ""
    _, events = editor.feed(b"\x04")
    assert [e.kind for e in events] == [EventKind.EOF]


def test_lineedit_split_utf8_and_escape() -> None:
    editor = LineEditor()
    snowman = "☃".encode()
    assert lines(editor, snowman[:1]) == []
    assert lines(editor, snowman[1:] + b"\x1b") == []
    assert lines(editor, b"[D!\r") == ["!☃"]


def test_lineedit_crlf_is_one_line() -> None:
    editor = LineEditor()
    assert lines(editor, b"a\r\nb\r\n") == ["a", "b"]
