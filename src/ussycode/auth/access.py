"""Who may open a VM's URL or log in to it over SSH: the one place that decides.

Caddy's forward auth calls `decide` for each request to a private VM host. It reads the
request's host, headers and cookies and returns a `Decision`: allow (with the visitor's identity,
if known), redirect a browser to the login page, or deny with a status code.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from ussycode.auth.api_tokens import TokenVerifier
from ussycode.auth.cookies import SESSION_COOKIE
from ussycode.auth.hosts import (
    LOGIN_PATH,
    check_return_url,
    origin,
    parse_vm_host,
    platform_url,
    strip_port,
)
from ussycode.auth.random_tokens import hash_token, looks_like_token
from ussycode.auth.signed_tokens import InvalidToken
from ussycode.config import Config
from ussycode.errors import InvalidInput, NotFound
from ussycode.store import VM, Store, User
from ussycode.store.emails import Emails
from ussycode.store.sessions import Session, Sessions
from ussycode.store.sharing import Sharing


class Verdict(enum.StrEnum):
    ALLOW = "allow"
    REDIRECT = "redirect"
    DENY = "deny"


@dataclass(frozen=True)
class Identity:
    """A logged-in visitor, as the VM's app sees them in the X-Ussycode-* headers.

    `email` is the user's verified address, or None while they have none.
    """

    user_id: int
    handle: str
    email: str | None


@dataclass(frozen=True)
class Decision:
    """The outcome of `decide` for one request.

    `status` is the HTTP status for the response. It is 200 to allow, and 302 with `location` to
    send a browser to the login page. A request without credentials gets 401, a known visitor
    without access 403, and a host that is no VM 404. `reason` is a short phrase for logs and the audit
    log, and never contains a secret.
    """

    verdict: Verdict
    status: int
    reason: str
    vm_name: str | None = None
    identity: Identity | None = None
    location: str | None = None
    link_id: int | None = None
    token_ctx: str | None = None
    strip_authorization: bool = False


# A VM-scoped token may come in this header, which the proxy removes before the request reaches
# the VM, or in `Authorization` as a bearer token or the password of HTTP basic auth.
TOKEN_HEADER = "x-ussycode-authorization"
TOKEN_PREFIXES = ("usy0.", "usy1.")


def presented_token(headers: Mapping[str, str]) -> tuple[str, bool] | None:
    """Return the usy0/usy1 token a request carries and whether it came in `Authorization`.

    `headers` must have lower-case names. An `Authorization` header that holds no platform token
    (the app's own credentials) is not ours and stays untouched.
    """
    scheme, _, value = headers.get(TOKEN_HEADER, "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value.startswith(TOKEN_PREFIXES):
        return value, True
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        password = decoded.partition(":")[2]
        if password.startswith(TOKEN_PREFIXES):
            return password, True
    return None


def _token_decision(store: Store, config: Config, vm: VM, token: tuple[str, bool], now: int) -> Decision:
    token_text, in_authorization = token
    try:
        verified = TokenVerifier(store, config.domain).verify(token_text, vm_name=vm.name, now=now)
    except InvalidToken as exc:
        return Decision(Verdict.DENY, 401, f"invalid token: {exc.message}", vm.name)
    identity = identity_of(store, verified.user)
    if not can_open(store, vm, verified.user.id):
        return Decision(Verdict.DENY, 403, f"not shared with {identity.handle}", vm.name, identity)
    ctx = "" if verified.ctx is None else json.dumps(verified.ctx, separators=(",", ":"))
    return Decision(
        Verdict.ALLOW, 200, "token", vm.name, identity, token_ctx=ctx, strip_authorization=in_authorization
    )


def identity_of(store: Store, user: User) -> Identity:
    address = Emails(store).get(user.id)
    return Identity(user.id, user.handle, address.email if address and address.verified else None)


def can_open(store: Store, vm: VM, user_id: int) -> bool:
    """Return whether the user owns the VM or it is shared with them."""
    return vm.owner_id == user_id or Sharing(store).can_open(vm.id, user_id)


def session_from_cookies(
    store: Store, host: str, cookies: Mapping[str, Sequence[str]], now: int
) -> Session | None:
    """Return the live session that a platform cookie names for `host`, if any."""
    sessions = Sessions(store)
    for value in cookies.get(SESSION_COOKIE, ()):
        if looks_like_token(value):
            session = sessions.find(hash_token(value), strip_port(host), now)
            if session is not None:
                return session
    return None


def _wants_html(headers: Mapping[str, str]) -> bool:
    method = headers.get("x-forwarded-method", "GET").upper()
    return method in ("GET", "HEAD") and "text/html" in headers.get("accept", "")


def login_redirect(config: Config, host: str, uri: str) -> str:
    """Return the login page's URL with the URL to come back to as `next`."""
    host_name = strip_port(host)
    try:
        return_url = check_return_url(config, origin(config, host_name) + (uri or "/"))
    except InvalidInput:
        return_url = origin(config, host_name) + "/"
    return platform_url(config, f"{LOGIN_PATH}?next={quote(return_url, safe='')}")


def decide(
    store: Store,
    config: Config,
    host: str,
    headers: Mapping[str, str],
    cookies: Mapping[str, Sequence[str]],
    *,
    now: float | None = None,
) -> Decision:
    """Decide whether the request may reach the VM that `host` names.

    `headers` are the request's headers (any letter case); `X-Forwarded-Uri` and
    `X-Forwarded-Method` describe the original request when Caddy's forward auth calls.
    `cookies` maps cookie names to their values, as `parse_cookie_header` returns them.
    """
    headers = {name.lower(): value for name, value in headers.items()}
    clock = int(time.time() if now is None else now)
    target = parse_vm_host(host, config.domain)
    vm = store.find_vm(target.vm_name) if target is not None else None
    if target is None or vm is None:
        return Decision(Verdict.DENY, 404, "no VM at this host")

    if target.port is None and Sharing(store).settings(vm.id).public:
        return Decision(Verdict.ALLOW, 200, "public", vm.name)

    presented = presented_token(headers)
    if presented is not None:
        return _token_decision(store, config, vm, presented, clock)
    session = session_from_cookies(store, host, cookies, clock)
    identity: Identity | None = None
    if session is not None and session.user_id is not None:
        user = store.get_user(session.user_id)
        identity = identity_of(store, user)
        if can_open(store, vm, user.id):
            role = "owner" if vm.owner_id == user.id else "shared"
            return Decision(Verdict.ALLOW, 200, role, vm.name, identity)
    if session is not None and session.link_id is not None:
        link = Sharing(store).find_link_by_id(session.link_id)
        if link is not None and link.vm_id == vm.id:
            return Decision(Verdict.ALLOW, 200, "share link", vm.name, identity, link_id=link.id)

    if identity is not None:
        return Decision(Verdict.DENY, 403, f"not shared with {identity.handle}", vm.name, identity)
    if _wants_html(headers):
        location = login_redirect(config, host, headers.get("x-forwarded-uri", "/"))
        return Decision(Verdict.REDIRECT, 302, "login required", vm.name, location=location)
    return Decision(Verdict.DENY, 401, "login required", vm.name)


def vm_for_ssh(store: Store, user: User, vm_name: str) -> VM:
    """Return the VM `vm_name` if the user may `ssh VM@host` into it.

    The owner may, and so may a person it is shared with after `share access allow`.
    :raise NotFound: the VM does not exist or the user may not log in; both read the same,
        so that nobody learns the names of VMs they have no access to.
    """
    vm = store.find_vm(vm_name)
    if vm is not None and (vm.owner_id == user.id or Sharing(store).can_ssh(vm.id, user.id)):
        return vm
    raise NotFound(f'no VM named "{vm_name}": run "ls" to see your VMs')
