"""Per-tier limits on LLM use through platform keys: tokens per UTC day and requests per minute."""

from __future__ import annotations

from dataclasses import dataclass

from ussycode.auth.tiers import Tier
from ussycode.config import Config


@dataclass(frozen=True)
class LLMLimits:
    """Tokens (input plus output) per UTC day, and requests per minute, of one tier."""

    tokens_per_day: int
    requests_per_minute: int


def parse_llm_limits(text: str) -> LLMLimits:
    """Parse `tokens=200000,rpm=20`; both keys are required, and `tokens=0` allows no platform use.

    :raise ValueError: a key is missing, repeated or unknown, or a value is not a whole number.
    """
    values: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"expected KEY=VALUE, not {part.strip()!r}")
        if name not in ("tokens", "rpm"):
            raise ValueError(f"unknown key {name!r}: expected tokens and rpm")
        if name in values:
            raise ValueError(f"{name} is given twice")
        if not value.strip().isdigit():
            raise ValueError(f"{name} must be a whole number of 0 or more, not {value.strip()!r}")
        values[name] = int(value.strip())
    missing = [name for name in ("tokens", "rpm") if name not in values]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if values["rpm"] == 0:
        raise ValueError("rpm must be at least 1")
    return LLMLimits(tokens_per_day=values["tokens"], requests_per_minute=values["rpm"])


def llm_limits(config: Config, tier: Tier) -> LLMLimits:
    """Return the LLM limits that the settings give `tier`."""
    text: str = getattr(config, f"llm_tier_{tier.value}")
    return parse_llm_limits(text)
