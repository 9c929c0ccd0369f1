"""Pass an SSH session through the gateway to the sshd inside a VM.

The client's session (shell, exec or a subsystem such as sftp, with or without a PTY) is replayed
on a new session to the guest. Input bytes, EOF, window changes, signals and breaks go to the
guest. Output, EOF and the exit status or signal come back. Backpressure is propagated both ways so a
large transfer does not buffer in the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncssh

from ussycode.errors import UssycodeError

log = logging.getLogger(__name__)

Connector = Callable[[], Awaitable[asyncssh.SSHClientConnection]]


class _GuestSession(asyncssh.SSHClientSession[bytes]):
    """The gateway's client session inside the guest; relays to the user's server channel."""

    def __init__(self, proxy: VMProxySession) -> None:
        self._proxy = proxy
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._proxy.send_to_user(data, datatype)

    def eof_received(self) -> bool:
        self._proxy.eof_to_user()
        return True

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        self._proxy.pause_user_reading()

    def resume_writing(self) -> None:
        self._proxy.resume_user_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._proxy.guest_closed(self, exc)


class VMProxySession(asyncssh.SSHServerSession[bytes]):
    """The user's session on the gateway, replayed into a VM once the guest connection is up."""

    def __init__(self, vm_name: str, connector: Connector, conn_id: str) -> None:
        self._vm_name = vm_name
        self._connector = connector
        self._conn_id = conn_id
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._guest_chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._guest_conn: asyncssh.SSHClientConnection | None = None
        self._pending: list[tuple[bytes, asyncssh.DataType]] = []
        self._pending_eof = False
        self._pty: tuple[str, tuple[int, int, int, int], dict[int, int]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # Server session callbacks (the user's side).

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        self._pty = (term_type, term_size, dict(term_modes))
        return True

    def shell_requested(self) -> bool:
        return self._begin(command=None, subsystem=None)

    def exec_requested(self, command: str) -> bool:
        return self._begin(command=command, subsystem=None)

    def subsystem_requested(self, subsystem: str) -> bool:
        return self._begin(command=None, subsystem=subsystem)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._guest_chan is None:
            self._pending.append((data, datatype))
        else:
            self._guest_chan.write(data, datatype)

    def eof_received(self) -> bool:
        if self._guest_chan is None:
            self._pending_eof = True
        else:
            self._guest_chan.write_eof()
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._guest_chan is not None:
            self._guest_chan.change_terminal_size(width, height, pixwidth, pixheight)
        elif self._pty is not None:
            self._pty = (self._pty[0], (width, height, pixwidth, pixheight), self._pty[2])

    def signal_received(self, signal: str) -> None:
        if self._guest_chan is not None:
            self._guest_chan.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self._guest_chan is not None:
            self._guest_chan.send_break(msec)
        return True

    def pause_writing(self) -> None:
        if self._guest_chan is not None:
            self._guest_chan.pause_reading()

    def resume_writing(self) -> None:
        if self._guest_chan is not None:
            self._guest_chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._guest_chan is not None:
            self._guest_chan.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # Relaying from the guest.

    def send_to_user(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._chan is not None and not self._closed:
            self._chan.write(data, datatype)

    def eof_to_user(self) -> None:
        if self._chan is not None and not self._closed:
            self._chan.write_eof()

    def pause_user_reading(self) -> None:
        if self._chan is not None and not self._closed:
            self._chan.pause_reading()

    def resume_user_reading(self) -> None:
        if self._chan is not None and not self._closed:
            self._chan.resume_reading()

    def guest_closed(self, session: _GuestSession, exc: Exception | None) -> None:
        if self._guest_conn is not None:
            self._guest_conn.close()
        if self._chan is None or self._closed:
            return
        if session.exit_signal is not None:
            signal, core_dumped, msg, lang = session.exit_signal
            self._chan.exit_with_signal(signal, core_dumped, msg, lang)
        else:
            status = session.exit_status if session.exit_status is not None else 255
            self._chan.exit(status)
        log.info(
            "conn=%s vm=%s session ended status=%s",
            self._conn_id,
            self._vm_name,
            session.exit_status,
        )

    # Setup.

    def _begin(self, *, command: str | None, subsystem: str | None) -> bool:
        self._task = asyncio.create_task(self._open(command, subsystem))
        return True

    def _fail(self, message: str) -> None:
        if self._chan is not None and not self._closed:
            self._chan.write(f"error: {message}\r\n".encode(), asyncssh.EXTENDED_DATA_STDERR)
            self._chan.exit(1)

    async def _open(self, command: str | None, subsystem: str | None) -> None:
        assert self._chan is not None
        try:
            self._guest_conn = await self._connector()
        except UssycodeError as exc:
            log.info("conn=%s vm=%s session refused: %s", self._conn_id, self._vm_name, exc.message)
            self._fail(exc.message)
            return
        options: dict[str, Any] = {"encoding": None, "env": self._chan.get_environment()}
        if self._pty is not None:
            term_type, term_size, term_modes = self._pty
            options.update(
                term_type=term_type, term_size=term_size, term_modes=term_modes, request_pty="force"
            )
        else:
            options["request_pty"] = False
        try:
            guest_chan, _ = await self._guest_conn.create_session(
                lambda: _GuestSession(self), command, subsystem=subsystem, **options
            )
        except (OSError, asyncssh.Error) as exc:
            log.warning("conn=%s vm=%s guest session failed: %s", self._conn_id, self._vm_name, exc)
            self._guest_conn.close()
            self._fail(f'cannot open a session in vm "{self._vm_name}": {exc}')
            return
        self._guest_chan = guest_chan
        kind = "shell"
        if subsystem:
            kind = "subsystem"
        elif command:
            kind = "exec"
        log.info(
            "conn=%s vm=%s session opened kind=%s pty=%s",
            self._conn_id,
            self._vm_name,
            kind,
            self._pty is not None,
        )
        for data, datatype in self._pending:
            guest_chan.write(data, datatype)
        self._pending.clear()
        if self._pending_eof:
            guest_chan.write_eof()
