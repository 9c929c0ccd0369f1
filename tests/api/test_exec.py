"""POST /exec through the real Caddy with tokens signed by `ssh-keygen -Y sign`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import require_root
from tests.framework.platform import USSYCODE, Platform, Result, SSHUser
from tests.framework.tokens import sign_usy0
from ussycode.api.server import OPENAPI_DOCUMENT

pytestmark = pytest.mark.netns

URL = "https://ussy.localhost/exec"
NAMESPACE = "v0@ussy.localhost"


def post(
    platform: Platform, body: str | None, token: str | None, *extra: str
) -> tuple[Result, dict[str, str]]:
    headers_file = platform.workdir / "headers.txt"
    argv = ["--resolve", "ussy.localhost:443:127.0.0.1", "-D", str(headers_file), *extra]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        argv += ["--data-binary", body]
    result = platform.curl(URL, *argv)
    headers = {}
    for line in headers_file.read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return result, headers


def check_schema(name: str, instance: object) -> None:
    document = json.loads(OPENAPI_DOCUMENT.read_text())
    jsonschema.validate(
        instance, {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def error_code(result: Result) -> str:
    document = json.loads(result.stdout)
    check_schema("Error", document)
    return str(document["error"]["code"])


def signup(platform: Platform, name: str) -> SSHUser:
    user = platform.make_user(name)
    assert platform.ssh(user, "whoami").status == 0
    return user


def test_exec_success_and_schema(platform: Platform) -> None:
    alice = signup(platform, "alice")
    token = sign_usy0(alice.key, {}, NAMESPACE)
    whoami, _ = post(platform, "whoami", token)
    assert whoami.status == 200, whoami.stdout
    check_schema("Whoami", json.loads(whoami.stdout))
    assert json.loads(whoami.stdout)["handle"] == "alice"
    listing, _ = post(platform, "ls", token)
    assert listing.status == 200
    check_schema("VMList", json.loads(listing.stdout))
    help_new, _ = post(platform, "new --help", token)
    assert help_new.status == 200
    assert json.loads(help_new.stdout)["name"] == "new"


def test_exec_error_statuses(platform: Platform) -> None:
    alice = signup(platform, "alice")
    token = sign_usy0(alice.key, {"cmds": ["whoami", "ls", "new", "start"]}, NAMESPACE)
    cases = [
        (post(platform, "whoami", None)[0], 401, "invalid_token"),
        (post(platform, "rm mild-owl --force", token)[0], 403, "forbidden"),
        (post(platform, "frobnicate", token)[0], 404, "unknown_command"),
        (post(platform, None, token, "-X", "GET")[0], 405, "method_not_allowed"),
        (post(platform, "x" * (64 * 1024 + 1), token)[0], 413, "body_too_large"),
        (post(platform, "start nope", token)[0], 422, "not_found"),
        (post(platform, "new --name Bad_Name", token)[0], 422, "invalid_input"),
        (post(platform, "", token)[0], 422, "invalid_input"),
        (post(platform, 'new --name "open', token)[0], 422, "invalid_input"),
    ]
    for result, status, code in cases:
        assert result.status == status, result.stdout
        assert error_code(result) == code
    message = json.loads(post(platform, "start nope", token)[0].stdout)["error"]["message"]
    assert message == 'no VM named "nope": run "ls" to see your VMs'
    assert platform.ssh(alice, "whoami").status == 0


def test_exec_malformed_tokens_401(platform: Platform, tmp_path: Path) -> None:
    alice = signup(platform, "alice")
    stranger = platform.make_user("stranger")
    good = sign_usy0(alice.key, {}, NAMESPACE)
    permissions, signature = good.split(".")[1:]
    tokens = [
        "garbage",
        "usy0.%%%.%%%",
        f"usy0.{permissions}.{signature[:-10]}",
        f"usy0.{permissions}.{signature}A",
        sign_usy0(alice.key, {}, "v0@elsewhere.example"),
        sign_usy0(stranger.key, {}, NAMESPACE),
        sign_usy0(alice.key, b'{"cmds": ["ls"], "root": true}', NAMESPACE),
        "usy0." + "A" * 9000 + ".B",
        "usy1.doesnotexist",
    ]
    for token in tokens:
        result, headers = post(platform, "whoami", token)
        assert result.status == 401, token[:60]
        assert error_code(result) == "invalid_token"
        assert headers.get("www-authenticate") == "Bearer"
    assert platform.ssh(alice, "whoami").status == 0


def test_exec_time_window(platform: Platform) -> None:
    alice = signup(platform, "alice")
    now = int(time.time())
    expired = sign_usy0(alice.key, {"exp": now - 1}, NAMESPACE)
    future = sign_usy0(alice.key, {"nbf": now + 3600}, NAMESPACE)
    window = sign_usy0(alice.key, {"nbf": now - 10, "exp": now + 3600}, NAMESPACE)
    assert "expired" in json.loads(post(platform, "whoami", expired)[0].stdout)["error"]["message"]
    assert post(platform, "whoami", future)[0].status == 401
    assert post(platform, "whoami", window)[0].status == 200


def test_exec_parent_does_not_grant_subcommand(platform: Platform) -> None:
    alice = signup(platform, "alice")
    parent = sign_usy0(alice.key, {"cmds": ["ssh-key"]}, NAMESPACE)
    child = sign_usy0(alice.key, {"cmds": ["ssh-key list"]}, NAMESPACE)
    assert post(platform, "ssh-key list", parent)[0].status == 403
    assert post(platform, "ssh-key list", child)[0].status == 200


def test_exec_revoked_by_key_removal(platform: Platform) -> None:
    alice = signup(platform, "alice")
    second = platform.make_user("alice-laptop")
    public = (second.key.parent / f"{second.key.name}.pub").read_text().strip()
    added = platform.ssh(alice, ["ssh-key", "add", public, "--name", "laptop"])
    assert added.status == 0, added.stderr
    token = sign_usy0(second.key, {}, NAMESPACE)
    assert post(platform, "whoami", token)[0].status == 200
    listed = json.loads(platform.ssh(alice, "ssh-key list --json").stdout)
    laptop = next(key for key in listed if key["name"] == "laptop")
    assert laptop["last_used_at"] is not None
    assert platform.ssh(alice, "ssh-key remove laptop").status == 0
    revoked = post(platform, "whoami", token)[0]
    assert revoked.status == 401
    assert "not registered" in json.loads(revoked.stdout)["error"]["message"]
    last = platform.ssh(alice, "ssh-key remove " + listed[0]["fingerprint"])
    assert last.status == 1
    assert "cannot remove your last SSH key" in last.stderr


def test_exec_short_tokens_and_api_keys(platform: Platform) -> None:
    alice = signup(platform, "alice")
    bob = signup(platform, "bob")
    usy0 = sign_usy0(alice.key, {"cmds": ["whoami"]}, NAMESPACE)
    short = json.loads(platform.ssh(alice, ["token", "shorten", usy0, "--json"]).stdout)["token"]
    assert short.startswith("usy1.")
    assert json.loads(post(platform, "whoami", short)[0].stdout)["handle"] == "alice"
    assert post(platform, "ls", short)[0].status == 403
    stolen = platform.ssh(bob, ["token", "shorten", usy0])
    assert stolen.status == 1
    assert "not signed by one of your keys" in stolen.stderr

    minted = json.loads(
        platform.ssh(alice, "ssh-key generate-api-key --label ci --cmds ls,whoami --exp 30d --json").stdout
    )
    key_token = minted["token"]
    assert post(platform, "ls", key_token)[0].status == 200
    assert post(platform, "new", key_token)[0].status == 403
    listing = json.loads(platform.ssh(alice, "api-key list --json").stdout)
    assert {entry["kind"] for entry in listing} == {"short", "key"}
    assert next(entry for entry in listing if entry["id"] == minted["id"])["last_used_at"] is not None
    assert platform.ssh(bob, f"api-key revoke {minted['id']}").status == 1
    assert platform.ssh(alice, f"api-key revoke {minted['id']}").status == 0
    assert post(platform, "ls", key_token)[0].status == 401
    short_id = next(entry["id"] for entry in listing if entry["kind"] == "short")
    assert platform.ssh(alice, f"api-key revoke {short_id}").status == 0
    assert post(platform, "whoami", short)[0].status == 401
    unknown = platform.ssh(alice, ["ssh-key", "generate-api-key", "--cmds", "ls,nosuch"])
    assert unknown.status == 1
    assert 'unknown command "nosuch" in --cmds' in unknown.stderr
    expired = platform.ssh(alice, "ssh-key generate-api-key --exp 0d")
    assert expired.status == 1
    assert "invalid duration" in expired.stderr


def test_exec_openapi_served(platform: Platform) -> None:
    result = platform.curl("https://ussy.localhost/openapi.json", "--resolve", "ussy.localhost:443:127.0.0.1")
    assert result.status == 200
    document = json.loads(result.stdout)
    assert document["paths"]["/exec"]["post"]["operationId"] == "execCommand"
    assert document["servers"] == [{"url": "https://ussy.localhost"}]


def test_exec_rate_limited(tmp_path: Path) -> None:
    require_root()
    with Platform(tmp_path, extra_env={"USSYCODE_API_RATE": "0.5"}) as platform:
        alice = signup(platform, "alice")
        token = sign_usy0(alice.key, {}, NAMESPACE)
        statuses = [post(platform, "whoami", token)[0].status for _ in range(3)]
        assert statuses[:1] == [200]
        limited, headers = post(platform, "whoami", token)
        assert limited.status == 429
        assert error_code(limited) == "rate_limited"
        assert int(headers["retry-after"]) >= 1
        other = sign_usy0(platform.make_user("bob").key, {}, NAMESPACE)
        platform.ssh(platform.make_user("bob"), "whoami")
        assert post(platform, "whoami", other)[0].status == 200


def test_exec_docs_recipe_token(platform: Platform) -> None:
    alice = signup(platform, "alice")
    docs = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    recipe = docs.split("## usy0 tokens")[1].split("```sh\n")[1].split("```")[0]
    script = recipe.replace("~/.ssh/id_ed25519", str(alice.key)) + 'printf %s "$TOKEN"\n'
    made = subprocess.run(
        ["bash", "-euc", script], cwd=platform.workdir, capture_output=True, text=True, check=True
    )
    token = made.stdout
    assert token.startswith("usy0.")
    result, _ = post(platform, "whoami", token)
    assert result.status == 200, result.stdout
    assert post(platform, "rm x --force", token)[0].status == 403


def test_exec_cli_and_client(platform: Platform) -> None:
    alice = signup(platform, "alice")
    token = sign_usy0(alice.key, {"cmds": ["whoami", "start"]}, NAMESPACE)
    base = [
        USSYCODE,
        "exec",
        "--cacert",
        str(platform.root_ca),
        "--url",
        "https://ussy.localhost",
        "--token",
        token,
    ]
    ok = platform.ns.run([*base, "whoami"], check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["handle"] == "alice"
    failed = platform.ns.run([*base, "start nope"], check=False)
    assert failed.returncode == 1
    assert 'ussycode exec: 422 not_found: no VM named "nope"' in failed.stderr
    forbidden = platform.ns.run([*base, "ls"], check=False)
    assert forbidden.returncode == 1
    assert "403 forbidden" in forbidden.stderr
