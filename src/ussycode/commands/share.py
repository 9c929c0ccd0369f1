"""The `share` command: who may open a VM's URL, on which port, and who may ssh into it."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from ussycode.auth.audit import Action
from ussycode.auth.hosts import MAX_EXTRA_PORT, MIN_EXTRA_PORT, PORT_SEPARATOR, origin, vm_url
from ussycode.auth.login import Logins, share_link_url, token_from_link
from ussycode.auth.random_tokens import hash_token
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
from ussycode.store import VM, User
from ussycode.store.audit import AuditLog
from ussycode.store.emails import Emails, check_email
from ussycode.store.sharing import Share, ShareLink, Sharing, VMSharing

MAX_MESSAGE_CHARS = 500
ACTIONS = ("show", "set-public", "set-private", "port", "add", "remove", "add-link", "remove-link", "access")


def _share_arguments(parser: ArgumentParser) -> None:
    actions = add_subcommands(parser)
    add_subcommand(actions, "show", "show visibility, port, people and links").add_argument(
        "vm", metavar="VM"
    )
    add_subcommand(actions, "set-public", "let anyone open the VM's URL").add_argument("vm", metavar="VM")
    add_subcommand(actions, "set-private", "let only you and people it is shared with in").add_argument(
        "vm", metavar="VM"
    )

    port = add_subcommand(actions, "port", "choose the VM port behind the VM's URL (default 8080)")
    port.add_argument("vm", metavar="VM")
    port.add_argument("port", metavar="PORT", help="TCP port in the VM, 1 to 65535")

    add = add_subcommand(actions, "add", "give a person web access; an unknown email becomes an invitation")
    add.add_argument("vm", metavar="VM")
    add.add_argument("person", metavar="HANDLE|EMAIL")
    add.add_argument(
        "--message", default="", help=f"a note for the person, up to {MAX_MESSAGE_CHARS} characters"
    )
    remove = add_subcommand(actions, "remove", "take a person's access away, or revoke an invitation")
    remove.add_argument("vm", metavar="VM")
    remove.add_argument("person", metavar="HANDLE|EMAIL")

    add_subcommand(actions, "add-link", "make a link that gives anyone who opens it access").add_argument(
        "vm", metavar="VM"
    )
    remove_link = add_subcommand(
        actions, "remove-link", "revoke a share link and the sessions opened with it"
    )
    remove_link.add_argument("vm", metavar="VM")
    remove_link.add_argument(
        "link", metavar="TOKEN", help="the link's token, its URL, or its id from share show"
    )

    access = add_subcommand(actions, "access", "let a person the VM is shared with also ssh into it, or not")
    access.add_argument("mode", choices=("allow", "disallow"), metavar="allow|disallow")
    access.add_argument("vm", metavar="VM")
    access.add_argument("handle", metavar="HANDLE")


# Rendering.


def _settings_data(ctx: CommandContext, vm: VM, settings: VMSharing) -> dict[str, Any]:
    config = ctx.services.config
    return {
        "vm": vm.name,
        "visibility": "public" if settings.public else "private",
        "port": settings.port,
        "url": vm_url(config, vm.name),
        "other_ports_url": origin(config, f"{vm.name}{PORT_SEPARATOR}PORT.{config.domain}") + "/",
        "other_ports": [MIN_EXTRA_PORT, MAX_EXTRA_PORT],
        "updated_by": settings.updated_by,
        "updated_at": settings.updated_at,
    }


def _person_data(share: Share) -> dict[str, Any]:
    return {
        "handle": share.handle,
        "email": share.email,
        "status": "pending" if share.pending else "active",
        "ssh_access": share.ssh_access,
        "message": share.message,
        "added_by": share.added_by,
        "added_at": share.created_at,
    }


def _link_data(link: ShareLink) -> dict[str, Any]:
    return {"id": link.label, "added_by": link.created_by, "added_at": link.created_at}


def _show_text(data: dict[str, Any]) -> str:
    lines = [
        f"{data['vm']}: {data['visibility']}, port {data['port']}",
        f"  url:          {data['url']}",
        f"  other ports:  {data['other_ports_url']} (ports 3000-9999, never public)",
        "",
    ]
    if data["people"]:
        rows = [
            [
                person["handle"] or person["email"],
                person["status"],
                "yes" if person["ssh_access"] else "no",
                person["added_by"] or "-",
                person["added_at"],
                person["message"],
            ]
            for person in data["people"]
        ]
        lines.append(table(["person", "status", "ssh", "added by", "added", "message"], rows))
    else:
        lines.append(f'Shared with nobody. Add someone with "share add {data["vm"]} HANDLE".')
    lines.append("")
    if data["links"]:
        rows = [[link["id"], link["added_by"] or "-", link["added_at"]] for link in data["links"]]
        lines.append(table(["link", "added by", "added"], rows))
    else:
        lines.append("No share links.")
    return "\n".join(lines)


# Actions.


def _record(ctx: CommandContext, action: Action, vm: VM, detail: str = "") -> None:
    AuditLog(ctx.services.store).add(
        actor_id=ctx.user.id, actor=ctx.user.handle, action=action, target=vm.name, detail=detail
    )


async def _apply_route(ctx: CommandContext, vm: VM) -> None:
    """Give the proxy the VM's new route after its visibility or port changed."""
    await ctx.services.manager.listener.vm_changed(ctx.services.store.get_vm(vm.id))


async def _show(ctx: CommandContext, vm: VM, args: argparse.Namespace) -> CommandResult:
    del args
    sharing = Sharing(ctx.services.store)
    data = _settings_data(ctx, vm, sharing.settings(vm.id))
    data["people"] = [_person_data(share) for share in sharing.shares(vm.id)]
    data["links"] = [_link_data(link) for link in sharing.links(vm.id)]
    return CommandResult(data, _show_text(data))


async def _set_public(ctx: CommandContext, vm: VM, args: argparse.Namespace) -> CommandResult:
    public = args.action == "set-public"
    settings = Sharing(ctx.services.store).set_public(vm.id, public, ctx.user.id)
    _record(ctx, Action.SET_PUBLIC if public else Action.SET_PRIVATE, vm)
    await _apply_route(ctx, vm)
    url = vm_url(ctx.services.config, vm.name)
    if public:
        text = f"{url} is public: anyone can open it. Other ports stay private."
    else:
        text = f"{url} is private: only you and the people it is shared with can open it."
    return CommandResult(_settings_data(ctx, vm, settings), text)


def _parse_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidInput(f'invalid port "{text}": use a number from 1 to 65535')
    return int(text)


async def _set_port(ctx: CommandContext, vm: VM, args: argparse.Namespace) -> CommandResult:
    port = _parse_port(args.port)
    settings = Sharing(ctx.services.store).set_port(vm.id, port, ctx.user.id)
    _record(ctx, Action.SET_PORT, vm, f"port {port}")
    await _apply_route(ctx, vm)
    text = f'{vm_url(ctx.services.config, vm.name)} now serves port {port} of vm "{vm.name}"'
    return CommandResult(_settings_data(ctx, vm, settings), text)


def _find_user(ctx: CommandContext, handle: str) -> User:
    user = ctx.services.store.find_user_by_handle(handle.lower())
    if user is None:
        raise NotFound(f'no user with the handle "{handle}": check the spelling, or share by email address')
    return user


def _check_message(text: str) -> str:
    if len(text) > MAX_MESSAGE_CHARS or not text.isprintable():
        raise InvalidInput(f"invalid --message: use at most {MAX_MESSAGE_CHARS} printable characters")
    return text


async def _add(ctx: CommandContext, vm: VM, args: argparse.Namespace) -> CommandResult:
    store = ctx.services.store
    sharing = Sharing(store)
    message = _check_message(args.message)
    email: str | None = None
    if "@" in args.person:
        email = check_email(args.person)
        user_id = Emails(store).find_verified_user(email)
        user = store.get_user(user_id) if user_id is not None else None
    else:
        user = _find_user(ctx, args.person)
    if user is not None and user.id == vm.owner_id:
        raise InvalidInput(f'you own vm "{vm.name}": share it with someone else')

    url = vm_url(ctx.services.config, vm.name)
    try:
        if user is not None:
            share = sharing.add_user(vm.id, user.id, message=message, added_by=ctx.user.id, email=email)
            _record(ctx, Action.ADD_PERSON, vm, f"user {user.handle}")
            text = f"{user.handle} can now open {url}"
        else:
            assert email is not None
            share = sharing.add_invitation(vm.id, email, message=message, added_by=ctx.user.id)
            _record(ctx, Action.ADD_INVITATION, vm, f"email {email}")
            text = (
                f"Invited {email} to {url}: the user who verifies this email address gets access.\n"
                "Email verification is not available on this server yet, so the invitation waits until it is."
            )
    except Conflict:
        who = user.handle if user is not None else email
        raise Conflict(f'vm "{vm.name}" is already shared with {who}: run "share show {vm.name}"') from None
    return CommandResult({"vm": vm.name, "person": _person_data(share)}, text)


def _find_share(ctx: CommandContext, vm: VM, person: str) -> Share:
    sharing = Sharing(ctx.services.store)
    share: Share | None
    if "@" in person:
        email = check_email(person)
        share = sharing.find_invitation(vm.id, email)
        if share is None:
            user_id = Emails(ctx.services.store).find_verified_user(email)
            share = sharing.find_user_share(vm.id, user_id) if user_id is not None else None
    else:
        user = ctx.services.store.find_user_by_handle(person.lower())
        share = sharing.find_user_share(vm.id, user.id) if user is not None else None
    if share is None:
        raise NotFound(f'vm "{vm.name}" is not shared with "{person}": run "share show {vm.name}"')
    return share


async def _remove(ctx: CommandContext, vm: VM, args: argparse.Namespace) -> CommandResult:
    share = _find_share(ctx, vm, args.person)
    Sharing(ctx.services.store).remove(share.id)
    if share.pending:
        _record(ctx, Action.REMOVE_INVITATION, vm, f"email {share.email}")
        text = f'revoked the invitation of {share.email} to vm "{vm.name}"'
    else:
        _record(ctx, Action.REMOVE_PERSON, vm, f"user {share.handle}")
        text = f'{share.handle} can no longer open vm "{vm.name}"'
    return CommandResult({"vm": vm.name, "removed": _person_data(share)}, text)


async def _add_link(ctx: CommandContext, vm: VM, args: argparse.Namespace) -> CommandResult:
    del args
    config = ctx.services.config
    link, token = Logins(ctx.services.store, config).create_share_link(vm.id, ctx.user)
    _record(ctx, Action.ADD_LINK, vm, f"link {link.label}")
    url = share_link_url(config, vm.name, token)
    text = (
        f"Anyone who opens this link can open vm {vm.name} until you remove it:\n\n  {url}\n\n"
        f"Remove it with: share remove-link {vm.name} {link.label}"
    )
    return CommandResult({"vm": vm.name, "url": url, "token": token, **_link_data(link)}, text)


def _find_link(ctx: CommandContext, vm: VM, text: str) -> ShareLink:
    """Find the VM's link by its token, its URL, or its id (the token's first 8 characters)."""
    sharing = Sharing(ctx.services.store)
    token = token_from_link(text)
    if token is not None:
        found = sharing.find_link(hash_token(token))
        matches = [found] if found is not None and found.vm_id == vm.id else []
    else:
        matches = [link for link in sharing.links(vm.id) if link.label == text.strip()]
    if not matches:
        raise NotFound(f'vm "{vm.name}" has no share link "{text[:12]}": run "share show {vm.name}"')
    if len(matches) > 1:
        raise Conflict(f'several share links of vm "{vm.name}" have the id "{text}": pass the whole token')
    return matches[0]


async def _remove_link(ctx: CommandContext, vm: VM, args: argparse.Namespace) -> CommandResult:
    link = _find_link(ctx, vm, args.link)
    Sharing(ctx.services.store).remove_link(link.id)
    _record(ctx, Action.REMOVE_LINK, vm, f"link {link.label}")
    text = f'removed share link {link.label} of vm "{vm.name}": it and the sessions it opened stop working'
    return CommandResult({"vm": vm.name, "removed": _link_data(link)}, text)


async def _access(ctx: CommandContext, vm: VM, args: argparse.Namespace) -> CommandResult:
    user = _find_user(ctx, args.handle)
    sharing = Sharing(ctx.services.store)
    share = sharing.find_user_share(vm.id, user.id)
    if share is None:
        raise NotFound(
            f'vm "{vm.name}" is not shared with {user.handle}: run "share add {vm.name} {user.handle}" first'
        )
    allowed = args.mode == "allow"
    share = sharing.set_ssh_access(share.id, allowed)
    _record(ctx, Action.ALLOW_SSH if allowed else Action.DISALLOW_SSH, vm, f"user {user.handle}")
    if allowed:
        text = f"{user.handle} can now log in with: {ctx.services.config.ssh_command(vm.name)}"
    else:
        # NOTE: an SSH session that is already open stays open until it ends.
        text = f'{user.handle} can no longer ssh into vm "{vm.name}" (web access stays)'
    return CommandResult({"vm": vm.name, "person": _person_data(share)}, text)


_HANDLERS: dict[str, Callable[[CommandContext, VM, argparse.Namespace], Awaitable[CommandResult]]] = {
    "show": _show,
    "set-public": _set_public,
    "set-private": _set_public,
    "port": _set_port,
    "add": _add,
    "remove": _remove,
    "add-link": _add_link,
    "remove-link": _remove_link,
    "access": _access,
}


async def share(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    vm = ctx.services.manager.get_owned(ctx.user, args.vm)
    return await _HANDLERS[args.action](ctx, vm, args)


COMMANDS = [
    Command(
        "share",
        "Control who can open a VM's URL, on which port, and who can ssh into it.",
        share,
        group="sharing",
        arguments=_share_arguments,
        subcommands=ACTIONS,
        examples=[
            "share show mild-owl",
            "share set-public mild-owl",
            "share port mild-owl 3000",
            'share add mild-owl bob --message "the staging site"',
            "share add mild-owl ann@example.org",
            "share add-link mild-owl",
            "share remove-link mild-owl Xy3_abcd",
            "share access allow mild-owl bob",
        ],
    ),
]
