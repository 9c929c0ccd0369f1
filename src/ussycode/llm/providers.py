"""The providers that the LLM gateway forwards to, and how each one takes its key.

A request to `/gateway/llm/<provider>/<path>` goes to `<base URL>/<path>`. The base URLs are
chosen so that `<path>` starts with `v1/` for every provider, as the SDKs expect of a base URL
ending in `/v1` (the Anthropic SDK adds `/v1` itself).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ussycode.config import Config


class ErrorStyle(enum.StrEnum):
    """The shape of error bodies that a provider's clients expect."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


BUILTIN_PROVIDERS = ("openai", "anthropic", "fireworks", "openrouter")


@dataclass(frozen=True)
class Provider:
    """One upstream API: its name in gateway paths, base URL, auth header and platform key."""

    name: str
    base_url: str
    style: ErrorStyle
    platform_key: str = field(default="", repr=False)

    def auth_headers(self, key: str) -> dict[str, str]:
        """Return the headers that carry `key` to this provider."""
        if self.style is ErrorStyle.ANTHROPIC:
            return {"x-api-key": key}
        return {"Authorization": f"Bearer {key}"}


def providers(config: Config) -> dict[str, Provider]:
    """Return every provider the settings define, by name: the built-in four, then `--llm-endpoints`."""
    found = {
        "openai": Provider("openai", config.llm_openai_url, ErrorStyle.OPENAI, config.llm_openai_key),
        "anthropic": Provider(
            "anthropic", config.llm_anthropic_url, ErrorStyle.ANTHROPIC, config.llm_anthropic_key
        ),
        "fireworks": Provider(
            "fireworks", config.llm_fireworks_url, ErrorStyle.OPENAI, config.llm_fireworks_key
        ),
        "openrouter": Provider(
            "openrouter", config.llm_openrouter_url, ErrorStyle.OPENAI, config.llm_openrouter_key
        ),
    }
    keys = dict(config.llm_endpoint_keys)
    for name, url in config.llm_endpoints:
        found[name] = Provider(name, url, ErrorStyle.OPENAI, keys.get(name, ""))
    return found
