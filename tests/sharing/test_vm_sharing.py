"""Sharing end to end: one real guest behind real Caddy and the real auth endpoint, in a namespace.

One VM serves the whole module (a boot takes a minute or more under TCG). Its app reports the
request it received (echo_app.py), on port 8080 for the VM's URL and on port 3000 for the
`<vm>--3000` URL. The tests run in file order and each leaves the VM's sharing as it found it.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import require_image, require_root
from tests.framework.platform import Platform, SSHUser, wait_until
from tests.framework.tokens import sign_usy0
from tests.sharing.chromium import Chromium
from tests.sharing.web import Reply, WebClient, cookie_attributes, sign_in
from ussycode.auth.cookies import SESSION_COOKIE
from ussycode.auth.invitations import verify_email
from ussycode.store import Store

pytestmark = [pytest.mark.vm, pytest.mark.netns]

VM = "share-owl"
DOMAIN = "ussy.localhost"
VM_URL = f"https://{VM}.{DOMAIN}/"
PORT_URL = f"https://{VM}--3000.{DOMAIN}/"
ECHO_APP = Path(__file__).with_name("echo_app.py")


class Site:
    """The platform, its users and the VM, shared by the module's tests."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.alice = platform.make_user("alice")
        self.bob = platform.make_user("bob")
        self.carol = platform.make_user("carol")
        self._clients = 0

    def run(self, user: SSHUser, command: str) -> str:
        result = self.platform.ssh(user, command)
        assert result.status == 0, f"{command}: {result.stderr}"
        return result.stdout

    def login_link(self, user: SSHUser) -> str:
        return str(json.loads(self.run(user, "browser --json"))["url"])

    def client(self, name: str) -> WebClient:
        """Return a client with a cookie jar of its own, like a fresh browser."""
        self._clients += 1
        jar = self.platform.workdir / f"{name}-{self._clients}.cookies"
        return WebClient(cacert=self.platform.root_ca, jar=jar, run=self._curl)

    def _curl(self, argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self.platform.ns.prefix(), *argv], capture_output=True, timeout=60, check=False
        )

    def signed_in(self, user: SSHUser, url: str = VM_URL) -> tuple[WebClient, Reply]:
        client = self.client(f"{user.name}-{urlsplit(url).hostname}")
        return client, sign_in(client, url, self.login_link(user))


def start_app(platform: Platform, user: SSHUser, port: int, name: str) -> None:
    upload = platform.ssh(user, "cat > echo_app.py", login=VM, stdin=ECHO_APP.read_bytes())
    assert upload.status == 0, upload.stderr
    command = f"setsid -f python3 echo_app.py 0.0.0.0 {port} {name} >/dev/null 2>&1 < /dev/null"
    started = platform.ssh(user, command, login=VM)
    assert started.status == 0, started.stderr

    def answers() -> bool:
        probe = f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/"
        return platform.ssh(user, probe, login=VM).stdout == "200"

    wait_until(answers, 60, f"the echo app on port {port} of {VM}")


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_root()
    require_image()
    failed_before = request.session.testsfailed
    with Platform(tmp_path_factory.mktemp("vm-sharing")) as platform:
        shared = Site(platform)
        try:
            for user in (shared.alice, shared.bob, shared.carol):
                assert platform.ssh(user, "whoami").status == 0
            created = platform.ssh(shared.alice, ["new", "--name", VM, "--json"])
            assert created.status == 0, created.stderr + platform.log_tail()
            start_app(platform, shared.alice, 8080, VM)
            start_app(platform, shared.alice, 3000, f"{VM}-3000")
            yield shared
        finally:
            if request.session.testsfailed > failed_before:
                platform.keep_logs("test_vm_sharing")


def test_vm_private_by_default(site: Site) -> None:
    client = site.client("anonymous")
    reply = client.get(VM_URL)
    assert reply.status == 401
    assert reply.json()["error"]["code"] == "unauthorized"
    browser = client.get(VM_URL, accept_html=True)
    assert browser.status == 302
    assert browser.location.startswith(f"https://{DOMAIN}/__ussycode/login?next=")
    assert parse_qs(urlsplit(browser.location).query)["next"] == [VM_URL]


def test_vm_owner_after_login(site: Site) -> None:
    _, reply = site.signed_in(site.alice)
    assert reply.status == 200
    assert reply.json()["app"] == VM
    assert reply.app_header("X-Ussycode-Handle") == ["alice"]
    assert len(reply.app_header("X-Ussycode-User-Id")) == 1
    assert reply.app_header("X-Forwarded-Proto") == ["https"]
    assert reply.app_header("X-Forwarded-Host") == [f"{VM}.{DOMAIN}"]
    assert reply.app_header("X-Forwarded-For") == ["127.0.0.1"]
    assert reply.app_header("Cookie") == []


def test_vm_forged_headers_and_cookies(site: Site) -> None:
    client, _ = site.signed_in(site.alice)
    reply = client.get(
        VM_URL,
        "--header",
        "X-Ussycode-Handle: mallory",
        "--header",
        "X-Ussycode-User-Id: 1",
        "--header",
        "X-Ussycode-Email: mallory@example.org",
        "--cookie",
        "theme=dark",
    )
    assert reply.status == 200
    assert reply.app_header("X-Ussycode-Handle") == ["alice"]
    assert reply.app_header("X-Ussycode-Email") == []
    assert reply.app_header("Cookie") == ["theme=dark"]
    assert SESSION_COOKIE not in json.dumps(reply.json())


def test_vm_set_public(site: Site) -> None:
    client = site.client("public")
    site.run(site.alice, f"share set-public {VM}")
    reply = client.get(VM_URL, "--header", "X-Ussycode-Handle: mallory")
    assert reply.status == 200
    assert reply.app_header("X-Ussycode-Handle") == []
    assert client.get(PORT_URL).status == 401
    site.run(site.alice, f"share set-private {VM}")
    assert client.get(VM_URL).status == 401


def test_vm_share_with_handle(site: Site) -> None:
    client, denied = site.signed_in(site.bob)
    assert denied.status == 403
    site.run(site.alice, f"share add {VM} bob --message 'have a look'")
    reply = client.get(VM_URL)
    assert reply.status == 200
    assert reply.app_header("X-Ussycode-Handle") == ["bob"]
    show = json.loads(site.run(site.alice, f"share show {VM} --json"))
    assert [(person["handle"], person["message"]) for person in show["people"]] == [("bob", "have a look")]
    site.run(site.alice, f"share remove {VM} bob")
    assert client.get(VM_URL).status == 403


def test_vm_email_invitation(site: Site) -> None:
    site.run(site.alice, f"share add {VM} carol@example.org")
    site.run(site.carol, "email set carol@example.org")
    assert "carol@example.org (unverified)" in site.run(site.carol, "whoami")
    client, before = site.signed_in(site.carol)
    assert before.status == 403

    # Stands in for the mail verification that is still to come.
    store = Store(site.platform.data_dir / "ussycode.db")
    try:
        carol = store.find_user_by_handle("carol")
        assert carol is not None
        assert [share.handle for share in verify_email(store, carol)] == ["carol"]
    finally:
        store.close()

    assert client.get(VM_URL).status == 200
    site.run(site.alice, f"share remove {VM} carol")
    assert client.get(VM_URL).status == 403


def test_vm_link_share_and_revoke(site: Site) -> None:
    link = json.loads(site.run(site.alice, f"share add-link {VM} --json"))
    visitor = site.client("link-visitor")
    opened = visitor.get(link["url"], accept_html=True)
    assert opened.status == 302
    assert opened.location == VM_URL
    page = visitor.get(VM_URL)
    assert page.status == 200
    assert page.app_header("X-Ussycode-Handle") == []
    assert page.app_header("Cookie") == []

    site.run(site.alice, f"share remove-link {VM} {link['id']}")

    assert visitor.get(VM_URL).status == 401
    assert site.client("late-visitor").get(link["url"], accept_html=True).status == 404


def test_vm_share_port(site: Site) -> None:
    client, _ = site.signed_in(site.alice)
    site.run(site.alice, f"share port {VM} 3000")
    assert client.get(VM_URL).json()["app"] == f"{VM}-3000"
    site.run(site.alice, f"share port {VM} 8080")
    assert client.get(VM_URL).json()["app"] == VM


def test_vm_extra_port_url(site: Site) -> None:
    assert site.client("port-anonymous").get(PORT_URL).status == 401
    _, reply = site.signed_in(site.alice, PORT_URL)
    assert reply.status == 200
    assert reply.json()["app"] == f"{VM}-3000"
    assert reply.app_header("X-Ussycode-Handle") == ["alice"]
    assert reply.app_header("Cookie") == []


def test_vm_other_users_vm_unreachable(site: Site) -> None:
    client, reply = site.signed_in(site.carol)
    assert reply.status == 403
    assert client.get(PORT_URL).status == 401
    refused = site.platform.ssh(site.carol, "true", login=VM)
    assert refused.status != 0
    assert f'no VM named "{VM}"' in refused.stderr
    stop = site.platform.ssh(site.carol, f"share show {VM}")
    assert f'no VM named "{VM}"' in stop.stderr


def test_vm_ssh_through_share_access(site: Site) -> None:
    site.run(site.alice, f"share add {VM} bob")
    refused = site.platform.ssh(site.bob, "true", login=VM)
    assert refused.status != 0
    assert f'no VM named "{VM}"' in refused.stderr

    site.run(site.alice, f"share access allow {VM} bob")
    allowed = site.platform.ssh(site.bob, "whoami", login=VM)
    assert allowed.status == 0, allowed.stderr
    assert allowed.stdout.strip() == "ussycode"

    site.run(site.alice, f"share access disallow {VM} bob")
    assert site.platform.ssh(site.bob, "true", login=VM).status != 0
    site.run(site.alice, f"share remove {VM} bob")


def test_vm_logout_on_vm_host(site: Site) -> None:
    client, _ = site.signed_in(site.alice)
    logout = client.get(f"{VM_URL}__ussycode/logout", accept_html=True)
    assert logout.status == 200
    names = [cookie_attributes(header)[:2] for header in logout.set_cookies]
    assert (SESSION_COOKIE, "") in names
    assert client.get(VM_URL).status == 401


def test_vm_browser_login(site: Site) -> None:
    platform = site.platform
    authorities = platform.root_ca.parent
    workdir = platform.workdir / "browser"
    workdir.mkdir(exist_ok=True)
    with Chromium(
        workdir, [authorities / "root.crt", authorities / "intermediate.crt"], platform.ns.prefix()
    ) as browser:
        landed = browser.open(VM_URL)
        assert landed.startswith(f"https://{DOMAIN}/__ussycode/login?next=")
        assert "browser" in browser.text()

        final = browser.open(site.login_link(site.alice))
        assert final == VM_URL
        report = json.loads(str(browser.evaluate("document.getElementById('report').textContent")))
        received = {name.lower(): value for name, value in report["headers"]}
        assert report["app"] == VM
        assert received["x-ussycode-handle"] == "alice"
        assert "cookie" not in received
        screenshot = browser.screenshot(platform.workdir / "vm-app.png")

        cookies = {
            cookie["domain"]: cookie for cookie in browser.cookies() if cookie["name"] == SESSION_COOKIE
        }
        vm_cookie = cookies[f"{VM}.{DOMAIN}"]
        assert vm_cookie["httpOnly"] is True
        assert vm_cookie["secure"] is True
        assert vm_cookie["sameSite"] == "Lax"
        assert vm_cookie["path"] == "/"
        assert vm_cookie["value"] != cookies[DOMAIN]["value"]
        assert not any(domain.startswith(".") for domain in cookies)

        browser.open(f"{VM_URL}__ussycode/logout")
        remaining = {cookie["domain"] for cookie in browser.cookies() if cookie["name"] == SESSION_COOKIE}
        assert remaining == {DOMAIN}

    assert screenshot.exists()
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 1000


def test_vm_scoped_token_three_forms(site: Site) -> None:
    namespace = f"v0@{VM}.{DOMAIN}"
    token = sign_usy0(site.alice.key, {"ctx": {"build": 42}}, namespace)
    basic = base64.b64encode(f"git:{token}".encode()).decode()
    forms = [
        ("--header", f"Authorization: Bearer {token}"),
        ("--header", f"X-Ussycode-Authorization: Bearer {token}"),
        ("--header", f"Authorization: Basic {basic}"),
    ]
    for form in forms:
        reply = site.client("token").get(VM_URL, *form)
        assert reply.status == 200, form[1][:40]
        assert reply.app_header("X-Ussycode-Token-Ctx") == ['{"build":42}']
        assert reply.app_header("X-Ussycode-Handle") == ["alice"]
        assert reply.app_header("Authorization") == []
        assert reply.app_header("X-Ussycode-Authorization") == []

    exec_token = sign_usy0(site.alice.key, {}, f"v0@{DOMAIN}")
    wrong_vm = sign_usy0(site.alice.key, {}, f"v0@other-owl.{DOMAIN}")
    stranger = sign_usy0(site.carol.key, {}, namespace)
    for bad in (exec_token, wrong_vm, "usy0.garbage.token"):
        denied = site.client("bad-token").get(VM_URL, "--header", f"Authorization: Bearer {bad}")
        assert denied.status == 401
        assert "invalid token" in denied.json()["error"]["message"]
    assert (
        site.client("carol-token").get(VM_URL, "--header", f"Authorization: Bearer {stranger}").status == 403
    )

    app_auth = site.client("app-auth").get(VM_URL, "--header", "Authorization: Bearer app-own-token")
    assert app_auth.status == 401

    minted = json.loads(site.run(site.alice, f"ssh-key generate-api-key --vm {VM} --label deploy --json"))
    scoped = site.client("minted").get(VM_URL, "--header", f"Authorization: Bearer {minted['token']}")
    assert scoped.status == 200
    assert scoped.app_header("X-Ussycode-Token-Ctx") == []
    run_exec = site.platform.curl(
        f"https://{DOMAIN}/exec", "--resolve", f"{DOMAIN}:443:127.0.0.1",
        "-H", f"Authorization: Bearer {minted['token']}", "--data", "ls",
    )  # fmt: skip
    assert run_exec.status == 401
