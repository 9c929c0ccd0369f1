"""Sign usy0 tokens the way the README tells users to: with `ssh-keygen -Y sign`."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ssh_signature(key: Path, data: bytes, namespace: str) -> bytes:
    """Return the binary SSHSIG blob that `ssh-keygen -Y sign` makes over `data`."""
    result = subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-n", namespace, "-f", str(key)],
        input=data,
        capture_output=True,
        check=True,
    )
    armored = result.stdout.decode()
    body = "".join(line for line in armored.splitlines() if not line.startswith("-----"))
    return base64.b64decode(body)


def sign_usy0(key: Path, permissions: dict[str, Any] | bytes, namespace: str) -> str:
    raw = permissions if isinstance(permissions, bytes) else json.dumps(permissions).encode()
    return f"usy0.{b64url(raw)}.{b64url(ssh_signature(key, raw, namespace))}"
