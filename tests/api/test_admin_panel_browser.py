"""The admin panel in headless Chromium with one real VM: an admin signs in with a login link,
changes a tier and stops the VM, and finds both in the audit log; a form posted without its
CSRF token is refused; a user below the operator tier is refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.auth.gateway_login import key_fingerprint, login
from tests.conftest import require_image, require_root
from tests.framework.platform import Platform
from tests.sharing.chromium import BrowserError, Chromium

pytestmark = [pytest.mark.vm, pytest.mark.netns]

PANEL = "http://127.0.0.1:9091/admin"
VM = "panel-owl"


def login_url(platform: Platform, name: str) -> str:
    result = login(platform, platform.make_user(name), "browser --json")
    assert result.status == 0, result.stderr
    token = json.loads(result.stdout)["url"].split("token=")[1]
    return f"{PANEL}/login?token={token}"


def wait_for_text(browser: Chromium, text: str, timeout: float) -> str:
    """Poll the page until it shows `text`; return the page's text."""
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        try:
            if browser.evaluate("document.readyState") == "complete":
                shown = browser.text()
                if text in shown:
                    return shown
        except BrowserError:
            pass  # the page is between two documents
        time.sleep(0.3)
    raise AssertionError(f"the page did not show {text!r} within {timeout:g} s; it shows:\n{shown}")


def submit(browser: Chromium, action: str, values: dict[str, str]) -> None:
    """Fill the form that posts to `action` and submit it, as a person clicking its button."""
    script = (
        f"(() => {{ const form = document.querySelector('form[action=\"{action}\"]');"
        f" if (!form) return false; const values = {json.dumps(values)};"
        " for (const [name, value] of Object.entries(values)) form.elements[name].value = value;"
        " form.querySelector('button').click(); return true; })()"
    )
    assert browser.evaluate(script) is True, f"no form posts to {action}"


def test_panel_browser_admin_actions(tmp_path: Path) -> None:
    require_root()
    require_image()
    platform = Platform(tmp_path)
    root = platform.make_user("root-admin")
    platform.extra_env = {"USSYCODE_ADMINS": key_fingerprint(root)}
    with platform:
        assert login(platform, root, "whoami").status == 0
        bob = platform.make_user("bob")
        created = platform.ssh(bob, f"new --name {VM}")
        assert created.status == 0, created.stderr

        with Chromium(tmp_path / "admin-browser", [platform.root_ca], platform.ns.prefix()) as browser:
            landed = browser.open(login_url(platform, "root-admin"))
            assert landed == f"{PANEL}/"
            assert "Signed in as root-admin (admin)" in wait_for_text(browser, "Dashboard", 10)

            browser.open(f"{PANEL}/users")
            submit(browser, "/admin/users/bob/trust", {"tier": "citizen"})
            wait_for_text(browser, "bob is now citizen", 20)

            browser.open(f"{PANEL}/vms")
            submit(browser, f"/admin/vms/{VM}/stop", {})
            wait_for_text(browser, f"{VM} is stopped", 120)

            browser.open(f"{PANEL}/audit")
            audit = wait_for_text(browser, "admin.vm-stop", 10)
            assert "admin.set-trust" in audit
            assert "newbie -> citizen" in audit
            assert f"admin.vm-stop\t{VM}" in audit

            browser.screenshot(tmp_path / "admin-audit.png")
            browser.open(f"{PANEL}/users")
            stripped = browser.evaluate(
                "(() => { const form = document.querySelector('form[action=\"/admin/users/bob/trust\"]');"
                " form.querySelector('input[name=csrf]').remove(); return form.elements.length; })()"
            )
            assert stripped == 2
            submit(browser, "/admin/users/bob/trust", {"tier": "admin"})
            wait_for_text(browser, "security token is missing or wrong", 20)

        whoami = json.loads(login(platform, bob, "whoami --json").stdout)
        assert whoami["tier"] == "citizen"
        listing = json.loads(platform.ssh(bob, "ls --json").stdout)
        assert [vm["state"] for vm in listing if vm["name"] == VM] == ["stopped"]

        with Chromium(tmp_path / "bob-browser", [platform.root_ca], platform.ns.prefix()) as other:
            other.open(login_url(platform, "bob"))
            assert "has the citizen tier" in wait_for_text(other, "Not allowed", 10)
