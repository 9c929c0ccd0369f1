"""VM names and user handles: validation and generated adjective-noun names."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from ussycode.errors import InvalidInput

VM_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
HANDLE_RE = re.compile(r"^[a-z][a-z0-9_-]{1,22}[a-z0-9]$")

# Names that would collide with platform hosts or confuse users reading a URL.
RESERVED = frozenset(
    {
        "www",
        "api",
        "admin",
        "root",
        "ussycode",
        "localhost",
        "mail",
        "ssh",
        "login",
        "auth",
        "status",
        "help",
        "new",
        "ls",
        "exec",
        "metadata",
        "caddy",
        "gateway",
    }
)

ADJECTIVES = (
    "mild",
    "brave",
    "calm",
    "eager",
    "fancy",
    "gentle",
    "happy",
    "jolly",
    "kind",
    "lively",
    "merry",
    "nimble",
    "proud",
    "quick",
    "quiet",
    "rapid",
    "shy",
    "silly",
    "snug",
    "swift",
    "tidy",
    "witty",
    "zesty",
    "bold",
    "bright",
    "cosy",
    "crisp",
    "daring",
    "fuzzy",
    "lucky",
    "noble",
    "plucky",
    "sunny",
    "sleek",
    "spry",
    "stout",
    "vivid",
    "warm",
    "wise",
    "young",
)
NOUNS = (
    "owl",
    "otter",
    "fox",
    "lynx",
    "heron",
    "badger",
    "bison",
    "crane",
    "finch",
    "gecko",
    "hare",
    "ibis",
    "koala",
    "lemur",
    "mole",
    "newt",
    "orca",
    "panda",
    "quail",
    "raven",
    "seal",
    "tapir",
    "urchin",
    "vole",
    "wren",
    "yak",
    "zebra",
    "moose",
    "puffin",
    "robin",
    "stoat",
    "trout",
    "walrus",
    "beaver",
    "camel",
    "dingo",
    "egret",
    "ferret",
    "goose",
    "hippo",
)


def check_vm_name(name: str) -> str:
    """Return `name` if it is a valid VM name, else raise `InvalidInput` saying what is allowed."""
    if not VM_NAME_RE.match(name) or "--" in name:
        raise InvalidInput(
            f'invalid VM name "{name}": use 3 to 32 lowercase letters, digits and single dashes,'
            " starting with a letter and not ending with a dash"
        )
    if name in RESERVED:
        raise InvalidInput(f'invalid VM name "{name}": the name is reserved, choose another')
    return name


def check_handle(handle: str) -> str:
    """Return `handle` if it is a valid user handle, else raise `InvalidInput`."""
    if not HANDLE_RE.match(handle):
        raise InvalidInput(
            f'invalid handle "{handle}": use 3 to 24 lowercase letters, digits, - or _,'
            " starting with a letter"
        )
    if handle in RESERVED:
        raise InvalidInput(f'invalid handle "{handle}": the handle is reserved, choose another')
    return handle


def generate_name(is_taken: Callable[[str], bool], attempts: int = 50) -> str:
    """Return a free adjective-noun name, adding a number when the plain pairs keep colliding."""
    for attempt in range(attempts):
        name = f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}"
        if attempt >= attempts // 2:
            name = f"{name}-{secrets.randbelow(1000)}"
        if not is_taken(name):
            return name
    raise InvalidInput("could not generate a free name: pass one with --name")
