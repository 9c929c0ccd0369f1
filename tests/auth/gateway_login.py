"""SSH logins for the admission tests: the platform's ssh command with the auth banner shown,
from a chosen source address and to a chosen gateway address."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from tests.framework.platform import Platform, Result, SSHUser


def key_fingerprint(user: SSHUser) -> str:
    """Return the SHA256 fingerprint of the user's key, as `ssh-keygen -l` prints it."""
    output = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{user.key}.pub"], capture_output=True, text=True, check=True
    ).stdout
    return output.split()[1]


def public_key(user: SSHUser) -> str:
    return (user.key.parent / f"{user.key.name}.pub").read_text().strip()


def login(
    platform: Platform,
    user: SSHUser,
    command: Sequence[str] | str,
    *,
    login_name: str | None = None,
    host: str = "127.0.0.1",
    bind: str | None = None,
) -> Result:
    """Run one command through the gateway; stderr holds the auth banner of a refusal."""
    argv = platform.ssh_argv(user, login_name)
    argv = ["LogLevel=INFO" if arg == "LogLevel=ERROR" else arg for arg in argv]
    argv[-1] = argv[-1].replace("@127.0.0.1", f"@{host}")
    if bind is not None:
        argv[1:1] = ["-b", bind]
    argv += [command] if isinstance(command, str) else list(command)
    completed = platform.ns.run(argv, timeout=60, check=False, text=False)
    return Result(
        completed.returncode,
        completed.stdout.decode(errors="replace"),
        completed.stderr.decode(errors="replace"),
    )
