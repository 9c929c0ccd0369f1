"""Caddy's JSON config: an HTTPS server, an HTTP redirect server, TLS and one route per VM.

Layout of the HTTPS server's routes (checked against Caddy 2.6.2):

    1. host <domain>      -> reverse_proxy to the platform's HTTP API
    2. host *.<domain>    -> subroute "ussycode-vms":
                               one route per VM, by @id "ussycode-vm-<name>" (see below)
                               404 "No VM named ..." for a single label under the domain
                               404 for anything else
    3. anything else      -> 404

Only the two hosts of the top-level matchers get certificates from automatic HTTPS, so in internal
mode one wildcard certificate serves every VM, including VMs added later. Per-VM routes live
inside the subroute, ahead of its catch-all routes, and are added, replaced and removed one at a
time through the admin API's `/id/...` paths.

A VM's route matches its own host `<name>.<domain>` and the hosts of its other ports,
`<name>--<port>.<domain>` for ports 3000 to 9999, and runs these steps in order:

    1. delete every X-Ussycode-* request header the client sent
    2. /__ussycode/logout, /callback and /share  -> the platform's API (login on this host)
       any other /__ussycode/ path              -> 404
    3. forward auth: a request to /__ussycode/auth on the auth upstream (the unix socket of
       `ussycode.api.auth_socket` when `ussycode serve` runs). A 2xx response copies the
       visitor's X-Ussycode-User-Id, -Handle and -Email into the request. Any other response
       (a redirect to the login page, 401, 403) goes back to the client as it is. The VM's own host skips
       this step when the VM is public; other ports never do.
    4. remove the platform's cookies (`__Host-ussycode-*`) from the Cookie header
    5. reverse_proxy to the VM's IP on the port (or a status page while it is not running)
"""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ussycode.auth.cookies import PLATFORM_COOKIE_PREFIX
from ussycode.auth.hosts import (
    AUTH_PATH,
    CALLBACK_PATH,
    LOGOUT_PATH,
    PLATFORM_PATH_PREFIX,
    SHARE_PATH,
    parse_vm_host,
)
from ussycode.errors import InvalidInput

TLS_MODES = ("internal", "acme")

API_ROUTE_ID = "ussycode-api"
VM_SUBROUTE_ID = "ussycode-vms"
VM_ROUTE_ID_PREFIX = "ussycode-vm-"
HTTPS_SERVER = "ussycode-https"
HTTP_SERVER = "ussycode-http"

# The regexp capture that contains the port of a `<name>--<port>` host.
PORT_CAPTURE = "ussycode_port"
PORT_PATTERN = "(3[0-9]{3}|[4-9][0-9]{3})"
# Headers the auth endpoint returns and Caddy copies onto the request to the VM when non-empty.
IDENTITY_HEADERS = ("X-Ussycode-User-Id", "X-Ussycode-Handle", "X-Ussycode-Email", "X-Ussycode-Token-Ctx")
# The VM-scoped token header is kept in this variable before every X-Ussycode-* header is deleted,
# and handed to the auth endpoint only.
TOKEN_VAR = "ussycode_bearer"
UNDERSCORE_SPELLINGS = ("X_Ussycode_*", "x_ussycode_*", "X_USSYCODE_*", "x-ussycode-*")
TOKEN_HEADER = "X-Ussycode-Authorization"
STRIP_AUTHORIZATION_HEADER = "X-Ussycode-Strip-Authorization"
# Set with the vars handler so that the error routes can tell a failed auth request from a VM
# whose app does not respond.
STAGE_VAR = "ussycode_stage"

MAX_STATE_CHARS = 40
MAX_START_COMMAND_CHARS = 300

_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)

# Caddy replaces {placeholders} in response bodies, and these characters would start one.
_BRACE_ENTITIES = {ord("{"): "&#123;", ord("}"): "&#125;"}

_PAGE_HEADERS = {
    "Content-Type": ["text/html; charset=utf-8"],
    "Cache-Control": ["no-store"],
    "Content-Security-Policy": ["default-src 'none'; style-src 'unsafe-inline'"],
    "X-Content-Type-Options": ["nosniff"],
}


@dataclass(frozen=True)
class VMRoute:
    """How the proxy serves one VM's host, `<name>.<domain>`."""

    name: str  # VM name = first DNS label
    upstream: str | None  # "10.0.0.5:8080" (the URL's port) when running, else None (status page)
    state: str  # "running", "stopped", "starting", ... shown on the status page
    start_command: str  # e.g. 'ssh -p 2224 localhost start mild-owl', shown on the status page
    public: bool = False  # True: the VM's own host skips forward auth; other ports never do


@dataclass(frozen=True)
class ProxySettings:
    """Settings that shape the whole config; `check_settings` validates them."""

    domain: str
    https_addr: tuple[str, int]
    http_addr: tuple[str, int]
    tls_mode: str
    acme_email: str
    api_upstream: str
    # Upstream of forward auth: the API's HOST:PORT, or `unix/<absolute path>` of the socket
    # served by `ussycode.api.auth_socket`, which costs less per request.
    auth_upstream: str
    ask_url: str | None
    admin_socket: Path


def route_id(name: str) -> str:
    """Return the `@id` of VM `name`'s route."""
    return VM_ROUTE_ID_PREFIX + name


def listen_address(addr: tuple[str, int]) -> str:
    """Format (host, port) as a Caddy listen address; an empty host means every address."""
    host, port = addr
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def check_domain(domain: str) -> None:
    """:raise ValueError: `domain` is not a lowercase DNS name with at least two labels."""
    if "." not in domain or not _HOSTNAME_RE.match(domain):
        raise ValueError(f"invalid domain {domain!r}: expected a lowercase name such as ussy.localhost")


def check_upstream(upstream: str) -> None:
    """:raise ValueError: `upstream` is not HOST:PORT with an IP address or a host name."""
    host, sep, port_text = upstream.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid upstream {upstream!r}: expected HOST:PORT such as 10.0.0.5:8080")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"invalid upstream {upstream!r}: {host} is not an IPv6 address") from None
        return
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOSTNAME_RE.match(host):
            raise ValueError(
                f"invalid upstream {upstream!r}: {host!r} is not an IPv4 address, "
                "a bracketed IPv6 address or a host name"
            ) from None


def _check_text(value: str, what: str, max_chars: int, *, allow_empty: bool) -> None:
    if not value and not allow_empty:
        raise ValueError(f"{what} is empty")
    if len(value) > max_chars:
        raise ValueError(f"{what} is longer than {max_chars} characters")
    if not value.isprintable():
        raise ValueError(f"{what} {value!r} contains control characters")


def check_route(route: VMRoute) -> None:
    """Check every field of `route` before it reaches Caddy.

    :raise InvalidInput: a field is invalid; the message names the VM, the value and the fix.
    """
    if not _LABEL_RE.match(route.name):
        raise InvalidInput(
            f'invalid VM name "{route.name}": use 1 to 63 lowercase letters, digits and hyphens, '
            "starting and ending with a letter or digit"
        )
    try:
        if route.upstream is not None:
            check_upstream(route.upstream)
        _check_text(route.state, "state", MAX_STATE_CHARS, allow_empty=False)
        _check_text(route.start_command, "start command", MAX_START_COMMAND_CHARS, allow_empty=True)
    except ValueError as exc:
        raise InvalidInput(f'invalid route for VM "{route.name}": {exc}') from exc


def _escape(text: str) -> str:
    """Escape `text` for an HTML text node, and so that Caddy finds no placeholder in it."""
    return html.escape(text, quote=False).translate(_BRACE_ENTITIES)


def _page(title: str, paragraphs: Sequence[str]) -> str:
    """Return a small HTML page; `title` and `paragraphs` must already be escaped."""
    body = "\n".join(f"<p>{paragraph}</p>" for paragraph in paragraphs)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title>"
        "<style>body{font-family:sans-serif;max-width:40em;margin:4em auto;padding:0 1em}"
        "code{background:#eee;padding:.1em .3em}</style></head>\n"
        f"<body>\n<h1>{title}</h1>\n{body}\n</body></html>\n"
    )


def _static_page(status: int | str, title: str, paragraphs: Sequence[str]) -> dict[str, Any]:
    return {
        "handler": "static_response",
        "status_code": status,
        "headers": _PAGE_HEADERS,
        "body": _page(title, paragraphs),
    }


def _reverse_proxy(upstream: str) -> dict[str, Any]:
    # Caddy 2.6 sets X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host itself, replacing
    # values sent by clients, and passes the original Host header on.
    return {"handler": "reverse_proxy", "upstreams": [{"dial": upstream}]}


def stopped_page(route: VMRoute) -> dict[str, Any]:
    """Return the 503 handler whose page shows that VM `route.name` is not running."""
    title = f'VM "{_escape(route.name)}" is {_escape(route.state)}'
    paragraphs = [f"{title}."]
    if route.start_command:
        paragraphs.append(f"Start it with: <code>{_escape(route.start_command)}</code>")
    return _static_page(503, title, paragraphs)


def _bad_gateway_page(route: VMRoute, port: str) -> dict[str, Any]:
    """Return the page for a running VM whose app does not respond on `port` (digits or placeholder)."""
    name = _escape(route.name)
    return _static_page(
        "{http.error.status_code}",
        f'VM "{name}" did not answer',
        [
            f'VM "{name}" is running, but nothing answered on port {port} '
            "(error {http.error.status_code}).",
            f"Start a web server in the VM that listens on port {port}.",
        ],
    )


def _auth_failed_page(route: VMRoute) -> dict[str, Any]:
    name = _escape(route.name)
    return _static_page(
        503,
        "Sign-in check failed",
        [
            f'The platform could not check access to VM "{name}" '
            "(error {http.error.status_code}). Try again shortly.",
        ],
    )


def _set_stage(stage: str) -> dict[str, Any]:
    return {"handler": "vars", STAGE_VAR: stage}


def _keep_token_header() -> dict[str, Any]:
    return {"handler": "vars", TOKEN_VAR: f"{{http.request.header.{TOKEN_HEADER}}}"}


def _strip_identity_headers() -> dict[str, Any]:
    # Caddy 2.6 deletes every header whose canonical name starts with the prefix.
    # Header names with underscores are not canonicalized, so their usual spellings are listed:
    # CGI-style apps read X_Ussycode_Handle as if it were X-Ussycode-Handle.
    # NOTE: an underscore name in another mix of letter case still reaches the app.
    return {"handler": "headers", "request": {"delete": ["X-Ussycode-*", *UNDERSCORE_SPELLINGS]}}


def _strip_platform_cookies() -> list[dict[str, Any]]:
    """Return handlers that remove `__Host-ussycode-*` cookies and then an empty Cookie header."""
    prefix = re.escape(PLATFORM_COOKIE_PREFIX)
    replace = {
        "Cookie": [
            {"search_regexp": rf"(^|;\s*){prefix}[^=;]*=[^;]*", "replace": ""},
            {"search_regexp": r"^;\s*", "replace": ""},
        ]
    }
    delete_empty = {
        "handler": "subroute",
        "routes": [
            {
                "match": [{"header": {"Cookie": [""]}}],
                "handle": [{"handler": "headers", "request": {"delete": ["Cookie"]}}],
            }
        ],
    }
    return [{"handler": "headers", "request": {"replace": replace}}, delete_empty]


def _forward_auth(auth_upstream: str) -> dict[str, Any]:
    """Return the handler that requests the API's access decision for the request.

    On a 2xx response each identity header is copied only when the response has it non-empty.
    The API always sends the three, empty for an unknown visitor, because Caddy 2.6.2 leaves the
    placeholder of a header missing from the response as literal text, which the vars matcher
    does not see as empty (and its vars_regexp matcher does not resolve placeholders at all).
    """
    copies = []
    for name in IDENTITY_HEADERS:
        placeholder = f"{{http.reverse_proxy.header.{name}}}"
        copies.append(
            {
                "match": [{"not": [{"vars": {placeholder: [""]}}]}],
                "handle": [{"handler": "headers", "request": {"set": {name: [placeholder]}}}],
            }
        )
    strip = f"{{http.reverse_proxy.header.{STRIP_AUTHORIZATION_HEADER}}}"
    copies.append(
        {
            "match": [{"vars": {strip: ["1"]}}],
            "handle": [{"handler": "headers", "request": {"delete": ["Authorization"]}}],
        }
    )
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": auth_upstream}],
        "rewrite": {"method": "GET", "uri": AUTH_PATH},
        "headers": {
            "request": {
                "set": {
                    "X-Forwarded-Method": ["{http.request.method}"],
                    "X-Forwarded-Uri": ["{http.request.uri}"],
                    TOKEN_HEADER: [f"{{http.vars.{TOKEN_VAR}}}"],
                }
            }
        },
        "handle_response": [{"match": {"status_code": [2]}, "routes": copies}],
    }


def _app(route: VMRoute, dial: str | None, port: str) -> dict[str, Any]:
    """Return the handler that proxies to the VM's app at `dial`, or the status page."""
    if dial is None:
        return stopped_page(route)
    return {
        "handler": "subroute",
        "routes": [{"handle": [_set_stage("app"), _reverse_proxy(dial)]}],
        "errors": {"routes": [{"handle": [_bad_gateway_page(route, port)]}]},
    }


def port_host_pattern(name: str, domain: str) -> str:
    """Return the Host regexp of VM `name`'s other ports; group 1 is the port."""
    return rf"(?i)^{re.escape(name)}--{PORT_PATTERN}\.{re.escape(domain)}(:[0-9]+)?$"


def build_vm_route(route: VMRoute, settings: ProxySettings) -> dict[str, Any]:
    """Return the route object for `route`, with its `@id`.

    :raise InvalidInput: `route` fails `check_route`.
    """
    check_route(route)
    domain = settings.domain
    port_pattern = port_host_pattern(route.name, domain)
    address = port = None
    if route.upstream is not None:
        address, _, port = route.upstream.rpartition(":")
    port_placeholder = f"{{http.regexp.{PORT_CAPTURE}.1}}"

    primary_steps = [] if route.public else [_set_stage("auth"), _forward_auth(settings.auth_upstream)]
    primary_dial = route.upstream
    port_dial = None if address is None else f"{address}:{port_placeholder}"
    platform_paths = [LOGOUT_PATH, CALLBACK_PATH, SHARE_PATH]
    routes = [
        {"handle": [_keep_token_header(), _strip_identity_headers()]},
        {
            "match": [{"path": platform_paths}],
            "handle": [_reverse_proxy(settings.api_upstream)],
            "terminal": True,
        },
        {
            "match": [{"path": [PLATFORM_PATH_PREFIX + "*"]}],
            "handle": [_static_page(404, "Not found", ["No platform page at this address."])],
            "terminal": True,
        },
        {
            "match": [{"header_regexp": {"Host": {"name": PORT_CAPTURE, "pattern": port_pattern}}}],
            "handle": [
                _set_stage("auth"),
                _forward_auth(settings.auth_upstream),
                *_strip_platform_cookies(),
                _app(route, port_dial, port_placeholder),
            ],
            "terminal": True,
        },
        {"handle": [*primary_steps, *_strip_platform_cookies(), _app(route, primary_dial, port or "")]},
    ]

    # A VM whose name reads as `<name>--<port>` gets no host of its own: that host belongs to
    # port <port> of the VM <name>, as the auth endpoint reads it too.
    host = f"{route.name}.{domain}"
    matchers: list[dict[str, Any]] = [{"header_regexp": {"Host": {"pattern": port_pattern}}}]
    target = parse_vm_host(host, domain)
    if target is not None and target.port is None:
        matchers.insert(0, {"host": [host]})
    return {
        "@id": route_id(route.name),
        "match": matchers,
        "handle": [
            {
                "handler": "subroute",
                "routes": routes,
                "errors": {
                    "routes": [
                        {"match": [{"vars": {STAGE_VAR: ["auth"]}}], "handle": [_auth_failed_page(route)]},
                    ]
                },
            }
        ],
        "terminal": True,
    }


def _unknown_vm_routes(domain: str) -> list[dict[str, Any]]:
    """Return the catch-all routes at the end of the VM subroute.

    The first names the missing VM, but only for a Host that is one DNS label under the domain:
    Go's HTTP server accepts characters such as `<` in Host, and the page must not echo them.
    """
    label_count = len(domain.split("."))
    domain_pattern = re.escape(domain)
    named = _static_page(
        404,
        "No such VM",
        [f'No VM named "{{http.request.host.labels.{label_count}}}" on this host.'],
    )
    return [
        {
            "match": [
                {
                    "header_regexp": {
                        "Host": {"pattern": rf"(?i)^[a-z0-9-]{{1,63}}\.{domain_pattern}(:[0-9]+)?$"}
                    }
                }
            ],
            "handle": [named],
            "terminal": True,
        },
        {"handle": [_static_page(404, "No such VM", ["No VM at this address."])], "terminal": True},
    ]


def _https_server(settings: ProxySettings, vm_routes: list[dict[str, Any]]) -> dict[str, Any]:
    domain = settings.domain
    return {
        "listen": [listen_address(settings.https_addr)],
        # Without this list Caddy 2.6 also opens an HTTP/3 listener on UDP.
        "protocols": ["h1", "h2"],
        "tls_connection_policies": [{}],
        "automatic_https": {"disable_redirects": True},
        "routes": [
            {
                "@id": API_ROUTE_ID,
                "match": [{"host": [domain]}],
                "handle": [_reverse_proxy(settings.api_upstream)],
                "terminal": True,
            },
            {
                "match": [{"host": [f"*.{domain}"]}],
                "handle": [
                    {
                        "@id": VM_SUBROUTE_ID,
                        "handler": "subroute",
                        "routes": [*vm_routes, *_unknown_vm_routes(domain)],
                    }
                ],
                "terminal": True,
            },
            {"handle": [_static_page(404, "Not found", ["No site at this address."])]},
        ],
    }


def _http_server(settings: ProxySettings) -> dict[str, Any]:
    https_port = settings.https_addr[1]
    port_suffix = "" if https_port == 443 else f":{https_port}"
    location = f"https://{{http.request.host}}{port_suffix}{{http.request.uri}}"
    return {
        "listen": [listen_address(settings.http_addr)],
        "protocols": ["h1"],
        "routes": [
            {
                "match": [{"host": [settings.domain, f"*.{settings.domain}"]}],
                "handle": [
                    {
                        "handler": "static_response",
                        "status_code": 308,
                        "headers": {"Location": [location]},
                    }
                ],
                "terminal": True,
            },
            {"handle": [_static_page(404, "Not found", ["No site at this address."])]},
        ],
    }


def _tls_app(settings: ProxySettings) -> dict[str, Any]:
    subjects = [f"*.{settings.domain}", settings.domain]
    if settings.tls_mode == "internal":
        policy: dict[str, Any] = {"subjects": subjects, "issuers": [{"module": "internal"}]}
        return {"automation": {"policies": [policy]}}

    # NOTE: acme mode is only checked to load in Caddy 2.6.2; no certificate was ever issued
    # with it, because the machines it was written on cannot reach an ACME server.
    issuer: dict[str, Any] = {"module": "acme"}
    if settings.acme_email:
        issuer["email"] = settings.acme_email
    policy = {"subjects": subjects, "on_demand": True, "issuers": [issuer]}
    return {"automation": {"on_demand": {"ask": settings.ask_url}, "policies": [policy]}}


def build_config(settings: ProxySettings, routes: Sequence[VMRoute]) -> dict[str, Any]:
    """Return the whole Caddy config, with the admin block and one route per entry of `routes`.

    :raise InvalidInput: a route is invalid, or two routes have the same name.
    """
    seen: set[str] = set()
    for route in routes:
        if route.name in seen:
            raise InvalidInput(f'duplicate route for VM "{route.name}": pass one route per VM')
        seen.add(route.name)
    vm_routes = [build_vm_route(route, settings) for route in routes]

    return {
        # Every load carries the admin block: in Caddy 2.6.2 a load without it moves the admin
        # endpoint to its default TCP address.
        "admin": {"listen": f"unix/{settings.admin_socket}", "config": {"persist": False}},
        "apps": {
            "http": {
                "http_port": settings.http_addr[1],
                "https_port": settings.https_addr[1],
                "servers": {
                    HTTPS_SERVER: _https_server(settings, vm_routes),
                    HTTP_SERVER: _http_server(settings),
                },
            },
            "tls": _tls_app(settings),
            # Keep Caddy's root certificate out of the system trust store.
            "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
        },
    }
