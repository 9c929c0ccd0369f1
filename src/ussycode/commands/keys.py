"""SSH key and API token commands: ssh-key, api-key, token."""

from __future__ import annotations

import argparse
import time

import asyncssh

from ussycode.auth.signed_tokens import InvalidToken, hash_secret, new_short_id, parse_duration, parse_usy0
from ussycode.commands.base import (
    ArgumentParser,
    Command,
    CommandContext,
    CommandResult,
    add_subcommand,
    add_subcommands,
)
from ussycode.commands.render import table
from ussycode.errors import Conflict, InvalidInput, NotFound
from ussycode.names import check_vm_name
from ussycode.store.tokens import APIToken, TokenStore


def _fingerprint_of(line: str) -> tuple[str, str]:
    try:
        key = asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise InvalidInput(f"not an OpenSSH public key: {line[:40]!r}: {exc}") from exc
    parts = key.export_public_key("openssh").decode().split()
    return key.get_fingerprint("sha256"), " ".join(parts[:2])


def _ssh_key_arguments(parser: ArgumentParser) -> None:
    actions = add_subcommands(parser)
    add_subcommand(actions, "list", "list your SSH keys")
    add = add_subcommand(actions, "add", "register another public key")
    add.add_argument(
        "public_key", nargs="+", metavar="PUBKEY", help='OpenSSH public key line, e.g. "ssh-ed25519 AAAA…"'
    )
    add.add_argument("--name", default="", help="a label for the key")
    remove = add_subcommand(actions, "remove", "remove a key (not your last one)")
    remove.add_argument("key", metavar="NAME|FINGERPRINT", help="the key's name or SHA256 fingerprint")
    rename = add_subcommand(actions, "rename", "change the name of a key")
    rename.add_argument("key", metavar="OLD", help="the key's name or SHA256 fingerprint")
    rename.add_argument("new_name", metavar="NEW", help="its new name, up to 64 characters")
    generate = add_subcommand(actions, "generate-api-key", "mint an API key; prints a usy1 token once")
    generate.add_argument("--label", default="", help="a label shown by api-key list")
    generate.add_argument("--vm", help="scope the key to one VM's private URL")
    generate.add_argument(
        "--cmds", help="comma-separated commands the key may run (default: read-only plus new)"
    )
    generate.add_argument("--exp", default="never", help="lifetime: 30d, 12h, 1y or never (default never)")


async def ssh_key(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    store = ctx.services.store
    if args.action == "list":
        keys = store.list_keys(ctx.user.id)
        data = [
            {
                "name": k.name,
                "fingerprint": k.fingerprint,
                "created_at": k.created_at,
                "last_used_at": k.last_used_at,
            }
            for k in keys
        ]
        rows = [[k.name or "-", k.fingerprint, k.created_at, k.last_used_at or "never"] for k in keys]
        return CommandResult(data, table(["name", "fingerprint", "added", "last used"], rows))
    if args.action == "add":
        fingerprint, line = _fingerprint_of(" ".join(args.public_key))
        if store.find_user_by_fingerprint(fingerprint) is not None:
            raise Conflict(f"key {fingerprint} is already registered")
        store.add_key(ctx.user.id, fingerprint, line, args.name)
        return CommandResult({"fingerprint": fingerprint, "name": args.name}, f"added key {fingerprint}")
    if args.action == "remove":
        keys = store.list_keys(ctx.user.id)
        matches = [k for k in keys if args.key in (k.fingerprint, k.name)]
        if not matches:
            raise NotFound(f'no key named "{args.key}": run "ssh-key list"')
        if len(keys) - len(matches) < 1:
            raise Conflict("cannot remove your last SSH key: add another one first")
        for key in matches:
            store.delete_key(key.id)
        removed = [k.fingerprint for k in matches]
        return CommandResult(
            {"removed": removed}, f"removed {', '.join(removed)}; tokens it signed stop working"
        )
    if args.action == "rename":
        return _rename_key(ctx, args)
    return await _generate_api_key(ctx, args)


MAX_KEY_NAME_CHARS = 64


def _rename_key(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    store = ctx.services.store
    keys = store.list_keys(ctx.user.id)
    matches = [k for k in keys if args.key in (k.fingerprint, k.name)]
    if not matches:
        raise NotFound(f'no key named "{args.key}": run "ssh-key list"')
    if len(matches) > 1:
        raise Conflict(f'{len(matches)} keys are named "{args.key}": rename one by its fingerprint')
    name = args.new_name.strip()
    if not name or len(name) > MAX_KEY_NAME_CHARS or not name.isprintable():
        raise InvalidInput(
            f"invalid key name {args.new_name!r}: use 1 to {MAX_KEY_NAME_CHARS} printable characters"
        )
    if any(k.name == name and k.id != matches[0].id for k in keys):
        raise Conflict(f'you already have a key named "{name}": choose another name')
    store.rename_key(matches[0].id, name)
    key = matches[0]
    return CommandResult(
        {"fingerprint": key.fingerprint, "name": name}, f'key {key.fingerprint} is now named "{name}"'
    )


def _check_permission_name(name: str) -> None:
    """:raise InvalidInput: `name` is not a command or "command subcommand" that a token can allow."""
    from ussycode.commands.dispatch import REGISTRY

    command, _, subcommand = name.partition(" ")
    known = REGISTRY.get(command)
    if known is None or (subcommand and subcommand not in known.subcommands):
        raise InvalidInput(
            f'unknown command "{name}" in --cmds: name commands as "help" lists them, e.g. ls,new'
        )


async def _generate_api_key(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    lifetime = parse_duration(args.exp)
    cmds = tuple(c.strip() for c in args.cmds.split(",") if c.strip()) if args.cmds else None
    for name in cmds or ():
        _check_permission_name(name)
    if args.vm is not None:
        check_vm_name(args.vm)
        ctx.services.manager.get_owned(ctx.user, args.vm)
    secret = new_short_id()
    expires_at = int(time.time()) + lifetime if lifetime is not None else None
    record = TokenStore(ctx.services.store).add(
        user_id=ctx.user.id,
        kind="key",
        token_hash=hash_secret(secret),
        label=args.label,
        vm_name=args.vm,
        cmds=cmds,
        expires_at=expires_at,
    )
    token = f"usy1.{secret}"
    data = {
        "id": record.id,
        "token": token,
        "label": args.label,
        "vm": args.vm,
        "cmds": cmds,
        "expires_at": expires_at,
    }
    return CommandResult(
        data,
        f"{token}\n\nThis is the only time the token is shown. Revoke it with: api-key revoke {record.id}",
    )


def _token_data(record: APIToken) -> dict[str, object]:
    return {
        "id": record.id,
        "kind": record.kind,
        "label": record.label,
        "vm": record.vm_name,
        "cmds": list(record.cmds) if record.cmds is not None else None,
        "expires_at": record.expires_at,
        "created_at": record.created_at,
        "last_used_at": record.last_used_at,
    }


def _api_key_arguments(parser: ArgumentParser) -> None:
    actions = add_subcommands(parser)
    add_subcommand(actions, "list", "list your API keys and short tokens")
    revoke = add_subcommand(actions, "revoke", "revoke an API key or short token")
    revoke.add_argument("id", type=int, metavar="ID", help="the id shown by api-key list")


async def api_key(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    tokens = TokenStore(ctx.services.store)
    if args.action == "list":
        records = tokens.list_for_user(ctx.user.id)
        rows = [
            [
                str(r.id),
                r.kind,
                r.label or "-",
                r.vm_name or "-",
                ",".join(r.cmds) if r.cmds else "default",
                r.last_used_at or "never",
            ]
            for r in records
        ]
        return CommandResult(
            [_token_data(r) for r in records], table(["id", "kind", "label", "vm", "cmds", "last used"], rows)
        )
    try:
        record = tokens.get(args.id)
    except NotFound:
        record = None
    if record is None or record.user_id != ctx.user.id or record.revoked_at is not None:
        raise NotFound(f'no API key with id {args.id}: run "api-key list"')
    tokens.revoke(record.id)
    return CommandResult({"id": record.id, "revoked": True}, f"revoked API key {record.id}")


def _token_arguments(parser: ArgumentParser) -> None:
    actions = add_subcommands(parser)
    shorten = add_subcommand(actions, "shorten", "store a usy0 token and print a short usy1 handle")
    shorten.add_argument("token", metavar="USY0TOKEN", help="a token signed with one of your keys")


async def token(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    try:
        signed = parse_usy0(args.token)
    except InvalidToken as exc:
        raise InvalidInput(f"cannot shorten the token: {exc.message}") from exc
    owner = ctx.services.store.find_user_by_fingerprint(signed.fingerprint)
    if owner is None or owner.id != ctx.user.id:
        raise InvalidInput("cannot shorten the token: it is not signed by one of your keys")
    secret = new_short_id()
    record = TokenStore(ctx.services.store).add(
        user_id=ctx.user.id, kind="short", token_hash=hash_secret(secret), usy0=args.token, label="shortened"
    )
    short = f"usy1.{secret}"
    return CommandResult({"id": record.id, "token": short}, short)


COMMANDS = [
    Command(
        "ssh-key",
        "List, add, remove or rename your SSH keys, or mint an API key.",
        ssh_key,
        group="account",
        arguments=_ssh_key_arguments,
        subcommands=("list", "add", "remove", "rename", "generate-api-key"),
        examples=[
            "ssh-key list",
            'ssh-key add "ssh-ed25519 AAAA… laptop" --name laptop',
            "ssh-key remove laptop",
            "ssh-key rename laptop work-laptop",
            "ssh-key generate-api-key --label ci --cmds ls,new --exp 30d",
        ],
    ),
    Command(
        "api-key",
        "List or revoke API keys and short tokens.",
        api_key,
        group="api",
        arguments=_api_key_arguments,
        subcommands=("list", "revoke"),
        examples=["api-key list", "api-key revoke 3"],
    ),
    Command(
        "token",
        "Turn a signed usy0 token into a short usy1 handle.",
        token,
        group="api",
        arguments=_token_arguments,
        subcommands=("shorten",),
        examples=["token shorten usy0.eyJ…"],
    ),
]
