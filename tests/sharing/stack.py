"""The platform's web side without QEMU: real Store, API server, Caddy and command layer on loopback.

VMs are store rows whose IP is a loopback address (127.0.0.2, 127.0.0.3, ...) where an echo app
replaces the app inside the guest. The API server and Caddy run on an event loop in a
thread of their own, so that curl, run from the test, can talk to them while the test waits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from tests.proxy.conftest import end_pid, free_port, wait_for
from tests.sharing.web import WebClient
from ussycode import config as config_module
from ussycode.api.server import APIServer
from ussycode.auth.login import Logins
from ussycode.commands.base import CommandContext, Services
from ussycode.commands.dispatch import Outcome, execute, split_line
from ussycode.proxy.caddy import Caddy
from ussycode.proxy.routes import CaddyRoutes
from ussycode.store import VM, Store, User
from ussycode.store.sharing import Sharing
from ussycode.vm.manager import VMManager
from ussycode.vm.network import Network
from ussycode.vm.qemu import QemuRuntime

DOMAIN = "ussy.localhost"
ECHO_APP = Path(__file__).with_name("echo_app.py")
T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running in a daemon thread until `close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="stack-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class BatchTerminal:
    """The terminal of a command run without a person: no prompts, progress discarded."""

    interactive = False

    async def prompt(self, question: str) -> str | None:
        del question
        return None

    def progress(self, message: str) -> None:
        del message


@dataclass
class EchoApp:
    address: str
    port: int
    process: subprocess.Popen[bytes]


def free_port_between(low: int, high: int, address: str) -> int:
    """Return a port in [low, high] that `address` can bind now."""
    for port in range(low + free_port() % 500, high):
        with socket.socket() as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {low} and {high} on {address}")


def start_echo_app(address: str, port: int, name: str) -> EchoApp:
    process = subprocess.Popen(
        [sys.executable, str(ECHO_APP), address, str(port), name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex((address, port)) == 0

    if not wait_for(listening):
        end_pid(process.pid)
        raise RuntimeError(f"echo app {name} did not listen on {address}:{port} within 5 s")
    return EchoApp(address, port, process)


class Stack:
    """Store, API server, Caddy and commands of one platform, on 127.0.0.1 ports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.loop = LoopThread()

        self.https_port = free_port()
        self.api_port = free_port()
        self.config = load_config(workdir / "data", self.https_port, free_port(), self.api_port)
        self.store = Store(workdir / "data" / "ussycode.db")
        self.auth_socket = self.config.data_dir / "auth.sock"
        self.caddy = Caddy(
            binary="caddy",
            data_dir=self.config.data_dir,
            domain=DOMAIN,
            https_addr=self.config.https_addr,
            http_addr=self.config.http_addr,
            tls_mode="internal",
            acme_email="",
            api_upstream=f"127.0.0.1:{self.api_port}",
            auth_socket=self.auth_socket,
        )
        self.routes = CaddyRoutes(self.config, self.caddy, self.store)

        self.api = APIServer(config=self.config, store=self.store, auth_socket=self.auth_socket)
        gateway_key = asyncssh.generate_private_key("ssh-ed25519")
        self.manager = VMManager(
            config=self.config,
            store=self.store,
            network=Network(bridge="ussy0", subnet=self.config.subnet, metadata_port=8083),
            runtime=QemuRuntime(),
            gateway_key=gateway_key,
            listener=self.routes,
        )
        self.services = Services(config=self.config, store=self.store, manager=self.manager)
        self.apps: list[EchoApp] = []
        self._next_ip = 2

    def start(self) -> None:
        self.loop.run(self.api.start())
        self.loop.run(self.caddy.start([]))

    def close(self) -> None:
        caddy_pid = self.caddy.pid
        with contextlib.suppress(Exception):
            self.loop.run(self.caddy.stop())
        if caddy_pid is not None:
            end_pid(caddy_pid)
        with contextlib.suppress(Exception):
            self.loop.run(self.api.stop())
        for app in self.apps:
            end_pid(app.process.pid)
            app.process.wait(timeout=5)
        self.loop.close()
        self.store.close()

    # Users and VMs.

    def add_user(self, handle: str) -> User:
        return self.store.create_user(
            handle, f"SHA256:test-{handle}", f"ssh-ed25519 AAAA{handle}", "test key"
        )

    def add_vm(self, name: str, owner: User, *, extra_port: bool = False) -> tuple[VM, EchoApp]:
        """Add a running VM with an echo app on its URL's port, and one on a port of 3000-9999."""
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        app = start_echo_app(ip, free_port_between(10000, 60000, ip), name)
        self.apps.append(app)
        if extra_port:
            self.apps.append(start_echo_app(ip, free_port_between(3000, 9999, ip), f"{name}-extra"))
        vm = self.store.create_vm(
            name=name,
            owner_id=owner.id,
            state="running",
            image="ussyuntu",
            image_path="/nonexistent",
            cpus=1,
            memory_mb=512,
            disk_bytes=1 << 30,
            ip=ip,
            mac=f"52:54:00:00:01:{self._next_ip:02x}",
        )
        Sharing(self.store).set_port(vm.id, app.port, owner.id)
        self.loop.run(self.routes.vm_changed(vm))
        return vm, app

    def extra_app(self, vm: VM) -> EchoApp:
        return next(app for app in self.apps if app.address == vm.ip and 3000 <= app.port <= 9999)

    # Commands and clients.

    def command(self, user: User, line: str) -> Outcome:
        ctx = CommandContext(self.services, user, BatchTerminal())
        return self.loop.run(execute(ctx, split_line(line)))

    def login_link(self, user: User) -> str:
        return Logins(self.store, self.config).create_login_link(user).url

    def client(self, name: str) -> WebClient:
        return WebClient(cacert=self.caddy.root_ca_path, jar=self.workdir / f"{name}.cookies")

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}:{self.https_port}{path}"

    def vm_url(self, name: str, path: str = "/") -> str:
        return self.url(f"{name}.{DOMAIN}", path)


def load_config(data_dir: Path, https_port: int, http_port: int, api_port: int) -> config_module.Config:
    parser = argparse.ArgumentParser()
    config_module.add_arguments(parser)
    environ = {
        "USSYCODE_ENV_FILE": "/nonexistent/ussycode.env",
        "USSYCODE_DOMAIN": DOMAIN,
        "USSYCODE_DATA_DIR": str(data_dir),
        "USSYCODE_HTTPS_ADDR": f"127.0.0.1:{https_port}",
        "USSYCODE_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "USSYCODE_API_ADDR": f"127.0.0.1:{api_port}",
    }
    return config_module.load(parser.parse_args([]), environ)


@contextlib.contextmanager
def running_stack(workdir: Path) -> Iterator[Stack]:
    stack = Stack(workdir)
    try:
        stack.start()
        yield stack
    finally:
        stack.close()
