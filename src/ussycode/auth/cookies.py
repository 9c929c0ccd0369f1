"""The platform's cookies: names, attributes and reading them from a Cookie header.

Every platform cookie has the `__Host-` prefix. Browsers accept such a cookie only with
`Secure`, `Path=/` and no `Domain` attribute. So it is sent back to the one host that set it, and
no other host under the domain (another VM's app, say) can set or overwrite it.
"""

from __future__ import annotations

from collections.abc import Iterable

PLATFORM_COOKIE_PREFIX = "__Host-ussycode-"
SESSION_COOKIE = PLATFORM_COOKIE_PREFIX + "session"
# The VM URL a visitor asked for while logged out, kept on the main domain until they log in.
RETURN_COOKIE = PLATFORM_COOKIE_PREFIX + "return"
RETURN_COOKIE_SECONDS = 15 * 60
# More values than this for one cookie name are ignored: a browser sends one per name and path.
MAX_VALUES_PER_NAME = 4


def parse_cookie_header(headers: Iterable[str]) -> dict[str, list[str]]:
    """Return every value of every cookie in the Cookie header lines `headers`.

    Unlike `http.cookies.SimpleCookie`, a malformed cookie (which an app on a VM host may set)
    is skipped instead of hiding the cookies that follow it.
    """
    cookies: dict[str, list[str]] = {}
    for header in headers:
        for pair in header.split(";"):
            name, sep, value = pair.strip().partition("=")
            name = name.strip()
            if not sep or not name:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values = cookies.setdefault(name, [])
            if len(values) < MAX_VALUES_PER_NAME:
                values.append(value)
    return cookies


def set_cookie(name: str, value: str, max_age: int) -> str:
    """Return a Set-Cookie value for a host-only, HttpOnly, Secure, SameSite=Lax cookie."""
    return f"{name}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"


def clear_cookie(name: str) -> str:
    """Return a Set-Cookie value that makes the browser delete the cookie `name`."""
    return f"{name}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax"
