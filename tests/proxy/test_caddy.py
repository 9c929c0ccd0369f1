"""Tests of the Caddy integration against real Caddy processes on 127.0.0.1, driven with curl."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.framework.netns import NetNS
from tests.proxy.conftest import (
    DOMAIN,
    CaddyFactory,
    EchoApp,
    Proxy,
    end_pid,
    free_port,
    pid_alive,
    wait_for,
)
from ussycode.errors import ConfigError, Conflict, InvalidInput, RuntimeFailure
from ussycode.proxy import Caddy, VMRoute
from ussycode.proxy.caddy import AdminAPI
from ussycode.proxy.caddy_config import ProxySettings, build_config, listen_address


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def curl(proxy: Proxy, url: str, *extra: str) -> Reply:
    """Fetch `url` with curl, trusting only Caddy's internal root and resolving to 127.0.0.1."""
    parts = urlsplit(url)
    argv = [
        "curl",
        "--silent",
        "--show-error",
        "--include",
        "--max-time",
        "5",
        "--cacert",
        str(proxy.caddy.root_ca_path),
        "--resolve",
        f"{parts.hostname}:{parts.port}:127.0.0.1",
        *extra,
        url,
    ]
    result = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    assert result.returncode == 0, f"{shlex.join(argv)} failed: {result.stderr.decode()}"
    head, _, body = result.stdout.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), headers, body)


def running(name: str, app: EchoApp) -> VMRoute:
    return VMRoute(name, app.upstream, "running", f"ssh -p 2224 localhost start {name}", public=True)


def stopped(name: str, state: str = "stopped") -> VMRoute:
    return VMRoute(name, None, state, f"ssh -p 2224 localhost start {name}")


def vm_host(name: str) -> str:
    return f"{name}.{DOMAIN}"


# --- serving -------------------------------------------------------------------------------------


def test_caddy_proxies_vm_host(runner: asyncio.Runner, proxy: Proxy, vm_app: EchoApp) -> None:
    runner.run(proxy.caddy.set_route(running("mild-owl", vm_app)))

    reply = curl(proxy, proxy.https_url(vm_host("mild-owl"), "/hello?x=1"))

    assert reply.status == 200
    assert reply.json()["app"] == "vm-app"
    assert reply.json()["path"] == "/hello?x=1"


def test_caddy_uses_wildcard_certificate(runner: asyncio.Runner, proxy: Proxy, vm_app: EchoApp) -> None:
    runner.run(proxy.caddy.set_route(running("late-fox", vm_app)))

    reply = curl(proxy, proxy.https_url(vm_host("late-fox")))
    certificates = proxy.data_dir / "caddy" / "data" / "caddy" / "certificates" / "local"

    assert reply.status == 200
    assert sorted(path.name for path in certificates.iterdir()) == [DOMAIN, f"wildcard_.{DOMAIN}"]


def test_caddy_sets_forwarded_headers(runner: asyncio.Runner, proxy: Proxy, vm_app: EchoApp) -> None:
    runner.run(proxy.caddy.set_route(running("fwd-hare", vm_app)))
    host = vm_host("fwd-hare")

    reply = curl(
        proxy,
        proxy.https_url(host),
        "--header",
        "X-Forwarded-For: 203.0.113.9",
        "--header",
        "X-Forwarded-Host: spoofed.example",
    )
    headers = reply.json()["headers"]

    assert headers["Host"] == f"{host}:{proxy.https_port}"
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Host"] == f"{host}:{proxy.https_port}"
    assert headers["X-Forwarded-For"] == "127.0.0.1"


def test_caddy_stopped_vm_page(runner: asyncio.Runner, proxy: Proxy) -> None:
    runner.run(proxy.caddy.set_route(stopped("nap-cat")))

    reply = curl(proxy, proxy.https_url(vm_host("nap-cat"), "/any/path"))

    assert reply.status == 503
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert 'VM "nap-cat" is stopped.' in reply.body
    assert "Start it with: <code>ssh -p 2224 localhost start nap-cat</code>" in reply.body


def test_caddy_status_page_escapes_text(runner: asyncio.Runner, proxy: Proxy) -> None:
    route = VMRoute("esc-bat", None, "stopped", "start <b>esc-bat</b> {http.request.host}")
    runner.run(proxy.caddy.set_route(route))

    reply = curl(proxy, proxy.https_url(vm_host("esc-bat")))

    assert reply.status == 503
    assert "start &lt;b&gt;esc-bat&lt;/b&gt; &#123;http.request.host&#125;" in reply.body


def test_caddy_status_page_shows_state(runner: asyncio.Runner, proxy: Proxy) -> None:
    runner.run(proxy.caddy.set_route(stopped("slow-elk", state="starting")))

    reply = curl(proxy, proxy.https_url(vm_host("slow-elk")))

    assert reply.status == 503
    assert 'VM "slow-elk" is starting.' in reply.body


def test_caddy_unreachable_upstream_page(runner: asyncio.Runner, proxy: Proxy) -> None:
    port = free_port()
    runner.run(proxy.caddy.set_route(VMRoute("deaf-yak", f"127.0.0.1:{port}", "running", "")))

    reply = curl(proxy, proxy.https_url(vm_host("deaf-yak")))

    assert reply.status == 502
    assert f'VM "deaf-yak" is running, but nothing answered on port {port}' in reply.body


def test_caddy_unknown_vm_404(proxy: Proxy) -> None:
    reply = curl(proxy, proxy.https_url(vm_host("ghost")))

    assert reply.status == 404
    assert 'No VM named "ghost" on this host.' in reply.body


def test_caddy_unknown_vm_escapes_host(proxy: Proxy) -> None:
    reply = curl(proxy, proxy.https_url(vm_host("ghost")), "--header", f"Host: <i>x</i>.{DOMAIN}")

    assert reply.status == 404
    assert "<i>" not in reply.body


def test_caddy_other_host_404(proxy: Proxy) -> None:
    reply = curl(proxy, proxy.https_url(vm_host("ghost")), "--header", "Host: other.example")

    assert reply.status == 404
    assert "No site at this address." in reply.body


def test_caddy_main_domain_reaches_api(proxy: Proxy) -> None:
    reply = curl(proxy, proxy.https_url(DOMAIN, "/api/v1/ping"))

    assert reply.status == 200
    assert reply.json()["app"] == "api"
    assert reply.json()["path"] == "/api/v1/ping"
    assert reply.json()["headers"]["X-Forwarded-Proto"] == "https"


def test_caddy_redirects_http_to_https(proxy: Proxy) -> None:
    host = vm_host("any-vm")

    reply = curl(proxy, proxy.http_url(host, "/p?q=1"))

    assert reply.status == 308
    assert reply.headers["location"] == proxy.https_url(host, "/p?q=1")


def test_caddy_redirect_ignores_other_hosts(proxy: Proxy) -> None:
    reply = curl(proxy, proxy.http_url(DOMAIN), "--header", "Host: other.example")

    assert reply.status == 404
    assert "location" not in reply.headers


def test_caddy_has_no_http3_listener(proxy: Proxy) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", proxy.https_port))


# --- route changes -------------------------------------------------------------------------------


def test_caddy_remove_route_404(runner: asyncio.Runner, proxy: Proxy, vm_app: EchoApp) -> None:
    runner.run(proxy.caddy.set_route(running("gone-emu", vm_app)))
    runner.run(proxy.caddy.remove_route("gone-emu"))

    reply = curl(proxy, proxy.https_url(vm_host("gone-emu")))

    assert reply.status == 404
    assert 'No VM named "gone-emu" on this host.' in reply.body


def test_caddy_remove_absent_route(runner: asyncio.Runner, proxy: Proxy) -> None:
    runner.run(proxy.caddy.remove_route("never-was"))

    assert proxy.caddy.is_running()


def test_caddy_set_route_replaces_one(
    runner: asyncio.Runner, proxy: Proxy, vm_app: EchoApp, other_vm_app: EchoApp
) -> None:
    runner.run(proxy.caddy.set_route(running("one-ant", vm_app)))
    runner.run(proxy.caddy.set_route(running("two-ant", vm_app)))

    runner.run(proxy.caddy.set_route(running("one-ant", other_vm_app)))
    one_reply = curl(proxy, proxy.https_url(vm_host("one-ant")))
    two_reply = curl(proxy, proxy.https_url(vm_host("two-ant")))
    runner.run(proxy.caddy.set_route(stopped("one-ant")))
    one_stopped = curl(proxy, proxy.https_url(vm_host("one-ant")))
    two_after = curl(proxy, proxy.https_url(vm_host("two-ant")))

    assert one_reply.json()["app"] == "other-vm-app"
    assert two_reply.json()["app"] == "vm-app"
    assert one_stopped.status == 503
    assert two_after.json()["app"] == "vm-app"


def test_caddy_set_route_keeps_one_copy(runner: asyncio.Runner, proxy: Proxy, vm_app: EchoApp) -> None:
    for _ in range(3):
        runner.run(proxy.caddy.set_route(running("solo-gnu", vm_app)))

    routes = runner.run(AdminAPI(proxy.caddy.admin_socket).request("GET", "/id/ussycode-vms/routes"))
    ids = [route.get("@id") for route in routes]

    assert ids.count("ussycode-vm-solo-gnu") == 1
    assert ids.index("ussycode-vm-solo-gnu") < ids.index(None)


@pytest.mark.parametrize("name", ["", "Upper", "-lead", "trail-", "a.b", "a_b", "a b", "x" * 64, "ümlaut"])
def test_caddy_rejects_invalid_name(runner: asyncio.Runner, proxy: Proxy, vm_app: EchoApp, name: str) -> None:
    runner.run(proxy.caddy.set_route(running("keep-owl", vm_app)))

    with pytest.raises(InvalidInput, match="invalid VM name"):
        runner.run(proxy.caddy.set_route(running(name, vm_app)))
    reply = curl(proxy, proxy.https_url(vm_host("keep-owl")))

    assert reply.status == 200


@pytest.mark.parametrize(
    "upstream",
    [
        "10.0.0.5",
        "10.0.0.5:0",
        "10.0.0.5:65536",
        "10.0.0.5:80a",
        ":8080",
        "http://10.0.0.5:8080",
        "10.0.0.5:8080/path",
        "[zz::1]:80",
        "bad host:80",
        "10.0.0.5:8080 ",
    ],
)
def test_caddy_rejects_bad_upstream(
    runner: asyncio.Runner, proxy: Proxy, vm_app: EchoApp, upstream: str
) -> None:
    runner.run(proxy.caddy.set_route(running("keep-bee", vm_app)))

    with pytest.raises(InvalidInput, match='invalid route for VM "keep-bee": invalid upstream'):
        runner.run(proxy.caddy.set_route(VMRoute("keep-bee", upstream, "running", "")))
    reply = curl(proxy, proxy.https_url(vm_host("keep-bee")))

    assert reply.status == 200
    assert reply.json()["app"] == "vm-app"


def test_caddy_accepts_ipv6_upstream(runner: asyncio.Runner, proxy: Proxy) -> None:
    runner.run(proxy.caddy.set_route(VMRoute("six-ram", "[fd00::5]:8080", "running", "")))
    runner.run(proxy.caddy.remove_route("six-ram"))

    assert proxy.caddy.is_running()


@pytest.mark.parametrize(
    ("state", "start_command", "message"),
    [
        ("", "start x", "state is empty"),
        ("s" * 41, "start x", "state is longer than 40 characters"),
        ("stopped\n", "start x", "state 'stopped\\\\n' contains control characters"),
        ("stopped", "start x\r\n", "start command .* contains control characters"),
        ("stopped", "s" * 301, "start command is longer than 300 characters"),
    ],
)
def test_caddy_rejects_bad_status_text(
    runner: asyncio.Runner, proxy: Proxy, state: str, start_command: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        runner.run(proxy.caddy.set_route(VMRoute("text-pig", None, state, start_command)))


def test_caddy_admin_rejection_keeps_config(runner: asyncio.Runner, proxy: Proxy, vm_app: EchoApp) -> None:
    runner.run(proxy.caddy.set_route(running("firm-doe", vm_app)))
    admin = AdminAPI(proxy.caddy.admin_socket)
    broken = {"@id": "ussycode-vm-firm-doe", "match": [{"no_such_matcher": {}}], "handle": []}

    with pytest.raises(RuntimeFailure, match=re.escape("unknown module: http.matchers.no_such_matcher")):
        runner.run(admin.request("PATCH", "/id/ussycode-vm-firm-doe", broken))
    reply = curl(proxy, proxy.https_url(vm_host("firm-doe")))

    assert reply.status == 200
    assert reply.json()["app"] == "vm-app"


def test_caddy_admin_unreachable_raises(runner: asyncio.Runner, tmp_path: Path) -> None:
    admin = AdminAPI(tmp_path / "missing.sock")

    with pytest.raises(RuntimeFailure, match=r"Caddy admin API at .*missing\.sock failed on GET"):
        runner.run(admin.request("GET", "/config/"))


# --- lifecycle -----------------------------------------------------------------------------------


def test_caddy_start_serves_given_routes(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path, vm_app: EchoApp
) -> None:
    fresh = caddy_factory.make(tmp_path)

    runner.run(fresh.caddy.start([running("boot-elk", vm_app), stopped("boot-cow")]))
    elk = curl(fresh, fresh.https_url(vm_host("boot-elk")))
    cow = curl(fresh, fresh.https_url(vm_host("boot-cow")))

    assert elk.status == 200
    assert cow.status == 503


def test_caddy_files_in_data_dir(runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path) -> None:
    fresh = caddy_factory.make(tmp_path)

    runner.run(fresh.caddy.start([]))
    caddy_dir = tmp_path / "caddy"

    assert fresh.caddy.root_ca_path == caddy_dir / "data/caddy/pki/authorities/local/root.crt"
    assert fresh.caddy.root_ca_path.is_file()
    assert (caddy_dir / "caddy.pid").read_text().strip() == str(fresh.caddy.pid)
    assert stat.S_ISSOCK((caddy_dir / "admin.sock").stat().st_mode)
    assert stat.S_IMODE(caddy_dir.stat().st_mode) == 0o700
    assert "--- ussycode starting caddy: caddy run --config" in fresh.caddy.log_path.read_text()
    assert fresh.caddy.log_path == tmp_path / "logs" / "caddy.log"


def test_caddy_stop_ends_process(runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path) -> None:
    fresh = caddy_factory.make(tmp_path)
    runner.run(fresh.caddy.start([]))
    pid = fresh.caddy.pid
    assert pid is not None

    runner.run(fresh.caddy.stop())

    assert not pid_alive(pid)
    assert not fresh.caddy.is_running()
    assert not fresh.caddy.pid_path.exists()


def test_caddy_stop_twice(runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path) -> None:
    fresh = caddy_factory.make(tmp_path)
    runner.run(fresh.caddy.start([]))

    runner.run(fresh.caddy.stop())
    runner.run(fresh.caddy.stop())

    assert not fresh.caddy.is_running()


def test_caddy_start_twice_conflict(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path
) -> None:
    fresh = caddy_factory.make(tmp_path)
    runner.run(fresh.caddy.start([]))

    with pytest.raises(Conflict, match="Caddy is already running"):
        runner.run(fresh.caddy.start([]))


def test_caddy_restart_keeps_serving(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path, vm_app: EchoApp
) -> None:
    fresh = caddy_factory.make(tmp_path)
    runner.run(fresh.caddy.start([running("again-ox", vm_app)]))
    runner.run(fresh.caddy.stop())

    runner.run(fresh.caddy.start([running("again-ox", vm_app)]))
    reply = curl(fresh, fresh.https_url(vm_host("again-ox")))

    assert reply.status == 200


def test_caddy_restart_ends_leftover(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path, vm_app: EchoApp
) -> None:
    first = caddy_factory.make(tmp_path)
    runner.run(first.caddy.start([]))
    old_pid = first.caddy.pid
    assert old_pid is not None
    second = caddy_factory.make(tmp_path, ports=(first.https_port, first.http_port))

    runner.run(second.caddy.start([running("heir-cod", vm_app)]))
    reply = curl(second, second.https_url(vm_host("heir-cod")))

    assert not pid_alive(old_pid)
    assert second.caddy.pid != old_pid
    assert second.caddy.pid_path.read_text().strip() == str(second.caddy.pid)
    assert reply.status == 200
    assert not first.caddy.is_running()


def test_caddy_spares_unrelated_pidfile_process(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path, vm_app: EchoApp
) -> None:
    fresh = caddy_factory.make(tmp_path)
    fresh.caddy.pid_path.parent.mkdir(parents=True)
    fresh.caddy.pid_path.write_text(f"{vm_app.process.pid}\n")

    runner.run(fresh.caddy.start([]))

    assert pid_alive(vm_app.process.pid)
    assert fresh.caddy.is_running()


def test_caddy_ignores_garbage_pidfile(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path
) -> None:
    fresh = caddy_factory.make(tmp_path)
    fresh.caddy.pid_path.parent.mkdir(parents=True)
    fresh.caddy.pid_path.write_text("not a pid\n")

    runner.run(fresh.caddy.start([]))

    assert fresh.caddy.is_running()


# Starts a Caddy, prints its PID, then blocks until stdin closes.
_PARENT_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from ussycode.proxy import Caddy

async def main():
    settings = json.loads(sys.argv[1])
    caddy = Caddy(
        binary="caddy", data_dir=Path(settings["data_dir"]), domain=settings["domain"],
        https_addr=("127.0.0.1", settings["https_port"]),
        http_addr=("127.0.0.1", settings["http_port"]),
        tls_mode="internal", acme_email="", api_upstream="127.0.0.1:9",
    )
    await caddy.start([])
    print(caddy.pid, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def test_caddy_dies_with_parent(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path, vm_app: EchoApp
) -> None:
    https_port, http_port = free_port(), free_port()
    settings = {
        "data_dir": str(tmp_path),
        "domain": DOMAIN,
        "https_port": https_port,
        "http_port": http_port,
    }
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT_SCRIPT, json.dumps(settings)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    caddy_pid = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait(timeout=5)

        ended = wait_for(lambda: not pid_alive(caddy_pid))
        fresh = caddy_factory.make(tmp_path, ports=(https_port, http_port))
        runner.run(fresh.caddy.start([running("orphan-eel", vm_app)]))
        reply = curl(fresh, fresh.https_url(vm_host("orphan-eel")))
    finally:
        end_pid(caddy_pid)

    assert ended
    assert reply.status == 200


def test_caddy_launch_failure_raises(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path
) -> None:
    fresh = caddy_factory.make(tmp_path)

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", fresh.https_port))
        taken.listen()
        with pytest.raises(RuntimeFailure, match="Caddy exited during start") as caught:
            runner.run(fresh.caddy.start([]))

    assert caught.value.returncode == 1
    assert "caddy run --config" in caught.value.message
    assert "address already in use" in caught.value.output
    assert not fresh.caddy.is_running()
    assert not fresh.caddy.pid_path.exists()


def test_caddy_missing_binary_raises(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path
) -> None:
    fresh = caddy_factory.make(tmp_path, binary=str(tmp_path / "no-caddy"))

    with pytest.raises(RuntimeFailure, match=r"Caddy binary not found: .*no-caddy"):
        runner.run(fresh.caddy.start([]))


def test_caddy_start_rejects_duplicate_routes(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path, vm_app: EchoApp
) -> None:
    fresh = caddy_factory.make(tmp_path)

    with pytest.raises(InvalidInput, match='duplicate route for VM "twin-jay"'):
        runner.run(fresh.caddy.start([running("twin-jay", vm_app), stopped("twin-jay")]))

    assert not fresh.caddy.is_running()


def test_caddy_start_rejects_invalid_route(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path
) -> None:
    fresh = caddy_factory.make(tmp_path)

    with pytest.raises(InvalidInput, match='invalid VM name "Bad"'):
        runner.run(fresh.caddy.start([stopped("Bad")]))

    assert not fresh.caddy.is_running()


def test_caddy_set_route_needs_running(
    runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path, vm_app: EchoApp
) -> None:
    fresh = caddy_factory.make(tmp_path)

    with pytest.raises(RuntimeFailure, match="Caddy is not running"):
        runner.run(fresh.caddy.set_route(running("early-bat", vm_app)))


def _caddy_kwargs(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "binary": "caddy",
        "data_dir": tmp_path,
        "domain": DOMAIN,
        "https_addr": ("127.0.0.1", 8443),
        "http_addr": ("127.0.0.1", 8080),
        "tls_mode": "internal",
        "acme_email": "",
        "api_upstream": "127.0.0.1:9090",
        "ask_url": None,
    }
    kwargs.update(overrides)
    return kwargs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"domain": "localhost"}, "invalid proxy domain: invalid domain 'localhost'"),
        ({"domain": "Ussy.Localhost"}, "invalid proxy domain"),
        ({"domain": "ussy..localhost"}, "invalid proxy domain"),
        ({"tls_mode": "bogus"}, "invalid TLS mode 'bogus': expected one of internal, acme"),
        ({"tls_mode": "acme"}, "TLS mode acme needs an ask URL"),
        ({"api_upstream": "nowhere"}, "invalid API upstream: invalid upstream 'nowhere'"),
        ({"https_addr": ("127.0.0.1", 0)}, "invalid HTTPS address 127.0.0.1:0"),
        ({"http_addr": ("", 70000)}, "invalid HTTP address :70000"),
        ({"http_addr": ("127.0.0.1", 8443)}, "use the same port 8443"),
        ({"data_dir": Path("/tmp/" + "d" * 100)}, "admin socket path .* is 122 bytes"),
    ],
)
def test_caddy_rejects_bad_settings(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Caddy(**_caddy_kwargs(tmp_path, **overrides))


def test_caddy_root_ca_path(tmp_path: Path) -> None:
    caddy = Caddy(**_caddy_kwargs(tmp_path))

    assert caddy.root_ca_path == tmp_path / "caddy/data/caddy/pki/authorities/local/root.crt"


# --- ACME ----------------------------------------------------------------------------------------


@pytest.mark.netns
def test_caddy_acme_config_loads(runner: asyncio.Runner, caddy_factory: CaddyFactory, tmp_path: Path) -> None:
    # Caddy runs in a namespace with only loopback, so an attempt to reach an ACME server
    # fails inside it and sends nothing off this machine.
    with NetNS("caddy") as namespace:
        wrapper = tmp_path / "caddy"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {namespace.name} caddy "$@"\n')
        wrapper.chmod(0o755)
        ask_url = f"http://127.0.0.1:{free_port()}/tls/ask"
        fresh = caddy_factory.make(tmp_path / "data", binary=str(wrapper), tls_mode="acme", ask_url=ask_url)

        runner.run(fresh.caddy.start([]))
        assert fresh.caddy.pid is not None
        namespace.extra_pids.append(fresh.caddy.pid)
        tls = runner.run(AdminAPI(fresh.caddy.admin_socket).request("GET", "/config/apps/tls"))
        log_text = fresh.caddy.log_path.read_text()
        runner.run(fresh.caddy.stop())

    policy = tls["automation"]["policies"][0]
    assert tls["automation"]["on_demand"]["ask"] == ask_url
    assert policy["on_demand"] is True
    assert policy["issuers"] == [{"module": "acme", "email": "admin@example.org"}]
    assert "obtaining certificate" not in log_text


# --- config builder ------------------------------------------------------------------------------


def _settings(**overrides: Any) -> ProxySettings:
    values: dict[str, Any] = {
        "domain": DOMAIN,
        "https_addr": ("", 443),
        "http_addr": ("", 80),
        "tls_mode": "internal",
        "acme_email": "",
        "api_upstream": "127.0.0.1:9090",
        "auth_upstream": "127.0.0.1:9090",
        "ask_url": None,
        "admin_socket": Path("/var/lib/ussycode/caddy/admin.sock"),
    }
    values.update(overrides)
    return ProxySettings(**values)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [(("", 443), ":443"), (("127.0.0.1", 8443), "127.0.0.1:8443"), (("::1", 8443), "[::1]:8443")],
)
def test_listen_address_formats(addr: tuple[str, int], expected: str) -> None:
    assert listen_address(addr) == expected


def test_config_redirect_omits_default_port() -> None:
    config = build_config(_settings(), [])
    redirect = config["apps"]["http"]["servers"]["ussycode-http"]["routes"][0]["handle"][0]

    assert redirect["headers"]["Location"] == ["https://{http.request.host}{http.request.uri}"]


def test_config_admin_on_unix_socket() -> None:
    config = build_config(_settings(), [])

    assert config["admin"]["listen"] == "unix//var/lib/ussycode/caddy/admin.sock"
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False


def test_config_acme_without_email() -> None:
    config = build_config(_settings(tls_mode="acme", ask_url="http://127.0.0.1:9090/ask"), [])
    policy = config["apps"]["tls"]["automation"]["policies"][0]

    assert policy["issuers"] == [{"module": "acme"}]
