"""The forward-auth endpoint on a unix socket, served by a minimal HTTP/1.1 handler for Caddy.

Caddy requests a decision for every request to a private VM URL, so the cost of that request
bounds how fast a private URL can be. The API's aiohttp server spends most of its time per
request in its own request and response machinery. This server parses only what Caddy sends
(a GET with a header block, no body), decides with the same `ForwardAuth` code and cache, and
keeps the connection open for Caddy's next request.

Only the owner of the process can connect to the socket (mode 0600), and Caddy runs as that
owner. A request that this parser does not handle gets a 4xx response and the connection is
closed. Forward auth passes any response other than 2xx to the client, so a request this server
rejects never reaches the VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

from ussycode.api.forward_auth import ForwardAuth, allow_headers
from ussycode.auth.access import Decision, Verdict
from ussycode.auth.hosts import AUTH_PATH
from ussycode.errors import RuntimeFailure

log = logging.getLogger(__name__)

# Caddy's request head carries the client's headers, cookies included. The API's aiohttp server
# allows 32 KiB per header field, and this allows four such fields.
MAX_HEAD_BYTES = 128 * 1024
# A unix socket path is at most 107 bytes on Linux (108 with the terminating NUL).
MAX_SOCKET_PATH_BYTES = 107

_REASONS = {
    200: "OK",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# A response header with one of these could end the header block early or add a header.
_UNSAFE_IN_HEADER = re.compile("[\r\n\0]")


class HeadError(ValueError):
    """A request head that this server does not handle."""


def parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """Split a request head (without the blank line) into method, target, version and headers.

    :raise HeadError: the request line or a header line is malformed, or a line is folded.
    """
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise HeadError(f"invalid request line {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        # A name with spaces or tabs also catches obsolete line folding, which RFC 9112 rejects.
        if not colon or not name or name != name.strip(" \t") or " " in name or "\t" in name:
            raise HeadError(f"invalid header line {line[:80]!r}")
        headers.append((name, value.strip(" \t")))
    return parts[0], parts[1], parts[2], headers


def serialize(status: int, headers: list[tuple[str, str]], body: bytes, *, keep_alive: bool) -> bytes:
    """Return an HTTP/1.1 response.

    :raise HeadError: a header name or value contains CR, LF or NUL.
    """
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Response')}"]
    for name, value in headers:
        if _UNSAFE_IN_HEADER.search(name) or _UNSAFE_IN_HEADER.search(value):
            raise HeadError(f"header {name!r} contains a line break or NUL")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _response_bytes(response: web.Response, *, keep_alive: bool) -> bytes:
    body = response.body if isinstance(response.body, bytes) else b""
    headers = [(name, value) for name, value in response.headers.items() if name.lower() != "content-length"]
    return serialize(response.status, headers, body, keep_alive=keep_alive)


class _Connection(asyncio.Protocol):
    """One connection from Caddy, which gets a response to each request in order, once its head is in."""

    def __init__(self, forward_auth: ForwardAuth, open_transports: set[asyncio.Transport]) -> None:
        self._forward_auth = forward_auth
        self._open_transports = open_transports
        self._buffer = bytearray()
        self._skip = 0  # body bytes of the current request still to discard
        self._transport: asyncio.Transport | None = None
        # A request whose VM is being woken. Later requests wait in the buffer until its reply is sent.
        self._waking: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._open_transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._open_transports.discard(self._transport)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None and not self._transport.is_closing() and self._waking is None:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._skip -= dropped
                if self._skip:
                    return
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._reject(431, "request head too large")
                return
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            self._answer(head)

    def _reject(self, status: int, reason: str) -> None:
        log.warning("forward-auth socket: rejected a request from Caddy with %d: %s", status, reason)
        assert self._transport is not None
        self._transport.write(serialize(status, [], b"", keep_alive=False))
        self._transport.close()

    def _answer(self, head: bytes) -> None:
        assert self._transport is not None
        try:
            method, target, version, header_list = parse_head(head)
        except HeadError as exc:
            self._reject(400, str(exc))
            return
        headers = CIMultiDict(header_list)
        hosts = headers.getall("Host", [])
        if len(hosts) != 1:
            self._reject(400, f"expected one Host header, got {len(hosts)}")
            return
        if "Transfer-Encoding" in headers:
            self._reject(400, "a request body in chunks is not supported")
            return
        length = headers.get("Content-Length", "0")
        if not length.isdigit():
            self._reject(400, f"invalid Content-Length {length[:20]!r}")
            return
        self._skip = int(length)
        connection = headers.get("Connection", "").lower()
        keep_alive = version == "HTTP/1.1" and "close" not in connection
        if method not in ("GET", "HEAD") or target.partition("?")[0] != AUTH_PATH:
            self._reject(404, f"no {method} handler for {target[:80]!r}")
            return

        forward_auth = self._forward_auth
        try:
            decision = forward_auth.decision(hosts[0], headers)
            if decision.verdict is Verdict.ALLOW and forward_auth.wake_needed(decision):
                # The reply is sent once the VM runs. Reading stops meanwhile, so replies keep their order.
                self._transport.pause_reading()
                self._waking = asyncio.create_task(
                    self._answer_after_wake(decision, headers, method, keep_alive)
                )
                return
            if decision.verdict is Verdict.ALLOW:
                reply = serialize(200, list(allow_headers(decision).items()), b"", keep_alive=keep_alive)
            else:
                response = forward_auth.deny_response(decision, hosts[0], headers, None)
                reply = _response_bytes(response, keep_alive=keep_alive)
        except Exception as exc:
            # Without a response Caddy would wait for one with no time limit, so every failure
            # (a store error included) closes the request with 500, which Caddy passes on.
            log.debug("forward-auth socket: decision failed for host=%s", hosts[0], exc_info=True)
            self._reject(500, f"decision failed: {exc}")
            return
        self._send(reply, method, keep_alive)

    def _send(self, reply: bytes, method: str, keep_alive: bool) -> None:
        assert self._transport is not None
        if method == "HEAD":
            reply = reply[: reply.index(b"\r\n\r\n") + 4]
        self._transport.write(reply)
        if not keep_alive:
            self._transport.close()

    async def _answer_after_wake(
        self, decision: Decision, headers: CIMultiDict[str], method: str, keep_alive: bool
    ) -> None:
        try:
            unavailable = await self._forward_auth.wake(decision, headers)
            if unavailable is None:
                reply = serialize(200, list(allow_headers(decision).items()), b"", keep_alive=keep_alive)
            else:
                reply = _response_bytes(unavailable, keep_alive=keep_alive)
        except Exception as exc:
            log.debug("forward-auth socket: wake failed for vm=%s", decision.vm_name, exc_info=True)
            if self._transport is not None:
                self._reject(500, f"wake failed: {exc}")
            return
        finally:
            self._waking = None
        if self._transport is None or self._transport.is_closing():
            return
        self._send(reply, method, keep_alive)
        self._transport.resume_reading()
        self.data_received(b"")


class AuthSocketServer:
    """Serves `ForwardAuth` on the unix socket `path` until `stop`."""

    def __init__(self, forward_auth: ForwardAuth, path: Path) -> None:
        self.forward_auth = forward_auth
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        # Caddy keeps its connections open, and from Python 3.12 on `wait_closed` waits for open
        # connections, so `stop` closes them.
        self._open_transports: set[asyncio.Transport] = set()

    async def start(self) -> None:
        """Listen on `path`, replacing a socket file left by an earlier run.

        :raise RuntimeFailure: the socket cannot be created.
        """
        path_bytes = len(os.fsencode(self.path))
        if path_bytes > MAX_SOCKET_PATH_BYTES:
            raise RuntimeFailure(
                f"forward-auth socket path {self.path} is {path_bytes} bytes, more than the "
                f"{MAX_SOCKET_PATH_BYTES} a unix socket allows: use a shorter data directory"
            )
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_unix_server(
                lambda: _Connection(self.forward_auth, self._open_transports), str(self.path)
            )
            # `serve` runs with umask 027, so no other user could connect before this either.
            self.path.chmod(0o600)
        except OSError as exc:
            raise RuntimeFailure(f"cannot listen for forward auth on {self.path}: {exc.strerror}") from exc
        log.info("forward auth listening on %s", self.path)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for transport in list(self._open_transports):
            transport.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
