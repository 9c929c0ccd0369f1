"""The forward-auth unix socket: decisions as the API gives them, and every malformed request."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.sharing.conftest import World
from tests.sharing.test_access import host_session
from ussycode.api.auth_socket import MAX_HEAD_BYTES, AuthSocketServer, HeadError, parse_head, serialize
from ussycode.api.forward_auth import ForwardAuth
from ussycode.auth.audit import Action, DeniedRequestLog
from ussycode.auth.cookies import SESSION_COOKIE
from ussycode.store.audit import AuditLog

HOST = "mild-owl.ussy.localhost"
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


def run_with_socket(
    world: World,
    tmp_path: Path,
    body: Callable[[Reader, Writer], Awaitable[None]],
    setup: Callable[[ForwardAuth], None] | None = None,
) -> None:
    """Serve forward auth for `world` on a socket in `tmp_path` and run `body` on one connection."""
    path = tmp_path / "auth.sock"

    async def main() -> None:
        forward_auth = ForwardAuth(
            config=world.config, store=world.store, denied=DeniedRequestLog(AuditLog(world.store))
        )
        if setup is not None:
            setup(forward_auth)
        server = AuthSocketServer(forward_auth, path)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                await asyncio.wait_for(body(reader, writer), timeout=10)
            finally:
                writer.close()
        finally:
            await asyncio.wait_for(server.stop(), timeout=10)

    asyncio.run(main())


def request(*headers: str, target: str = "/__ussycode/auth", host: str = HOST) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "X-Forwarded-Uri: /", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: Reader) -> tuple[int, dict[str, str], bytes]:
    """Read one response; header names are lower case."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


def test_auth_socket_allow_session(world: World, tmp_path: Path) -> None:
    token = host_session(world, world.alice.id)

    async def body(reader: Reader, writer: Writer) -> None:
        writer.write(request(f"Cookie: {SESSION_COOKIE}={token}"))
        status, headers, _ = await read_response(reader)
        assert status == 200
        assert headers["x-ussycode-user-id"] == str(world.alice.id)
        assert headers["x-ussycode-handle"] == "alice"
        assert "connection" not in headers

    run_with_socket(world, tmp_path, body)


def test_auth_socket_keep_alive(world: World, tmp_path: Path) -> None:
    token = host_session(world, world.alice.id)

    async def body(reader: Reader, writer: Writer) -> None:
        # A body with a Content-Length is skipped, and both requests arrive in one write.
        first = request(f"Cookie: {SESSION_COOKIE}={token}", "Content-Length: 5") + b"hello"
        writer.write(first + request())
        first_status, first_headers, _ = await read_response(reader)
        second_status, second_headers, _ = await read_response(reader)
        assert first_status == 200
        assert first_headers["x-ussycode-handle"] == "alice"
        assert second_status == 401
        assert second_headers["www-authenticate"] == f'Bearer realm="{HOST}"'

    run_with_socket(world, tmp_path, body)


def test_auth_socket_denied_forbidden(world: World, tmp_path: Path) -> None:
    token = host_session(world, world.carol.id)

    async def body(reader: Reader, writer: Writer) -> None:
        writer.write(request(f"Cookie: {SESSION_COOKIE}={token}", "Accept: application/json"))
        status, headers, payload = await read_response(reader)
        assert status == 403
        assert "x-ussycode-handle" not in headers
        assert b"carol has no access" in payload

    run_with_socket(world, tmp_path, body)
    entries = AuditLog(world.store).entries(action=Action.DENIED)
    assert [entry.target for entry in entries] == [HOST]


def test_auth_socket_browser_redirect(world: World, tmp_path: Path) -> None:
    async def body(reader: Reader, writer: Writer) -> None:
        writer.write(request("Accept: text/html"))
        status, headers, _ = await read_response(reader)
        assert status == 302
        assert headers["location"].startswith("https://")

    run_with_socket(world, tmp_path, body)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"GET /__ussycode/auth\r\nHost: x\r\n\r\n", "request line"),
        (b"GET /__ussycode/auth HTTP/2\r\nHost: x\r\n\r\n", "request line"),
        (request(" folded"), "folded line"),
        (request("Bad Header: 1"), "space in a name"),
        (request("NoColon"), "no colon"),
        (request(f"Host: {HOST}"), "two Host headers"),
        (b"GET /__ussycode/auth HTTP/1.1\r\nAccept: */*\r\n\r\n", "no Host header"),
        (request("Transfer-Encoding: chunked"), "chunked body"),
        (request("Content-Length: -1"), "negative length"),
        (request(target="/other"), "other path"),
        (request().replace(b"GET", b"POST", 1), "other method"),
    ],
)
def test_auth_socket_bad_request_closes(world: World, tmp_path: Path, raw: bytes, reason: str) -> None:
    async def body(reader: Reader, writer: Writer) -> None:
        writer.write(raw)
        status, headers, _ = await read_response(reader)
        assert status in (400, 404), reason
        assert headers["connection"] == "close"
        assert "x-ussycode-user-id" not in headers
        assert await reader.read() == b""

    run_with_socket(world, tmp_path, body)


def test_auth_socket_store_failure_500(world: World, tmp_path: Path) -> None:
    async def body(reader: Reader, writer: Writer) -> None:
        world.store.close()
        writer.write(request())
        status, headers, _ = await read_response(reader)
        assert status == 500
        assert headers["connection"] == "close"

    run_with_socket(world, tmp_path, body)


def test_auth_socket_head_too_large(world: World, tmp_path: Path) -> None:
    async def body(reader: Reader, writer: Writer) -> None:
        writer.write(b"GET /__ussycode/auth HTTP/1.1\r\nX-Filler: " + b"a" * (MAX_HEAD_BYTES + 1))
        status, headers, _ = await read_response(reader)
        assert status == 431
        assert headers["connection"] == "close"

    run_with_socket(world, tmp_path, body)


def test_auth_socket_connection_close(world: World, tmp_path: Path) -> None:
    async def body(reader: Reader, writer: Writer) -> None:
        writer.write(request("Connection: close"))
        status, headers, _ = await read_response(reader)
        assert status == 401
        assert headers["connection"] == "close"
        assert await reader.read() == b""

    run_with_socket(world, tmp_path, body)


def test_auth_socket_owner_only(world: World, tmp_path: Path) -> None:
    async def body(reader: Reader, writer: Writer) -> None:
        del reader, writer
        mode = stat.S_IMODE((tmp_path / "auth.sock").stat().st_mode)
        assert mode == 0o600

    run_with_socket(world, tmp_path, body)
    assert not (tmp_path / "auth.sock").exists()


def test_serialize_rejects_line_break() -> None:
    with pytest.raises(HeadError, match="line break"):
        serialize(200, [("X-Ussycode-Email", "a@b\r\nX-Ussycode-Handle: root")], b"", keep_alive=True)


def test_parse_head_headers() -> None:
    method, target, version, headers = parse_head(
        b"GET /a?b HTTP/1.1\r\nHost: h\r\nCookie:  c=1 \r\nCookie: d=2"
    )
    assert (method, target, version) == ("GET", "/a?b", "HTTP/1.1")
    assert headers == [("Host", "h"), ("Cookie", "c=1"), ("Cookie", "d=2")]


def wake_hooks(outcome: str | None, woken: list[str]) -> Callable[[ForwardAuth], None]:
    """Hooks that report every VM as suspended and end each wake with `outcome` after a short wait."""

    def setup(forward_auth: ForwardAuth) -> None:
        async def wake(name: str) -> str | None:
            await asyncio.sleep(0.2)
            woken.append(name)
            return outcome

        forward_auth.on_request = lambda name: True
        forward_auth.on_allow = wake

    return setup


def test_auth_socket_waits_for_wake(world: World, tmp_path: Path) -> None:
    token = host_session(world, world.alice.id)
    woken: list[str] = []

    async def body(reader: Reader, writer: Writer) -> None:
        # The second request arrives while the first waits: its reply must come second.
        writer.write(request(f"Cookie: {SESSION_COOKIE}={token}") + request())
        first_status, first_headers, _ = await read_response(reader)
        assert woken == ["mild-owl"]
        second_status, _, _ = await read_response(reader)
        assert first_status == 200
        assert first_headers["x-ussycode-handle"] == "alice"
        assert second_status == 401

    run_with_socket(world, tmp_path, body, wake_hooks(None, woken))


def test_auth_socket_failed_wake(world: World, tmp_path: Path) -> None:
    token = host_session(world, world.alice.id)
    woken: list[str] = []

    async def body(reader: Reader, writer: Writer) -> None:
        writer.write(request(f"Cookie: {SESSION_COOKIE}={token}", "Accept: application/json"))
        status, headers, payload = await read_response(reader)
        assert status == 503
        assert headers["retry-after"] == "30"
        assert b"could not resume" in payload
        assert "x-ussycode-handle" not in headers

    run_with_socket(world, tmp_path, body, wake_hooks("could not resume", woken))
