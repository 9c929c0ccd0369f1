"""Error responses of the LLM gateway, in the body shape each provider's clients parse.

OpenAI-style clients read `{"error": {"message", "type", "param", "code"}}`; Anthropic clients
read `{"type": "error", "error": {"type", "message"}}`. The status code carries the class of
error in both, so SDKs raise their usual exceptions (429 for rate limits, 401 for keys).
"""

from __future__ import annotations

from aiohttp import web

from ussycode.llm.providers import ErrorStyle

# Our error kinds, with the `type` and `code` of OpenAI's shape and the `type` of Anthropic's.
_KINDS: dict[str, tuple[str, str, str]] = {
    "rate_limit": ("requests", "rate_limit_exceeded", "rate_limit_error"),
    "budget": ("insufficient_quota", "insufficient_quota", "rate_limit_error"),
    "no_key": ("invalid_request_error", "no_api_key", "authentication_error"),
    "forbidden": ("invalid_request_error", "permission_denied", "permission_error"),
    "not_found": ("invalid_request_error", "unknown_provider", "not_found_error"),
    "bad_path": ("invalid_request_error", "invalid_path", "invalid_request_error"),
    "too_large": ("invalid_request_error", "request_too_large", "request_too_large"),
    "upstream": ("api_error", "upstream_unavailable", "api_error"),
}


def error_response(
    style: ErrorStyle, status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Return an error of `kind` (a key of `_KINDS`) with `message`, shaped for `style`."""
    openai_type, openai_code, anthropic_type = _KINDS[kind]
    if style is ErrorStyle.ANTHROPIC:
        body: dict[str, object] = {"type": "error", "error": {"type": anthropic_type, "message": message}}
    else:
        body = {"error": {"message": message, "type": openai_type, "param": None, "code": openai_code}}
    return web.json_response(body, status=status, headers=headers)
