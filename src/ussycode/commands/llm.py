"""LLM commands: llm-key (your own provider keys) and llm-usage (requests and tokens per day)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from ussycode.commands.base import (
    ArgumentParser,
    Command,
    CommandContext,
    CommandResult,
    InputTerminal,
    add_subcommand,
    add_subcommands,
)
from ussycode.commands.render import table
from ussycode.config import PROVIDER_NAME_RE
from ussycode.errors import InvalidInput, NotFound
from ussycode.llm.keys import MAX_KEY_CHARS, KeyVault
from ussycode.llm.limits import llm_limits
from ussycode.llm.providers import providers
from ussycode.quota import user_tier
from ussycode.store.llm import LLMStore

KEY_HINT = "paste the key, then a line with a single ."
DEFAULT_USAGE_DAYS = 7
MAX_USAGE_DAYS = 366


def _provider_name(ctx: CommandContext, name: str) -> str:
    """:raise NotFound: the gateway serves no provider called `name`."""
    known = providers(ctx.services.config)
    if name not in known:
        # A key given in the provider's place (the arguments swapped) must not reach the error,
        # which is logged: only a word that could be a provider name is shown.
        shown = (
            repr(name) if not name or PROVIDER_NAME_RE.fullmatch(name) else "(not shown: it looks like a key)"
        )
        raise NotFound(
            f"unknown LLM provider {shown}: expected one of {', '.join(sorted(known))};"
            " the provider comes first, as in llm-key set openai -"
        )
    return name


def _llm_key_arguments(parser: ArgumentParser) -> None:
    actions = add_subcommands(parser)
    set_key = add_subcommand(actions, "set", "store your own key for a provider, encrypted")
    set_key.add_argument("provider", metavar="PROVIDER", help="openai, anthropic, fireworks, openrouter, …")
    set_key.add_argument(
        "key", metavar="KEY|-", help="the API key, or - to read it from stdin (keeps it out of shell history)"
    )
    add_subcommand(actions, "list", "list your stored keys, masked")
    remove = add_subcommand(actions, "remove", "delete your key for a provider")
    remove.add_argument("provider", metavar="PROVIDER", help="the provider whose key to delete")


async def _read_key(ctx: CommandContext, value: str) -> str:
    if value != "-":
        return value
    if not isinstance(ctx.terminal, InputTerminal):
        raise InvalidInput("llm-key set PROVIDER -: this client cannot send stdin; pass the key as KEY")
    text = await ctx.terminal.read_input(KEY_HINT, MAX_KEY_CHARS + 2)
    if text is None or not text.strip():
        raise InvalidInput("llm-key set PROVIDER -: no key on stdin")
    return text


async def llm_key(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    services = ctx.services
    vault = KeyVault.from_config(services.store, services.config)
    if args.action == "list":
        rows = vault.list(ctx.user.id)
        data = [
            {
                "provider": row.provider,
                "key": row.hint,
                "created_at": row.created_at,
                "updated_at": row.updated_at,
            }
            for row in rows
        ]
        if not rows:
            return CommandResult(data, 'no LLM keys stored: add one with "llm-key set PROVIDER -"')
        lines = [[row.provider, row.hint, row.updated_at] for row in rows]
        return CommandResult(data, table(["provider", "key", "set"], lines))
    provider = _provider_name(ctx, args.provider)
    if args.action == "set":
        key = await _read_key(ctx, args.key)
        hint = vault.set(ctx.user.id, provider, key)
        return CommandResult(
            {"provider": provider, "key": hint},
            f"stored your {provider} key {hint}; your VMs now use it through the gateway",
        )
    if not vault.remove(ctx.user.id, provider):
        raise NotFound(f'you have no {provider} key stored: run "llm-key list"')
    return CommandResult({"provider": provider, "removed": True}, f"removed your {provider} key")


def _llm_usage_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--days",
        type=int,
        default=DEFAULT_USAGE_DAYS,
        help=f"how many UTC days to show, today included (default {DEFAULT_USAGE_DAYS})",
    )


async def llm_usage(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    if not 1 <= args.days <= MAX_USAGE_DAYS:
        raise InvalidInput(f"--days {args.days}: expected 1 to {MAX_USAGE_DAYS}")

    services = ctx.services
    counters = LLMStore(services.store)
    today = datetime.now(UTC).date()
    since = (today - timedelta(days=args.days - 1)).isoformat()
    rows = counters.usage(ctx.user.id, since_day=since)
    tier, _ = user_tier(services.store, services.config, ctx.user)
    limits = llm_limits(services.config, tier)
    used_today = counters.budget_tokens_used(ctx.user.id, today.isoformat())

    budget = {
        "tier": tier.value,
        "tokens_per_day": limits.tokens_per_day,
        "requests_per_minute": limits.requests_per_minute,
        "tokens_used_today": used_today,
    }
    data = {
        "budget": budget,
        "usage": [
            {
                "day": row.day,
                "provider": row.provider,
                "source": row.source,
                "requests": row.requests,
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
                "total_tokens": row.total_tokens,
            }
            for row in rows
        ],
    }

    summary = (
        f"platform budget today: {used_today} of {limits.tokens_per_day} tokens"
        f" (tier {tier.value}, {limits.requests_per_minute} requests per minute)"
    )
    if not rows:
        return CommandResult(data, f"no LLM requests in the last {args.days} days\n{summary}")
    lines = [
        [
            row.day,
            row.provider,
            row.source,
            str(row.requests),
            str(row.input_tokens),
            str(row.output_tokens),
            str(row.total_tokens),
        ]
        for row in rows
    ]
    text = table(["day", "provider", "key", "requests", "input", "output", "total"], lines)
    return CommandResult(data, f"{text}\n{summary}")


COMMANDS = [
    Command(
        "llm-key",
        "Store, list or remove your own LLM provider keys, which your VMs use through the gateway.",
        llm_key,
        group="llm",
        arguments=_llm_key_arguments,
        subcommands=("set", "list", "remove"),
        secret_arguments=True,
        examples=[
            "llm-key set openai - < key.txt",
            "llm-key list",
            "llm-key remove openai",
        ],
    ),
    Command(
        "llm-usage",
        "Show your LLM requests and tokens per day, provider and key, and today's budget.",
        llm_usage,
        group="llm",
        arguments=_llm_usage_arguments,
        examples=["llm-usage", "llm-usage --days 30 --json"],
    ),
]
