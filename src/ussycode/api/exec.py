"""`POST /exec`: run one REPL command line with a token and return JSON.

Statuses: 200 success (the command's JSON), 401 missing or invalid token, 403 command not allowed
by the token, 404 unknown command, 405 not POST, 413 body over 64 KiB, 422 the command failed,
429 rate limited (with Retry-After), 504 the command ran over 30 s (it goes on in the
background). Errors use the body `{"error": {"code": ..., "message": ...}}`. For `ssh VM
COMMAND`, the command's exit status is also in the header `X-Ussycode-Exit-Status`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

from aiohttp import web

from ussycode.auth.api_tokens import TokenIdentity, TokenVerifier
from ussycode.auth.ratelimit import RateLimiter
from ussycode.auth.signed_tokens import InvalidToken
from ussycode.commands.base import CommandContext, Services
from ussycode.commands.dispatch import UnknownCommand, error_code, execute, find_command, split_line
from ussycode.errors import UssycodeError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
COMMAND_TIMEOUT_SECONDS = 30.0
EXIT_STATUS_HEADER = "X-Ussycode-Exit-Status"


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class _APITerminal:
    """The terminal of an API request: no prompts, progress only logged."""

    interactive = False

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id

    async def prompt(self, question: str) -> str | None:
        del question
        return None

    def progress(self, message: str) -> None:
        log.debug("api=%s progress: %s", self.request_id, message)


class ExecEndpoint:
    def __init__(self, services: Services, verifier: TokenVerifier, limiter: RateLimiter) -> None:
        self.services = services
        self.verifier = verifier
        self.limiter = limiter
        self._counter = 0
        self._background: set[asyncio.Task[Any]] = set()

    def _identify(self, request: web.Request) -> TokenIdentity:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken('missing token: send "Authorization: Bearer usy0…" or "Bearer usy1…"')
        identity = self.verifier.verify(token.strip())
        if identity.vm_scope is not None:
            raise InvalidToken(f'token is scoped to vm "{identity.vm_scope}" and cannot run commands')
        return identity

    async def handle(self, request: web.Request) -> web.Response:
        self._counter += 1
        request_id = f"a{self._counter}"
        if request.method != "POST":
            return error_response(
                405, "method_not_allowed", "use POST with the command line as the body", {"Allow": "POST"}
            )
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return error_response(413, "body_too_large", f"the body is limited to {MAX_BODY_BYTES} bytes")
        try:
            identity = self._identify(request)
        except InvalidToken as exc:
            log.info("api=%s rejected token from %s: %s", request_id, request.remote, exc.message)
            return error_response(401, "invalid_token", exc.message, {"WWW-Authenticate": "Bearer"})
        wait = self.limiter.acquire(identity.rate_key)
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            return error_response(
                429, "rate_limited", f"too many requests: retry in {retry} s", {"Retry-After": retry}
            )
        body = await request.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return error_response(413, "body_too_large", f"the body is limited to {MAX_BODY_BYTES} bytes")
        return await self._run(request_id, identity, body)

    async def _run(self, request_id: str, identity: TokenIdentity, body: bytes) -> web.Response:
        try:
            argv = split_line(body.decode("utf-8"))
        except UnicodeDecodeError:
            return error_response(422, "invalid_input", "the body must be UTF-8 text")
        except UssycodeError as exc:
            return error_response(422, "invalid_input", exc.message)
        if not argv:
            return error_response(422, "invalid_input", 'the body is empty: send a command line such as "ls"')
        try:
            command = find_command(argv[0])
        except UnknownCommand as exc:
            return error_response(404, "unknown_command", exc.message)
        permission = command.permission_name(argv)
        if not identity.permissions.allows(permission):
            allowed = ", ".join(identity.permissions.allowed_commands)
            return error_response(
                403, "forbidden", f'the token does not allow "{permission}"; it allows: {allowed}'
            )
        if "--json" not in argv:
            argv = [argv[0], "--json", *argv[1:]]
        ctx = CommandContext(self.services, identity.user, _APITerminal(request_id), conn_id=request_id)
        log.info(
            "api=%s user=%s token=%s command=%s",
            request_id,
            identity.user.handle,
            identity.description,
            permission,
        )
        task = asyncio.create_task(execute(ctx, argv))
        try:
            outcome = await asyncio.wait_for(asyncio.shield(task), COMMAND_TIMEOUT_SECONDS)
        except TimeoutError:
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            message = f'"{permission}" ran over {COMMAND_TIMEOUT_SECONDS:g} s; it goes on in the background'
            return error_response(504, "timeout", message)
        if outcome.error is not None:
            return error_response(422, error_code(outcome.error), outcome.error.message)
        headers = {}
        if command.name == "ssh":
            headers[EXIT_STATUS_HEADER] = str(outcome.status)
        return web.json_response(outcome.data, headers=headers, dumps=json.dumps)
