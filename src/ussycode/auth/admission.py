"""Who may log in over SSH: the admission modes, Tailscale trust, suspensions, invitations and
the limit on failed logins per source address.

`--admission` decides what happens to a key the store does not know:

- `open`: it registers on its first lobby connection;
- `routussy`: it registers if Routussy approved its fingerprint (see routussy.py). Known users
  are checked too, so that Routussy can withdraw an approval; while Routussy is unavailable
  they are admitted if the last list fetched approved them, or if no list was fetched yet;
- `invite`: it registers only with an invitation, given as the login name `invite-TOKEN`.
  Admins add keys with `admin add-user` in every mode, and keys listed in `--admins` may
  always register.

With `--trust-tailscale yes`, unknown keys from 100.64.0.0/10 register as in `open` mode.
Every refusal is logged and counts against the source address: after `--auth-failures`
refusals in a minute, the address is refused for the rest of that minute.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ussycode.auth.audit import Action
from ussycode.auth.random_tokens import hash_token, looks_like_token, new_token
from ussycode.auth.routussy import Answer, RoutussyKeys
from ussycode.auth.tiers import Tier
from ussycode.config import Config
from ussycode.errors import InvalidInput
from ussycode.quota import standing
from ussycode.store import Store, User
from ussycode.store.audit import AuditLog
from ussycode.store.trust import Invitation, TrustStore

log = logging.getLogger(__name__)

TAILSCALE_NETWORK = ipaddress.ip_network("100.64.0.0/10")
INVITE_PREFIX = "invite-"
FAILURE_WINDOW_SECONDS = 60.0
MAX_TRACKED_ADDRESSES = 10_000
REQUEST_ACCESS = "ask for access on Discord with /ussycode-request, then connect again"


@dataclass(frozen=True)
class Admitted:
    """A key that may log in: a known `user`, or a new key that registers (with `invitation`)."""

    user: User | None
    invitation: Invitation | None = None
    trusted_network: bool = False


@dataclass(frozen=True)
class Refused:
    """A key that may not log in; `message` is shown to the client as the SSH auth banner."""

    message: str
    reason: str


class FailedLogins:
    """Counts refused logins per source address in fixed windows of `window` seconds."""

    def __init__(
        self,
        limit: int,
        *,
        window: float = FAILURE_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._counts: dict[str, tuple[float, int]] = {}

    def blocked_for(self, address: str) -> float:
        """Return the seconds until `address` may try again, or 0 if it may now."""
        entry = self._counts.get(address)
        if entry is None:
            return 0.0
        started, count = entry
        left = started + self.window - self._clock()
        if left <= 0:
            del self._counts[address]
            return 0.0
        return left if count >= self.limit else 0.0

    def add(self, address: str) -> int:
        """Count one refusal from `address`; return the count in the current window."""
        now = self._clock()
        started, count = self._counts.get(address, (now, 0))
        if now - started >= self.window:
            started, count = now, 0
        if address not in self._counts and len(self._counts) >= MAX_TRACKED_ADDRESSES:
            self._counts.clear()
        self._counts[address] = (started, count + 1)
        return count + 1


def peer_address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Admission:
    """Decides, per offered key, whether an SSH login may proceed."""

    def __init__(self, config: Config, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.trust = TrustStore(store)
        self.failures = FailedLogins(config.auth_failures)
        self._clock = clock
        self.routussy: RoutussyKeys | None = None
        if config.admission == "routussy":
            self.routussy = RoutussyKeys(
                config.routussy_url, config.routussy_internal_key, cache_seconds=config.routussy_cache_seconds
            )

    def trusted_network(self, peer: str) -> bool:
        address = peer_address(peer)
        return self.config.trust_tailscale and address is not None and address in TAILSCALE_NETWORK

    async def decide(
        self, *, login: str, fingerprint: str, peer: str, vm_login: bool, conn_id: str = "-"
    ) -> Admitted | Refused:
        """Decide for one offered key; a refusal is logged and counted against `peer`."""
        wait = self.failures.blocked_for(peer)
        if wait > 0:
            log.warning("conn=%s login from %s refused: too many failed logins", conn_id, peer)
            return Refused(
                f"too many failed logins from {peer}: try again in {int(wait) + 1} s", "rate limited"
            )
        outcome = await self._decide(login, fingerprint, peer, vm_login)
        if isinstance(outcome, Refused):
            count = self.failures.add(peer)
            log.info(
                "conn=%s key %s from %s refused (%s); %d refusals from this address this minute",
                conn_id,
                fingerprint,
                peer,
                outcome.reason,
                count,
            )
        return outcome

    async def _decide(self, login: str, fingerprint: str, peer: str, vm_login: bool) -> Admitted | Refused:
        user = self.store.find_user_by_fingerprint(fingerprint)
        trusted = self.trusted_network(peer)
        if user is not None:
            return await self._decide_known(user, trusted)
        if vm_login:
            return Refused(
                "this key is not registered: connect without a VM name first", "unknown key for a VM"
            )
        if login.startswith(INVITE_PREFIX):
            return self._decide_invitation(login.removeprefix(INVITE_PREFIX))
        if self.config.admission == "open" or trusted or fingerprint in self.config.admins:
            return Admitted(None, trusted_network=trusted)
        if self.config.admission == "invite":
            return Refused(
                "this server admits invited keys only: ask an admin for an invitation", "no invitation"
            )
        assert self.routussy is not None
        answer = await self.routussy.lookup([fingerprint])
        if answer == Answer.APPROVED:
            return Admitted(None)
        if answer == Answer.NOT_APPROVED:
            return Refused(f"this key ({fingerprint}) is not approved: {REQUEST_ACCESS}", "not approved")
        return Refused(
            "cannot check new keys right now because the access service is unavailable: try again later",
            "routussy unavailable",
        )

    async def _decide_known(self, user: User, trusted: bool) -> Admitted | Refused:
        current = standing(self.store, self.config, user)
        if current.suspended:
            why = f" ({current.suspended_why})" if current.suspended_why else ""
            return Refused(
                f'the account "{user.handle}" is suspended{why}: ask an admin to reinstate it', "suspended"
            )
        if self.routussy is None or trusted or current.admin_by_key:
            return Admitted(user)
        prints = [key.fingerprint for key in self.store.list_keys(user.id)]
        answer = await self.routussy.lookup(prints)
        if answer == Answer.APPROVED:
            return Admitted(user)
        if answer == Answer.UNAVAILABLE:
            last = self.routussy.last_good
            if last is None or set(prints) & last:
                log.info("user=%s admitted from cache while routussy is unavailable", user.handle)
                return Admitted(user)
        return Refused(
            f'the approval of "{user.handle}" was withdrawn: {REQUEST_ACCESS}', "approval withdrawn"
        )

    def _decide_invitation(self, token: str) -> Admitted | Refused:
        invitation = None
        if looks_like_token(token):
            invitation = self.trust.find_invitation(hash_token(token), int(self._clock()))
        if invitation is None:
            return Refused(
                "this invitation is invalid, used up or expired: ask for a new one", "bad invitation"
            )
        return Admitted(None, invitation=invitation)

    # Registration and invitations.

    def registered(self, user: User, admitted: Admitted | None, *, peer: str) -> None:
        """Record a new user: their tier (the invitation's or the default) and an audit entry."""
        tier = self.config.default_tier
        detail = f"from {peer}, admission {self.config.admission}"
        if admitted is not None and admitted.invitation is not None:
            invitation = admitted.invitation
            if self.trust.use_invitation(invitation.id, int(self._clock())):
                tier = invitation.tier
                detail += f", invitation {invitation.label}"
            else:
                log.warning("user=%s invitation %s was used up meanwhile", user.handle, invitation.label)
        elif admitted is not None and admitted.trusted_network:
            detail += ", trusted network"
        self.trust.set_tier(user.id, tier)
        AuditLog(self.store).add(
            actor_id=user.id, actor=user.handle, action=Action.REGISTER, target=user.handle, detail=detail
        )

    def create_invitation(
        self, creator: User, *, tier: Tier, uses: int, days: float, label: str = ""
    ) -> tuple[Invitation, str]:
        """Create an invitation; return it and its token, which is not stored in clear.

        :raise InvalidInput: `uses` or `days` is out of range.
        """
        if not 1 <= uses <= 1000:
            raise InvalidInput(f"invalid --uses {uses}: choose 1 to 1000")
        if not 0 < days <= 365:
            raise InvalidInput(f"invalid --days {days:g}: choose more than 0 and at most 365")
        token = new_token()
        invitation = self.trust.add_invitation(
            hash_token(token),
            label=label or token[:8],
            tier=tier.value,
            uses=uses,
            created_by=creator.id,
            expires_at=int(self._clock() + days * 86400),
        )
        return invitation, token
