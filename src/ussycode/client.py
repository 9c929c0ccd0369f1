"""A small synchronous client for `POST /exec`.

from ussycode.client import Client
client = Client("https://ussy.localhost", token, cafile="/var/lib/ussycode/caddy/…/root.crt")
vms = client.exec("ls").data
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from ussycode.errors import UssycodeError

EXIT_STATUS_HEADER = "X-Ussycode-Exit-Status"


class APIError(UssycodeError):
    """The API returned an error status; `status` and `code` say which."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


@dataclass(frozen=True)
class ExecResult:
    """A successful command: its JSON `data`, and for `ssh VM COMMAND` the `exit_status`."""

    data: Any
    exit_status: int | None


class _LoopbackHTTPSHandler(urllib.request.HTTPSHandler):
    """Connects `*.localhost` hosts to 127.0.0.1, as curl and browsers do, keeping SNI and Host.

    glibc on Debian does not resolve names under localhost, and the default domain is one.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self.context = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        context = self.context

        class Connection(http.client.HTTPSConnection):
            def connect(self) -> None:
                sock = socket.create_connection(("127.0.0.1", self.port or 443), self.timeout)
                self.sock = context.wrap_socket(sock, server_hostname=self.host)

        return self.do_open(Connection, req)


def _is_loopback_name(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


class Client:
    def __init__(
        self, base_url: str, token: str, *, cafile: str | None = None, timeout: float = 60.0
    ) -> None:
        self.url = base_url.rstrip("/") + "/exec"
        self.token = token
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=cafile)
        handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=self.context)]
        if _is_loopback_name(urllib.parse.urlsplit(self.url).hostname or ""):
            handlers = [_LoopbackHTTPSHandler(self.context)]
        self.opener = urllib.request.build_opener(*handlers)

    def exec(self, command: str) -> ExecResult:
        """Run `command` (a REPL command line) and return its result.

        :raise APIError: the server returned an error status.
        :raise UssycodeError: the server could not be reached.
        """
        request = urllib.request.Request(
            self.url,
            data=command.encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "text/plain"},
        )
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                body = response.read()
                status_header = response.headers.get(EXIT_STATUS_HEADER)
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise UssycodeError(f"cannot reach {self.url}: {exc}") from exc
        exit_status = int(status_header) if status_header and status_header.lstrip("-").isdigit() else None
        return ExecResult(json.loads(body), exit_status)


def _api_error(exc: urllib.error.HTTPError) -> APIError:
    body = exc.read()
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {exc.code}: {body[:200].decode(errors='replace')}"
    retry = exc.headers.get("Retry-After")
    return APIError(exc.code, code, message, int(retry) if retry and retry.isdigit() else None)
