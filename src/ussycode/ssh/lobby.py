"""The lobby session: the `ussy>` REPL for shells and one-shot commands for exec requests.

With a PTY, the REPL edits lines itself (`LineEditor`), completes commands, flags and VM names
with Tab, keeps each user's history across sessions, colours its output and fits tables to the
terminal. Without one, it reads plain lines and prints plain text.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

import asyncssh

from ussycode.commands import tutorial
from ussycode.commands.base import CommandContext, GuestConnector, Services
from ussycode.commands.dispatch import REGISTRY, Outcome, edit_distance, execute, split_line
from ussycode.commands.docs import topics
from ussycode.errors import InvalidInput, RuntimeFailure, UssycodeError
from ussycode.ssh.attach import GuestAttachment
from ussycode.ssh.completion import complete
from ussycode.ssh.lineedit import Event, EventKind, LineEditor
from ussycode.store import User
from ussycode.store.history import HistoryStore

log = logging.getLogger(__name__)

PROMPT = "ussy> "
MAX_LINE_BYTES = 16 * 1024
# Lines with a token or an LLM key are left out of the stored history: it is kept in plain text.
SECRET_MARKERS = ("usy0.", "usy1.", "llm-key")
# A first word this close to llm-key (a typo of it) also keeps the line out.
SECRET_COMMAND_DISTANCE = 2
# Words that start like a provider's API key.
KEY_PREFIXES = ("sk-", "sk_", "fw_", "gsk_", "xai-", "AIza", "hf_", "pplx-")
# Other words this long, of letters, digits, - and _ only, with letters and digits, and at least
# this many bits of Shannon entropy per character, look like a key or token too.
KEY_MIN_CHARS = 24
KEY_MIN_ENTROPY_BITS = 3.5
_KEY_WORD = re.compile(r"[A-Za-z0-9_-]+")
DEFAULT_WIDTH = 80
INPUT_END = "."

# Returns the connection's user. For a new key it registers one and, on a terminal, prompts for a handle.
UserResolver = Callable[["LobbySession"], Awaitable[User]]


def looks_like_key(word: str) -> bool:
    """Return whether `word` looks like an API key or token: a known prefix, or long and random."""
    if word.startswith(KEY_PREFIXES) and len(word) >= 12:
        return True
    if len(word) < KEY_MIN_CHARS or not _KEY_WORD.fullmatch(word):
        return False
    if not any(char.isdigit() for char in word) or not any(char.isalpha() for char in word):
        return False
    counts = Counter(word)
    entropy = -sum(n / len(word) * math.log2(n / len(word)) for n in counts.values())
    return entropy >= KEY_MIN_ENTROPY_BITS


def secret_line(line: str) -> bool:
    """Return whether a REPL line may hold a secret, and so must stay out of the stored history."""
    if any(marker in line for marker in SECRET_MARKERS):
        return True
    words = line.split()
    if words and edit_distance(words[0], "llm-key") <= SECRET_COMMAND_DISTANCE:
        return True
    return any(looks_like_key(word.strip("'\"")) for word in words)


class LobbySession(asyncssh.SSHServerSession[bytes]):
    """One SSH session in the lobby: a REPL (shell request) or a single command (exec request)."""

    def __init__(self, services: Services, resolve_user: UserResolver, conn_id: str) -> None:
        self.services = services
        self._resolve_user = resolve_user
        self.conn_id = conn_id
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._pty: tuple[str, tuple[int, int, int, int], dict[int, int]] | None = None
        self._editor = LineEditor()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._raw_buffer = b""
        self._task: asyncio.Task[None] | None = None
        self._command_task: asyncio.Task[Outcome] | None = None
        self._attachment: GuestAttachment | None = None
        self._user: User | None = None
        self.interactive = False
        self._command_started = time.monotonic()
        self._discarding = False

    # Terminal protocol used by commands.

    async def prompt(self, question: str) -> str | None:
        if not self.interactive:
            return None
        self.write(question, raw_prompt=True)
        if self._pty:
            self.write_bytes(self._editor.start("", record=False))
        event = await self._events.get()
        return event.text if event.kind is EventKind.LINE else None

    def progress(self, message: str) -> None:
        """Print a step with the seconds since the command began; on stderr in exec mode."""
        elapsed = time.monotonic() - self._command_started
        stamp = f"[{elapsed:5.1f}s]"
        if self._pty:
            stamp = f"\x1b[2m{stamp}\x1b[0m"
        self.write(f"  {stamp} {message}\n", stderr=not self.interactive)

    async def read_input(self, hint: str, max_bytes: int) -> str | None:
        """Read text for a command: stdin up to EOF in exec mode, pasted lines in the REPL.

        In the REPL the text ends with a line holding only "." or with Ctrl-D.
        :raise InvalidInput: the text is over `max_bytes` bytes.
        """
        lines: list[str] = []
        size = 0
        if self.interactive:
            self.write(f"{hint}\n")
        while True:
            if self.interactive and self._pty:
                self.write_bytes(self._editor.start("... ", record=False))
            event = await self._events.get()
            if event.kind is EventKind.EOF:
                if self.interactive:
                    # Ctrl-D ends the text, not the session.
                    self.write("\n")
                break
            if event.kind is EventKind.INTERRUPT:
                raise InvalidInput("input cancelled")
            if self.interactive and event.text == INPUT_END:
                break
            lines.append(event.text)
            size += len(event.text.encode()) + 1
            if size > max_bytes:
                raise InvalidInput(f"the input is over {max_bytes} bytes")
        return "\n".join(lines) + "\n" if lines else None

    @property
    def can_attach(self) -> bool:
        """Whether `ssh VM` can use this terminal: the REPL, or exec mode with a PTY."""
        return self.interactive or self._pty is not None

    async def attach(self, connect: GuestConnector, command: str | None) -> int:
        """Relay this terminal to `command` (or a shell) in a VM until it ends; return its exit status.

        A forwarded ssh-agent of the user's connection is forwarded into the VM too.
        """
        assert self._chan is not None
        attachment = GuestAttachment(self._write_datatype)
        close_stdin = command is not None and self._pty is None
        if self._pty is None and not close_stdin:
            self._hand_over_input(attachment)
        self._attachment = attachment
        try:
            conn = await connect(self._chan.get_agent_path())
            async with conn:
                status = await attachment.run(conn, command, pty=self._pty, close_stdin=close_stdin)
        except (OSError, asyncssh.Error) as exc:
            raise RuntimeFailure(f"the session in the VM failed: {exc}") from exc
        finally:
            self._attachment = None
        return status

    def _hand_over_input(self, attachment: GuestAttachment) -> None:
        """Pass lines already read but not yet run to the VM's shell, as `ssh VM@host` would."""
        saw_eof = False
        while not self._events.empty():
            event = self._events.get_nowait()
            if event.kind is EventKind.LINE:
                attachment.feed(event.text.encode() + b"\n")
            elif event.kind is EventKind.EOF:
                saw_eof = True
        if self._raw_buffer:
            attachment.feed(self._raw_buffer)
            self._raw_buffer = b""
        if saw_eof:
            attachment.eof()
            self._events.put_nowait(Event(EventKind.EOF))

    @property
    def has_pty(self) -> bool:
        return self._pty is not None

    @property
    def width(self) -> int | None:
        if self._pty is None:
            return None
        return self._pty[1][0] or DEFAULT_WIDTH

    # Output.

    def write_bytes(self, data: bytes, *, stderr: bool = False) -> None:
        # A terminal shows both streams in one place, so on a PTY errors go to stdout and
        # cannot overtake the prompt that follows them.
        use_stderr = stderr and not self._pty
        self._write_datatype(data, asyncssh.EXTENDED_DATA_STDERR if use_stderr else None)

    def _write_datatype(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._chan is None or self._chan.is_closing():
            return
        self._chan.write(data, datatype)

    def write(self, text: str, *, stderr: bool = False, raw_prompt: bool = False) -> None:
        if self._pty and not raw_prompt:
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        self.write_bytes(text.encode(), stderr=stderr)

    def _write_error(self, message: str) -> None:
        """Print an error on one line; red on a terminal."""
        first = message.strip().splitlines()[0] if message.strip() else message
        if self._pty:
            first = first.replace("error:", "\x1b[31merror:\x1b[0m", 1)
        self.write(first + "\n", stderr=True)

    # SSH callbacks.

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        self._pty = (term_type, term_size, dict(term_modes))
        self._editor.width = term_size[0] or DEFAULT_WIDTH
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._pty is not None:
            self._pty = (self._pty[0], (width, height, pixwidth, pixheight), self._pty[2])
            self._editor.width = width or DEFAULT_WIDTH
        if self._attachment is not None:
            self._attachment.resize(width, height, pixwidth, pixheight)

    def shell_requested(self) -> bool:
        self.interactive = True
        self._task = asyncio.create_task(self._run_repl())
        return True

    def exec_requested(self, command: str) -> bool:
        self._task = asyncio.create_task(self._run_exec(command))
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        log.info("conn=%s rejected subsystem %r in the lobby", self.conn_id, subsystem)
        return False

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._attachment is not None and self._attachment.feed(data):
            return
        if self._pty:
            echo, events = self._editor.feed(data)
            self.write_bytes(echo)
        else:
            events = self._split_raw(data)
        for event in events:
            if event.kind is EventKind.INTERRUPT and self._command_task and not self._command_task.done():
                self.write("cancelling…\n", stderr=True)
                self._command_task.cancel()
                continue
            self._events.put_nowait(event)

    def _split_raw(self, data: bytes) -> list[Event]:
        """Split input without a PTY into lines; a line over MAX_LINE_BYTES is dropped whole."""
        events = []
        while data:
            head, newline, data = data.partition(b"\n")
            if self._discarding:
                self._discarding = not newline
                continue
            self._raw_buffer += head
            if len(self._raw_buffer) > MAX_LINE_BYTES:
                self._raw_buffer = b""
                self._discarding = not newline
                self.write("error: line too long; the limit is 16 KiB\n", stderr=True)
                continue
            if newline:
                line, self._raw_buffer = self._raw_buffer, b""
                events.append(Event(EventKind.LINE, line.decode(errors="replace").rstrip("\r")))
        return events

    def eof_received(self) -> bool:
        if self._attachment is not None:
            self._attachment.eof()
        if self._raw_buffer:
            self._events.put_nowait(Event(EventKind.LINE, self._raw_buffer.decode(errors="replace")))
            self._raw_buffer = b""
        self._events.put_nowait(Event(EventKind.EOF))
        return True

    def break_received(self, msec: int) -> bool:
        if self._attachment is not None:
            self._attachment.signal("INT")
        elif self._command_task and not self._command_task.done():
            self._command_task.cancel()
        return True

    def signal_received(self, signal: str) -> None:
        if self._attachment is not None:
            self._attachment.signal(signal)
        elif signal == "INT" and self._command_task and not self._command_task.done():
            self._command_task.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._attachment is not None:
            self._attachment.close()
        if self._command_task and not self._command_task.done():
            self._command_task.cancel()
        if self._task and not self._task.done():
            self._task.cancel()

    # Modes.

    def _exit(self, status: int) -> None:
        if self._chan is not None and not self._chan.is_closing():
            self._chan.exit(status)

    async def _resolve(self) -> User | None:
        try:
            user = await self._resolve_user(self)
        except UssycodeError as exc:
            self.write(f"error: {exc.message}\n", stderr=True)
            self._exit(1)
            return None
        self._user = user
        return user

    def _context(self, user: User) -> CommandContext:
        return CommandContext(
            self.services, user, self, conn_id=self.conn_id, color=self._pty is not None, width=self.width
        )

    async def _run_exec(self, command: str) -> None:
        user = await self._resolve()
        if user is None:
            return
        try:
            argv = split_line(command)
        except UssycodeError as exc:
            self.write(f"error: {exc.message}\n", stderr=True)
            self._exit(2)
            return
        ctx = self._context(user)
        outcome = await self._run_command(ctx, argv)
        if outcome is None:
            self._exit(130)
            return
        self.write(outcome.stdout)
        if outcome.stderr:
            self._write_error(outcome.stderr)
        self._exit(outcome.status)

    def _complete(self, text: str) -> tuple[int, list[str]]:
        user = self._user
        if user is None:
            return len(text), []
        store = self.services.store

        def vm_names() -> list[str]:
            return [vm.name for vm in store.list_vms(owner_id=user.id)]

        sources = {"VM": vm_names, "COMMAND": lambda: list(REGISTRY), "TOPIC": lambda: list(topics())}
        completion = complete(text, REGISTRY, sources)
        return completion.start, completion.candidates

    def _remember(self, user: User, line: str) -> None:
        if secret_line(line):
            return
        try:
            HistoryStore(self.services.store).add_line(user.id, line)
        except UssycodeError as exc:
            log.warning("conn=%s user=%s saving the history failed: %s", self.conn_id, user.handle, exc)

    async def _run_repl(self) -> None:
        user = await self._resolve()
        if user is None:
            return
        history = HistoryStore(self.services.store)
        self._editor.history = history.lines(user.id, self._editor.max_history)
        self._editor.completer = self._complete
        name = f"\x1b[1m{user.handle}\x1b[0m" if self._pty else user.handle
        self.write(f"Welcome to ussycode, {name}.\n")
        self.write('"help" lists the commands, "tutorial" teaches the basics.\n')
        status = 0
        while True:
            if self._pty:
                self.write_bytes(self._editor.start(PROMPT))
            else:
                self.write(PROMPT)
            event = await self._events.get()
            if event.kind is EventKind.EOF:
                self.write("\n")
                break
            if event.kind is EventKind.INTERRUPT or not event.text.strip():
                continue
            self._remember(user, event.text)
            try:
                argv = split_line(event.text)
            except UssycodeError as exc:
                self._write_error(f"error: {exc.message}")
                continue
            outcome = await self._run_command(self._context(user), argv)
            if outcome is None:
                continue
            self.write(outcome.stdout)
            if outcome.stderr:
                self._write_error(outcome.stderr)
            status = outcome.status
            if outcome.exit_session:
                status = 0
                break
            await self._tutorial_notice(user)
        self._exit(status)

    async def _run_command(self, ctx: CommandContext, argv: list[str]) -> Outcome | None:
        """Run one command as a task that Ctrl-C cancels; None if it was cancelled."""
        self._command_started = time.monotonic()
        self._command_task = asyncio.create_task(execute(ctx, argv))
        try:
            return await self._command_task
        except asyncio.CancelledError:
            if self._task is not None and self._task.cancelling():
                raise
            self.write("cancelled\n", stderr=True)
            return None
        finally:
            self._command_task = None

    async def _tutorial_notice(self, user: User) -> None:
        try:
            notice = await tutorial.check_after_command(self._context(user))
        except UssycodeError as exc:
            log.warning("conn=%s user=%s tutorial check failed: %s", self.conn_id, user.handle, exc)
            return
        if notice:
            self.write((f"\x1b[32m{notice}\x1b[0m" if self._pty else notice) + "\n")
