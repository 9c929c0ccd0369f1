"""HTTP server for the main domain: a landing page, health, Caddy's on-demand TLS check, browser
login and the forward auth of private VM URLs."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

from aiohttp import web

from ussycode.api.admin_panel import AdminPanel
from ussycode.api.auth_socket import AuthSocketServer
from ussycode.api.browser_login import BrowserLogin
from ussycode.api.exec import ExecEndpoint
from ussycode.api.forward_auth import ForwardAuth
from ussycode.auth.audit import DeniedRequestLog
from ussycode.auth.hosts import AUTH_PATH, parse_vm_host
from ussycode.config import Config
from ussycode.errors import RuntimeFailure
from ussycode.store import Store
from ussycode.store.audit import AuditLog

OPENAPI_DOCUMENT = Path(__file__).resolve().parent / "openapi" / "exec.json"

log = logging.getLogger(__name__)


class APIServer:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        exec_endpoint: ExecEndpoint | None = None,
        admin_panel: AdminPanel | None = None,
        denied: DeniedRequestLog | None = None,
        auth_socket: Path | None = None,
    ) -> None:
        """`auth_socket`, if given, is where `AuthSocketServer` serves forward auth for Caddy."""
        self.config = config
        self.store = store
        self.exec_endpoint = exec_endpoint
        self.admin_panel = admin_panel
        denied = denied or DeniedRequestLog(AuditLog(store))
        self.forward_auth = ForwardAuth(config=config, store=store, denied=denied)
        self.browser_login = BrowserLogin(config=config, store=store, denied=denied)
        self.auth_socket = None if auth_socket is None else AuthSocketServer(self.forward_auth, auth_socket)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/", self.index)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/__ussycode/tls-ask", self.tls_ask)
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_get(AUTH_PATH, self.forward_auth.handle)
        self.browser_login.add_routes(app)
        if self.exec_endpoint is not None:
            app.router.add_route("*", "/exec", self.exec_endpoint.handle)
        if self.admin_panel is not None:
            self.admin_panel.add_routes(app)
        return app

    async def start(self) -> None:
        host, port = self.config.api_addr
        self._runner = web.AppRunner(self.app(), access_log=None, max_field_size=32 * 1024)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host or None, port, reuse_address=True).start()
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot listen for the API on {host or '*'}:{port}: {exc.strerror}"
            ) from exc
        log.info("api listening on %s:%d", host or "*", port)
        if self.auth_socket is not None:
            await self.auth_socket.start()

    async def stop(self) -> None:
        if self.auth_socket is not None:
            await self.auth_socket.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def index(self, request: web.Request) -> web.Response:
        del request
        command = html.escape(self.config.ssh_command())
        domain = html.escape(self.config.domain)
        body = (
            "<!doctype html><html><head><meta charset='utf-8'><title>ussycode</title></head>"
            f"<body><h1>ussycode on {domain}</h1>"
            f"<p>Get a VM with a persistent disk and an HTTPS URL: <code>{command}</code></p>"
            "</body></html>"
        )
        return web.Response(text=body, content_type="text/html")

    async def openapi(self, request: web.Request) -> web.Response:
        """Serve the OpenAPI document of `/exec`, with this server's domain as its server URL."""
        del request
        document = json.loads(OPENAPI_DOCUMENT.read_text())
        port = self.config.https_addr[1]
        document["servers"] = [{"url": f"https://{self.config.domain}" + ("" if port == 443 else f":{port}")}]
        return web.json_response(document)

    async def health(self, request: web.Request) -> web.Response:
        del request
        return web.json_response({"ok": True})

    async def tls_ask(self, request: web.Request) -> web.Response:
        """Answer Caddy's on-demand TLS question: 200 for the domain and existing VMs' hosts.

        A VM's hosts are its own and those of its other ports (`<vm>--<port>.<domain>`).
        """
        host = request.query.get("domain", "").lower().rstrip(".")
        if host == self.config.domain:
            return web.Response(text="ok")
        target = parse_vm_host(host, self.config.domain)
        if target is not None and ":" not in host and self.store.find_vm(target.vm_name) is not None:
            return web.Response(text="ok")
        return web.Response(status=404, text="unknown host")
