"""Trust tiers and the resource limits that come with them.

Each user has one tier: newbie, citizen, operator or admin. A tier sets five limits, whose
defaults are settings (`--tier-newbie` and so on), and an admin may replace any limit for one
user. Operators and admins may open the admin panel; only admins may change other users.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace

from ussycode.config import Config, format_size, parse_size

MIB = 1024**2


class Tier(enum.StrEnum):
    NEWBIE = "newbie"
    CITIZEN = "citizen"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Tier).index(self)


TIER_NAMES = tuple(tier.value for tier in Tier)


@dataclass(frozen=True)
class Limits:
    """The limits of one user: VMs, vCPUs and memory per VM, disk of all VMs, running VMs."""

    vms: int
    cpus: int
    memory_mb: int
    disk_bytes: int
    running: int


@dataclass(frozen=True)
class LimitKey:
    """One limit as users name it (`memory`), its field in `Limits` and how it reads."""

    name: str
    field: str
    title: str


LIMIT_KEYS: tuple[LimitKey, ...] = (
    LimitKey("vms", "vms", "VMs"),
    LimitKey("cpus", "cpus", "vCPUs per VM"),
    LimitKey("memory", "memory_mb", "memory per VM"),
    LimitKey("disk", "disk_bytes", "disk of all VMs"),
    LimitKey("running", "running", "running VMs"),
)
LIMIT_NAMES = tuple(key.name for key in LIMIT_KEYS)


def limit_key(name: str) -> LimitKey:
    """Return the limit called `name`.

    :raise ValueError: no limit has that name.
    """
    for key in LIMIT_KEYS:
        if name in (key.name, key.field):
            return key
    raise ValueError(f"unknown limit {name!r}: expected one of {', '.join(LIMIT_NAMES)}")


def parse_limit_value(key: LimitKey, text: str) -> int:
    """Parse a limit's value: a count for vms, cpus and running, a size for memory and disk.

    Memory without a unit is MiB and disk without a unit is GiB; 0 is allowed for every limit.
    :raise ValueError: the text is not a value for that limit.
    """
    text = text.strip()
    if key.field in ("memory_mb", "disk_bytes"):
        if text == "0":
            return 0
        size = parse_size(text, default_unit="M" if key.field == "memory_mb" else "G")
        return -(-size // MIB) if key.field == "memory_mb" else size
    if not text.isdigit():
        raise ValueError(f"{key.name} must be a whole number of 0 or more, not {text!r}")
    return int(text)


def format_limit(key: LimitKey, value: int) -> str:
    """Render a limit's value as `parse_limit_value` reads it, e.g. `2G` for memory."""
    if key.field == "memory_mb":
        return format_size(value * MIB) if value else "0"
    if key.field == "disk_bytes":
        return format_size(value) if value else "0"
    return str(value)


def parse_tier_limits(text: str) -> Limits:
    """Parse `vms=2,cpus=1,memory=2G,disk=20G,running=1`; every key must be given once.

    :raise ValueError: a key is missing, repeated or unknown, or a value is invalid.
    """
    values: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, not {part.strip()!r}")
        key = limit_key(name.strip())
        if key.field in values:
            raise ValueError(f"{key.name} is given twice")
        values[key.field] = parse_limit_value(key, value)
    missing = [key.name for key in LIMIT_KEYS if key.field not in values]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return Limits(**values)


def tier_limits(config: Config, tier: Tier) -> Limits:
    """Return the limits the settings give `tier`."""
    text: str = getattr(config, f"tier_{tier.value}")
    return parse_tier_limits(text)


def apply_overrides(limits: Limits, overrides: dict[str, int]) -> Limits:
    """Return `limits` with the values of `overrides` (by field name) in place of the tier's."""
    known = {item.name for item in fields(Limits)}
    return replace(limits, **{name: value for name, value in overrides.items() if name in known})
