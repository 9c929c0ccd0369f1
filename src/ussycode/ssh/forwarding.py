"""Local port forwarding (`ssh -L`) into a VM through the gateway.

A direct-tcpip request on a VM login (`ssh -p 2224 -L 8000:localhost:8000 VM@host`) is relayed
as a direct-tcpip channel of the gateway's own SSH connection to the guest's sshd, so the
destination is resolved and reached inside the VM: `localhost` is the VM itself. One guest
connection per gateway connection carries all of its forwarded channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncssh

from ussycode.errors import UssycodeError

log = logging.getLogger(__name__)

RELAY_CHUNK_BYTES = 64 * 1024

Connector = Callable[[], Awaitable[asyncssh.SSHClientConnection]]
StreamHandler = Callable[[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]], Awaitable[None]]


async def _pump(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
    """Copy `reader` to `writer` until EOF, then pass the EOF on."""
    while True:
        data = await reader.read(RELAY_CHUNK_BYTES)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError, asyncssh.Error):
        writer.write_eof()


class GuestForwarder:
    """Opens forwarded channels into one VM over a shared guest connection."""

    def __init__(self, connect: Connector, vm_name: str, conn_id: str) -> None:
        self._connect = connect
        self._vm_name = vm_name
        self._conn_id = conn_id
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()

    async def _guest(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect()
            return self._conn

    def handler(self, dest_host: str, dest_port: int) -> StreamHandler:
        """Return the stream handler that relays one forwarded channel to `dest_host:dest_port` in the VM."""

        async def relay(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
            target = f"{dest_host}:{dest_port}"
            try:
                guest = await self._guest()
                guest_reader, guest_writer = await guest.open_connection(dest_host, dest_port, encoding=None)
            except UssycodeError as exc:
                log.info("conn=%s vm=%s forward to %s refused: %s", self._conn_id, self._vm_name, target, exc)
                writer.close()
                return
            except (OSError, asyncssh.Error) as exc:
                log.info("conn=%s vm=%s forward to %s failed: %s", self._conn_id, self._vm_name, target, exc)
                writer.close()
                return
            log.info("conn=%s vm=%s forwarding to %s", self._conn_id, self._vm_name, target)
            try:
                await asyncio.gather(_pump(reader, guest_writer), _pump(guest_reader, writer))
            except (OSError, asyncssh.Error) as exc:
                log.debug("conn=%s vm=%s forward to %s ended: %s", self._conn_id, self._vm_name, target, exc)
            finally:
                guest_writer.close()
                writer.close()

        return relay

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
