"""Fixtures for the proxy tests: real Caddy processes on loopback ports and stand-in upstream apps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ussycode.proxy import Caddy

DOMAIN = "ussy.localhost"

# An HTTP app that responds to every GET with JSON: its own name, the path and the request headers.
ECHO_APP = r"""
import http.server, json, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = json.dumps(
            {"app": sys.argv[2], "path": self.path, "headers": dict(self.headers)}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """Return whether `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition()` every 50 ms until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def end_pid(pid: int) -> None:
    """End `pid` with SIGTERM, then SIGKILL after 5 s."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not pid_alive(pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class EchoApp:
    """A stand-in upstream on 127.0.0.1: a VM's web app or the platform's API."""

    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.port}"


def _start_echo_app(name: str) -> EchoApp:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", ECHO_APP, str(port), name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    if not wait_for(listening):
        end_pid(process.pid)
        raise RuntimeError(f"echo app {name} did not listen on port {port} within 5 s")
    return EchoApp(name, port, process)


@contextlib.contextmanager
def echo_app(name: str) -> Iterator[EchoApp]:
    app = _start_echo_app(name)
    try:
        yield app
    finally:
        end_pid(app.process.pid)
        app.process.wait(timeout=5)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop per test module, so that a Caddy started in one test can be used in later ones."""
    with asyncio.Runner() as loop_runner:
        yield loop_runner


@pytest.fixture(scope="module")
def vm_app() -> Iterator[EchoApp]:
    with echo_app("vm-app") as app:
        yield app


@pytest.fixture(scope="module")
def other_vm_app() -> Iterator[EchoApp]:
    with echo_app("other-vm-app") as app:
        yield app


@pytest.fixture(scope="module")
def api_app() -> Iterator[EchoApp]:
    with echo_app("api") as app:
        yield app


@dataclass
class Proxy:
    """A `Caddy` with the ports and directory it was made with."""

    caddy: Caddy
    data_dir: Path
    https_port: int
    http_port: int

    def https_url(self, host: str, path: str = "/") -> str:
        return f"https://{host}:{self.https_port}{path}"

    def http_url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.http_port}{path}"


class CaddyFactory:
    """Makes `Caddy` objects on loopback ports and ends every process they started, by PID."""

    def __init__(self, runner: asyncio.Runner, api_upstream: str) -> None:
        self._runner = runner
        self._api_upstream = api_upstream
        self._made: list[Caddy] = []
        self._pids: set[int] = set()

    def make(
        self,
        data_dir: Path,
        *,
        ports: tuple[int, int] | None = None,
        binary: str = "caddy",
        tls_mode: str = "internal",
        ask_url: str | None = None,
    ) -> Proxy:
        https_port, http_port = ports or (free_port(), free_port())
        caddy = Caddy(
            binary=binary,
            data_dir=data_dir,
            domain=DOMAIN,
            https_addr=("127.0.0.1", https_port),
            http_addr=("127.0.0.1", http_port),
            tls_mode=tls_mode,
            acme_email="admin@example.org" if tls_mode == "acme" else "",
            api_upstream=self._api_upstream,
            ask_url=ask_url,
        )
        self._made.append(caddy)
        return Proxy(caddy, data_dir, https_port, http_port)

    def remember_pid(self, caddy: Caddy) -> None:
        """Record the PID of a started `caddy`, so that teardown ends it even if `stop` fails."""
        if caddy.pid is not None:
            self._pids.add(caddy.pid)

    def close(self) -> None:
        for caddy in self._made:
            self.remember_pid(caddy)
            with contextlib.suppress(Exception):
                self._runner.run(caddy.stop())
        for pid in self._pids:
            end_pid(pid)


@pytest.fixture
def caddy_factory(runner: asyncio.Runner, api_app: EchoApp) -> Iterator[CaddyFactory]:
    factory = CaddyFactory(runner, api_app.upstream)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def proxy(
    runner: asyncio.Runner, api_app: EchoApp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """A Caddy started once for the module with no routes; tests add VMs with their own names."""
    factory = CaddyFactory(runner, api_app.upstream)
    try:
        started = factory.make(tmp_path_factory.mktemp("proxy"))
        runner.run(started.caddy.start([]))
        factory.remember_pid(started.caddy)
        yield started
    finally:
        factory.close()
