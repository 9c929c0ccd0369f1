"""The LLM gateway against provider stand-ins on loopback: key sources, streaming, usage, limits,
isolation between users, and keys kept out of responses and logs."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest

from tests.framework import openapi
from tests.llm.harness import ALICE_FP, ALICE_IP, BOB_IP, STRANGER_IP, Reply, Stack, gateway_stack
from tests.llm.provider_standin import (
    ANTHROPIC_CACHE_READ,
    ANTHROPIC_INPUT,
    ANTHROPIC_OUTPUT,
    FIRST_WORD,
    OPENAI_USAGE,
)
from ussycode.llm import gateway as gateway_module
from ussycode.llm.gateway import REDACTED
from ussycode.llm.keys import KeyVault
from ussycode.store.llm import LLMStore

ALICE_KEY = "sk-alice-own-0123456789abcdef"
PLATFORM_OPENAI = "sk-platform-openai-0123456789"
PLATFORM_ANTHROPIC = "sk-ant-platform-0123456789"
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
# What a VM's SDK sends: the placeholder from its environment, which must never reach a provider.
CLIENT_HEADERS = {"Authorization": "Bearer ussycode-gateway", "x-api-key": "ussycode-gateway"}


def openai_error(reply: Reply) -> dict[str, object]:
    """Return the error of an OpenAI-style gateway error reply, checked against the API document."""
    document = reply.json()
    openapi.validate("metadata.yaml", "OpenAIError", document)
    error: dict[str, object] = document["error"]
    return error


def anthropic_error(reply: Reply) -> dict[str, object]:
    document = reply.json()
    openapi.validate("metadata.yaml", "AnthropicError", document)
    error: dict[str, object] = document["error"]
    return error


def set_own_key(stack: Stack, user_id: int, provider: str, key: str) -> None:
    KeyVault.from_config(stack.store, stack.config).set(user_id, provider, key)


def usage_rows(stack: Stack, user_id: int) -> list[tuple[str, str, int, int, int]]:
    """Return the user's stored counters, after writing the gateway's unwritten ones."""
    stack.gateway.usage.flush()
    return [
        (row.provider, row.source, row.requests, row.input_tokens, row.output_tokens)
        for row in LLMStore(stack.store).usage(user_id)
    ]


def test_gateway_own_key_streams_in_pieces(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway_stack(tmp_path, gated=True) as stack:
            set_own_key(stack, stack.alice.id, "openai", ALICE_KEY)
            url = f"{stack.url}/gateway/llm/openai/v1/chat/completions"
            async with (
                stack.session(ALICE_IP) as client,
                client.post(url, json={**CHAT, "stream": True}, headers=CLIENT_HEADERS) as response,
            ):
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/event-stream")
                first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
                assert FIRST_WORD.encode() in first
                assert not stack.standin.sent_last
                stack.standin.release.set()
                rest = await asyncio.wait_for(response.content.read(), 10)
            assert stack.standin.sent_last
            assert rest.endswith(b"data: [DONE]\n\n")
            assert b'"total_tokens": 18' in rest

            seen = stack.standin.requests[-1]
            assert seen["path"] == "/v1/chat/completions"
            assert seen["headers"]["authorization"] == f"Bearer {ALICE_KEY}"
            assert "x-api-key" not in seen["headers"]
            assert seen["body"]["stream_options"] == {"include_usage": True}
            assert usage_rows(stack, stack.alice.id) == [
                ("openai", "own", 1, OPENAI_USAGE["prompt_tokens"], OPENAI_USAGE["completion_tokens"])
            ]

    asyncio.run(scenario())


def test_gateway_anthropic_stream_platform_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        environ = {"USSYCODE_LLM_ANTHROPIC_KEY": PLATFORM_ANTHROPIC}
        async with gateway_stack(tmp_path, environ, gated=True) as stack:
            url = f"{stack.url}/gateway/llm/anthropic/v1/messages"
            headers = {**CLIENT_HEADERS, "anthropic-version": "2023-06-01"}
            async with (
                stack.session(ALICE_IP) as client,
                client.post(url, json={**MESSAGE, "stream": True}, headers=headers) as response,
            ):
                assert response.status == 200
                first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
                assert b"message_start" in first
                assert not stack.standin.sent_last
                stack.standin.release.set()
                rest = await asyncio.wait_for(response.content.read(), 10)
            assert b"message_stop" in rest

            seen = stack.standin.requests[-1]
            assert seen["headers"]["x-api-key"] == PLATFORM_ANTHROPIC
            assert "authorization" not in seen["headers"]
            assert seen["headers"]["anthropic-version"] == "2023-06-01"
            assert usage_rows(stack, stack.alice.id) == [
                ("anthropic", "platform", 1, ANTHROPIC_INPUT + ANTHROPIC_CACHE_READ, ANTHROPIC_OUTPUT)
            ]

    asyncio.run(scenario())


def test_gateway_counts_plain_responses(tmp_path: Path) -> None:
    async def scenario() -> None:
        environ = {
            "USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI,
            "USSYCODE_LLM_ANTHROPIC_KEY": PLATFORM_ANTHROPIC,
        }
        async with gateway_stack(tmp_path, environ) as stack:
            for _ in range(2):
                reply = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
                assert reply.status == 200
                assert reply.json()["usage"] == OPENAI_USAGE
            reply = await stack.request(ALICE_IP, "anthropic", "v1/messages", MESSAGE)
            assert reply.status == 200
            models = await stack.request(ALICE_IP, "openai", "v1/models?limit=5", method="GET")
            assert models.status == 200
            assert stack.standin.requests[-1]["path"] == "/v1/models?limit=5"

            assert sorted(usage_rows(stack, stack.alice.id)) == [
                ("anthropic", "platform", 1, ANTHROPIC_INPUT + ANTHROPIC_CACHE_READ, ANTHROPIC_OUTPUT),
                ("openai", "platform", 3, 22, 14),
            ]
            assert usage_rows(stack, stack.bob.id) == []

    asyncio.run(scenario())


def test_gateway_budget_rejected_openai(tmp_path: Path) -> None:
    async def scenario() -> None:
        environ = {
            "USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI,
            "USSYCODE_LLM_TIER_NEWBIE": "tokens=10,rpm=100",
        }
        async with gateway_stack(tmp_path, environ) as stack:
            first = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
            assert first.status == 200
            refused = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
            assert refused.status == 429
            error = openai_error(refused)
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "insufficient_quota"
            assert error["code"] == "insufficient_quota"
            assert str(error["message"]).startswith("daily LLM budget used up: 18 of 10 tokens")
            assert "llm-key set openai -" in str(error["message"])
            assert len(stack.standin.requests) == 1

            # Bob's budget is his own, and alice's own key goes on without a budget.
            assert (await stack.request(BOB_IP, "openai", "v1/chat/completions", CHAT)).status == 200
            set_own_key(stack, stack.alice.id, "openai", ALICE_KEY)
            assert (await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)).status == 200
            assert stack.standin.requests[-1]["headers"]["authorization"] == f"Bearer {ALICE_KEY}"

    asyncio.run(scenario())


def test_gateway_budget_rejected_anthropic(tmp_path: Path) -> None:
    async def scenario() -> None:
        environ = {
            "USSYCODE_LLM_ANTHROPIC_KEY": PLATFORM_ANTHROPIC,
            "USSYCODE_LLM_TIER_NEWBIE": "tokens=0,rpm=100",
        }
        async with gateway_stack(tmp_path, environ) as stack:
            refused = await stack.request(ALICE_IP, "anthropic", "v1/messages", MESSAGE)
            assert refused.status == 429
            error = anthropic_error(refused)
            assert error["type"] == "rate_limit_error"
            assert str(error["message"]).startswith("daily LLM budget used up: 0 of 0 tokens")
            assert stack.standin.requests == []

    asyncio.run(scenario())


def test_gateway_rate_limit_rejected(tmp_path: Path) -> None:
    async def scenario() -> None:
        environ = {
            "USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI,
            "USSYCODE_LLM_ANTHROPIC_KEY": PLATFORM_ANTHROPIC,
            "USSYCODE_LLM_TIER_NEWBIE": "tokens=1000000,rpm=2",
        }
        async with gateway_stack(tmp_path, environ) as stack:
            for _ in range(2):
                assert (await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)).status == 200
            refused = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
            assert refused.status == 429
            assert int(refused.headers["Retry-After"]) >= 1
            error = openai_error(refused)
            assert error["code"] == "rate_limit_exceeded"
            assert error["type"] == "requests"
            assert str(error["message"]).startswith("rate limit of 2 LLM requests per minute reached")

            anthropic = await stack.request(ALICE_IP, "anthropic", "v1/messages", MESSAGE)
            assert anthropic.status == 429
            assert anthropic_error(anthropic)["type"] == "rate_limit_error"
            assert len(stack.standin.requests) == 2

            # The limit is per user: bob still gets through.
            assert (await stack.request(BOB_IP, "openai", "v1/chat/completions", CHAT)).status == 200

    asyncio.run(scenario())


def test_gateway_own_key_rate_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        environ = {"USSYCODE_LLM_OWN_KEY_RPM": "1", "USSYCODE_LLM_TIER_NEWBIE": "tokens=0,rpm=1"}
        async with gateway_stack(tmp_path, environ) as stack:
            set_own_key(stack, stack.alice.id, "openai", ALICE_KEY)
            assert (await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)).status == 200
            refused = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
            assert refused.status == 429
            assert "(own key)" in openai_error(refused)["message"]

    asyncio.run(scenario())


def test_gateway_vm_uses_only_its_owner_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway_stack(tmp_path) as stack:
            set_own_key(stack, stack.alice.id, "openai", ALICE_KEY)
            refused = await stack.request(
                BOB_IP, "openai", "v1/chat/completions", CHAT, headers=CLIENT_HEADERS
            )
            assert refused.status == 401
            assert openai_error(refused)["code"] == "no_api_key"
            assert stack.standin.requests == []

            # A VM cannot pick another user's key by sending one: client credentials are dropped.
            stolen = {"Authorization": f"Bearer {ALICE_KEY}"}
            refused = await stack.request(BOB_IP, "openai", "v1/chat/completions", CHAT, headers=stolen)
            assert refused.status == 401
            assert stack.standin.requests == []

            assert (await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)).status == 200
            assert stack.standin.requests[-1]["headers"]["authorization"] == f"Bearer {ALICE_KEY}"
            assert usage_rows(stack, stack.bob.id) == []

    asyncio.run(scenario())


def test_gateway_other_vm_uses_platform_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway_stack(tmp_path, {"USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI}) as stack:
            set_own_key(stack, stack.alice.id, "openai", ALICE_KEY)
            assert (await stack.request(BOB_IP, "openai", "v1/chat/completions", CHAT)).status == 200
            assert stack.standin.requests[-1]["headers"]["authorization"] == f"Bearer {PLATFORM_OPENAI}"
            assert (await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)).status == 200
            assert stack.standin.requests[-1]["headers"]["authorization"] == f"Bearer {ALICE_KEY}"

    asyncio.run(scenario())


def test_gateway_routussy_fallback(tmp_path: Path) -> None:
    async def scenario() -> None:
        environ = {"USSYCODE_ROUTUSSY_URL": "{standin}", "USSYCODE_LLM_ROUTUSSY": "yes"}
        async with gateway_stack(tmp_path, environ) as stack:
            reply = await stack.request(ALICE_IP, "openrouter", "v1/chat/completions", CHAT)
            assert reply.status == 200
            seen = stack.standin.requests[-1]
            assert seen["path"] == "/v1/chat/completions"
            assert seen["headers"]["authorization"] == f"Bearer ussycode-fp:{ALICE_FP}"
            assert usage_rows(stack, stack.alice.id) == [("openrouter", "routussy", 1, 11, 7)]

            # Routussy takes OpenAI-style requests only.
            anthropic = await stack.request(ALICE_IP, "anthropic", "v1/messages", MESSAGE)
            assert anthropic.status == 401
            assert anthropic_error(anthropic)["type"] == "authentication_error"

    asyncio.run(scenario())


def test_gateway_custom_endpoint(tmp_path: Path) -> None:
    async def scenario() -> None:
        environ = {
            "USSYCODE_LLM_ENDPOINTS": "ollama={standin},vllm={standin}",
            "USSYCODE_LLM_ENDPOINT_KEYS": "vllm=vllm-secret-key-123",
        }
        async with gateway_stack(tmp_path, environ) as stack:
            reply = await stack.request(ALICE_IP, "vllm", "v1/chat/completions", CHAT, headers=CLIENT_HEADERS)
            assert reply.status == 200
            assert stack.standin.requests[-1]["headers"]["authorization"] == "Bearer vllm-secret-key-123"

            # An endpoint without a platform key needs the user's own.
            refused = await stack.request(ALICE_IP, "ollama", "v1/chat/completions", CHAT)
            assert refused.status == 401
            set_own_key(stack, stack.alice.id, "ollama", "ollama-own-key")
            assert (await stack.request(ALICE_IP, "ollama", "v1/chat/completions", CHAT)).status == 200
            assert stack.standin.requests[-1]["headers"]["authorization"] == "Bearer ollama-own-key"

    asyncio.run(scenario())


def test_gateway_unknown_address_and_provider(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway_stack(tmp_path, {"USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI}) as stack:
            stranger = await stack.request(STRANGER_IP, "openai", "v1/chat/completions", CHAT)
            assert stranger.status == 403
            assert openai_error(stranger)["message"] == "this address belongs to no VM"
            stranger = await stack.request(STRANGER_IP, "anthropic", "v1/messages", MESSAGE)
            assert stranger.status == 403
            assert anthropic_error(stranger)["type"] == "permission_error"

            unknown = await stack.request(ALICE_IP, "gemini", "v1/chat/completions", CHAT)
            assert unknown.status == 404
            assert openai_error(unknown)["message"] == (
                "unknown LLM provider 'gemini': this gateway serves anthropic, fireworks, openai, openrouter"
            )
            assert stack.standin.requests == []

    asyncio.run(scenario())


def test_gateway_upstream_unreachable(tmp_path: Path) -> None:
    async def scenario() -> None:
        environ = {
            "USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI,
            "USSYCODE_LLM_ANTHROPIC_KEY": PLATFORM_ANTHROPIC,
            # Port 1 on loopback refuses connections.
            "USSYCODE_LLM_OPENAI_URL": "http://127.0.0.1:1",
            "USSYCODE_LLM_ANTHROPIC_URL": "http://127.0.0.1:1",
        }
        async with gateway_stack(tmp_path, environ) as stack:
            reply = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
            assert reply.status == 502
            error = openai_error(reply)
            assert error["code"] == "upstream_unavailable"
            assert str(error["message"]).startswith("cannot reach openai at http://127.0.0.1:1:")
            anthropic = await stack.request(ALICE_IP, "anthropic", "v1/messages", MESSAGE)
            assert anthropic.status == 502
            assert anthropic_error(anthropic)["type"] == "api_error"
            assert usage_rows(stack, stack.alice.id) == [
                ("anthropic", "platform", 1, 0, 0),
                ("openai", "platform", 1, 0, 0),
            ]

    asyncio.run(scenario())


def test_gateway_request_too_large(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway_stack(tmp_path, {"USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI}) as stack:
            big = {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * (33 * 1024 * 1024)}]}
            reply = await stack.request(ALICE_IP, "openai", "v1/chat/completions", big)
            assert reply.status == 413
            assert openai_error(reply)["code"] == "request_too_large"
            assert stack.standin.requests == []

    asyncio.run(scenario())


def test_gateway_keys_not_in_responses_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        environ = {
            "USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI,
            "USSYCODE_LLM_ANTHROPIC_KEY": PLATFORM_ANTHROPIC,
        }
        async with gateway_stack(tmp_path, environ) as stack:
            set_own_key(stack, stack.bob.id, "openai", ALICE_KEY)
            for ip, provider in [(ALICE_IP, "openai"), (ALICE_IP, "anthropic"), (BOB_IP, "openai")]:
                reply = await stack.request(ip, provider, "v1/echo-key", {})
                assert reply.status == 401
                message = reply.json()["error"]["message"]
                assert REDACTED in message
                for key in (PLATFORM_OPENAI, PLATFORM_ANTHROPIC, ALICE_KEY):
                    assert key not in message
            assert stack.standin.requests[0]["headers"]["authorization"] == f"Bearer {PLATFORM_OPENAI}"
            await stack.request(ALICE_IP, "openai", "v1/chat/completions", {**CHAT, "stream": True})

    asyncio.run(scenario())
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "llm POST provider=openai source=platform status=401" in logged
    for key in (PLATFORM_OPENAI, PLATFORM_ANTHROPIC, ALICE_KEY):
        assert key not in logged


def test_gateway_suspended_user_rejected(tmp_path: Path) -> None:
    async def scenario() -> None:
        from ussycode.store.trust import TrustStore

        async with gateway_stack(tmp_path, {"USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI}) as stack:
            TrustStore(stack.store).set_suspended(stack.alice.id, "newbie", suspended=True, reason="abuse")
            reply = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
            assert reply.status == 403
            assert openai_error(reply)["message"] == "user alice is suspended: abuse"
            assert stack.standin.requests == []

    asyncio.run(scenario())


def test_gateway_stream_options_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway_stack(tmp_path, {"USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI}) as stack:
            body = {**CHAT, "stream": True, "stream_options": {"include_usage": False, "other": 1}}
            reply = await stack.request(ALICE_IP, "openai", "v1/chat/completions", body)
            assert reply.status == 200
            assert stack.standin.requests[-1]["body"]["stream_options"] == {"include_usage": True, "other": 1}
            # A body that is not JSON is forwarded as it is.
            async with (
                stack.session(ALICE_IP) as client,
                client.post(f"{stack.url}/gateway/llm/openai/v1/chat/completions", data=b"not json") as resp,
            ):
                assert resp.status == 200
            assert stack.standin.requests[-1]["body"] == {"raw": "not json"}

    asyncio.run(scenario())


def test_gateway_error_body_shape(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway_stack(tmp_path) as stack:
            reply = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
            assert reply.status == 401
            assert reply.headers["Content-Type"].startswith("application/json")
            error = openai_error(reply)
            assert error["param"] is None
            assert "llm-key set openai -" in str(error["message"])
            anthropic = await stack.request(ALICE_IP, "anthropic", "v1/messages", MESSAGE)
            assert anthropic_error(anthropic)["type"] == "authentication_error"

    asyncio.run(scenario())


async def leave_mid_stream(stack: Stack, caplog: pytest.LogCaptureFixture, provider: str) -> None:
    """Read the first event of a stream from alice's VM and close; return once the gateway has
    noticed, with the stand-in holding the stream before its final usage event."""
    stack.standin.usage_release.clear()
    if provider == "openai":
        url, body, headers = f"{stack.url}/gateway/llm/openai/v1/chat/completions", CHAT, {}
    else:
        url, body = f"{stack.url}/gateway/llm/anthropic/v1/messages", MESSAGE
        headers = {"anthropic-version": "2023-06-01"}
    async with stack.session(ALICE_IP) as client:
        response = await client.post(url, json={**body, "stream": True}, headers=headers)
        await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
        response.close()
    stack.standin.release.set()
    for _ in range(200):
        if "client closed the stream" in caplog.text:
            break
        await asyncio.sleep(0.025)
    assert "client closed the stream" in caplog.text


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_gateway_client_leaves_mid_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, provider: str
) -> None:
    # A VM that leaves before the final usage event is still charged the provider's count.
    caplog.set_level(logging.INFO, logger="ussycode.llm.gateway")
    expected = {
        "openai": ("openai", "platform", 1, OPENAI_USAGE["prompt_tokens"], OPENAI_USAGE["completion_tokens"]),
        "anthropic": ("anthropic", "platform", 1, ANTHROPIC_INPUT + ANTHROPIC_CACHE_READ, ANTHROPIC_OUTPUT),
    }[provider]

    async def scenario() -> None:
        environ = {
            "USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI,
            "USSYCODE_LLM_ANTHROPIC_KEY": PLATFORM_ANTHROPIC,
        }
        async with gateway_stack(tmp_path, environ, gated=True) as stack:
            await leave_mid_stream(stack, caplog, provider)
            stack.standin.usage_release.set()
            for _ in range(200):
                if usage_rows(stack, stack.alice.id) == [expected]:
                    break
                await asyncio.sleep(0.025)
            assert usage_rows(stack, stack.alice.id) == [expected]

            # The gateway goes on serving.
            reply = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
            assert reply.status == 200

    asyncio.run(scenario())


def test_gateway_left_stream_without_usage_is_estimated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The final usage never comes within the drain time: an estimate is charged, not 0.
    caplog.set_level(logging.INFO, logger="ussycode.llm.gateway")
    monkeypatch.setattr(gateway_module, "DRAIN_SECONDS", 0.5)

    async def scenario() -> None:
        async with gateway_stack(tmp_path, {"USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI}, gated=True) as stack:
            await leave_mid_stream(stack, caplog, "openai")
            for _ in range(200):
                if usage_rows(stack, stack.alice.id):
                    break
                await asyncio.sleep(0.025)
            [(name, source, requests, input_tokens, output_tokens)] = usage_rows(stack, stack.alice.id)
            assert (name, source, requests) == ("openai", "platform", 1)
            assert input_tokens >= 10
            assert output_tokens >= 50

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "path",
    ["v1/../../admin", "..%2F..%2Fadmin", "%2e%2e/%2e%2e/admin", "v1/%2E/models", "v1/chat/.."],
)
def test_gateway_dot_segments_rejected(tmp_path: Path, path: str) -> None:
    # A base URL has a path (OpenRouter's /api): .. must not reach the host's other paths with
    # the platform key.
    async def scenario() -> None:
        environ = {
            "USSYCODE_LLM_OPENROUTER_URL": "{standin}/api",
            "USSYCODE_LLM_OPENROUTER_KEY": "sk-or-platform-1",
        }
        async with gateway_stack(tmp_path, environ) as stack:
            reply = await stack.raw_request(ALICE_IP, f"openrouter/{path}")
            assert reply.status == 400
            error = openai_error(reply)
            assert error["code"] == "invalid_path"
            assert "segments are not allowed" in str(error["message"])
            reply = await stack.raw_request(ALICE_IP, f"anthropic/{path}")
            assert reply.status == 400
            assert anthropic_error(reply)["type"] == "invalid_request_error"
            assert stack.standin.requests == []

    asyncio.run(scenario())


def test_gateway_encoded_query_stays_in_path(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway_stack(tmp_path, {"USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI}) as stack:
            reply = await stack.raw_request(ALICE_IP, "openai/v1/models%3Fx=1?after=a%20b", method="GET")
            assert reply.status == 404
            reply = await stack.raw_request(ALICE_IP, "openai/v1/models?after=a%20b", method="GET")
            assert reply.status == 200
            assert stack.standin.requests[-1]["path"] == "/v1/models?after=a%20b"

    asyncio.run(scenario())


@pytest.mark.parametrize("form", ["escaped", "gzip", "header", "chunks"])
def test_gateway_echoed_key_redacted(tmp_path: Path, form: str) -> None:
    # The key must be removed in whatever form the error echoes it: with / escaped as \/, in a
    # gzip body (the gateway asks for identity, a provider may ignore that), in a header, or at
    # the end of a body sent in many chunks, of which the gateway read only the first.
    key = "sk-plat/form+key-0123456789"

    async def scenario() -> None:
        async with gateway_stack(tmp_path, {"USSYCODE_LLM_OPENAI_KEY": key}) as stack:
            reply = await stack.request(ALICE_IP, "openai", f"v1/echo-key?form={form}", {})
            assert reply.status == 401
            seen = reply.body + json.dumps(reply.headers).encode()
            assert key.encode() not in seen
            assert key.replace("/", "\\/").encode() not in seen
            assert "Content-Encoding" not in reply.headers
            if form != "header":
                document = reply.json()
                assert document["error"]["message"] == f"Incorrect API key provided: Bearer {REDACTED}"
            else:
                assert reply.headers["X-Debug"] == f"Bearer {REDACTED}"

    asyncio.run(scenario())


async def open_stream(stack: Stack, client: aiohttp.ClientSession) -> aiohttp.ClientResponse:
    """Start a stream that the gated stand-in holds open after its first event."""
    url = f"{stack.url}/gateway/llm/openai/v1/chat/completions"
    response = await client.post(url, json={**CHAT, "stream": True})
    assert response.status == 200
    await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
    return response


def test_gateway_pool_wait_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Bob's stream holds the only upstream connection: alice gets a clear error, not a wait without end.
    monkeypatch.setattr(gateway_module, "MAX_UPSTREAM_CONNECTIONS", 1)
    monkeypatch.setattr(gateway_module, "CONNECT_TIMEOUT_SECONDS", 0.5)

    async def scenario() -> None:
        async with gateway_stack(tmp_path, {"USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI}, gated=True) as stack:
            async with stack.session(BOB_IP) as client:
                stream = await open_stream(stack, client)
                reply = await asyncio.wait_for(
                    stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT), 10
                )
                assert reply.status == 503
                error = openai_error(reply)
                assert "connections are all in use" in str(error["message"])
                stack.standin.release.set()
                await asyncio.wait_for(stream.read(), 10)
            reply = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
            assert reply.status == 200

    asyncio.run(scenario())


def test_gateway_open_requests_per_user_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_module, "MAX_USER_UPSTREAM_REQUESTS", 2)

    async def scenario() -> None:
        environ = {
            "USSYCODE_LLM_OPENAI_KEY": PLATFORM_OPENAI,
            "USSYCODE_LLM_ANTHROPIC_KEY": PLATFORM_ANTHROPIC,
        }
        async with gateway_stack(tmp_path, environ, gated=True) as stack:
            async with stack.session(ALICE_IP) as client:
                streams = [await open_stream(stack, client) for _ in range(2)]
                headers = {"anthropic-version": "2023-06-01"}
                reply = await stack.request(ALICE_IP, "anthropic", "v1/messages", MESSAGE, headers=headers)
                assert reply.status == 429
                error = anthropic_error(reply)
                assert error["type"] == "rate_limit_error"
                assert "2 LLM requests of user alice are open already" in str(error["message"])
                reply = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
                assert reply.status == 429
                assert openai_error(reply)["code"] == "rate_limit_exceeded"
                # Other users are not held up.
                reply = await stack.request(BOB_IP, "openai", "v1/chat/completions", CHAT)
                assert reply.status == 200
                stack.standin.release.set()
                for stream in streams:
                    await asyncio.wait_for(stream.read(), 10)
            reply = await stack.request(ALICE_IP, "openai", "v1/chat/completions", CHAT)
            assert reply.status == 200

    asyncio.run(scenario())
