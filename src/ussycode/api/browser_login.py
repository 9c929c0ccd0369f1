"""Browser login pages: login and logout on the main domain; callback, share and logout on VM hosts.

Caddy sends every path of the main domain to the API, and of a VM host only `/__ussycode/logout`,
`/__ussycode/callback` and `/__ussycode/share`. Each handler checks which kind of host it was
reached on, so a page of one kind is never served on the other.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, unquote

from aiohttp import web

from ussycode.api.forward_auth import client_address
from ussycode.api.pages import escape, form, page_response, paragraph, redirect
from ussycode.auth.access import session_from_cookies
from ussycode.auth.audit import Action, DeniedRequestLog
from ussycode.auth.cookies import (
    RETURN_COOKIE,
    RETURN_COOKIE_SECONDS,
    SESSION_COOKIE,
    clear_cookie,
    parse_cookie_header,
    set_cookie,
)
from ussycode.auth.hosts import (
    CALLBACK_PATH,
    LOGIN_PATH,
    LOGOUT_PATH,
    SHARE_PATH,
    origin,
    parse_vm_host,
    platform_url,
    strip_port,
    vm_url,
)
from ussycode.auth.login import LOGIN_LINK_SECONDS, Logins, NewSession, check_next
from ussycode.config import Config
from ussycode.store import Store, User
from ussycode.store.audit import AuditLog
from ussycode.store.sessions import Session
from ussycode.store.sharing import Sharing

log = logging.getLogger(__name__)

MAX_FORM_FIELD_CHARS = 4096


class BrowserLogin:
    """The login, logout, callback and share-link endpoints."""

    def __init__(self, *, config: Config, store: Store, denied: DeniedRequestLog) -> None:
        self.config = config
        self.store = store
        self.denied = denied
        self.logins = Logins(store, config)
        self.audit = AuditLog(store)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(LOGIN_PATH, self.login)
        app.router.add_post(LOGIN_PATH, self.login_form)
        app.router.add_get(LOGOUT_PATH, self.logout)
        app.router.add_post(LOGOUT_PATH, self.logout)
        app.router.add_get(CALLBACK_PATH, self.callback)
        app.router.add_get(SHARE_PATH, self.share)

    # Hosts and sessions.

    def _on_main_domain(self, request: web.Request) -> bool:
        return strip_port(request.host) == self.config.domain

    def _on_vm_host(self, request: web.Request) -> bool:
        return parse_vm_host(request.host, self.config.domain) is not None

    def _session(self, request: web.Request) -> Session | None:
        cookies = parse_cookie_header(request.headers.getall("Cookie", []))
        return session_from_cookies(self.store, request.host, cookies, self.logins.now())

    def _not_found(self) -> web.Response:
        return page_response(404, "Not found", [paragraph("No page at this address.")])

    def _deny(self, request: web.Request, status: int, reason: str, session: Session | None = None) -> None:
        user = self.store.get_user(session.user_id) if session and session.user_id else None
        self.denied.record(
            actor_id=user.id if user else None,
            actor=user.handle if user else "anonymous",
            client=client_address(request),
            host=strip_port(request.host),
            status=status,
            reason=reason,
        )

    def _record(self, request: web.Request, user: User | None, action: Action, detail: str = "") -> None:
        actor = user.handle if user else "anonymous"
        self.audit.add(
            actor_id=user.id if user else None,
            actor=f"{actor} from {client_address(request)}",
            action=action,
            target=strip_port(request.host),
            detail=detail,
        )

    @staticmethod
    def _with_session_cookie(response: web.Response, new: NewSession) -> web.Response:
        response.headers.add("Set-Cookie", set_cookie(SESSION_COOKIE, new.token, new.max_age))
        return response

    # Main domain.

    async def login(self, request: web.Request) -> web.Response:
        """Show the login page, redeem a login link (`?token=`), or hand a login to a VM host."""
        if not self._on_main_domain(request):
            return self._not_found()
        next_url = check_next(self.config, request.query.get("next"))
        token = request.query.get("token")
        if token is not None:
            return self._redeem(request, token, next_url)

        current = self._session(request)
        if current is not None and current.user_id is not None:
            if next_url is not None:
                return redirect(self.logins.start_handoff(current, next_url))
            return self._signed_in_page(self.store.get_user(current.user_id))

        response = self._login_page(next_url)
        if next_url is not None:
            cookie = set_cookie(RETURN_COOKIE, quote(next_url, safe=""), RETURN_COOKIE_SECONDS)
            response.headers.add("Set-Cookie", cookie)
        return response

    async def login_form(self, request: web.Request) -> web.Response:
        """Redeem a login link pasted into the login page's form."""
        if not self._on_main_domain(request):
            return self._not_found()
        sent_origin = request.headers.get("Origin")
        if sent_origin is not None and sent_origin != origin(self.config, self.config.domain):
            self._deny(request, 403, "login form posted from another site")
            return page_response(403, "Login rejected", [paragraph("The form was sent from another site.")])
        fields = await request.post()
        link = fields.get("link")
        next_text = fields.get("next")
        if not isinstance(link, str) or len(link) > MAX_FORM_FIELD_CHARS:
            return page_response(400, "Login failed", [paragraph("Paste the login link into the form.")])
        next_url = check_next(self.config, next_text if isinstance(next_text, str) else None)
        return self._redeem(request, link, next_url)

    def _redeem(self, request: web.Request, link: str, next_url: str | None) -> web.Response:
        new = self.logins.redeem_login_link(link)
        if new is None or new.session.user_id is None:
            self._deny(request, 400, "invalid, used or expired login link")
            command = escape(f"{self.config.ssh_command()} browser")
            return page_response(
                400,
                "Login link not valid",
                [
                    paragraph("This login link is invalid, was already used, or has expired."),
                    paragraph(f"Get a new one with <code>{command}</code>."),
                ],
            )
        user = self.store.get_user(new.session.user_id)
        previous = self._session(request)
        if previous is not None:
            self.logins.end(previous)
        self._record(request, user, Action.LOGIN)
        log.info("user=%s logged in from %s", user.handle, client_address(request))

        if next_url is None:
            cookies = parse_cookie_header(request.headers.getall("Cookie", []))
            saved = cookies.get(RETURN_COOKIE, [""])[0]
            next_url = check_next(self.config, unquote(saved))
        location = self.logins.start_handoff(new.session, next_url) if next_url else LOGIN_PATH
        response = self._with_session_cookie(redirect(location), new)
        response.headers.add("Set-Cookie", clear_cookie(RETURN_COOKIE))
        return response

    def _login_page(self, next_url: str | None) -> web.Response:
        command = escape(f"{self.config.ssh_command()} browser")
        blocks = []
        if next_url is not None:
            host = strip_port(next_url.split("/")[2])
            blocks.append(paragraph(f"Sign in to open <b>{escape(host)}</b>."))
        minutes = LOGIN_LINK_SECONDS // 60
        blocks += [
            paragraph(
                f"In a terminal, run <code>{command}</code> and open the login link it prints in this "
                f"browser. A link works once, for {minutes} minutes."
            ),
            paragraph("Or paste the link here:"),
            form(LOGIN_PATH, "Sign in", {"next": next_url or ""}, text_field=("link", "Login link")),
        ]
        return page_response(200, "Sign in", blocks)

    def _signed_in_page(self, user: User) -> web.Response:
        owned = [vm.name for vm in self.store.list_vms(owner_id=user.id)]
        shared = []
        for vm_id, _ in Sharing(self.store).shared_with(user.id):
            shared.append(self.store.get_vm(vm_id).name)
        blocks = [paragraph(f"Signed in as <b>{escape(user.handle)}</b>.")]
        for title, names in (("Your VMs", owned), ("Shared with you", shared)):
            if names:
                items = "".join(
                    f'<li><a href="{escape(vm_url(self.config, name))}">{escape(name)}</a></li>'
                    for name in names
                )
                blocks.append(f"<h2>{escape(title)}</h2><ul>{items}</ul>")
        blocks.append(form(LOGOUT_PATH, "Sign out", {}))
        return page_response(200, "Signed in", blocks)

    # Any host.

    async def logout(self, request: web.Request) -> web.Response:
        """End the session of this host; on the main domain, also every VM host session made from it."""
        on_main = self._on_main_domain(request)
        if not on_main and not self._on_vm_host(request):
            return self._not_found()
        session = self._session(request)
        user = self.store.get_user(session.user_id) if session and session.user_id else None
        if session is not None:
            self.logins.end(session)
            self._record(request, user, Action.LOGOUT)

        host = strip_port(request.host)
        if on_main:
            blocks = [paragraph(f"You are signed out of {escape(host)} and of every VM site you opened.")]
        else:
            everywhere = escape(platform_url(self.config, LOGOUT_PATH))
            blocks = [
                paragraph(f"You are signed out of <b>{escape(host)}</b>."),
                paragraph(
                    f'To sign out of every site, <a href="{everywhere}">sign out on the main site</a>.'
                ),
            ]
        response = page_response(200, "Signed out", blocks)
        response.headers.add("Set-Cookie", clear_cookie(SESSION_COOKIE))
        return response

    # VM hosts.

    async def callback(self, request: web.Request) -> web.Response:
        """Redeem a handoff code for a session on this VM host, then go to the page asked for."""
        if not self._on_vm_host(request):
            return self._not_found()
        result = self.logins.finish_handoff(request.query.get("code", ""), request.host)
        if result is None:
            self._deny(request, 400, "invalid, used or expired login handoff")
            return page_response(
                400,
                "Sign-in expired",
                [
                    paragraph(
                        'This sign-in step expired or was already used. <a href="/">Open the site again</a>.'
                    )
                ],
            )
        new, next_path = result
        previous = self._session(request)
        if previous is not None:
            self.logins.end(previous)
        user = self.store.get_user(new.session.user_id) if new.session.user_id else None
        self._record(request, user, Action.LOGIN_HOST)
        return self._with_session_cookie(redirect(next_path), new)

    async def share(self, request: web.Request) -> web.Response:
        """Redeem a share link for a session on this VM host, then open the VM's front page."""
        if not self._on_vm_host(request):
            return self._not_found()
        current = self._session(request)
        new = self.logins.open_share_link(request.query.get("token", ""), request.host, current)
        if new is None:
            self._deny(request, 404, "invalid or revoked share link", current)
            return page_response(
                404,
                "Share link not valid",
                [paragraph("This share link is invalid or was revoked. Ask the VM's owner for a new one.")],
            )
        if current is not None:
            self.logins.end(current)
        user = self.store.get_user(new.session.user_id) if new.session.user_id else None
        label = Sharing(self.store).get_link(new.session.link_id).label if new.session.link_id else "?"
        self._record(request, user, Action.OPEN_SHARE_LINK, f"link {label}")
        return self._with_session_cookie(redirect("/"), new)
