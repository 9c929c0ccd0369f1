"""Host names of VM URLs and the platform's own URLs, and the check of return URLs.

A VM named `mild-owl` is served at `https://mild-owl.<domain>/` on the port chosen with
`share port` (8080 by default), and each port from 3000 to 9999 of the VM at
`https://mild-owl--<port>.<domain>/`. Both are one DNS label under the domain, so one wildcard
certificate for `*.<domain>` covers them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ussycode.config import Config
from ussycode.errors import InvalidInput

# Paths the platform serves itself; on a VM host, only LOGOUT, CALLBACK and SHARE reach it, and
# AUTH is reached only through Caddy's forward auth.
LOGIN_PATH = "/__ussycode/login"
LOGOUT_PATH = "/__ussycode/logout"
CALLBACK_PATH = "/__ussycode/callback"
SHARE_PATH = "/__ussycode/share"
AUTH_PATH = "/__ussycode/auth"
PLATFORM_PATH_PREFIX = "/__ussycode/"

MIN_EXTRA_PORT = 3000
MAX_EXTRA_PORT = 9999
MAX_RETURN_URL_CHARS = 2048
PORT_SEPARATOR = "--"

_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PORT_LABEL_RE = re.compile(r"^(?P<name>[a-z0-9-]+?)--(?P<port>[1-9][0-9]{3})$")
# Characters that browsers and servers read differently in a URL; no return URL may contain them.
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


@dataclass(frozen=True)
class VMHost:
    """The VM and port that a host name under the domain names.

    `port` is None for the VM's own URL, whose port comes from the VM's share settings.
    """

    vm_name: str
    port: int | None


def strip_port(host: str) -> str:
    """Return `host` (a Host header) in lowercase without a trailing dot or `:port`."""
    name = host.strip().lower()
    if name.startswith("["):
        return name
    name = name.rpartition(":")[0] if ":" in name else name
    return name.rstrip(".")


def parse_vm_host(host: str, domain: str) -> VMHost | None:
    """Return the VM host that `host` (a Host header) names, or None for any other host."""
    name = strip_port(host)
    suffix = "." + domain
    if not name.endswith(suffix):
        return None
    label = name[: -len(suffix)]
    if not _LABEL_RE.match(label):
        return None
    match = _PORT_LABEL_RE.match(label)
    if match is not None:
        port = int(match["port"])
        if MIN_EXTRA_PORT <= port <= MAX_EXTRA_PORT:
            return VMHost(match["name"], port)
    return VMHost(label, None)


def vm_host_name(domain: str, vm_name: str, port: int | None = None) -> str:
    """Return the host name of a VM's URL, or of one of its other ports."""
    label = vm_name if port is None else f"{vm_name}{PORT_SEPARATOR}{port}"
    return f"{label}.{domain}"


def _port_suffix(config: Config) -> str:
    port = config.https_addr[1]
    return "" if port == 443 else f":{port}"


def origin(config: Config, host_name: str) -> str:
    """Return `https://<host_name>[:port]` with the port Caddy serves HTTPS on."""
    return f"https://{host_name}{_port_suffix(config)}"


def platform_url(config: Config, path: str) -> str:
    """Return the URL of `path` on the platform's main domain."""
    return origin(config, config.domain) + path


def vm_url(config: Config, vm_name: str, port: int | None = None) -> str:
    """Return the URL of a VM, or of one of its other ports."""
    return origin(config, vm_host_name(config.domain, vm_name, port)) + "/"


def check_return_url(config: Config, url: str) -> str:
    """Check a URL to send a browser to after login, and return it in a normalized form.

    Only an https URL of a VM host under the domain, on the port Caddy serves, passes, so a
    login can never redirect to another site.
    :raise InvalidInput: the URL fails any of these checks.
    """
    if not url or len(url) > MAX_RETURN_URL_CHARS or _UNSAFE_URL_CHARS.search(url):
        raise InvalidInput("invalid return URL: empty, too long or with characters a URL may not contain")
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise InvalidInput("invalid return URL: only https URLs of this platform's VMs are allowed")
    if "@" in parts.netloc:
        raise InvalidInput("invalid return URL: user names in URLs are not allowed")
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput("invalid return URL: the port is not a number") from None
    if (port or 443) != config.https_addr[1]:
        raise InvalidInput("invalid return URL: not the port this platform serves HTTPS on")
    host = (parts.hostname or "").rstrip(".")
    if parse_vm_host(host, config.domain) is None:
        raise InvalidInput(f"invalid return URL: the host is not a VM under {config.domain}")
    path = parts.path or "/"
    if not path.startswith("/") or path.startswith("//"):
        # A path of "//x" would read as the host x once it is used as a redirect on the VM host.
        raise InvalidInput("invalid return URL: the path must start with a single /")
    query = f"?{parts.query}" if parts.query else ""
    return f"{origin(config, host)}{path}{query}"


def check_local_path(path: str) -> str:
    """Check a path to redirect to on the same host, and return it.

    :raise InvalidInput: it does not start with one `/`, or has characters a URL may not
        contain, so that a browser could read it as another host.
    """
    if (
        not path.startswith("/")
        or path.startswith("//")
        or len(path) > MAX_RETURN_URL_CHARS
        or _UNSAFE_URL_CHARS.search(path)
    ):
        raise InvalidInput("invalid path: expected a path on this host, such as /")
    return path
