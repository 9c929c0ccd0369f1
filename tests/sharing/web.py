"""A browser-like HTTP client built on curl: one cookie jar, one request per call, no redirects followed.

curl resolves every `*.localhost` name to the loopback address itself, so VM hosts under
`ussy.localhost` need no DNS. `run` runs curl's argv, either here or inside a network namespace.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[bytes]"]

HTML = "text/html,application/xhtml+xml"


def run_here(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), capture_output=True, timeout=60, check=False)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    set_cookies: list[str]
    body: str
    url: str

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str:
        """The Location header resolved against the request URL."""
        return urljoin(self.url, self.headers.get("location", ""))

    def query(self) -> dict[str, list[str]]:
        """The query parameters of the Location header."""
        return parse_qs(urlsplit(self.location).query)

    def app_headers(self) -> list[list[str]]:
        """The request headers that the echo app reports it received."""
        headers: list[list[str]] = self.json()["headers"]
        return headers

    def app_header(self, name: str) -> list[str]:
        """Every value of the header `name` that the echo app received."""
        return [value for key, value in self.app_headers() if key.lower() == name.lower()]


def cookie_attributes(set_cookie: str) -> tuple[str, str, dict[str, str]]:
    """Split a Set-Cookie value into (name, value, attributes with lowercase names)."""
    first, *rest = [part.strip() for part in set_cookie.split(";")]
    name, _, value = first.partition("=")
    attributes = {}
    for part in rest:
        key, _, attribute_value = part.partition("=")
        attributes[key.lower()] = attribute_value
    return name, value, attributes


@dataclass
class WebClient:
    """Sends requests with curl, trusting `cacert`, keeping cookies in `jar` like a browser."""

    cacert: Path
    jar: Path
    run: Runner = run_here
    extra: list[str] = field(default_factory=list)

    def request(self, url: str, *options: str, accept_html: bool = False, cookies: bool = True) -> Reply:
        argv = ["curl", "--silent", "--show-error", "--include", "--max-time", "20"]
        argv += ["--cacert", str(self.cacert), *self.extra]
        if cookies:
            argv += ["--cookie", str(self.jar), "--cookie-jar", str(self.jar)]
        if accept_html:
            argv += ["--header", f"Accept: {HTML}"]
        completed = self.run([*argv, *options, url])
        assert completed.returncode == 0, f"curl {url} failed: {completed.stderr.decode()}"
        return parse_response(completed.stdout.decode(errors="replace"), url)

    def get(self, url: str, *options: str, accept_html: bool = False) -> Reply:
        return self.request(url, *options, accept_html=accept_html)

    def post_form(self, url: str, fields: dict[str, str], *options: str) -> Reply:
        form = [item for name, value in fields.items() for item in ("--data-urlencode", f"{name}={value}")]
        return self.request(url, *form, *options, accept_html=True)


def parse_response(raw: str, url: str) -> Reply:
    """Parse curl --include output: the status line, the headers, a blank line, the body."""
    head, _, body = raw.partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    headers: dict[str, str] = {}
    set_cookies: list[str] = []
    for line in lines:
        name, _, value = line.partition(":")
        if name.lower() == "set-cookie":
            set_cookies.append(value.strip())
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), headers, set_cookies, body, url)


def jar_cookie(jar: Path, host: str, name: str) -> str:
    """Return the value of cookie `name` that curl's cookie jar keeps for `host`."""
    for line in jar.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 7 and fields[0].removeprefix("#HttpOnly_") == host and fields[5] == name:
            return fields[6]
    raise AssertionError(f"no cookie {name} for {host} in {jar}")


def sign_in(client: WebClient, vm_url: str, login_link: str) -> Reply:
    """Open a private `vm_url` logged out, sign in with `login_link`, and return the app's reply.

    Checks each step on the way: the redirect to the login page, the page, the login link's
    redirect to the VM host's callback, and the callback's redirect back to `vm_url`.
    """
    first = client.get(vm_url, accept_html=True)
    assert first.status == 302, f"expected a redirect to the login page, got {first.status}: {first.body}"
    login_page = client.get(first.location, accept_html=True)
    assert login_page.status == 200, login_page.body
    assert "browser" in login_page.body

    redeemed = client.get(login_link, accept_html=True)
    assert redeemed.status == 302, redeemed.body
    assert urlsplit(redeemed.location).path == "/__ussycode/callback"
    callback = client.get(redeemed.location, accept_html=True)
    assert callback.status == 302, callback.body
    assert callback.location == vm_url
    return client.get(vm_url)
