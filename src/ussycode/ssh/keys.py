"""SSH keys the platform holds: the gateway's host key and the key it uses to log into VMs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import asyncssh

from ussycode.errors import ConfigError

log = logging.getLogger(__name__)


def load_or_create_key(path: Path, comment: str) -> asyncssh.SSHKey:
    """Load an Ed25519 private key from `path`, creating it (mode 600) on first use."""
    if path.exists():
        try:
            return asyncssh.read_private_key(path)
        except (OSError, asyncssh.KeyImportError) as exc:
            raise ConfigError(f"cannot read key {path}: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key())
    temporary.rename(path)
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key())
    log.info("generated key %s (%s)", path, key.get_fingerprint())
    return key


def public_key_line(key: asyncssh.SSHKey, comment: str = "") -> str:
    """Return the OpenSSH one-line form of the public half of `key`."""
    line = key.export_public_key("openssh").decode().strip()
    parts = line.split()
    return " ".join(parts[:2] + ([comment] if comment else []))


def fingerprint(key: asyncssh.SSHKey) -> str:
    """Return the SHA256 fingerprint as OpenSSH prints it, e.g. SHA256:abc..."""
    return key.get_fingerprint("sha256")
