"""Token counts read from response bodies cut into pieces at any byte."""

from __future__ import annotations

import json

import pytest

from ussycode.llm.usage import MAX_EVENT_LINE_BYTES, MAX_JSON_BODY_BYTES, TokenCount, UsageMeter


def event(data: object, kind: str | None = None) -> bytes:
    prefix = f"event: {kind}\n" if kind else ""
    return f"{prefix}data: {json.dumps(data)}\n\n".encode()


OPENAI_STREAM = (
    event({"choices": [{"delta": {"content": "Hi"}}], "usage": None})
    + event({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}})
    + b"data: [DONE]\n\n"
)
ANTHROPIC_STREAM = (
    event(
        {
            "type": "message_start",
            "message": {
                "usage": {
                    "input_tokens": 100,
                    "cache_creation_input_tokens": 20,
                    "cache_read_input_tokens": 3,
                    "output_tokens": 1,
                }
            },
        },
        "message_start",
    )
    + event({"type": "content_block_delta", "delta": {"text": "x"}}, "content_block_delta")
    + event({"type": "message_delta", "usage": {"output_tokens": 55}}, "message_delta")
    + event({"type": "message_stop"}, "message_stop")
)
RESPONSES_STREAM = event(
    {"type": "response.completed", "response": {"usage": {"input_tokens": 8, "output_tokens": 4}}}
)


def meter_in_pieces(body: bytes, size: int, *, event_stream: bool) -> TokenCount:
    meter = UsageMeter(event_stream=event_stream)
    for start in range(0, len(body), size):
        meter.feed(body[start : start + size])
    return meter.finish()


@pytest.mark.parametrize("size", [1, 3, 7, 64, 100_000])
@pytest.mark.parametrize(
    ("body", "expected"),
    [(OPENAI_STREAM, (12, 30)), (ANTHROPIC_STREAM, (123, 55)), (RESPONSES_STREAM, (8, 4))],
)
def test_usage_stream_in_pieces(body: bytes, expected: tuple[int, int], size: int) -> None:
    count = meter_in_pieces(body, size, event_stream=True)
    assert (count.input_tokens, count.output_tokens) == expected
    assert count.seen


def test_usage_stream_crlf_and_no_final_newline() -> None:
    body = OPENAI_STREAM.replace(b"\n", b"\r\n").removesuffix(b"data: [DONE]\r\n\r\n").rstrip()
    count = meter_in_pieces(body, 5, event_stream=True)
    assert (count.input_tokens, count.output_tokens) == (12, 30)


@pytest.mark.parametrize("size", [1, 10, 10_000])
def test_usage_plain_json(size: int) -> None:
    body = json.dumps(
        {"id": "x", "usage": {"input_tokens": 5, "cache_read_input_tokens": 2, "output_tokens": 9}}
    )
    count = meter_in_pieces(body.encode(), size, event_stream=False)
    assert (count.input_tokens, count.output_tokens) == (7, 9)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"usage": "many"}',
        b'{"usage": {"prompt_tokens": -3, "completion_tokens": true}}',
    ],
)
def test_usage_malformed_counts_nothing(body: bytes) -> None:
    count = meter_in_pieces(body, 4, event_stream=False)
    assert count == TokenCount()
    count = meter_in_pieces(b"data: " + body + b"\n\n", 4, event_stream=True)
    assert count == TokenCount()


def test_usage_overlong_line_skipped() -> None:
    meter = UsageMeter(event_stream=True)
    meter.feed(b"data: " + b"x" * (MAX_EVENT_LINE_BYTES + 10))
    meter.feed(b"still the same line\n")
    meter.feed(event({"usage": {"prompt_tokens": 1, "completion_tokens": 2}}))
    count = meter.finish()
    assert (count.input_tokens, count.output_tokens) == (1, 2)


@pytest.mark.parametrize("size", [64 * 1024, 1024 * 1024])
def test_usage_plain_json_over_the_limit_still_counted(size: int) -> None:
    # A large response (such as many logprobs) must not use the platform budget for free: its
    # usage comes last, after what overflows the parse buffer.
    content = "x" * (MAX_JSON_BODY_BYTES + 10)
    body = json.dumps(
        {
            "choices": [{"message": {"content": content + ' "usage": {"prompt_tokens": 1}'}}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500_000},
        }
    )
    count = meter_in_pieces(body.encode(), size, event_stream=False)
    assert (count.input_tokens, count.output_tokens) == (1000, 500_000)
    cut = body[: body.rindex('"usage"') + 12]
    assert meter_in_pieces(cut.encode(), size, event_stream=False) == TokenCount()
