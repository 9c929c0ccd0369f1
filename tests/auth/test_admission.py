"""Admission of SSH keys with the real gateway and OpenSSH client: Routussy (with a stand-in
on loopback), Tailscale-range trust, invitations, and the limit on failed logins.

Each module-scoped platform serves the tests of one mode; the tests of a mode run in file order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth.gateway_login import key_fingerprint, login, public_key
from tests.conftest import require_root
from tests.framework.netns import end_pid
from tests.framework.platform import Platform, wait_until

pytestmark = pytest.mark.netns

STANDIN = Path(__file__).with_name("routussy_standin.py")
STANDIN_PORT = 18181
INTERNAL_KEY = "test-internal-key-7f3a9c"
REQUEST_HINT = "/ussycode-request"
UNAVAILABLE = "the access service is unavailable"


class Routussy:
    """The stand-in process inside the platform's namespace and the file it answers from."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.answer = platform.workdir / "routussy-answer.txt"
        self.process: subprocess.Popen[bytes] | None = None

    def set(self, body: str, status: int = 200) -> None:
        self.answer.write_text(f"{status}\n{body}")

    def approve(self, *fingerprints: str) -> None:
        self.set(json.dumps({"keys": [{"fingerprint": fp, "discord": "123"} for fp in fingerprints]}))

    def requests(self) -> list[str]:
        log = self.answer.with_suffix(".log")
        return log.read_text().splitlines() if log.exists() else []

    def start(self) -> None:
        argv = [sys.executable, str(STANDIN), "127.0.0.1", str(STANDIN_PORT), INTERNAL_KEY, str(self.answer)]
        self.process = self.platform.ns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{STANDIN_PORT}/ussycode/authorized-keys"

        def answers() -> bool:
            probe = self.platform.ns.run(["curl", "-s", "-o", "/dev/null", url], check=False, timeout=10)
            return probe.returncode == 0

        wait_until(answers, 15, "the Routussy stand-in to listen")

    def stop(self) -> None:
        if self.process is not None:
            end_pid(self.process.pid)
            self.process.wait(timeout=5)
            self.process = None


@pytest.fixture(scope="module")
def routussy_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Routussy]]:
    require_root()
    env = {
        "USSYCODE_ADMISSION": "routussy",
        "USSYCODE_ROUTUSSY_URL": f"http://127.0.0.1:{STANDIN_PORT}",
        "USSYCODE_ROUTUSSY_INTERNAL_KEY": INTERNAL_KEY,
        "USSYCODE_ROUTUSSY_CACHE_SECONDS": "0",
        "USSYCODE_AUTH_FAILURES": "1000",
    }
    with Platform(tmp_path_factory.mktemp("routussy"), extra_env=env) as platform:
        routussy = Routussy(platform)
        routussy.set(json.dumps({"keys": []}))
        routussy.start()
        yield platform, routussy
        routussy.stop()


def test_routussy_approved_key_admitted(routussy_site: tuple[Platform, Routussy]) -> None:
    platform, routussy = routussy_site
    alice = platform.make_user("alice")
    routussy.approve(key_fingerprint(alice))
    result = login(platform, alice, "whoami --json")
    assert result.status == 0, result.stderr
    assert json.loads(result.stdout)["handle"] == "alice"
    assert routussy.requests()[-1].endswith("authorized=True")


def test_routussy_unknown_key_refused(routussy_site: tuple[Platform, Routussy]) -> None:
    platform, routussy = routussy_site
    alice = platform.make_user("alice")
    bob = platform.make_user("bob")
    routussy.approve(key_fingerprint(alice))
    result = login(platform, bob, "whoami")
    assert result.status == 255
    assert REQUEST_HINT in result.stderr
    assert key_fingerprint(bob) in result.stderr


def test_routussy_key_not_logged(routussy_site: tuple[Platform, Routussy]) -> None:
    platform, _ = routussy_site
    assert INTERNAL_KEY not in platform.log_path.read_text()
    assert "refused (not approved)" in platform.log_path.read_text()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, "not json at all"),
        (200, '{"keys": "FINGERPRINT"}'),
        (200, '{"keys": ["FINGERPRINT", 5]}'),
        (200, '{"keys": ["FINGERPRINT", "MD5:00:11"]}'),
        (200, '{"keys": [{"name": "FINGERPRINT"}]}'),
        (200, '{"approved": ["FINGERPRINT"]}'),
        (500, '{"keys": ["FINGERPRINT"]}'),
        (302, '{"keys": ["FINGERPRINT"]}'),
    ],
)
def test_routussy_malformed_answer_refused(
    routussy_site: tuple[Platform, Routussy], status: int, body: str
) -> None:
    platform, routussy = routussy_site
    alice = platform.make_user("alice")
    carol = platform.make_user("carol")
    routussy.approve(key_fingerprint(alice))
    assert login(platform, alice, "whoami").status == 0
    before = len(routussy.requests())
    routussy.set(body.replace("FINGERPRINT", key_fingerprint(carol)), status)
    refused = login(platform, carol, "whoami")
    assert refused.status == 255
    assert UNAVAILABLE in refused.stderr
    assert len(routussy.requests()) > before
    known = login(platform, alice, "whoami --json")
    assert known.status == 0, known.stderr


def test_routussy_down_uses_cache(routussy_site: tuple[Platform, Routussy]) -> None:
    platform, routussy = routussy_site
    alice = platform.make_user("alice")
    dave = platform.make_user("dave")
    routussy.approve(key_fingerprint(alice), key_fingerprint(dave))
    assert login(platform, alice, "whoami").status == 0
    routussy.stop()
    try:
        known = login(platform, alice, "whoami --json")
        assert known.status == 0, known.stderr
        unknown = login(platform, dave, "whoami")
        assert unknown.status == 255
        assert UNAVAILABLE in unknown.stderr
        assert "unreachable" in platform.log_path.read_text()
    finally:
        routussy.start()


def test_routussy_withdrawn_approval_refused(routussy_site: tuple[Platform, Routussy]) -> None:
    platform, routussy = routussy_site
    alice = platform.make_user("alice")
    routussy.approve(key_fingerprint(alice))
    assert login(platform, alice, "whoami").status == 0
    routussy.approve()
    result = login(platform, alice, "whoami")
    assert result.status == 255
    assert "was withdrawn" in result.stderr
    assert REQUEST_HINT in result.stderr


# Tailscale range: --admission routussy with Routussy unreachable, so only trust admits keys.


@pytest.fixture(scope="module")
def tailscale_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    require_root()
    env = {
        "USSYCODE_ADMISSION": "routussy",
        "USSYCODE_ROUTUSSY_URL": f"http://127.0.0.1:{STANDIN_PORT}",
        "USSYCODE_ROUTUSSY_INTERNAL_KEY": INTERNAL_KEY,
        "USSYCODE_TRUST_TAILSCALE": "yes",
    }
    with Platform(tmp_path_factory.mktemp("tailscale"), extra_env=env) as platform:
        for address in ("100.64.0.5/32", "100.128.0.5/32"):
            platform.ns.run(["ip", "addr", "add", address, "dev", "lo"])
        yield platform


def test_tailscale_range_trusted(tailscale_site: Platform) -> None:
    erin = tailscale_site.make_user("erin")
    result = login(tailscale_site, erin, "whoami --json", host="100.64.0.5", bind="100.64.0.5")
    assert result.status == 0, result.stderr
    assert json.loads(result.stdout)["handle"] == "erin"


@pytest.mark.parametrize("address", ["127.0.0.1", "100.128.0.5"])
def test_tailscale_other_address_refused(tailscale_site: Platform, address: str) -> None:
    frank = tailscale_site.make_user("frank")
    result = login(tailscale_site, frank, "whoami", host=address, bind=address)
    assert result.status == 255
    assert UNAVAILABLE in result.stderr


# Invitations, keys added by an admin, and the limit on failed logins.


@pytest.fixture(scope="module")
def invite_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    require_root()
    platform = Platform(tmp_path_factory.mktemp("invite"))
    root = platform.make_user("root-admin")
    platform.extra_env = {
        "USSYCODE_ADMISSION": "invite",
        "USSYCODE_ADMINS": key_fingerprint(root),
        "USSYCODE_AUTH_FAILURES": "3",
    }
    with platform:
        yield platform


def test_invite_unknown_key_refused(invite_site: Platform) -> None:
    stranger = invite_site.make_user("stranger")
    result = login(invite_site, stranger, "whoami", bind="127.0.0.11")
    assert result.status == 255
    assert "invited keys only" in result.stderr


def test_invite_admin_key_registers(invite_site: Platform) -> None:
    root = invite_site.make_user("root-admin")
    result = login(invite_site, root, "whoami --json")
    assert result.status == 0, result.stderr
    assert json.loads(result.stdout)["tier"] == "admin"


def test_invite_link_registers_once(invite_site: Platform) -> None:
    root = invite_site.make_user("root-admin")
    created = login(invite_site, root, "admin invite --tier citizen --json")
    assert created.status == 0, created.stderr
    command = json.loads(created.stdout)["command"]
    login_name = command.split()[-1].split("@")[0]
    assert login_name.startswith("invite-")

    gina = invite_site.make_user("gina")
    joined = login(invite_site, gina, "whoami --json", login_name=login_name)
    assert joined.status == 0, joined.stderr
    data = json.loads(joined.stdout)
    assert data["tier"] == "citizen"
    assert not data["handle"].startswith("invite")

    again = login(invite_site, gina, "whoami", login_name=login_name)
    assert again.status == 0, again.stderr
    hank = invite_site.make_user("hank")
    used = login(invite_site, hank, "whoami", login_name=login_name, bind="127.0.0.12")
    assert used.status == 255
    assert "invalid, used up or expired" in used.stderr


def test_invite_admin_added_key(invite_site: Platform) -> None:
    root = invite_site.make_user("root-admin")
    ivy = invite_site.make_user("ivy")
    added = login(invite_site, root, ["admin", "add-user", "ivy", public_key(ivy)])
    assert added.status == 0, added.stderr
    result = login(invite_site, ivy, "whoami --json")
    assert result.status == 0, result.stderr
    assert json.loads(result.stdout)["handle"] == "ivy"


def test_invite_add_user_bad_key(invite_site: Platform) -> None:
    root = invite_site.make_user("root-admin")
    result = login(invite_site, root, ["admin", "add-user", "joe", "ssh-ed25519 not-base64"])
    assert result.status == 1
    assert "invalid public key" in result.stderr


def test_invite_admin_command_needs_tier(invite_site: Platform) -> None:
    ivy = invite_site.make_user("ivy")
    result = login(invite_site, ivy, "admin users")
    assert result.status == 1
    assert 'needs the operator tier or higher, and "ivy" has newbie' in result.stderr


def test_invite_failed_logins_limited(invite_site: Platform) -> None:
    stranger = invite_site.make_user("stranger")
    for _ in range(3):
        assert login(invite_site, stranger, "whoami", bind="127.0.0.13").status == 255
    ivy = invite_site.make_user("ivy")
    blocked = login(invite_site, ivy, "whoami", bind="127.0.0.13")
    assert blocked.status == 255
    assert "too many failed logins from 127.0.0.13" in blocked.stderr
    other = login(invite_site, ivy, "whoami", bind="127.0.0.14")
    assert other.status == 0, other.stderr
