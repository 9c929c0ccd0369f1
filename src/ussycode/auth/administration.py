"""What operators and admins may do to other users and their VMs, shared by the `admin`
command and the admin panel. Every change is written to the audit log.

Operators may look at every user and VM and start or stop VMs. Admins may also remove VMs,
change tiers and limits, suspend and reinstate users, add users and create invitations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncssh

from ussycode.auth.audit import Action
from ussycode.auth.tiers import TIER_NAMES, Tier, format_limit, limit_key, parse_limit_value
from ussycode.config import Config
from ussycode.errors import Conflict, InvalidInput, NotFound, PermissionDenied, UssycodeError
from ussycode.names import check_handle
from ussycode.quota import Standing, standing
from ussycode.ssh.keys import fingerprint, public_key_line
from ussycode.store import VM, Store, User
from ussycode.store.audit import AuditLog
from ussycode.store.trust import TrustStore
from ussycode.vm.manager import VMManager
from ussycode.vm.state import VMState

log = logging.getLogger(__name__)


@dataclass
class Administration:
    """Administrative actions done by `actor`, checked against the actor's tier."""

    config: Config
    store: Store
    manager: VMManager
    actor: User
    via: str = "ssh"

    @property
    def actor_standing(self) -> Standing:
        return standing(self.store, self.config, self.actor)

    def require(self, tier: Tier) -> None:
        """Raise `PermissionDenied` unless the actor has `tier` or a higher one and is not suspended.

        :raise PermissionDenied: the actor may not do this.
        """
        current = self.actor_standing
        if current.suspended or current.tier.rank < tier.rank:
            raise PermissionDenied(
                f'this needs the {tier} tier or higher, and "{self.actor.handle}" has {current.tier}'
            )

    def _audit(self, action: Action, target: str, detail: str = "") -> None:
        AuditLog(self.store).add(
            actor_id=self.actor.id,
            actor=f"{self.actor.handle} via {self.via}",
            action=action,
            target=target,
            detail=detail,
        )
        log.info("user=%s %s %s %s", self.actor.handle, action.value, target, detail)

    def user(self, handle: str) -> User:
        user = self.store.find_user_by_handle(handle)
        # The warm pool's user is no person: it is not listed and cannot be changed.
        if user is None or user.id == self.manager.pool_owner_id:
            raise NotFound(f'no user "{handle}": run "admin users" to list them')
        return user

    def vm(self, name: str) -> VM:
        vm = self.store.find_vm(name)
        if vm is None or self.manager.is_pooled(vm):
            raise NotFound(f'no VM named "{name}": run "admin vms" to list them')
        return vm

    # Users.

    def set_trust(self, handle: str, tier_name: str) -> Standing:
        """Set a user's tier.

        :raise InvalidInput: `tier_name` is no tier.
        """
        self.require(Tier.ADMIN)
        if tier_name not in TIER_NAMES:
            raise InvalidInput(f'invalid tier "{tier_name}": expected one of {", ".join(TIER_NAMES)}')
        user = self.user(handle)
        before = standing(self.store, self.config, user)
        TrustStore(self.store).set_tier(user.id, tier_name)
        self._audit(Action.SET_TRUST, user.handle, f"{before.tier} -> {tier_name}")
        after = standing(self.store, self.config, user)
        if after.admin_by_key and tier_name != Tier.ADMIN:
            log.warning("user=%s stays admin: one of their keys is listed in --admins", user.handle)
        return after

    def set_limit(self, handle: str, key_name: str, value_text: str) -> Standing:
        """Set one limit for a user, or with `default` go back to the tier's value.

        :raise InvalidInput: the key or value is invalid.
        """
        self.require(Tier.ADMIN)
        try:
            key = limit_key(key_name)
            value = None if value_text == "default" else parse_limit_value(key, value_text)
        except ValueError as exc:
            raise InvalidInput(f"invalid limit: {exc}") from None
        user = self.user(handle)
        trust = TrustStore(self.store)
        if value is None:
            trust.clear_override(user.id, key.field)
            detail = f"{key.name} = default"
        else:
            trust.set_override(user.id, key.field, value)
            detail = f"{key.name} = {format_limit(key, value)}"
        self._audit(Action.SET_LIMIT, user.handle, detail)
        return standing(self.store, self.config, user)

    async def suspend(self, handle: str, reason: str = "") -> list[str]:
        """Suspend a user: refuse their logins and commands, and stop their VMs.

        Returns the names of the VMs stopped.
        :raise InvalidInput: the actor tries to suspend themselves.
        """
        self.require(Tier.ADMIN)
        user = self.user(handle)
        if user.id == self.actor.id:
            raise InvalidInput("you cannot suspend yourself")
        if len(reason) > 200:
            raise InvalidInput("the reason is over 200 characters")
        current = standing(self.store, self.config, user)
        TrustStore(self.store).set_suspended(user.id, current.tier.value, suspended=True, reason=reason)
        self._audit(Action.SUSPEND, user.handle, reason)
        stopped = []
        for vm in self.store.list_vms(owner_id=user.id):
            if vm.state == VMState.STOPPED:
                continue
            try:
                await self.manager.stop(vm)
                stopped.append(vm.name)
            except UssycodeError as exc:
                log.error("user=%s vm=%s stop after suspension failed: %s", user.handle, vm.name, exc)
        return stopped

    def reinstate(self, handle: str) -> None:
        self.require(Tier.ADMIN)
        user = self.user(handle)
        current = standing(self.store, self.config, user)
        if not current.suspended:
            raise Conflict(f'user "{user.handle}" is not suspended')
        TrustStore(self.store).set_suspended(user.id, current.tier.value, suspended=False)
        self._audit(Action.REINSTATE, user.handle)

    def add_user(self, handle: str, key_line: str, tier_name: str | None = None) -> User:
        """Register a user with one SSH public key, in any admission mode.

        :raise InvalidInput: the handle, key or tier is invalid.
        :raise Conflict: the handle or key is taken.
        """
        self.require(Tier.ADMIN)
        check_handle(handle)
        tier = tier_name or self.config.default_tier
        if tier not in TIER_NAMES:
            raise InvalidInput(f'invalid tier "{tier}": expected one of {", ".join(TIER_NAMES)}')
        try:
            key = asyncssh.import_public_key(key_line.strip())
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise InvalidInput(
                f"invalid public key: {exc}; paste one line such as ssh-ed25519 AAAA..."
            ) from None
        if self.store.find_user_by_handle(handle) is not None:
            raise Conflict(f'the handle "{handle}" is taken')
        if self.store.find_user_by_fingerprint(fingerprint(key)) is not None:
            raise Conflict(f"the key {fingerprint(key)} belongs to another user")
        user = self.store.create_user(handle, fingerprint(key), public_key_line(key), "added by an admin")
        TrustStore(self.store).set_tier(user.id, tier)
        self._audit(Action.ADD_USER, handle, f"tier {tier}, key {fingerprint(key)}")
        return user

    # VMs.

    async def start_vm(self, name: str) -> VM:
        self.require(Tier.OPERATOR)
        vm = self.vm(name)
        self._audit(Action.VM_START, vm.name)
        return await self.manager.start(vm)

    async def stop_vm(self, name: str) -> VM:
        self.require(Tier.OPERATOR)
        vm = self.vm(name)
        self._audit(Action.VM_STOP, vm.name)
        return await self.manager.stop(vm)

    async def remove_vm(self, name: str) -> None:
        self.require(Tier.ADMIN)
        vm = self.vm(name)
        self._audit(Action.VM_REMOVE, vm.name)
        await self.manager.remove(vm)
