"""The admin panel over HTTP with curl: sign-in, tiers, CSRF and Origin checks, the audit log,
and the same panel behind Caddy on the main domain. The browser tests with a VM are in
test_admin_panel_browser.py."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator

import pytest

from tests.auth.gateway_login import key_fingerprint, login
from tests.conftest import require_root
from tests.framework.platform import Platform, Result

pytestmark = pytest.mark.netns

PANEL = "http://127.0.0.1:9091/admin"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    require_root()
    platform = Platform(tmp_path_factory.mktemp("panel"))
    root = platform.make_user("root-admin")
    platform.extra_env = {"USSYCODE_ADMINS": key_fingerprint(root)}
    with platform:
        for name in ("root-admin", "bob"):
            assert login(platform, platform.make_user(name), "whoami").status == 0
        yield platform


def login_token(platform: Platform, name: str) -> str:
    result = login(platform, platform.make_user(name), "browser --json")
    assert result.status == 0, result.stderr
    url = json.loads(result.stdout)["url"]
    return str(url.split("token=")[1])


def curl(platform: Platform, url: str, *extra: str) -> Result:
    argv = ["curl", "-sS", "--max-time", "30", "-w", "\n%{http_code}", *extra, url]
    completed = platform.ns.run(argv, timeout=40, check=False)
    body, _, code = completed.stdout.rpartition("\n")
    return Result(int(code) if code.isdigit() else 0, body, completed.stderr)


def signed_in(platform: Platform, name: str) -> str:
    """Sign `name` in on the panel's own address; return the cookie jar's path."""
    jar = str(platform.workdir / f"{name}-panel.cookies")
    reply = curl(platform, f"{PANEL}/login?token={login_token(platform, name)}", "-c", jar, "-b", jar)
    assert reply.status == 303, reply.stdout
    return jar


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert match is not None, "no CSRF token in the page"
    return match.group(1)


def test_panel_login_page(site: Platform) -> None:
    reply = curl(site, f"{PANEL}/")
    assert reply.status == 200
    assert "Login link" in reply.stdout
    assert "browser" in reply.stdout


def test_panel_bad_login_link(site: Platform) -> None:
    reply = curl(site, f"{PANEL}/login?token={'x' * 43}")
    assert reply.status == 401
    assert "invalid, was already used, or has expired" in reply.stdout


def test_panel_admin_sees_users(site: Platform) -> None:
    jar = signed_in(site, "root-admin")
    reply = curl(site, f"{PANEL}/users", "-b", jar)
    assert reply.status == 200
    assert "bob" in reply.stdout
    assert key_fingerprint(site.make_user("bob")) in reply.stdout


def test_panel_non_operator_refused(site: Platform) -> None:
    jar = signed_in(site, "bob")
    reply = curl(site, f"{PANEL}/users", "-b", jar)
    assert reply.status == 403
    assert "has the newbie tier" in reply.stdout


def test_panel_post_without_csrf_refused(site: Platform) -> None:
    jar = signed_in(site, "root-admin")
    reply = curl(site, f"{PANEL}/users/bob/trust", "-b", jar, "-d", "tier=admin")
    assert reply.status == 403
    assert "security token is missing or wrong" in reply.stdout
    whoami = json.loads(login(site, site.make_user("bob"), "whoami --json").stdout)
    assert whoami["tier"] == "newbie"


def test_panel_post_other_origin_refused(site: Platform) -> None:
    jar = signed_in(site, "root-admin")
    token = csrf_of(curl(site, f"{PANEL}/users", "-b", jar).stdout)
    reply = curl(
        site,
        f"{PANEL}/users/bob/trust",
        "-b",
        jar,
        "-H",
        "Origin: http://evil.test",
        "-d",
        f"tier=admin&csrf={token}",
    )
    assert reply.status == 403
    assert "another site" in reply.stdout


def test_panel_set_limit_audited(site: Platform) -> None:
    jar = signed_in(site, "root-admin")
    token = csrf_of(curl(site, f"{PANEL}/users", "-b", jar).stdout)
    reply = curl(site, f"{PANEL}/users/bob/limit", "-b", jar, "-d", f"key=vms&value=7&csrf={token}")
    assert reply.status == 303
    whoami = json.loads(login(site, site.make_user("bob"), "whoami --json").stdout)
    assert whoami["limits"]["vms"]["limit"] == 7
    audit = curl(site, f"{PANEL}/audit?action=admin.set-limit", "-b", jar)
    assert "root-admin via admin panel" in audit.stdout
    assert "vms = 7" in audit.stdout


def test_panel_settings_hide_secret(site: Platform) -> None:
    jar = signed_in(site, "root-admin")
    reply = curl(site, f"{PANEL}/settings", "-b", jar)
    assert reply.status == 200
    assert "routussy_internal_key" in reply.stdout
    assert "(not set)" in reply.stdout


def test_panel_behind_caddy(site: Platform) -> None:
    jar = str(site.workdir / "caddy-panel.cookies")
    resolve = [
        "--resolve",
        f"{site.domain}:443:127.0.0.1",
        "--cacert",
        str(site.root_ca),
        "-c",
        jar,
        "-b",
        jar,
    ]
    signin = curl(
        site, f"https://{site.domain}/__ussycode/login?token={login_token(site, 'root-admin')}", *resolve
    )
    assert signin.status == 302, signin.stdout
    reply = curl(site, f"https://{site.domain}/admin/", *resolve)
    assert reply.status == 200
    assert "Dashboard" in reply.stdout
    assert "Signed in as <b>root-admin</b>" in reply.stdout


def test_panel_pool_vm_console_not_found(site: Platform) -> None:
    # A warm-pool VM is no user's: the panel names it nowhere, so its console page must not exist
    # either. A store row owned by the pool's user takes the place of a booted pool VM.
    with sqlite3.connect(site.data_dir / "ussycode.db") as db:
        db.execute(
            "INSERT INTO vms (name, owner_id, state, image, image_path, cpus, memory_mb, disk_bytes,"
            " ip, mac, created_at, updated_at) SELECT '_pool-0000test', id, 'stopped', 'ussyuntu',"
            " '/nonexistent', 1, 512, 1073741824, '10.99.0.250', '52:54:00:99:00:fa', '', ''"
            " FROM users WHERE handle = '_pool'"
        )
    try:
        jar = signed_in(site, "root-admin")
        reply = curl(site, f"{PANEL}/vms/_pool-0000test/console", "-b", jar)
        assert reply.status == 404
        assert "No VM with that name." in reply.stdout
        assert "_pool-0000test" not in curl(site, f"{PANEL}/vms", "-b", jar).stdout
    finally:
        with sqlite3.connect(site.data_dir / "ussycode.db") as db:
            db.execute("DELETE FROM vms WHERE name = '_pool-0000test'")
