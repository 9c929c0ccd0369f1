"""The access steps of VM routes: forward auth, header and cookie stripping, port hosts."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from pathlib import Path
from typing import Any

from tests.proxy.conftest import DOMAIN, CaddyFactory, EchoApp, free_port
from ussycode.proxy import VMRoute
from ussycode.proxy.caddy import Caddy
from ussycode.proxy.caddy_config import ProxySettings, build_vm_route

SETTINGS = ProxySettings(
    domain=DOMAIN,
    https_addr=("127.0.0.1", 8443),
    http_addr=("127.0.0.1", 8080),
    tls_mode="internal",
    acme_email="",
    api_upstream="127.0.0.1:9090",
    auth_upstream="127.0.0.1:9090",
    ask_url=None,
    admin_socket=Path("/run/caddy.sock"),
)


def steps(route: dict[str, Any]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = route["handle"][0]["routes"]
    return routes


def has_forward_auth(handlers: list[dict[str, Any]]) -> bool:
    return any(handler.get("rewrite", {}).get("uri") == "/__ussycode/auth" for handler in handlers)


def test_route_private_asks_api() -> None:
    route = build_vm_route(VMRoute("mild-owl", "10.0.0.5:8080", "running", ""), SETTINGS)
    assert has_forward_auth(steps(route)[-1]["handle"])
    assert has_forward_auth(steps(route)[-2]["handle"])


def test_route_public_skips_api() -> None:
    route = build_vm_route(VMRoute("mild-owl", "10.0.0.5:8080", "running", "", public=True), SETTINGS)
    assert not has_forward_auth(steps(route)[-1]["handle"])
    assert has_forward_auth(steps(route)[-2]["handle"])


def test_route_auth_dials_socket() -> None:
    settings = dataclasses.replace(SETTINGS, auth_upstream="unix//var/lib/ussycode/auth.sock")
    route = build_vm_route(VMRoute("mild-owl", "10.0.0.5:8080", "running", ""), settings)
    platform_paths, primary = steps(route)[1], steps(route)[-1]
    auth = [handler for handler in primary["handle"] if has_forward_auth([handler])]
    assert [handler["upstreams"] for handler in auth] == [[{"dial": "unix//var/lib/ussycode/auth.sock"}]]
    assert platform_paths["handle"][0]["upstreams"] == [{"dial": "127.0.0.1:9090"}]


def test_caddy_auth_socket_upstream(tmp_path: Path) -> None:
    caddy = Caddy(
        binary="caddy",
        data_dir=tmp_path,
        domain=DOMAIN,
        https_addr=("127.0.0.1", 8443),
        http_addr=("127.0.0.1", 8080),
        tls_mode="internal",
        acme_email="",
        api_upstream="127.0.0.1:9090",
        auth_socket=tmp_path / "auth.sock",
    )
    assert caddy._settings.auth_upstream == f"unix/{tmp_path}/auth.sock"


def test_route_strips_identity_first() -> None:
    route = build_vm_route(VMRoute("mild-owl", None, "stopped", "", public=True), SETTINGS)
    keep_token, strip = steps(route)[0]["handle"]
    assert keep_token == {
        "handler": "vars",
        "ussycode_bearer": "{http.request.header.X-Ussycode-Authorization}",
    }
    assert strip["request"]["delete"][0] == "X-Ussycode-*"
    assert "X_Ussycode_*" in strip["request"]["delete"]


def test_route_port_hosts_dial_vm() -> None:
    route = build_vm_route(VMRoute("mild-owl", "10.0.0.5:8080", "running", ""), SETTINGS)
    port_app = steps(route)[-2]["handle"][-1]
    dial = port_app["routes"][0]["handle"][-1]["upstreams"][0]["dial"]
    assert dial == "10.0.0.5:{http.regexp.ussycode_port.1}"
    pattern = steps(route)[-2]["match"][0]["header_regexp"]["Host"]["pattern"]
    assert pattern == r"(?i)^mild\-owl--(3[0-9]{3}|[4-9][0-9]{3})\.ussy\.localhost(:[0-9]+)?$"


def test_route_name_like_port_host() -> None:
    route = build_vm_route(VMRoute("app--3000", "10.0.0.5:8080", "running", ""), SETTINGS)
    assert [list(matcher) for matcher in route["match"]] == [["header_regexp"]]
    plain = build_vm_route(VMRoute("app--x", "10.0.0.5:8080", "running", ""), SETTINGS)
    assert plain["match"][0] == {"host": [f"app--x.{DOMAIN}"]}


def curl_status(url: str, cacert: Path, *extra: str) -> tuple[int, str]:
    argv = ["curl", "-sS", "--max-time", "5", "--cacert", str(cacert), "-w", "\n%{http_code}", *extra, url]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    body, _, code = completed.stdout.rpartition("\n")
    return int(code or 0), body


def test_caddy_auth_down_page(runner: asyncio.Runner, vm_app: EchoApp, tmp_path: Path) -> None:
    factory = CaddyFactory(runner, f"127.0.0.1:{free_port()}")
    try:
        proxy = factory.make(tmp_path)
        private = VMRoute("shy-owl", vm_app.upstream, "running", "")
        public = VMRoute("open-owl", vm_app.upstream, "running", "", public=True)
        runner.run(proxy.caddy.start([private, public]))
        factory.remember_pid(proxy.caddy)
        cacert = proxy.caddy.root_ca_path

        status, body = curl_status(proxy.https_url(f"shy-owl.{DOMAIN}"), cacert)
        assert status == 503
        assert 'The platform could not check access to VM "shy-owl"' in body
        status, body = curl_status(proxy.https_url(f"open-owl.{DOMAIN}"), cacert)
        assert status == 200
        assert '"app": "vm-app"' in body
        status, _ = curl_status(proxy.https_url(f"open-owl--3000.{DOMAIN}"), cacert)
        assert status == 503
    finally:
        factory.close()


def test_caddy_platform_paths_reach_api(runner: asyncio.Runner, proxy: Any, vm_app: EchoApp) -> None:
    runner.run(proxy.caddy.set_route(VMRoute("path-owl", vm_app.upstream, "running", "", public=True)))
    cacert = proxy.caddy.root_ca_path
    status, body = curl_status(proxy.https_url(f"path-owl.{DOMAIN}", "/__ussycode/logout"), cacert)
    assert status == 200
    assert '"app": "api"' in body
    status, body = curl_status(proxy.https_url(f"path-owl.{DOMAIN}", "/__ussycode/auth"), cacert)
    assert status == 404
    assert "No platform page" in body
    status, body = curl_status(proxy.https_url(f"path-owl.{DOMAIN}", "/__ussycode"), cacert)
    assert '"app": "vm-app"' in body
