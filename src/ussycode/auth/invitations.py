"""Email invitations: what happens once a user's email address is verified."""

from __future__ import annotations

import logging

from ussycode.auth.audit import Action
from ussycode.store import Store, User
from ussycode.store.audit import AuditLog
from ussycode.store.emails import Emails
from ussycode.store.sharing import Share, Sharing

log = logging.getLogger(__name__)


def verify_email(store: Store, user: User) -> list[Share]:
    """Mark the user's email address verified and give them the VMs it was invited to.

    This is the step that mail verification runs once the user proves the address; until then
    no invitation made by email reaches anyone. Returns the shares the invitations became.
    :raise NotFound: the user has no email address.
    :raise Conflict: another user has already verified the same address.
    """
    address = Emails(store).mark_verified(user.id)
    claimed = Sharing(store).claim_invitations(user.id, address.email)
    audit = AuditLog(store)
    for share in claimed:
        vm = store.get_vm(share.vm_id)
        audit.add(
            actor_id=user.id,
            actor=user.handle,
            action=Action.CLAIM_INVITATION,
            target=vm.name,
            detail=f"email {address.email}",
        )
        log.info("user=%s vm=%s email invitation claimed", user.handle, vm.name)
    return claimed
