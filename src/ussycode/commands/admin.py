"""The `admin` command: users, VMs, trust tiers, limits, suspensions and invitations."""

from __future__ import annotations

import argparse
from typing import Any

from ussycode import quota
from ussycode.auth.administration import Administration
from ussycode.auth.admission import INVITE_PREFIX, Admission
from ussycode.auth.audit import Action
from ussycode.auth.tiers import LIMIT_NAMES, TIER_NAMES, Tier
from ussycode.commands.base import (
    ArgumentParser,
    Command,
    CommandContext,
    CommandResult,
    add_subcommand,
    add_subcommands,
)
from ussycode.commands.render import table
from ussycode.config import format_size
from ussycode.store.audit import AuditLog
from ussycode.store.trust import TrustStore

SUBCOMMANDS = ("users", "vms", "pool", "set-trust", "set-limit", "suspend", "reinstate", "add-user", "invite")


def _arguments(parser: ArgumentParser) -> None:
    actions = add_subcommands(parser)
    add_subcommand(actions, "users", "list every user with tier, use and state (operators and admins)")
    add_subcommand(actions, "vms", "list every VM with owner, state and resources (operators and admins)")
    add_subcommand(actions, "pool", "show the warm pool of booted VMs for new, per image (admins)")
    trust = add_subcommand(actions, "set-trust", "set a user's trust tier")
    trust.add_argument("handle", metavar="HANDLE", help="the user")
    trust.add_argument("tier", metavar="TIER", help=f"one of {', '.join(TIER_NAMES)}")
    limit = add_subcommand(actions, "set-limit", "set one limit for a user, replacing the tier's value")
    limit.add_argument("handle", metavar="HANDLE", help="the user")
    limit.add_argument("key", metavar="KEY", help=f"one of {', '.join(LIMIT_NAMES)}")
    limit.add_argument(
        "value",
        metavar="VALUE",
        help='a count, a size for memory (MiB if no unit) and disk (GiB if no unit), or "default"',
    )
    suspend = add_subcommand(actions, "suspend", "stop a user's VMs and refuse their logins")
    suspend.add_argument("handle", metavar="HANDLE", help="the user")
    suspend.add_argument("--reason", default="", help="shown to the user when a login is refused")
    reinstate = add_subcommand(actions, "reinstate", "let a suspended user log in again")
    reinstate.add_argument("handle", metavar="HANDLE", help="the user")
    add_user = add_subcommand(actions, "add-user", "register a user with an SSH public key")
    add_user.add_argument("handle", metavar="HANDLE", help="the new user's handle")
    add_user.add_argument(
        "key", metavar="KEY", nargs="+", help="the public key line, e.g. ssh-ed25519 AAAA..."
    )
    add_user.add_argument("--tier", choices=TIER_NAMES, default=None, help="tier (default: --default-tier)")
    invite = add_subcommand(actions, "invite", "create an invitation that lets new keys register")
    invite.add_argument("--uses", type=int, default=1, help="how many keys may register with it (default 1)")
    invite.add_argument("--days", type=float, default=7.0, help="days until it expires (default 7)")
    invite.add_argument("--tier", choices=TIER_NAMES, default=None, help="tier of the users it registers")
    invite.add_argument("--label", default="", help="a name for it in the audit log")


def _users(admin: Administration) -> CommandResult:
    admin.require(Tier.OPERATOR)
    store = admin.store
    rows = []
    data = []
    for user in TrustStore(store).list_users():
        details, _ = quota.describe(store, admin.config, user)
        limits: dict[str, Any] = details["limits"]  # type: ignore[assignment]
        keys = store.list_keys(user.id)
        entry = {"handle": user.handle, "user_id": user.id, "created_at": user.created_at, "keys": len(keys)}
        data.append({**entry, **details})
        rows.append(
            [
                user.handle,
                str(details["tier"]),
                "suspended" if details["suspended"] else "active",
                f"{limits['vms']['use']}/{limits['vms']['limit']}",
                f"{limits['running']['use']}/{limits['running']['limit']}",
                f"{format_size(limits['disk']['use']) if limits['disk']['use'] else '0'}",
                str(len(keys)),
            ]
        )
    text = table(["handle", "tier", "state", "vms", "running", "disk", "keys"], rows)
    return CommandResult(data, text)


def _vms(admin: Administration) -> CommandResult:
    admin.require(Tier.OPERATOR)
    store = admin.store
    owners = {user.id: user.handle for user in TrustStore(store).list_users()}
    data = []
    rows = []
    for vm in store.list_vms():
        if admin.manager.is_pooled(vm):
            continue  # `admin pool` shows the warm pool
        owner = owners.get(vm.owner_id, "?")
        data.append(
            {
                "name": vm.name,
                "owner": owner,
                "state": vm.state,
                "cpus": vm.cpus,
                "memory_mb": vm.memory_mb,
                "disk_bytes": vm.disk_bytes,
                "ip": vm.ip,
                "created_at": vm.created_at,
            }
        )
        rows.append(
            [vm.name, owner, vm.state, str(vm.cpus), f"{vm.memory_mb}M", format_size(vm.disk_bytes), vm.ip]
        )
    return CommandResult(data, table(["name", "owner", "state", "cpus", "memory", "disk", "ip"], rows))


def _pool(admin: Administration) -> CommandResult:
    admin.require(Tier.ADMIN)
    pool = admin.manager.pool
    if pool is None or not pool.enabled:
        return CommandResult({"enabled": False, "images": []}, "the warm pool is off (--pool-size 0)")
    statuses = pool.status()
    rows = []
    for status in statuses:
        available = (
            "?" if status.memory_available is None else format_size(status.memory_available // 2**20 * 2**20)
        )
        rows.append(
            [
                status.image,
                str(status.ready),
                str(status.booting),
                str(status.target),
                f"{status.pool_size}-{status.pool_max}",
                str(status.recent_requests),
                f"{available} (reserve {format_size(status.memory_reserve)})",
            ]
        )
    headers = ["image", "ready", "booting", "target", "size range", "requests (10 min)", "host memory free"]
    data = {"enabled": True, "images": [status.as_dict() for status in statuses]}
    return CommandResult(data, table(headers, rows))


async def admin(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    services = ctx.services
    actions = Administration(services.config, services.store, services.manager, ctx.user)
    if args.action == "users":
        return _users(actions)
    if args.action == "vms":
        return _vms(actions)
    if args.action == "pool":
        return _pool(actions)
    if args.action == "set-trust":
        after = actions.set_trust(args.handle, args.tier)
        return CommandResult(
            {"handle": args.handle, "tier": after.tier.value}, f"{args.handle} is now {after.tier}"
        )
    if args.action == "set-limit":
        actions.set_limit(args.handle, args.key, args.value)
        data, lines = quota.describe(services.store, services.config, actions.user(args.handle))
        return CommandResult({"handle": args.handle, **data}, "\n".join([f"{args.handle}:", *lines]))
    if args.action == "suspend":
        stopped = await actions.suspend(args.handle, args.reason)
        text = f"{args.handle} is suspended"
        if stopped:
            text += f"; stopped {', '.join(stopped)}"
        return CommandResult({"handle": args.handle, "suspended": True, "stopped": stopped}, text)
    if args.action == "reinstate":
        actions.reinstate(args.handle)
        return CommandResult({"handle": args.handle, "suspended": False}, f"{args.handle} may log in again")
    if args.action == "add-user":
        user = actions.add_user(args.handle, " ".join(args.key), args.tier)
        return CommandResult({"handle": user.handle, "user_id": user.id}, f"added {user.handle}")
    return _invite(ctx, actions, args)


def _invite(ctx: CommandContext, actions: Administration, args: argparse.Namespace) -> CommandResult:
    actions.require(Tier.ADMIN)
    config = ctx.services.config
    tier = Tier(args.tier or config.default_tier)
    invitation, token = Admission(config, ctx.services.store).create_invitation(
        ctx.user, tier=tier, uses=args.uses, days=args.days, label=args.label
    )
    AuditLog(ctx.services.store).add(
        actor_id=ctx.user.id,
        actor=f"{ctx.user.handle} via ssh",
        action=Action.INVITE,
        target=invitation.label,
        detail=f"tier {tier}, {args.uses} uses, {args.days:g} days",
    )
    command = config.ssh_command(f"{INVITE_PREFIX}{token}")
    data = {
        "label": invitation.label,
        "tier": invitation.tier,
        "uses": invitation.uses_left,
        "expires_at": invitation.expires_at,
        "command": command,
    }
    lines = [
        f"Invitation {invitation.label} for {args.uses} key(s), tier {tier}, valid {args.days:g} days.",
        "The invited person connects once with their own key:",
        "",
        f"  {command}",
    ]
    return CommandResult(data, "\n".join(lines))


COMMANDS = [
    Command(
        "admin",
        "Administer users, VMs and the warm pool: tiers, limits, suspensions, invitations (operators).",
        admin,
        group="admin",
        arguments=_arguments,
        subcommands=SUBCOMMANDS,
        examples=[
            "admin users",
            "admin vms",
            "admin pool",
            "admin set-trust alice citizen",
            "admin set-limit alice vms 5",
            "admin set-limit alice memory default",
            'admin suspend mallory --reason "spam"',
            "admin invite --uses 3 --days 2",
        ],
    ),
]
