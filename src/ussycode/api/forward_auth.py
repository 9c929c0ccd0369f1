"""The endpoint that Caddy's forward auth calls before a request reaches a private VM.

A 2xx response lets the request through, and Caddy copies the X-Ussycode-* identity headers of
the response into it. Any other response goes back to the client as it is: a redirect to the
login page for a browser, 401 for another client, 403 for a visitor without access.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ussycode.api.pages import SECURITY_HEADERS, escape, page_response, paragraph, redirect
from ussycode.auth.access import Decision, Verdict, decide
from ussycode.auth.audit import DeniedRequestLog
from ussycode.auth.cookies import parse_cookie_header
from ussycode.auth.decision_cache import DecisionCache
from ussycode.auth.hosts import LOGOUT_PATH, platform_url, strip_port
from ussycode.config import Config
from ussycode.store import Store

log = logging.getLogger(__name__)

USER_ID_HEADER = "X-Ussycode-User-Id"
HANDLE_HEADER = "X-Ussycode-Handle"
EMAIL_HEADER = "X-Ussycode-Email"
TOKEN_CTX_HEADER = "X-Ussycode-Token-Ctx"
# Tells Caddy to drop the request's Authorization header, which carried the platform's token.
STRIP_AUTHORIZATION_HEADER = "X-Ussycode-Strip-Authorization"
# Seconds a client may wait after a 503 for a VM that did not resume in time.
WAKE_RETRY_AFTER = 30

# Called with the VM's name when a request to it is allowed: records the request as use of the VM
# and returns whether the VM must be woken (resumed) before the request passes.
RequestHook = Callable[[str], bool]
# Called with the VM's name when it must be woken. It returns None when the VM can take the
# request, else a message with the reason (such as a failed resume).
AllowHook = Callable[[str], Awaitable[str | None]]


def client_address(request: web.Request) -> str:
    """Return the client's address; Caddy replaces any X-Forwarded-For a client sends."""
    return forwarded_client(request.headers, request.remote)


def forwarded_client(headers: Mapping[str, str], remote: str | None) -> str:
    """Return the first X-Forwarded-For address in `headers`, else `remote`, else "?"."""
    forwarded = headers.get("X-Forwarded-For", "")
    return forwarded.split(",")[0].strip() or remote or "?"


def wants_html(headers: Mapping[str, str]) -> bool:
    return "text/html" in headers.get("Accept", "")


def error_response(headers: Mapping[str, str], status: int, code: str, message: str) -> web.Response:
    """Return the platform's JSON error body, or a page for a browser."""
    if wants_html(headers):
        return page_response(status, message.partition(":")[0].capitalize(), [paragraph(escape(message))])
    response = web.json_response({"error": {"code": code, "message": message}}, status=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def allow_headers(decision: Decision) -> dict[str, str]:
    """Return the headers of the 2xx response that lets a request through with its identity."""
    identity = decision.identity
    # Caddy copies only non-empty values, so an anonymous visitor (a share link) gets none.
    return {
        USER_ID_HEADER: str(identity.user_id) if identity else "",
        HANDLE_HEADER: identity.handle if identity else "",
        EMAIL_HEADER: (identity.email or "") if identity else "",
        TOKEN_CTX_HEADER: decision.token_ctx or "",
        STRIP_AUTHORIZATION_HEADER: "1" if decision.strip_authorization else "",
        "Cache-Control": "no-store",
    }


class ForwardAuth:
    """Serves `/__ussycode/auth` for Caddy."""

    def __init__(
        self, *, config: Config, store: Store, denied: DeniedRequestLog, cache: DecisionCache | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.denied = denied
        self.cache = cache or DecisionCache(store)
        self.on_request: RequestHook | None = None
        self.on_allow: AllowHook | None = None

    async def handle(self, request: web.Request) -> web.Response:
        decision = self.decision(request.host, request.headers)
        if decision.verdict is Verdict.ALLOW:
            if self.wake_needed(decision):
                unavailable = await self.wake(decision, request.headers)
                if unavailable is not None:
                    return unavailable
            return web.Response(status=200, headers=allow_headers(decision))
        return self.deny_response(decision, request.host, request.headers, request.remote)

    def decision(self, host: str, headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> Decision:
        """Return the access decision for a request to `host`, from the cache if it has one."""
        key = self.cache.key(host, headers.items())
        decision = self.cache.get(key)
        if decision is None:
            cookies = parse_cookie_header(headers.getall("Cookie", []))
            decision = decide(self.store, self.config, host, headers, cookies)
            self.cache.put(key, decision)
        return decision

    def wake_needed(self, decision: Decision) -> bool:
        """Record an allowed request as use of its VM; return whether the VM must be woken first."""
        if self.on_request is None or decision.vm_name is None:
            return False
        return self.on_request(decision.vm_name)

    async def wake(self, decision: Decision, headers: Mapping[str, str]) -> web.Response | None:
        """Wake the VM of an allowed request; return None once it runs, else a 503 for the client."""
        if self.on_allow is None or decision.vm_name is None:
            return None
        problem = await self.on_allow(decision.vm_name)
        if problem is None:
            return None
        response = error_response(headers, 503, "unavailable", problem)
        response.headers["Retry-After"] = str(WAKE_RETRY_AFTER)
        return response

    def deny_response(
        self, decision: Decision, host_header: str, headers: Mapping[str, str], remote: str | None
    ) -> web.Response:
        """Record a decision that did not allow the request, and return the response for the client."""
        host = strip_port(host_header)
        self._record(decision, host, forwarded_client(headers, remote))
        if decision.verdict is Verdict.REDIRECT and decision.location is not None:
            return redirect(decision.location)
        if decision.status == 401:
            message = f"login required: open https://{host}/ in a browser and sign in"
            if decision.reason.startswith("invalid token"):
                message = decision.reason
            response = error_response(headers, 401, "unauthorized", message)
            response.headers["WWW-Authenticate"] = f'Bearer realm="{host}"'
            return response
        if decision.status == 403 and decision.identity is not None:
            return self._forbidden(headers, decision, host)
        return error_response(headers, 404, "not_found", f"no VM at {host}")

    def _forbidden(self, headers: Mapping[str, str], decision: Decision, host: str) -> web.Response:
        assert decision.identity is not None
        handle = decision.identity.handle
        vm_name = decision.vm_name or host
        if not wants_html(headers):
            return error_response(
                headers, 403, "permission_denied", f'{handle} has no access to VM "{vm_name}": ask its owner'
            )
        share = f"share add {vm_name} {handle}"
        return page_response(
            403,
            "No access",
            [
                paragraph(f"You are signed in as <b>{escape(handle)}</b>, who has no access to this VM."),
                paragraph(f"Ask its owner to run <code>{escape(share)}</code>."),
                paragraph(
                    f'<a href="{escape(LOGOUT_PATH)}">Sign out of this site</a> or '
                    f'<a href="{escape(platform_url(self.config, LOGOUT_PATH))}">sign out everywhere</a>.'
                ),
            ],
        )

    def _record(self, decision: Decision, host: str, client: str) -> None:
        identity = decision.identity
        written = self.denied.record(
            actor_id=identity.user_id if identity else None,
            actor=identity.handle if identity else "anonymous",
            client=client,
            host=host,
            status=decision.status,
            reason=decision.reason,
        )
        # The audit rate limit also limits these lines.
        level = logging.INFO if written else logging.DEBUG
        log.log(level, "access denied host=%s status=%d reason=%s", host, decision.status, decision.reason)
