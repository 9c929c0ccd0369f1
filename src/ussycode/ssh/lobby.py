"""The lobby session: the `ussy>` REPL for shells and one-shot commands for exec requests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import asyncssh

from ussycode.commands.base import CommandContext, Services
from ussycode.commands.dispatch import Outcome, execute, split_line
from ussycode.errors import UssycodeError
from ussycode.ssh.lineedit import Event, EventKind, LineEditor
from ussycode.store import User

log = logging.getLogger(__name__)

PROMPT = "ussy> "
MAX_LINE_BYTES = 16 * 1024

# Returns the connection's user. For a new key it registers one and, on a terminal, asks for a handle.
UserResolver = Callable[["LobbySession"], Awaitable[User]]


class LobbySession(asyncssh.SSHServerSession[bytes]):
    """One SSH session in the lobby: a REPL (shell request) or a single command (exec request)."""

    def __init__(self, services: Services, resolve_user: UserResolver, conn_id: str) -> None:
        self.services = services
        self._resolve_user = resolve_user
        self.conn_id = conn_id
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._pty = False
        self._editor = LineEditor()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._raw_buffer = b""
        self._task: asyncio.Task[None] | None = None
        self._command_task: asyncio.Task[Outcome] | None = None
        self.interactive = False
        self._command_started = time.monotonic()

    # Terminal protocol used by commands.

    async def prompt(self, question: str) -> str | None:
        if not self.interactive:
            return None
        self.write(question, raw_prompt=True)
        if self._pty:
            self.write_bytes(self._editor.start(""))
        event = await self._events.get()
        return event.text if event.kind is EventKind.LINE else None

    def progress(self, message: str) -> None:
        """Print a step with the seconds since the command began; on stderr in exec mode."""
        elapsed = time.monotonic() - self._command_started
        self.write(f"  [{elapsed:5.1f}s] {message}\n", stderr=not self.interactive)

    @property
    def has_pty(self) -> bool:
        return self._pty

    # Output.

    def write_bytes(self, data: bytes, *, stderr: bool = False) -> None:
        if self._chan is None or self._chan.is_closing():
            return
        datatype = asyncssh.EXTENDED_DATA_STDERR if stderr else None
        self._chan.write(data, datatype)

    def write(self, text: str, *, stderr: bool = False, raw_prompt: bool = False) -> None:
        if self._pty and not raw_prompt:
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        self.write_bytes(text.encode(), stderr=stderr)

    # SSH callbacks.

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        self._pty = True
        return True

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
        if self._pty:
            echo, events = self._editor.feed(data)
            self.write_bytes(echo)
        else:
            events = self._split_raw(data)
        for event in events:
            if event.kind is EventKind.INTERRUPT and self._command_task and not self._command_task.done():
                self._command_task.cancel()
                continue
            self._events.put_nowait(event)

    def _split_raw(self, data: bytes) -> list[Event]:
        self._raw_buffer += data
        events = []
        while b"\n" in self._raw_buffer:
            line, self._raw_buffer = self._raw_buffer.split(b"\n", 1)
            events.append(Event(EventKind.LINE, line.decode(errors="replace").rstrip("\r")))
        if len(self._raw_buffer) > MAX_LINE_BYTES:
            self._raw_buffer = b""
            self.write("error: line too long; the limit is 16 KiB\n", stderr=True)
        return events

    def eof_received(self) -> bool:
        if self._raw_buffer:
            self._events.put_nowait(Event(EventKind.LINE, self._raw_buffer.decode(errors="replace")))
            self._raw_buffer = b""
        self._events.put_nowait(Event(EventKind.EOF))
        return True

    def break_received(self, msec: int) -> bool:
        if self._command_task and not self._command_task.done():
            self._command_task.cancel()
        return True

    def signal_received(self, signal: str) -> None:
        if signal == "INT" and self._command_task and not self._command_task.done():
            self._command_task.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._command_task and not self._command_task.done():
            self._command_task.cancel()
        if self._task and not self._task.done():
            self._task.cancel()

    # Modes.

    def _exit(self, status: int) -> None:
        if self._chan is not None and not self._chan.is_closing():
            self._chan.exit(status)

    async def _user(self) -> User | None:
        try:
            return await self._resolve_user(self)
        except UssycodeError as exc:
            self.write(f"error: {exc.message}\n", stderr=True)
            self._exit(1)
            return None

    async def _run_exec(self, command: str) -> None:
        user = await self._user()
        if user is None:
            return
        try:
            argv = split_line(command)
        except UssycodeError as exc:
            self.write(f"error: {exc.message}\n", stderr=True)
            self._exit(2)
            return
        ctx = CommandContext(self.services, user, self, conn_id=self.conn_id)
        self._command_started = time.monotonic()
        outcome = await execute(ctx, argv)
        self.write(outcome.stdout)
        self.write(outcome.stderr, stderr=True)
        self._exit(outcome.status)

    async def _run_repl(self) -> None:
        user = await self._user()
        if user is None:
            return
        ctx = CommandContext(self.services, user, self, conn_id=self.conn_id)
        self.write(f'Welcome to ussycode, {user.handle}. Type "help" for commands, "exit" to leave.\n')
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
            if event.kind is EventKind.INTERRUPT:
                continue
            try:
                argv = split_line(event.text)
            except UssycodeError as exc:
                self.write(f"error: {exc.message}\n", stderr=True)
                continue
            if not argv:
                continue
            self._command_started = time.monotonic()
            self._command_task = asyncio.create_task(execute(ctx, argv))
            try:
                outcome = await self._command_task
            except asyncio.CancelledError:
                if self._task is not None and self._task.cancelling():
                    raise
                self.write("cancelled\n", stderr=True)
                continue
            finally:
                self._command_task = None
            self.write(outcome.stdout)
            self.write(outcome.stderr, stderr=True)
            status = outcome.status
            if outcome.exit_session:
                status = 0
                break
        self._exit(status)
