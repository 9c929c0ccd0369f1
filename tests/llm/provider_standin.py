"""Stand-ins for an OpenAI-style and an Anthropic-style API, for tests of the LLM gateway.

    python -m tests.llm.provider_standin PORT LOG_FILE

Routes (the same app serves both styles):

- `POST /v1/chat/completions`: an OpenAI chat completion, or with `"stream": true` a server-sent
  event stream of three content chunks, then a usage chunk if `stream_options.include_usage` is
  set, then `data: [DONE]`.
- `POST /v1/messages`: an Anthropic message, or with `"stream": true` the event sequence
  message_start, content_block_delta (twice), message_delta, message_stop.
- `POST /v1/echo-key`: 401 with the received credentials in the error message, as a careless
  provider might send them; `?form=` escaped, gzip, header or chunks sends them in another form.

Each request is recorded (method, path, headers, JSON body) in `requests` and, in script mode,
as one JSON line in LOG_FILE. In-process, a stream sends its first chunk and then waits for the
`release` event before the rest, so a test can check that the first chunk got through alone.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

# Usage the stand-ins report: OpenAI counts, and Anthropic's with a cache read of 5 tokens.
OPENAI_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
ANTHROPIC_INPUT, ANTHROPIC_CACHE_READ, ANTHROPIC_OUTPUT = 25, 5, 17
FIRST_WORD = "Hello"


class Standin:
    def __init__(self, log_file: Path | None = None, *, gated: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.log_file = log_file
        self.release = asyncio.Event()
        if not gated:
            self.release.set()
        self.sent_last = False
        # Set by default; a test clears it to hold a stream before its final usage event.
        self.usage_release = asyncio.Event()
        self.usage_release.set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/echo-key", self.echo_key)
        app.router.add_get("/v1/models", self.models)
        return app

    async def _record(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"raw": raw.decode(errors="replace")}
        entry = {
            "method": request.method,
            "path": request.path_qs,
            "headers": {key.lower(): value for key, value in request.headers.items()},
            "body": body,
        }
        self.requests.append(entry)
        if self.log_file is not None:
            with self.log_file.open("a") as log:
                log.write(json.dumps(entry) + "\n")
        return body if isinstance(body, dict) else {}

    async def models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"object": "list", "data": [{"id": "standin-1", "object": "model"}]})

    async def echo_key(self, request: web.Request) -> web.StreamResponse:
        """Answer 401 with the received key, in the form that `?form=` names (plain by default)."""
        await self._record(request)
        received = request.headers.get("Authorization", "") + request.headers.get("x-api-key", "")
        message = f"Incorrect API key provided: {received}"
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
        form = request.query.get("form", "plain")
        if form == "escaped":
            # JSON encoders of some languages write / as \/.
            body = body.replace("/", "\\/")
        if form == "gzip":
            return web.Response(
                status=401,
                body=gzip.compress(body.encode()),
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        if form == "header":
            return web.json_response({"error": {"message": "no"}}, status=401, headers={"X-Debug": received})
        if form == "chunks":
            # A long body sent in pieces, with the key at the end.
            response = web.StreamResponse(status=401, headers={"Content-Type": "application/json"})
            await response.prepare(request)
            padding = json.dumps({"padding": "x" * 100_000, "error": {"message": message}})
            for start in range(0, len(padding), 4096):
                await response.write(padding[start : start + 4096].encode())
                await asyncio.sleep(0)
            await response.write_eof()
            return response
        return web.Response(status=401, text=body, content_type="application/json")

    async def _events(self, request: web.Request, events: list[bytes], usage_at: int) -> web.StreamResponse:
        """Send `events`, waiting for `release` after the first and for `usage_release` before
        the one at `usage_at`, which carries the final usage."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await response.write(events[0])
        await asyncio.wait_for(self.release.wait(), 30)
        for index, event in enumerate(events[1:], start=1):
            if index == usage_at:
                await asyncio.wait_for(self.usage_release.wait(), 30)
            await response.write(event)
        self.sent_last = True
        await response.write_eof()
        return response

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": FIRST_WORD}}],
                    "usage": OPENAI_USAGE,
                }
            )
        events = []
        for word in (FIRST_WORD, " from", " the stand-in"):
            chunk = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": word}}], "usage": None}
            events.append(f"data: {json.dumps(chunk)}\n\n".encode())
        usage_at = len(events)
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            last = {"id": "chatcmpl-1", "choices": [], "usage": OPENAI_USAGE}
            events.append(f"data: {json.dumps(last)}\n\n".encode())
        events.append(b"data: [DONE]\n\n")
        return await self._events(request, events, usage_at)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "text", "text": FIRST_WORD}],
                    "usage": {
                        "input_tokens": ANTHROPIC_INPUT,
                        "cache_read_input_tokens": ANTHROPIC_CACHE_READ,
                        "output_tokens": ANTHROPIC_OUTPUT,
                    },
                }
            )

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

        start_usage = {
            "input_tokens": ANTHROPIC_INPUT,
            "cache_read_input_tokens": ANTHROPIC_CACHE_READ,
            "output_tokens": 1,
        }
        events = [
            event("message_start", {"message": {"id": "msg_1", "role": "assistant", "usage": start_usage}}),
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": FIRST_WORD}}),
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": " there"}}),
            event(
                "message_delta",
                {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": ANTHROPIC_OUTPUT}},
            ),
            event("message_stop", {}),
        ]
        return await self._events(request, events, usage_at=3)


def main() -> None:
    port, log_file = int(sys.argv[1]), Path(sys.argv[2])
    web.run_app(Standin(log_file).app(), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
