"""Token counts read from provider responses while they pass through, streamed or not.

OpenAI-style APIs put `usage` with `prompt_tokens`/`completion_tokens` (chat completions) or
`input_tokens`/`output_tokens` (responses, where stream events nest it under `response`) in the
body, or in the last chunk of a stream when `stream_options.include_usage` is set. Anthropic
puts `usage` in a message and in the `message_start` event, and cumulative counts in each
`message_delta` event. Its `input_tokens` exclude cache reads and writes, so those are added here.
Every count is cumulative, so a later value replaces an earlier one.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

MAX_JSON_BODY_BYTES = 16 * 1024 * 1024
MAX_EVENT_LINE_BYTES = 4 * 1024 * 1024
# The end of a body over `MAX_JSON_BODY_BYTES` that is kept to find its `usage`, which providers
# put last (such as after a large `logprobs` list).
TAIL_BYTES = 64 * 1024
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*')
INPUT_FIELDS = ("prompt_tokens", "input_tokens")
CACHE_FIELDS = ("cache_creation_input_tokens", "cache_read_input_tokens")
OUTPUT_FIELDS = ("completion_tokens", "output_tokens")


@dataclass
class TokenCount:
    input_tokens: int = 0
    output_tokens: int = 0
    seen: bool = False

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def apply_usage(count: TokenCount, usage: Any) -> None:
    """Copy the counts present in one `usage` object into `count`."""
    if not isinstance(usage, dict):
        return
    inputs = [_count(usage.get(name)) for name in INPUT_FIELDS]
    input_tokens = next((value for value in inputs if value is not None), None)
    if input_tokens is not None:
        cached = sum(_count(usage.get(name)) or 0 for name in CACHE_FIELDS)
        count.input_tokens = input_tokens + cached
        count.seen = True
    outputs = [_count(usage.get(name)) for name in OUTPUT_FIELDS]
    output_tokens = next((value for value in outputs if value is not None), None)
    if output_tokens is not None:
        count.output_tokens = output_tokens
        count.seen = True


def apply_document(count: TokenCount, document: Any) -> None:
    """Read the usage of one JSON body or stream event into `count`."""
    if not isinstance(document, dict):
        return
    apply_usage(count, document.get("usage"))
    for nested in ("message", "response"):
        inner = document.get(nested)
        if isinstance(inner, dict):
            apply_usage(count, inner.get("usage"))


class UsageMeter:
    """Reads token counts from a response body fed to it in arbitrary pieces.

    A server-sent event stream is parsed line by line as it arrives. Any other body is kept, up
    to `MAX_JSON_BODY_BYTES`, and parsed as JSON at the end. Of a larger body only the last
    `TAIL_BYTES` are kept, and its last `usage` object is read. Malformed data only means no count.
    """

    def __init__(self, *, event_stream: bool) -> None:
        self.event_stream = event_stream
        self.count = TokenCount()
        self._buffer = bytearray()
        self._overflow = False
        self.bytes_read = 0

    def feed(self, chunk: bytes) -> None:
        self.bytes_read += len(chunk)
        if self._overflow and not self.event_stream:
            self._buffer += chunk
            del self._buffer[:-TAIL_BYTES]
            return
        if self._overflow:
            if self.event_stream and b"\n" in chunk:
                # Resume at the next line after a line that was too long.
                self._overflow = False
                chunk = chunk[chunk.rindex(b"\n") + 1 :]
            else:
                return
        self._buffer += chunk
        if not self.event_stream:
            if len(self._buffer) > MAX_JSON_BODY_BYTES:
                del self._buffer[:-TAIL_BYTES]
                self._overflow = True
            return
        *lines, rest = self._buffer.split(b"\n")
        for line in lines:
            self._read_line(bytes(line))
        self._buffer = bytearray(rest)
        if len(self._buffer) > MAX_EVENT_LINE_BYTES:
            self._buffer.clear()
            self._overflow = True

    def finish(self) -> TokenCount:
        """Parse what is left and return the counts."""
        if self._overflow:
            if not self.event_stream:
                self._read_tail(bytes(self._buffer))
            self._buffer.clear()
            return self.count
        if self.event_stream:
            self._read_line(bytes(self._buffer))
        elif self._buffer:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                apply_document(self.count, json.loads(self._buffer))
        self._buffer.clear()
        return self.count

    def _read_tail(self, tail: bytes) -> None:
        """Read the last `"usage": {...}` of a body too large to parse whole."""
        matches = list(_USAGE_KEY.finditer(tail))
        if not matches:
            return
        text = tail[matches[-1].end() :].decode(errors="replace")
        with contextlib.suppress(ValueError):
            usage, _ = json.JSONDecoder().raw_decode(text)
            apply_usage(self.count, usage)

    def _read_line(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if not line.startswith(b"data:"):
            return
        data = line[len(b"data:") :].strip()
        if not data.startswith(b"{"):
            return
        try:
            apply_document(self.count, json.loads(data))
        except (ValueError, UnicodeDecodeError):
            return
