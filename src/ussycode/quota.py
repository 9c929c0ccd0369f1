"""What each user may use: their tier, their limits, what they use now, and the checks that
every command adding or growing resources runs before it acts.

The VM manager calls `check_new`, `check_copy`, `check_resize` and `check_start` at its entry
points, so the REPL, `/exec` and the admin panel all pass the same checks. A refusal raises
`QuotaExceeded` with a message that names the limit, the current use and the tier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ussycode.auth.tiers import LIMIT_KEYS, LimitKey, Limits, Tier, apply_overrides, format_limit, tier_limits
from ussycode.config import Config
from ussycode.errors import PermissionDenied, QuotaExceeded
from ussycode.store import VM, Store, User
from ussycode.store.suspend import SuspendStore
from ussycode.store.trust import TrustStore
from ussycode.vm.state import VMState

log = logging.getLogger(__name__)

# States in which a VM uses its vCPUs and memory. A suspended VM keeps its place among the
# running VMs, so that waking it never fails on the running limit.
ACTIVE_STATES = frozenset(
    {VMState.STARTING, VMState.RUNNING, VMState.STOPPING, VMState.SUSPENDING, VMState.SUSPENDED}
)


@dataclass(frozen=True)
class Usage:
    """What a user's VMs take now: the count, the disk of all of them and how many run."""

    vms: int
    disk_bytes: int
    running: int


@dataclass(frozen=True)
class Standing:
    """A user's tier, effective limits (tier values with their overrides) and suspension."""

    tier: Tier
    limits: Limits
    overrides: dict[str, int]
    suspended: bool
    suspended_why: str
    admin_by_key: bool


def user_tier(store: Store, config: Config, user: User) -> tuple[Tier, bool]:
    """Return the user's tier, and whether one of their keys is listed in `--admins`."""
    if config.admins:
        prints = {key.fingerprint for key in store.list_keys(user.id)}
        if prints & set(config.admins):
            return Tier.ADMIN, True
    row = TrustStore(store).get(user.id)
    if row is None:
        return Tier(config.default_tier), False
    return Tier(row.tier), False


def standing(store: Store, config: Config, user: User) -> Standing:
    tier, by_key = user_tier(store, config, user)
    trust = TrustStore(store)
    overrides = trust.overrides(user.id)
    row = trust.get(user.id)
    return Standing(
        tier=tier,
        limits=apply_overrides(tier_limits(config, tier), overrides),
        overrides=overrides,
        suspended=row is not None and row.suspended_at is not None,
        suspended_why=row.suspended_why if row is not None else "",
        admin_by_key=by_key,
    )


def usage(store: Store, owner_id: int, *, excluding: int | None = None) -> Usage:
    """Return what the owner's VMs take, leaving out the VM with id `excluding`.

    Disk use is the size of each disk plus the saved state of each suspended VM.
    """
    vms = [vm for vm in store.list_vms(owner_id=owner_id) if vm.id != excluding]
    saved_states = SuspendStore(store).state_bytes_of_owner(owner_id, excluding=excluding)
    return Usage(
        vms=len(vms),
        disk_bytes=sum(vm.disk_bytes for vm in vms) + saved_states,
        running=sum(1 for vm in vms if vm.state in ACTIVE_STATES),
    )


def _key(name: str) -> LimitKey:
    return next(key for key in LIMIT_KEYS if key.field == name)


def _refuse(
    user: User, current: Standing, field: str, request: str, *, use: int | None, hint: str
) -> QuotaExceeded:
    """Return the error for `request` over the limit `field`; `use` is None for per-VM limits."""
    key = _key(field)
    limit = format_limit(key, getattr(current.limits, field))
    source = f'tier "{current.tier}"'
    if field in current.overrides:
        source += " with a limit set for you"
    using = f", and you use {format_limit(key, use)}" if use is not None else ""
    message = (
        f"{request} is over your limit of {key.title}: {limit} ({source}){using};"
        f' {hint} or ask an admin to raise "{key.name}" (run "whoami" to see your limits)'
    )
    log.info("user=%s quota refused: %s", user.handle, message)
    return QuotaExceeded(message)


def _check_active(user: User, current: Standing) -> None:
    if current.suspended:
        raise PermissionDenied(f'user "{user.handle}" is suspended: ask an admin to reinstate the account')


def _check_shape(user: User, current: Standing, cpus: int, memory_mb: int) -> None:
    """Check the limits that apply to each VM on its own."""
    if cpus > current.limits.cpus:
        raise _refuse(user, current, "cpus", f"{cpus} vCPUs", use=None, hint="choose fewer vCPUs")
    if memory_mb > current.limits.memory_mb:
        request = format_limit(_key("memory_mb"), memory_mb)
        raise _refuse(user, current, "memory_mb", f"{request} of memory", use=None, hint="choose less memory")


def check_new(
    store: Store, config: Config, owner: User, *, cpus: int, memory_mb: int, disk_bytes: int
) -> None:
    """Check a new VM (`new`, `cp`) that boots at once with these resources.

    :raise PermissionDenied: the owner is suspended.
    :raise QuotaExceeded: a limit would be passed.
    """
    current = standing(store, config, owner)
    _check_active(owner, current)
    used = usage(store, owner.id)
    if used.vms + 1 > current.limits.vms:
        raise _refuse(owner, current, "vms", "one more VM", use=used.vms, hint="remove a VM with rm")
    _check_shape(owner, current, cpus, memory_mb)
    if used.disk_bytes + disk_bytes > current.limits.disk_bytes:
        request = f"{format_limit(_key('disk_bytes'), disk_bytes)} more disk"
        raise _refuse(
            owner,
            current,
            "disk_bytes",
            request,
            use=used.disk_bytes,
            hint="choose a smaller --disk or remove a VM",
        )
    if used.running + 1 > current.limits.running:
        raise _refuse(
            owner, current, "running", "one more running VM", use=used.running, hint="stop a VM first"
        )


def check_start(store: Store, config: Config, vm: VM, *, cpus: int, memory_mb: int) -> None:
    """Check booting a stopped VM with these resources (a pending resize included).

    :raise PermissionDenied: the owner is suspended.
    :raise QuotaExceeded: a limit would be passed.
    """
    owner = store.get_user(vm.owner_id)
    current = standing(store, config, owner)
    _check_active(owner, current)
    used = usage(store, owner.id, excluding=vm.id)
    _check_shape(owner, current, cpus, memory_mb)
    if used.running + 1 > current.limits.running:
        raise _refuse(
            owner, current, "running", f'starting "{vm.name}"', use=used.running, hint="stop a VM first"
        )


def check_resize(store: Store, config: Config, vm: VM, *, cpus: int, memory_mb: int, disk_bytes: int) -> None:
    """Check resizing `vm` to these resources.

    :raise PermissionDenied: the owner is suspended.
    :raise QuotaExceeded: a limit would be passed.
    """
    owner = store.get_user(vm.owner_id)
    current = standing(store, config, owner)
    _check_active(owner, current)
    used = usage(store, owner.id)
    _check_shape(owner, current, cpus, memory_mb)
    grown = disk_bytes - vm.disk_bytes
    if grown > 0 and used.disk_bytes + grown > current.limits.disk_bytes:
        request = f"{format_limit(_key('disk_bytes'), grown)} more disk"
        raise _refuse(
            owner, current, "disk_bytes", request, use=used.disk_bytes, hint="choose a smaller --disk"
        )


def describe(store: Store, config: Config, user: User) -> tuple[dict[str, object], list[str]]:
    """Return the user's tier, limits and use as data and as lines, for `whoami` and `admin users`."""
    current = standing(store, config, user)
    used = usage(store, user.id)
    use_by_field = {"vms": used.vms, "disk_bytes": used.disk_bytes, "running": used.running}
    limits: dict[str, object] = {}
    lines = [f"tier:     {current.tier}" + (" (suspended)" if current.suspended else ""), "limits:"]
    for key in LIMIT_KEYS:
        value = getattr(current.limits, key.field)
        use = use_by_field.get(key.field)
        limits[key.name] = {
            "limit": value,
            "use": use,
            "override": key.field in current.overrides,
        }
        shown = format_limit(key, value)
        if use is not None:
            shown = f"{format_limit(key, use)} of {shown}"
        marker = " (set for you)" if key.field in current.overrides else ""
        lines.append(f"  {key.title + ':':<17} {shown}{marker}")
    data: dict[str, object] = {
        "tier": current.tier.value,
        "suspended": current.suspended,
        "limits": limits,
    }
    return data, lines
