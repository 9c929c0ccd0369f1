"""The admin panel: server-rendered pages for operators and admins under `/admin/`.

The panel is served twice: on its own address (`--admin-addr`, default 127.0.0.1:9091), and by
the API server, so that Caddy serves it at https://<domain>/admin/. On the main domain it uses
the platform's login session. On its own address, whose host Caddy does not serve, it redeems a
login link of the `browser` command for a session bound to that host, kept in the cookie
`ussycode-admin` (without `Secure`, because that address speaks plain HTTP).

Every form carries a CSRF token derived from the session's cookie, and every POST also has its
Origin checked when the browser sends one. Every action goes through `Administration`, which
checks the tier and writes the audit log. The pages run no script.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from aiohttp import web

from ussycode import quota
from ussycode.api.forward_auth import client_address
from ussycode.api.pages import SECURITY_HEADERS, escape, page_response, paragraph, redirect
from ussycode.auth.administration import Administration
from ussycode.auth.audit import DeniedRequestLog
from ussycode.auth.cookies import SESSION_COOKIE, parse_cookie_header
from ussycode.auth.login import token_from_link
from ussycode.auth.random_tokens import hash_token, looks_like_token, new_token
from ussycode.auth.tiers import LIMIT_KEYS, TIER_NAMES, Tier
from ussycode.config import SECRET_SETTINGS, Config, format_size
from ussycode.errors import RuntimeFailure, UssycodeError
from ussycode.store import Store, User
from ussycode.store.audit import AuditEntry, AuditLog
from ussycode.store.sessions import Sessions
from ussycode.store.trust import TrustStore
from ussycode.vm.manager import VMManager

log = logging.getLogger(__name__)

PREFIX = "/admin"
ADMIN_COOKIE = "ussycode-admin"
CSRF_FIELD = "csrf"
CONSOLE_BYTES = 64 * 1024
AUDIT_PAGE_ROWS = 200
MAX_FORM_BYTES = 16 * 1024

_PANEL_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;line-height:1.4}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
    "nav a{margin-right:1em}form.inline{display:inline}pre{background:#f4f4f4;padding:.5em;"
    "overflow:auto;max-height:40em}.error{color:#a00}"
)


@dataclass(frozen=True)
class Visitor:
    """A signed-in visitor of the panel, with the cookie value that their CSRF token comes from."""

    user: User
    tier: Tier
    cookie_token: str


Handler = Callable[[web.Request, Visitor], Awaitable[web.StreamResponse]]


class AdminPanel:
    """The panel's routes, usable in the API's application and in the panel's own server."""

    def __init__(self, *, config: Config, store: Store, manager: VMManager, denied: DeniedRequestLog) -> None:
        self.config = config
        self.store = store
        self.manager = manager
        self.denied = denied
        self.sessions = Sessions(store)
        self._runner: web.AppRunner | None = None

    # Serving.

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PREFIX, self._to_dashboard)
        app.router.add_get(f"{PREFIX}/", self._page(self.dashboard))
        app.router.add_get(f"{PREFIX}/login", self.login)
        app.router.add_post(f"{PREFIX}/login", self.login)
        app.router.add_post(f"{PREFIX}/logout", self.logout)
        app.router.add_get(f"{PREFIX}/users", self._page(self.users))
        app.router.add_get(f"{PREFIX}/vms", self._page(self.vms))
        app.router.add_get(f"{PREFIX}/vms/{{name}}/console", self._page(self.console))
        app.router.add_get(f"{PREFIX}/audit", self._page(self.audit))
        app.router.add_get(f"{PREFIX}/settings", self._page(self.settings))
        app.router.add_post(f"{PREFIX}/users/{{handle}}/{{action}}", self._action(self.user_action))
        app.router.add_post(f"{PREFIX}/vms/{{name}}/{{action}}", self._action(self.vm_action))

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_FORM_BYTES)
        self.add_routes(app)
        app.router.add_get("/", self._to_dashboard)
        host, port = self.config.admin_addr
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host or None, port, reuse_address=True).start()
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot listen for the admin panel on {host or '*'}:{port}: {exc.strerror}"
            ) from exc
        log.info("admin panel listening on %s:%d", host or "*", port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # Sessions and checks.

    def _on_main_domain(self, request: web.Request) -> bool:
        return request.host.split(":")[0] == self.config.domain

    def _cookie_name(self, request: web.Request) -> str:
        return SESSION_COOKIE if self._on_main_domain(request) else ADMIN_COOKIE

    def _session_host(self, request: web.Request) -> str:
        return self.config.domain if self._on_main_domain(request) else request.host.split(":")[0]

    def _visitor(self, request: web.Request) -> Visitor | None:
        cookies = parse_cookie_header(request.headers.getall("Cookie", []))
        now = int(_now())
        for value in cookies.get(self._cookie_name(request), []):
            if not looks_like_token(value):
                continue
            session = self.sessions.find(hash_token(value), self._session_host(request), now)
            if session is not None and session.user_id is not None:
                user = self.store.get_user(session.user_id)
                current = quota.standing(self.store, self.config, user)
                tier = Tier.NEWBIE if current.suspended else current.tier
                return Visitor(user, tier, value)
        return None

    def csrf_token(self, visitor: Visitor) -> str:
        return hmac.new(visitor.cookie_token.encode(), b"ussycode-admin-csrf", hashlib.sha256).hexdigest()

    def _deny(self, request: web.Request, visitor: Visitor | None, status: int, reason: str) -> None:
        self.denied.record(
            actor_id=visitor.user.id if visitor else None,
            actor=visitor.user.handle if visitor else "anonymous",
            client=client_address(request),
            host=f"{request.host}{PREFIX}",
            status=status,
            reason=reason,
        )

    def _forbidden(self, request: web.Request, visitor: Visitor) -> web.Response:
        self._deny(request, visitor, 403, "admin panel needs the operator tier")
        text = (
            f"The admin panel is for operators and admins, and <b>{escape(visitor.user.handle)}</b>"
            f" has the {escape(visitor.tier)} tier."
        )
        return page_response(403, "Not allowed", [paragraph(text)])

    def _page(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            visitor = self._visitor(request)
            if visitor is None:
                return self._login_page(request)
            if visitor.tier.rank < Tier.OPERATOR.rank:
                return self._forbidden(request, visitor)
            return await handler(request, visitor)

        return wrapped

    def _action(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            visitor = self._visitor(request)
            if visitor is None:
                self._deny(request, None, 401, "admin action without a session")
                return page_response(401, "Sign in first", [paragraph("Your session has ended.")])
            if not self._same_origin(request):
                self._deny(request, visitor, 403, "admin form posted from another site")
                return page_response(403, "Rejected", [paragraph("The form was sent from another site.")])
            fields = await request.post()
            sent = fields.get(CSRF_FIELD)
            if not isinstance(sent, str) or not hmac.compare_digest(sent, self.csrf_token(visitor)):
                self._deny(request, visitor, 403, "admin form without a valid CSRF token")
                return page_response(
                    403,
                    "Rejected",
                    [paragraph("The form's security token is missing or wrong: reload the page.")],
                )
            if visitor.tier.rank < Tier.OPERATOR.rank:
                return self._forbidden(request, visitor)
            return await handler(request, visitor)

        return wrapped

    def _same_origin(self, request: web.Request) -> bool:
        """Return False if the Origin header names another origin than this host.

        A missing Origin, or `null` (which browsers send for a page with Referrer-Policy
        no-referrer), passes: the CSRF token is the check that always applies.
        """
        sent = request.headers.get("Origin")
        if sent is None or sent == "null":
            return True
        return sent.split("://", 1)[-1] == request.host

    def _admin(self, visitor: Visitor) -> Administration:
        return Administration(self.config, self.store, self.manager, visitor.user, via="admin panel")

    # Login and logout.

    async def _to_dashboard(self, request: web.Request) -> web.Response:
        del request
        return redirect(f"{PREFIX}/")

    def _login_page(self, request: web.Request, error: str = "") -> web.Response:
        command = escape(f"{self.config.ssh_command()} browser")
        blocks = [
            paragraph(f"Run <code>{command}</code> and paste the login link it prints here."),
            f'<form method="post" action="{PREFIX}/login"><label for="link">Login link</label> '
            '<input type="text" id="link" name="link" size="60" autocomplete="off"> '
            '<button type="submit">Sign in</button></form>',
        ]
        if error:
            blocks.insert(0, f'<p class="error">{escape(error)}</p>')
        del request
        return page_response(401 if error else 200, "ussycode admin: sign in", blocks)

    async def login(self, request: web.Request) -> web.Response:
        """Redeem a login link (`?token=` or the form's `link`) for a session on this host."""
        if request.method == "POST":
            if not self._same_origin(request):
                return page_response(403, "Rejected", [paragraph("The form was sent from another site.")])
            fields = await request.post()
            link = fields.get("link")
            text = link if isinstance(link, str) and len(link) <= 4096 else ""
        else:
            text = request.query.get("token", "")
            if not text:
                return self._login_page(request)
        token = token_from_link(text)
        now = int(_now())
        user_id = self.sessions.redeem_login_link(hash_token(token), now) if token else None
        if user_id is None:
            self._deny(request, None, 401, "invalid, used or expired login link for the admin panel")
            return self._login_page(request, "This login link is invalid, was already used, or has expired.")
        cookie = new_token()
        lifetime = self.config.session_days * 86400
        self.sessions.add(
            hash_token(cookie),
            host=self._session_host(request),
            expires_at=now + lifetime,
            now=now,
            user_id=user_id,
        )
        user = self.store.get_user(user_id)
        log.info("user=%s signed in to the admin panel from %s", user.handle, client_address(request))
        response = redirect(f"{PREFIX}/", status=303)
        response.headers.add("Set-Cookie", self._set_cookie(request, cookie, lifetime))
        return response

    def _set_cookie(self, request: web.Request, value: str, max_age: int) -> str:
        if self._on_main_domain(request):
            return f"{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"
        return f"{ADMIN_COOKIE}={value}; Path={PREFIX}; Max-Age={max_age}; HttpOnly; SameSite=Strict"

    async def logout(self, request: web.Request) -> web.Response:
        visitor = self._visitor(request)
        if visitor is not None:
            fields = await request.post()
            sent = fields.get(CSRF_FIELD)
            if isinstance(sent, str) and hmac.compare_digest(sent, self.csrf_token(visitor)):
                session = self.sessions.find(
                    hash_token(visitor.cookie_token), self._session_host(request), int(_now())
                )
                if session is not None:
                    self.sessions.delete(session.id)
        response = redirect(f"{PREFIX}/", status=303)
        response.headers.add("Set-Cookie", self._set_cookie(request, "", 0))
        return response

    # Rendering.

    def _render(self, visitor: Visitor, title: str, blocks: list[str], *, status: int = 200) -> web.Response:
        nav = " ".join(
            f'<a href="{PREFIX}/{path}">{name}</a>'
            for path, name in (
                ("", "Dashboard"),
                ("users", "Users"),
                ("vms", "VMs"),
                ("audit", "Audit log"),
                ("settings", "Settings"),
            )
        )
        signed = f"Signed in as <b>{escape(visitor.user.handle)}</b> ({escape(visitor.tier)}) " + self._form(
            "logout", "Sign out", visitor
        )
        body = "\n".join(blocks)
        page = (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)} · ussycode admin</title><style>{_PANEL_STYLE}</style></head>\n"
            f"<body><nav>{nav}</nav><p>{signed}</p><h1>{escape(title)}</h1>\n{body}\n</body></html>\n"
        )
        response = web.Response(status=status, text=page, content_type="text/html")
        response.headers.update(SECURITY_HEADERS)
        # With same-origin, browsers send the panel's own Origin with its forms, not `null`.
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def _form(self, path: str, button: str, visitor: Visitor, inner: str = "") -> str:
        return (
            f'<form class="inline" method="post" action="{PREFIX}/{escape(path)}">{inner}'
            f'<input type="hidden" name="{CSRF_FIELD}" value="{self.csrf_token(visitor)}">'
            f'<button type="submit">{escape(button)}</button></form>'
        )

    @staticmethod
    def _table(headers: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    def _notice(self, request: web.Request) -> list[str]:
        blocks = []
        if request.query.get("done"):
            blocks.append(f'<p class="notice">{escape(request.query["done"])}</p>')
        if request.query.get("error"):
            blocks.append(f'<p class="error">error: {escape(request.query["error"])}</p>')
        return blocks

    # Pages.

    async def dashboard(self, request: web.Request, visitor: Visitor) -> web.Response:
        users = TrustStore(self.store).list_users()
        vms = [vm for vm in self.store.list_vms() if not self.manager.is_pooled(vm)]
        states = Counter(vm.state for vm in vms)
        host = _host_facts(self.config)
        events = self.store.list_events(limit=15)
        audit = AuditLog(self.store).entries(limit=10)
        blocks = [
            *self._notice(request),
            self._table(
                ["users", "VMs", *[f"VMs {state}" for state in sorted(states)]],
                [[str(len(users)), str(len(vms)), *[str(states[state]) for state in sorted(states)]]],
            ),
            "<h2>Host</h2>",
            self._table(["what", "value"], [[escape(k), escape(v)] for k, v in host]),
            "<h2>Recent VM events</h2>",
            self._table(
                ["time", "vm", "event", "detail"],
                [[escape(e.created_at), escape(e.vm_name), escape(e.kind), escape(e.detail)] for e in events],
            ),
            "<h2>Recent audit entries</h2>",
            _audit_table(audit),
        ]
        return self._render(visitor, "Dashboard", blocks)

    async def users(self, request: web.Request, visitor: Visitor) -> web.Response:
        rows = []
        trust = TrustStore(self.store)
        tier_options = "".join(f'<option value="{t}">{t}</option>' for t in TIER_NAMES)
        key_options = "".join(f'<option value="{k.name}">{k.name}</option>' for k in LIMIT_KEYS)
        for user in trust.list_users():
            data, lines = quota.describe(self.store, self.config, user)
            keys = "<br>".join(
                escape(f"{k.fingerprint} {k.name}".strip()) for k in self.store.list_keys(user.id)
            )
            owned = ", ".join(escape(vm.name) for vm in self.store.list_vms(owner_id=user.id)) or "-"
            handle = quote(user.handle)
            actions = [
                self._form(
                    f"users/{handle}/trust",
                    "Set tier",
                    visitor,
                    f'<select name="tier" aria-label="tier of {escape(user.handle)}">{tier_options}</select>',
                ),
                self._form(
                    f"users/{handle}/limit",
                    "Set limit",
                    visitor,
                    f'<select name="key">{key_options}</select>'
                    '<input type="text" name="value" size="8" placeholder="value or default">',
                ),
                self._form(f"users/{handle}/reinstate", "Reinstate", visitor)
                if data["suspended"]
                else self._form(
                    f"users/{handle}/suspend",
                    "Suspend",
                    visitor,
                    '<input type="text" name="reason" size="12" placeholder="reason">',
                ),
            ]
            rows.append(
                [
                    escape(user.handle),
                    escape(str(data["tier"])) + (" <b>suspended</b>" if data["suspended"] else ""),
                    "<br>".join(escape(line.strip()) for line in lines[2:]),
                    keys,
                    owned,
                    "<br>".join(actions),
                ]
            )
        table = self._table(["handle", "tier", "limits and use", "SSH keys", "VMs", "actions"], rows)
        return self._render(visitor, "Users", [*self._notice(request), table])

    async def vms(self, request: web.Request, visitor: Visitor) -> web.Response:
        owners = {user.id: user.handle for user in TrustStore(self.store).list_users()}
        rows = []
        for vm in self.store.list_vms():
            if self.manager.is_pooled(vm):
                continue  # `admin pool` shows the warm pool
            name = quote(vm.name)
            actions = " ".join(
                [
                    self._form(f"vms/{name}/start", "Start", visitor),
                    self._form(f"vms/{name}/stop", "Stop", visitor),
                    self._form(f"vms/{name}/delete", "Delete", visitor),
                    f'<a href="{PREFIX}/vms/{name}/console">console log</a>',
                ]
            )
            rows.append(
                [
                    escape(vm.name),
                    escape(owners.get(vm.owner_id, "?")),
                    escape(vm.state),
                    f"{vm.cpus} vCPU, {vm.memory_mb}M, {escape(format_size(vm.disk_bytes))}",
                    escape(vm.ip),
                    actions,
                ]
            )
        table = self._table(["name", "owner", "state", "resources", "ip", "actions"], rows)
        return self._render(visitor, "VMs", [*self._notice(request), table])

    async def console(self, request: web.Request, visitor: Visitor) -> web.Response:
        vm = self.store.find_vm(request.match_info["name"])
        if vm is None or self.manager.is_pooled(vm):
            return self._render(visitor, "Not found", [paragraph("No VM with that name.")], status=404)
        try:
            text = self.manager.runtime.console_tail(self.manager.spec(vm), CONSOLE_BYTES)
        except UssycodeError as exc:
            text = f"(console log unavailable: {exc.message})"
        return self._render(visitor, f"Console of {vm.name}", [f"<pre>{escape(text)}</pre>"])

    async def audit(self, request: web.Request, visitor: Visitor) -> web.Response:
        action = request.query.get("action", "").strip() or None
        target = request.query.get("target", "").strip() or None
        actor = request.query.get("actor", "").strip()
        entries = AuditLog(self.store).entries(target=target, action=action, limit=AUDIT_PAGE_ROWS)
        if actor:
            entries = [entry for entry in entries if actor.lower() in entry.actor.lower()]
        filters = (
            f'<form method="get" action="{PREFIX}/audit">'
            f'<label>action <input type="text" name="action" value="{escape(action or "")}"></label> '
            f'<label>actor <input type="text" name="actor" value="{escape(actor)}"></label> '
            f'<label>target <input type="text" name="target" value="{escape(target or "")}"></label> '
            '<button type="submit">Filter</button></form>'
        )
        return self._render(visitor, "Audit log", [filters, _audit_table(entries)])

    async def settings(self, request: web.Request, visitor: Visitor) -> web.Response:
        del request
        values = self.config.public_dict()
        rows = []
        for name in sorted(values):
            source = self.config.sources.get(name, "default")
            shown = values[name]
            rows.append([escape(name), escape(shown), escape(source)])
        note = paragraph(
            "Settings in effect; " + ", ".join(sorted(SECRET_SETTINGS)) + " shows only whether it is set."
        )
        return self._render(visitor, "Settings", [note, self._table(["setting", "value", "from"], rows)])

    # Actions.

    async def user_action(self, request: web.Request, visitor: Visitor) -> web.Response:
        handle = request.match_info["handle"]
        action = request.match_info["action"]
        fields = await request.post()
        admin = self._admin(visitor)

        def field(name: str) -> str:
            value = fields.get(name)
            return value.strip() if isinstance(value, str) else ""

        try:
            if action == "trust":
                admin.set_trust(handle, field("tier"))
                done = f"{handle} is now {field('tier')}"
            elif action == "limit":
                admin.set_limit(handle, field("key"), field("value"))
                done = f"{handle}: {field('key')} set to {field('value')}"
            elif action == "suspend":
                stopped = await admin.suspend(handle, field("reason"))
                done = f"{handle} is suspended" + (f"; stopped {', '.join(stopped)}" if stopped else "")
            elif action == "reinstate":
                admin.reinstate(handle)
                done = f"{handle} may log in again"
            else:
                return self._render(visitor, "Not found", [paragraph("No such action.")], status=404)
        except UssycodeError as exc:
            return redirect(f"{PREFIX}/users?{urlencode({'error': exc.message})}", status=303)
        return redirect(f"{PREFIX}/users?{urlencode({'done': done})}", status=303)

    async def vm_action(self, request: web.Request, visitor: Visitor) -> web.Response:
        name = request.match_info["name"]
        action = request.match_info["action"]
        admin = self._admin(visitor)
        try:
            if action == "start":
                await admin.start_vm(name)
                done = f"{name} is running"
            elif action == "stop":
                await admin.stop_vm(name)
                done = f"{name} is stopped"
            elif action == "delete":
                await admin.remove_vm(name)
                done = f"{name} is deleted"
            else:
                return self._render(visitor, "Not found", [paragraph("No such action.")], status=404)
        except UssycodeError as exc:
            return redirect(f"{PREFIX}/vms?{urlencode({'error': exc.message})}", status=303)
        return redirect(f"{PREFIX}/vms?{urlencode({'done': done})}", status=303)


def _audit_table(entries: list[AuditEntry]) -> str:
    rows = []
    for entry in entries:
        rows.append(
            [
                escape(entry.created_at),
                escape(entry.actor),
                escape(entry.action),
                escape(entry.target),
                escape(entry.detail),
            ]
        )
    return AdminPanel._table(["time", "actor", "action", "target", "detail"], rows)


def _now() -> float:
    return time.time()


def _host_facts(config: Config) -> list[tuple[str, str]]:
    """Return the host's CPU count and load, memory and the data directory's disk, as text."""
    facts = []
    load = os.getloadavg()
    facts.append(
        ("CPUs, load 1/5/15 min", f"{os.cpu_count()}, {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    )
    meminfo: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                meminfo[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if "MemTotal" in meminfo:
        total, available = meminfo["MemTotal"], meminfo.get("MemAvailable", 0)
        facts.append(("memory used / total", f"{_human(total - available)} / {_human(total)}"))
    try:
        disk = shutil.disk_usage(config.data_dir)
        facts.append((f"disk of {config.data_dir}", f"{_human(disk.used)} used / {_human(disk.total)}"))
    except OSError:
        pass
    return facts


def _human(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
