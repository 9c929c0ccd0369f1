"""The `browser` command: a one-time link that signs a browser in."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from ussycode.auth.audit import Action
from ussycode.auth.login import LOGIN_LINK_SECONDS, Logins
from ussycode.commands.base import ArgumentParser, Command, CommandContext, CommandResult
from ussycode.commands.qr import qr_text
from ussycode.store.audit import AuditLog


def _browser_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--qr", action="store_true", help="also draw the link as a QR code to scan with a phone"
    )


async def browser(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    link = Logins(ctx.services.store, ctx.services.config).create_login_link(ctx.user)
    AuditLog(ctx.services.store).add(
        actor_id=ctx.user.id,
        actor=ctx.user.handle,
        action=Action.LOGIN_LINK,
        target=ctx.services.config.domain,
    )
    expires_at = datetime.fromtimestamp(link.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = {"url": link.url, "expires_at": expires_at, "expires_in": LOGIN_LINK_SECONDS}
    minutes = LOGIN_LINK_SECONDS // 60
    lines = [
        f"Open this link in your browser to sign in as {ctx.user.handle}.",
        f"It works once, for {minutes} minutes:",
        "",
        f"  {link.url}",
    ]
    if args.qr:
        lines += ["", qr_text(link.url)]
    return CommandResult(data, "\n".join(lines))


COMMANDS = [
    Command(
        "browser",
        "Print a one-time link that signs your browser in, for private VM URLs.",
        browser,
        group="account",
        arguments=_browser_arguments,
        examples=["browser", "browser --qr"],
    ),
]
