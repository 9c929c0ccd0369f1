"""Hand a lobby terminal to a session inside a VM, for `ssh VM [COMMAND]` in the REPL.

The lobby passes the user's keystrokes, EOF, window changes and signals to a `GuestAttachment`,
which relays them to a session on the guest's sshd and writes the session's output back to the
user's channel, until the session ends. Then the REPL takes the terminal back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncssh

log = logging.getLogger(__name__)

# Exit status reported when the guest session ended without one (closed or killed by a signal),
# as OpenSSH's client does.
NO_STATUS = 255

Writer = Callable[[bytes, asyncssh.DataType], None]


class _GuestSession(asyncssh.SSHClientSession[bytes]):
    def __init__(self, attachment: GuestAttachment) -> None:
        self._attachment = attachment

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._attachment.write(data, datatype)

    def eof_received(self) -> bool:
        return True

    def exit_status_received(self, status: int) -> None:
        self._attachment.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        log.info("attached session ended by signal %s", signal)

    def connection_lost(self, exc: Exception | None) -> None:
        self._attachment.session_lost(exc)


class GuestAttachment:
    """Relays one user terminal to one guest session; input that comes early is buffered."""

    def __init__(self, write: Writer) -> None:
        self.write = write
        self.exit_status: int | None = None
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._pending: list[bytes] = []
        self._pending_eof = False
        self._size: tuple[int, int, int, int] | None = None
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # Input from the user.

    @property
    def ended(self) -> bool:
        return self._done.done()

    def feed(self, data: bytes) -> bool:
        """Pass input to the session; return False if it has ended, so that the REPL reads it."""
        if self._done.done():
            return False
        if self._chan is None:
            self._pending.append(data)
            return True
        try:
            self._chan.write(data)
        except (OSError, asyncssh.Error) as exc:
            # The session is closing: the input typed after its end belongs to the REPL.
            log.debug("input after the attached session ended: %s", exc)
            return False
        return True

    def eof(self) -> None:
        if self._chan is None:
            self._pending_eof = True
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            self._chan.write_eof()

    def resize(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._chan is None:
            self._size = (width, height, pixwidth, pixheight)
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            self._chan.change_terminal_size(width, height, pixwidth, pixheight)

    def signal(self, name: str) -> None:
        if self._chan is not None:
            with contextlib.suppress(OSError, asyncssh.Error):
                self._chan.send_signal(name)

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()

    # The session.

    def session_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("attached session lost: %s", exc)
        if not self._done.done():
            self._done.set_result(None)

    async def run(
        self,
        conn: asyncssh.SSHClientConnection,
        command: str | None,
        *,
        pty: tuple[str, tuple[int, int, int, int], dict[int, int]] | None,
        close_stdin: bool,
    ) -> int:
        """Open the session on `conn` and relay until it ends; return its exit status.

        `pty` is the user's terminal type, size and modes, or None for a session without a
        terminal. `close_stdin` sends EOF at once, as `ssh -n` does.

        :raise asyncssh.Error: the guest refused the session.
        :raise OSError: the connection failed.
        """
        options: dict[str, object] = {"encoding": None}
        if pty is not None:
            term_type, size, modes = pty
            options.update(
                term_type=term_type, term_size=self._size or size, term_modes=modes, request_pty="force"
            )
        else:
            options["request_pty"] = False
        chan, _ = await conn.create_session(lambda: _GuestSession(self), command, **options)  # type: ignore[arg-type]
        self._chan = chan
        for data in self._pending:
            self.feed(data)
        self._pending.clear()
        if self._pending_eof or close_stdin:
            self.eof()
        try:
            await self._done
        finally:
            chan.close()
        return self.exit_status if self.exit_status is not None else NO_STATUS
