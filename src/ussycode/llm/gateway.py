"""Forward a VM's LLM requests to the provider with its owner's credentials, and meter them.

`/gateway/llm/<provider>/<path>` on the metadata service goes to `<provider base URL>/<path>`.
The calling VM is identified by its source address, and only its owner's key and budget are
used. Keys are chosen in this order:

1. `own`: the owner's key from `llm-key set`. No token budget applies; requests are limited to
   `--llm-own-key-rpm` per minute, to protect the gateway itself.
2. `platform`: the operator's key for the provider, while the owner's tokens of the UTC day
   are under their tier's budget, and at their tier's requests per minute.
3. `routussy`: with `--llm-routussy yes`, OpenAI-style requests go to Routussy with the owner's
   key fingerprint as the bearer token, at their tier's requests per minute. Routussy bills.

A user has at most `MAX_USER_UPSTREAM_REQUESTS` requests open at once, and a request that gets
no upstream connection within `CONNECT_TIMEOUT_SECONDS` fails with 503, so that one user's
streams cannot hold every connection of the shared pool while others wait.

Client auth headers are removed before forwarding, so nothing a VM sends reaches the provider
as a credential, and no key is logged or sent back. Response bodies stream through chunk by
chunk while their usage fields are read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ussycode.auth.ratelimit import RateLimiter
from ussycode.config import Config
from ussycode.errors import UssycodeError
from ussycode.llm.errors import error_response
from ussycode.llm.keys import KeyVault
from ussycode.llm.ledger import UsageLedger
from ussycode.llm.limits import llm_limits
from ussycode.llm.providers import ErrorStyle, Provider, providers
from ussycode.llm.usage import UsageMeter
from ussycode.quota import standing
from ussycode.store import VM, Store, User
from ussycode.store.llm import LLMStore

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 32 * 1024 * 1024
# Error bodies are read whole (up to this size) so a key echoed in them can be removed.
MAX_ERROR_BODY_BYTES = 1024 * 1024
# Bounds both the wait for a free connection of the shared pool and the TCP and TLS connect.
CONNECT_TIMEOUT_SECONDS = 15.0
# A model may think for minutes before its first token.
READ_TIMEOUT_SECONDS = 600.0
REDACTED = "[redacted]"
# Upstream connections open at once, over all VMs. A stream uses one for its whole length.
MAX_UPSTREAM_CONNECTIONS = 512
# Upstream requests open at once for one user, over all their VMs, so that one user cannot take
# all of the connections above.
MAX_USER_UPSTREAM_REQUESTS = 8
# When a VM leaves in the middle of a stream, the rest is read (not forwarded) for up to this
# long and this many bytes, so the usage in its last event is counted.
DRAIN_SECONDS = 60.0
MAX_DRAIN_BYTES = 4 * 1024 * 1024
# Bytes per token of the estimate charged when a left stream's usage never arrives.
BYTES_PER_TOKEN = 4

# Request headers never forwarded: credentials the VM may send, hop-by-hop headers, and headers
# that aiohttp sets itself.
DROPPED_REQUEST_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "openai-organization",
        "openai-project",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "set-cookie",
        "openai-organization",
    }
)


@dataclass(frozen=True)
class Route:
    """The destination of one request: base URL, key, and the key source that selects counters and limits."""

    source: str
    base_url: str
    key: str
    requests_per_minute: int


class Rejection(Exception):
    """A request that the gateway rejects itself, with an error in the provider's format."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers


def utc_day() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


class LLMGateway:
    """The `/gateway/llm/` handler of the metadata service."""

    def __init__(self, *, config: Config, store: Store, vm_for: Callable[[web.Request], VM | None]) -> None:
        self.config = config
        self.store = store
        self.vm_for = vm_for
        self.providers = providers(config)
        self.usage = UsageLedger(LLMStore(store))
        self._vault: KeyVault | None = None
        self._limiters: dict[int, RateLimiter] = {}
        self._session: aiohttp.ClientSession | None = None
        # Upstream requests open now, by user id.
        self._open: dict[int, int] = {}

    @property
    def vault(self) -> KeyVault:
        if self._vault is None:
            self._vault = KeyVault.from_config(self.store, self.config)
        return self._vault

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/gateway/llm/{provider}/{path:.*}", self.handle)

    async def close(self) -> None:
        self.usage.flush()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=CONNECT_TIMEOUT_SECONDS,
                sock_connect=CONNECT_TIMEOUT_SECONDS,
                sock_read=READ_TIMEOUT_SECONDS,
            )
            connector = aiohttp.TCPConnector(limit=MAX_UPSTREAM_CONNECTIONS)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        return self._session

    # Handler.

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["provider"]
        provider = self.providers.get(name)
        style = provider.style if provider is not None else ErrorStyle.OPENAI
        if provider is None:
            known = ", ".join(sorted(self.providers))
            return error_response(
                style, 404, "not_found", f"unknown LLM provider {name!r}: this gateway serves {known}"
            )
        path = request.match_info["path"]
        if any(segment in (".", "..") for segment in path.split("/")):
            # Dot segments would leave the base URL's path, such as /api of OpenRouter, and reach
            # other paths of the host with the platform key.
            log.info("llm provider=%s rejected path %r from %s: dot segment", name, path, request.remote)
            return error_response(
                style, 400, "bad_path", f"invalid API path {path!r}: . and .. segments are not allowed"
            )
        vm = self.vm_for(request)
        if vm is None:
            log.warning("llm gateway request from unknown address %s", request.remote)
            return error_response(style, 403, "forbidden", "this address belongs to no VM")
        owner = self.store.get_user(vm.owner_id)
        try:
            route = self._route(provider, owner)
            body = await self._read_body(request)
            self._check_open(owner)
        except Rejection as rejection:
            log.info(
                "vm=%s user=%s llm provider=%s rejected: %s", vm.name, owner.handle, name, rejection.message
            )
            return error_response(
                style, rejection.status, rejection.kind, rejection.message, rejection.headers
            )
        body = self._with_stream_usage(provider, request.match_info["path"], body)
        self._open[owner.id] = self._open.get(owner.id, 0) + 1
        try:
            return await self._forward(request, vm=vm, owner=owner, provider=provider, route=route, body=body)
        finally:
            self._open[owner.id] -= 1
            if not self._open[owner.id]:
                del self._open[owner.id]

    def _check_open(self, owner: User) -> None:
        """:raise Rejection: the owner has `MAX_USER_UPSTREAM_REQUESTS` requests open already."""
        if self._open.get(owner.id, 0) >= MAX_USER_UPSTREAM_REQUESTS:
            raise Rejection(
                429,
                "rate_limit",
                f"{MAX_USER_UPSTREAM_REQUESTS} LLM requests of user {owner.handle} are open already, the"
                " most allowed at once: wait for one to end, then retry",
                {"Retry-After": "1"},
            )

    # Choosing the key, and the limits that go with it.

    def _route(self, provider: Provider, owner: User) -> Route:
        """Return where the request goes, after the owner's limits allow it.

        :raise Rejection: the owner is suspended, over a limit, or has no key for the provider.
        """
        user_standing = standing(self.store, self.config, owner)
        if user_standing.suspended:
            reason = user_standing.suspended_why
            raise Rejection(403, "forbidden", f"user {owner.handle} is suspended: {reason}")
        try:
            own_key = self.vault.get(owner.id, provider.name)
        except UssycodeError as exc:
            raise Rejection(401, "no_key", exc.message) from exc
        if own_key is not None:
            route = Route("own", provider.base_url, own_key, self.config.llm_own_key_rpm)
            self._check_rate(owner, route)
            return route

        limits = llm_limits(self.config, user_standing.tier)
        if provider.platform_key:
            # NOTE: tokens are known only when a response ends, so requests running at once all
            # pass this check and may together go over the budget by their size.
            used = self.usage.budget_tokens_used(owner.id, utc_day())
            if used >= limits.tokens_per_day:
                raise Rejection(
                    429,
                    "budget",
                    f"daily LLM budget used up: {used} of {limits.tokens_per_day} tokens on platform keys"
                    f" today (tier {user_standing.tier}); it resets at 00:00 UTC. To go on now, add your"
                    f" own key: {self.config.ssh_command()} llm-key set {provider.name} -",
                )
            route = Route("platform", provider.base_url, provider.platform_key, limits.requests_per_minute)
            self._check_rate(owner, route)
            return route

        if self.config.llm_routussy and provider.style is ErrorStyle.OPENAI:
            keys = self.store.list_keys(owner.id)
            if keys:
                route = Route(
                    "routussy",
                    self.config.routussy_url,
                    f"ussycode-fp:{keys[0].fingerprint}",
                    limits.requests_per_minute,
                )
                self._check_rate(owner, route)
                return route

        raise Rejection(
            401,
            "no_key",
            f"no API key for {provider.name}: the platform has none, so add your own with"
            f" `{self.config.ssh_command()} llm-key set {provider.name} -` (it reads the key from stdin)",
        )

    def _check_rate(self, owner: User, route: Route) -> None:
        rpm = route.requests_per_minute
        limiter = self._limiters.get(rpm)
        if limiter is None:
            limiter = self._limiters[rpm] = RateLimiter(rpm / 60.0, float(rpm))
        wait = limiter.acquire(f"{owner.id}:{route.source}")
        if wait > 0:
            seconds = math.ceil(wait)
            raise Rejection(
                429,
                "rate_limit",
                f"rate limit of {rpm} LLM requests per minute reached ({route.source} key):"
                f" retry in {seconds} s",
                {"Retry-After": str(seconds)},
            )

    # The request.

    async def _read_body(self, request: web.Request) -> bytes:
        """Read the request body; it is forwarded whole, so its size is capped.

        :raise Rejection: the body is over `MAX_REQUEST_BYTES`.
        """
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                raise Rejection(
                    413,
                    "too_large",
                    f"request body over {MAX_REQUEST_BYTES // (1024 * 1024)} MiB: send less context",
                )
        return bytes(body)

    @staticmethod
    def _with_stream_usage(provider: Provider, path: str, body: bytes) -> bytes:
        """Ask an OpenAI-style stream for its usage in the last chunk, which is where it is counted.

        The client then also receives that chunk, whose `choices` list is empty, as OpenAI
        documents for `stream_options.include_usage`.
        """
        if provider.style is not ErrorStyle.OPENAI or not path.endswith("completions") or not body:
            return body
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body
        if not isinstance(document, dict) or document.get("stream") is not True:
            return body
        options = document.get("stream_options")
        document["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return json.dumps(document).encode()

    def _headers(self, request: web.Request, provider: Provider, route: Route) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for key, value in request.headers.items():
            if key.lower() not in DROPPED_REQUEST_HEADERS:
                headers.add(key, value)
        headers["Accept-Encoding"] = "identity"
        headers.update(provider.auth_headers(route.key))
        return headers

    async def _forward(
        self, request: web.Request, *, vm: VM, owner: User, provider: Provider, route: Route, body: bytes
    ) -> web.StreamResponse:
        # The path arrives decoded: quote it again, so that an encoded ? or # stays in the path.
        path = quote(request.match_info["path"], safe="/:@!$&'()*+,;=~")
        query = request.rel_url.raw_query_string
        url = URL(f"{route.base_url}/{path}" + (f"?{query}" if query else ""), encoded=True)
        day = utc_day()
        meter: UsageMeter | None = None
        # The meter of a stream that the VM left and whose end was not read: it is charged an estimate.
        unfinished: UsageMeter | None = None
        status = 0
        try:
            async with self._client().request(
                request.method,
                url,
                headers=self._headers(request, provider, route),
                data=body or None,
                allow_redirects=False,
            ) as upstream:
                status = upstream.status
                if upstream.status >= 400:
                    return await self._error_passthrough(upstream, route)
                content_type = upstream.headers.get("Content-Type", "")
                meter = UsageMeter(event_stream=content_type.startswith("text/event-stream"))
                response = web.StreamResponse(status=upstream.status)
                for key, value in upstream.headers.items():
                    if key.lower() not in DROPPED_RESPONSE_HEADERS:
                        response.headers.add(key, value)
                await response.prepare(request)
                try:
                    async for chunk in upstream.content.iter_any():
                        meter.feed(chunk)
                        await response.write(chunk)
                except ConnectionResetError:
                    # aiohttp's ClientConnectionResetError: the VM closed the connection mid-stream.
                    log.info(
                        "vm=%s user=%s llm provider=%s client closed the stream; reading its usage",
                        vm.name,
                        owner.handle,
                        provider.name,
                    )
                    if not await self._drain(upstream, meter):
                        unfinished = meter
                    return response
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            if status:
                # The stream broke after it began; the client sees the connection end.
                log.warning(
                    "vm=%s user=%s llm provider=%s stream from upstream failed: %s",
                    vm.name,
                    owner.handle,
                    provider.name,
                    type(exc).__name__,
                )
                raise
            log.warning(
                "vm=%s user=%s llm provider=%s upstream unreachable: %s",
                vm.name,
                owner.handle,
                provider.name,
                type(exc).__name__,
            )
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                return error_response(
                    provider.style,
                    503,
                    "upstream",
                    f"no connection to {provider.name} at {route.base_url} within"
                    f" {CONNECT_TIMEOUT_SECONDS:g} s: the provider is slow to answer, or the gateway's"
                    " connections are all in use; try again later",
                    {"Retry-After": "5"},
                )
            return error_response(
                provider.style,
                502,
                "upstream",
                f"cannot reach {provider.name} at {route.base_url}: {type(exc).__name__}; try again later",
            )
        finally:
            tokens = meter.finish() if meter is not None else None
            if tokens is not None and unfinished is not None:
                # NOTE: an estimate, since the provider's usage never came: a token per
                # `BYTES_PER_TOKEN` bytes of the request and of the response read, or the counts
                # seen so far where larger.
                tokens.input_tokens = max(tokens.input_tokens, len(body) // BYTES_PER_TOKEN)
                tokens.output_tokens = max(tokens.output_tokens, unfinished.bytes_read // BYTES_PER_TOKEN)
            self.usage.add(
                owner.id,
                provider.name,
                day,
                route.source,
                input_tokens=tokens.input_tokens if tokens else 0,
                output_tokens=tokens.output_tokens if tokens else 0,
            )
            log.info(
                "vm=%s user=%s llm %s provider=%s source=%s status=%s tokens_in=%d tokens_out=%d",
                vm.name,
                owner.handle,
                request.method,
                provider.name,
                route.source,
                status or "-",
                tokens.input_tokens if tokens else 0,
                tokens.output_tokens if tokens else 0,
            )

    @staticmethod
    async def _drain(upstream: aiohttp.ClientResponse, meter: UsageMeter) -> bool:
        """Read the rest of a stream that the VM left into `meter`, without forwarding it.

        Return whether it ended within `DRAIN_SECONDS` and `MAX_DRAIN_BYTES`.
        """
        drained = 0
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                async for chunk in upstream.content.iter_any():
                    meter.feed(chunk)
                    drained += len(chunk)
                    if drained > MAX_DRAIN_BYTES:
                        return False
        except (aiohttp.ClientError, TimeoutError):
            return False
        return True

    async def _error_passthrough(self, upstream: aiohttp.ClientResponse, route: Route) -> web.Response:
        """Return the provider's error response with the key removed, should the body or a header echo it."""
        body = bytearray()
        # `read(n)` returns the first chunk only, so read until the end or the limit.
        async for chunk in upstream.content.iter_any():
            body += chunk
            if len(body) >= MAX_ERROR_BODY_BYTES:
                break
        plain = _decoded(bytes(body[:MAX_ERROR_BODY_BYTES]), upstream.headers.get("Content-Encoding", ""))
        secrets = {route.key, route.key.replace("/", "\\/")}
        headers = {}
        for key, value in upstream.headers.items():
            if key.lower() not in DROPPED_RESPONSE_HEADERS:
                headers[key] = _redacted(value, secrets)
        return web.Response(status=upstream.status, body=_redacted_bytes(plain, secrets), headers=headers)


def _redacted(text: str, secrets: set[str]) -> str:
    """Return `text` with each of `secrets` replaced by `REDACTED`."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def _redacted_bytes(body: bytes, secrets: set[str]) -> bytes:
    """Return `body` with each of `secrets` replaced by `REDACTED`."""
    for secret in secrets:
        body = body.replace(secret.encode(), REDACTED.encode())
    return body


def _decoded(body: bytes, encoding: str) -> bytes:
    """Return an error body without its content encoding, which the gateway does not forward.

    A provider may compress although the gateway requests identity, and a compressed body would
    hide an echoed key from `_redacted_bytes`.
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip", "deflate"):
        try:
            # wbits 47 reads both gzip and zlib headers.
            return zlib.decompressobj(wbits=47).decompress(body, MAX_ERROR_BODY_BYTES)
        except zlib.error:
            pass
    return f"(the provider's error body in encoding {encoding!r} was removed)".encode()
