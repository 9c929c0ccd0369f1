from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.framework.tokens import b64url, sign_usy0, ssh_signature
from ussycode.auth.ratelimit import RateLimiter
from ussycode.auth.signed_tokens import (
    DEFAULT_CMDS,
    MAX_TOKEN_BYTES,
    InvalidToken,
    Permissions,
    parse_duration,
    parse_permissions,
    parse_usy0,
    parse_usy1,
)
from ussycode.errors import InvalidInput

NAMESPACE = "v0@ussy.localhost"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    made = {}
    for kind, extra in (("ed25519", []), ("rsa", ["-b", "2048"]), ("ecdsa", [])):
        path = folder / kind
        subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-f", str(path)], check=True)
        made[kind] = path
    return made


def fingerprint(path: Path) -> str:
    output = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], capture_output=True, text=True, check=True)
    return output.stdout.split()[1]


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_usy0_valid_for_key_types(keys: dict[str, Path], kind: str) -> None:
    token = sign_usy0(keys[kind], {"cmds": ["ls"], "ctx": {"job": 7}}, NAMESPACE)
    signed = parse_usy0(token)
    assert signed.namespace == NAMESPACE
    assert signed.fingerprint == fingerprint(keys[kind])
    assert signed.permissions.cmds == ("ls",)
    assert signed.permissions.ctx == {"job": 7}


def test_usy0_tampered_permissions(keys: dict[str, Path]) -> None:
    token = sign_usy0(keys["ed25519"], {"cmds": ["ls"]}, NAMESPACE)
    _, _, signature = token.split(".")
    forged = f"usy0.{b64url(json.dumps({'cmds': ['rm']}).encode())}.{signature}"
    with pytest.raises(InvalidToken, match="does not match"):
        parse_usy0(forged)


def bad_tokens(key: Path) -> list[tuple[str, str]]:
    raw = b'{"cmds": ["ls"]}'
    blob = ssh_signature(key, raw, NAMESPACE)
    good_perm, good_sig = b64url(raw), b64url(blob)
    return [
        ("", "form usy0"),
        ("usy0", "form usy0"),
        ("usy1.abc", "form usy0"),
        (f"usy0.{good_perm}", "form usy0"),
        (f"usy0.{good_perm}.{good_sig}.extra", "form usy0"),
        (f"usy0.{good_perm}!.{good_sig}", "base64url"),
        (f"usy0.{good_perm}.{good_sig[:-20]}", "truncated"),
        (f"usy0.{good_perm}.{b64url(b'XXXXXX' + blob[6:])}", "not an SSH signature"),
        (f"usy0.{good_perm}.{b64url(blob + b'junk')}", "trailing data"),
        (f"usy0.{b64url(b'[1, 2]')}.{good_sig}", "JSON object"),
        (f"usy0.{b64url(b'not json')}.{good_sig}", "not valid JSON"),
        (f"usy0.{good_perm}.{b64url(b'')}", "base64url"),
        ("usy0." + "A" * MAX_TOKEN_BYTES + ".x", "too long"),
    ]


def test_usy0_malformed_tokens(keys: dict[str, Path]) -> None:
    for token, message in bad_tokens(keys["ed25519"]):
        with pytest.raises(InvalidToken) as caught:
            parse_usy0(token)
        assert message in caught.value.message, token[:80]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"cmds": ["ls"], "admin": true}', "unknown keys: admin"),
        (b'{"exp": 1, "exp": 2}', 'repeat the key "exp"'),
        (b'{"exp": "tomorrow"}', '"exp" must be an integer'),
        (b'{"nbf": true}', '"nbf" must be an integer'),
        (b'{"cmds": "ls"}', '"cmds" must be a list'),
        (b'{"cmds": ["ls", ""]}', '"cmds" must be a list'),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_permissions_strict(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidToken, match=message):
        parse_permissions(raw)


def test_permissions_defaults_and_parent_command() -> None:
    default = parse_permissions(b"{}")
    assert default.allowed_commands == DEFAULT_CMDS
    assert default.allows("ls")
    assert not default.allows("rm")
    parent_only = Permissions(None, None, ("ssh-key",), None)
    assert parent_only.allows("ssh-key")
    assert not parent_only.allows("ssh-key list")


def test_permissions_time_window() -> None:
    window = Permissions(exp=2000, nbf=1000, cmds=None, ctx=None)
    window.check_time(1500)
    with pytest.raises(InvalidToken, match="expired"):
        window.check_time(2000)
    with pytest.raises(InvalidToken, match="not valid yet"):
        window.check_time(999)


def test_usy1_form() -> None:
    assert parse_usy1("usy1.abc-_9") == "abc-_9"
    for bad in ("usy1.", "usy0.abc", "usy1.a b", "usy1.a.b!"):
        with pytest.raises(InvalidToken):
            parse_usy1(bad)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * 86400), ("1y", 365 * 86400), ("12h", 43200), ("never", None)]
)
def test_parse_duration_valid(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0d", "-1d", "3x", "d", "1.5d"])
def test_parse_duration_invalid(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid duration"):
        parse_duration(text)


def test_ratelimit_burst_then_refill() -> None:
    limiter = RateLimiter(rate=2, burst=3)
    assert [limiter.acquire("k", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k", now=0.0) == pytest.approx(0.5)
    assert limiter.acquire("other", now=0.0) == 0.0
    assert limiter.acquire("k", now=0.5) == 0.0
