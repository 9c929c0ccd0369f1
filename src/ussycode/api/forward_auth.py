"""The endpoint that Caddy's forward auth calls before a request reaches a private VM.

A 2xx response lets the request through, and Caddy copies the X-Ussycode-* identity headers of
the response into it. Any other response goes back to the client as it is: a redirect to the
login page for a browser, 401 for another client, 403 for a visitor without access.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

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

# Called with the VM's name when a request to it is allowed, before it passes; returns None when
# the VM can take the request, or a message saying why it cannot (such as a failed resume).
AllowHook = Callable[[str], Awaitable[str | None]]


def client_address(request: web.Request) -> str:
    """Return the client's address; Caddy replaces any X-Forwarded-For a client sends."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    return forwarded.split(",")[0].strip() or request.remote or "?"


def wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def error_response(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """Return the platform's JSON error body, or a page for a browser."""
    if wants_html(request):
        return page_response(status, message.partition(":")[0].capitalize(), [paragraph(escape(message))])
    response = web.json_response({"error": {"code": code, "message": message}}, status=status)
    response.headers.update(SECURITY_HEADERS)
    return response


class ForwardAuth:
    """Serves `/__ussycode/auth` for Caddy."""

    def __init__(
        self, *, config: Config, store: Store, denied: DeniedRequestLog, cache: DecisionCache | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.denied = denied
        self.cache = cache or DecisionCache(store)
        self.on_allow: AllowHook | None = None

    async def handle(self, request: web.Request) -> web.Response:
        key = self.cache.key(request.host, request.headers.items())
        decision = self.cache.get(key)
        if decision is None:
            cookies = parse_cookie_header(request.headers.getall("Cookie", []))
            decision = decide(self.store, self.config, request.host, request.headers, cookies)
            self.cache.put(key, decision)
        if decision.verdict is Verdict.ALLOW:
            if self.on_allow is not None and decision.vm_name is not None:
                problem = await self.on_allow(decision.vm_name)
                if problem is not None:
                    response = error_response(request, 503, "unavailable", problem)
                    response.headers["Retry-After"] = str(WAKE_RETRY_AFTER)
                    return response
            return self._allow(decision)

        host = strip_port(request.host)
        self._record(request, decision, host)
        if decision.verdict is Verdict.REDIRECT and decision.location is not None:
            return redirect(decision.location)
        if decision.status == 401:
            message = f"login required: open https://{host}/ in a browser and sign in"
            if decision.reason.startswith("invalid token"):
                message = decision.reason
            response = error_response(request, 401, "unauthorized", message)
            response.headers["WWW-Authenticate"] = f'Bearer realm="{host}"'
            return response
        if decision.status == 403 and decision.identity is not None:
            return self._forbidden(request, decision, host)
        return error_response(request, 404, "not_found", f"no VM at {host}")

    def _allow(self, decision: Decision) -> web.Response:
        identity = decision.identity
        # Caddy copies only non-empty values, so an anonymous visitor (a share link) gets none.
        headers = {
            USER_ID_HEADER: str(identity.user_id) if identity else "",
            HANDLE_HEADER: identity.handle if identity else "",
            EMAIL_HEADER: (identity.email or "") if identity else "",
            TOKEN_CTX_HEADER: decision.token_ctx or "",
            STRIP_AUTHORIZATION_HEADER: "1" if decision.strip_authorization else "",
            "Cache-Control": "no-store",
        }
        return web.Response(status=200, headers=headers)

    def _forbidden(self, request: web.Request, decision: Decision, host: str) -> web.Response:
        assert decision.identity is not None
        handle = decision.identity.handle
        vm_name = decision.vm_name or host
        if not wants_html(request):
            return error_response(
                request, 403, "permission_denied", f'{handle} has no access to VM "{vm_name}": ask its owner'
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

    def _record(self, request: web.Request, decision: Decision, host: str) -> None:
        identity = decision.identity
        written = self.denied.record(
            actor_id=identity.user_id if identity else None,
            actor=identity.handle if identity else "anonymous",
            client=client_address(request),
            host=host,
            status=decision.status,
            reason=decision.reason,
        )
        # The audit rate limit also limits these lines.
        level = logging.INFO if written else logging.DEBUG
        log.log(level, "access denied host=%s status=%d reason=%s", host, decision.status, decision.reason)
