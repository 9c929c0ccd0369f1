"""Host names of VM URLs, and the check that keeps login redirects on the platform's VMs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sharing.stack import load_config
from ussycode.auth.hosts import (
    VMHost,
    check_local_path,
    check_return_url,
    parse_vm_host,
    platform_url,
    vm_url,
)
from ussycode.config import Config
from ussycode.errors import InvalidInput

DOMAIN = "ussy.localhost"


def config(https_port: int = 443) -> Config:
    return load_config(Path("/nonexistent"), https_port, 80, 9090)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("mild-owl.ussy.localhost", VMHost("mild-owl", None)),
        ("Mild-Owl.USSY.localhost.", VMHost("mild-owl", None)),
        ("mild-owl.ussy.localhost:8443", VMHost("mild-owl", None)),
        ("mild-owl--3000.ussy.localhost", VMHost("mild-owl", 3000)),
        ("mild-owl--9999.ussy.localhost:443", VMHost("mild-owl", 9999)),
        ("a--b--4000.ussy.localhost", VMHost("a--b", 4000)),
        ("mild-owl--2999.ussy.localhost", VMHost("mild-owl--2999", None)),
        ("mild-owl--10000.ussy.localhost", VMHost("mild-owl--10000", None)),
    ],
)
def test_parse_vm_host_accepts(host: str, expected: VMHost) -> None:
    assert parse_vm_host(host, DOMAIN) == expected


@pytest.mark.parametrize(
    "host",
    [
        "ussy.localhost",
        "a.b.ussy.localhost",
        "mild-owl.ussy.localhost.evil.example",
        "mild-owlussy.localhost",
        "-x.ussy.localhost",
        "x_y.ussy.localhost",
        "<i>.ussy.localhost",
        "",
        "[::1]:443",
    ],
)
def test_parse_vm_host_rejects(host: str) -> None:
    assert parse_vm_host(host, DOMAIN) is None


def test_urls_include_nondefault_port() -> None:
    assert vm_url(config(8443), "mild-owl") == "https://mild-owl.ussy.localhost:8443/"
    assert vm_url(config(8443), "mild-owl", 3000) == "https://mild-owl--3000.ussy.localhost:8443/"
    assert platform_url(config(), "/x") == "https://ussy.localhost/x"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://mild-owl.ussy.localhost/", "https://mild-owl.ussy.localhost/"),
        ("https://mild-owl.ussy.localhost", "https://mild-owl.ussy.localhost/"),
        ("https://mild-owl.ussy.localhost:443/a?b=1#frag", "https://mild-owl.ussy.localhost/a?b=1"),
        ("https://MILD-owl.ussy.localhost/A", "https://mild-owl.ussy.localhost/A"),
        ("https://mild-owl--3000.ussy.localhost/x", "https://mild-owl--3000.ussy.localhost/x"),
    ],
)
def test_return_url_accepted(url: str, expected: str) -> None:
    assert check_return_url(config(), url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/relative",
        "//evil.example/",
        "http://mild-owl.ussy.localhost/",
        "https://evil.example/",
        "https://ussy.localhost/",
        "https://ussy.localhost.evil.example/",
        "https://mild-owl.ussy.localhost.evil.example/",
        "https://evil.example/.ussy.localhost/",
        "https://evil.example#.ussy.localhost",
        "https://user@mild-owl.ussy.localhost/",
        "https://mild-owl.ussy.localhost@evil.example/",
        "https://mild-owl.ussy.localhost:8443/",
        "https://mild-owl.ussy.localhost:x/",
        "https://mild-owl.ussy.localhost\\@evil.example/",
        "https://mild-owl.ussy.localhost/\r\nSet-Cookie: x=1",
        "https://mild-owl.ussy.localhost/ x",
        "javascript:alert(1)",
        "https://a.b.ussy.localhost/",
        "https://mild-owl.ussy.localhost//evil.example/",
        "https://mild-owl.ussy.localhost/" + "a" * 3000,
    ],
)
def test_return_url_rejected(url: str) -> None:
    with pytest.raises(InvalidInput, match="invalid return URL"):
        check_return_url(config(), url)


def test_return_url_port_must_match() -> None:
    assert (
        check_return_url(config(8443), "https://x-y.ussy.localhost:8443/")
        == "https://x-y.ussy.localhost:8443/"
    )
    with pytest.raises(InvalidInput, match="port"):
        check_return_url(config(8443), "https://x-y.ussy.localhost/")


@pytest.mark.parametrize("path", ["/", "/a/b?c=d", "/%2F%2Fx"])
def test_local_path_accepted(path: str) -> None:
    assert check_local_path(path) == path


@pytest.mark.parametrize(
    "path", ["", "x", "//evil.example/", "/\\evil.example", "/a\nb", "https://evil.example/"]
)
def test_local_path_rejected(path: str) -> None:
    with pytest.raises(InvalidInput, match="invalid path"):
        check_local_path(path)
