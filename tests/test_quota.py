"""Trust tiers and quotas through the gateway: each limit refused with its message, overrides,
`whoami`, and the admin commands. No VM boots: the newbie tier allows 0 VMs and 0 running VMs,
and the VM that start, resize and cp act on is a stopped row written into the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.auth.gateway_login import key_fingerprint, login
from tests.conftest import require_root
from tests.framework.platform import Platform, image_dir
from ussycode.store import Store

pytestmark = pytest.mark.netns

FAKE_VM = "quota-owl"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    require_root()
    platform = Platform(tmp_path_factory.mktemp("quota"))
    root = platform.make_user("root-admin")
    platform.extra_env = {
        "USSYCODE_ADMINS": key_fingerprint(root),
        "USSYCODE_TIER_NEWBIE": "vms=0,cpus=1,memory=512M,disk=6G,running=0",
    }
    with platform:
        assert login(platform, root, "whoami").status == 0
        assert login(platform, platform.make_user("bob"), "whoami").status == 0
        yield platform


def admin(platform: Platform, *words: str) -> str:
    result = login(platform, platform.make_user("root-admin"), list(words))
    assert result.status == 0, result.stderr
    return result.stdout


def bob(platform: Platform, command: str) -> tuple[int, str]:
    result = login(platform, platform.make_user("bob"), command)
    return result.status, result.stderr + result.stdout


def add_stopped_vm(platform: Platform) -> None:
    """Write a stopped VM of bob's into the store, as if it had been made and stopped."""
    manifest = next(image_dir().glob("ussyuntu/*/manifest.json"))
    store = Store(platform.data_dir / "ussycode.db")
    try:
        owner = store.find_user_by_handle("bob")
        assert owner is not None
        store.create_vm(
            name=FAKE_VM,
            owner_id=owner.id,
            state="stopped",
            image="ussyuntu",
            image_path=str(manifest.parent),
            cpus=1,
            memory_mb=512,
            disk_bytes=4 * 1024**3,
            ip="10.0.0.250",
            mac="52:54:00:00:00:fa",
        )
    finally:
        store.close()


def test_quota_new_vms_refused(site: Platform) -> None:
    status, output = bob(site, "new")
    assert status == 1
    assert 'one more VM is over your limit of VMs: 0 (tier "newbie"), and you use 0' in output
    assert 'ask an admin to raise "vms"' in output


def test_quota_override_raises_vms(site: Platform) -> None:
    admin(site, "admin", "set-limit", "bob", "vms", "1")
    status, output = bob(site, "new")
    assert status == 1
    assert "limit of VMs" not in output
    assert 'one more running VM is over your limit of running VMs: 0 (tier "newbie"), and you use 0' in output


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("new --cpu 2", '2 vCPUs is over your limit of vCPUs per VM: 1 (tier "newbie")'),
        ("new --memory 1G", '1G of memory is over your limit of memory per VM: 512M (tier "newbie")'),
        (
            "new --disk 7G",
            '7G more disk is over your limit of disk of all VMs: 6G (tier "newbie"), and you use 0',
        ),
    ],
)
def test_quota_new_shape_refused(site: Platform, command: str, message: str) -> None:
    admin(site, "admin", "set-limit", "bob", "running", "1")
    status, output = bob(site, command)
    assert status == 1
    assert message in output


def test_quota_whoami_shows_limits(site: Platform) -> None:
    status, output = bob(site, "whoami --json")
    assert status == 0
    data = json.loads(output[output.index("{") :])
    assert data["tier"] == "newbie"
    assert data["limits"]["vms"] == {"limit": 1, "use": 0, "override": True}
    assert data["limits"]["memory"]["limit"] == 512
    text = bob(site, "whoami")[1]
    assert "tier:     newbie" in text
    assert "0 of 1 (set for you)" in text


def test_quota_start_running_refused(site: Platform) -> None:
    add_stopped_vm(site)
    admin(site, "admin", "set-limit", "bob", "running", "0")
    status, output = bob(site, f"start {FAKE_VM}")
    assert status == 1
    assert f'starting "{FAKE_VM}" is over your limit of running VMs: 0' in output
    assert "with a limit set for you" in output


def test_quota_resize_refused(site: Platform) -> None:
    status, output = bob(site, f"resize {FAKE_VM} --cpu 2")
    assert status == 1
    assert '2 vCPUs is over your limit of vCPUs per VM: 1 (tier "newbie")' in output
    status, output = bob(site, f"resize {FAKE_VM} --disk 7G")
    assert status == 1
    assert "3G more disk is over your limit of disk of all VMs: 6G" in output
    assert "and you use 4G" in output


def test_quota_cp_refused(site: Platform) -> None:
    status, output = bob(site, f"cp {FAKE_VM}")
    assert status == 1
    assert "one more VM is over your limit of VMs: 1" in output
    assert "and you use 1" in output


def test_quota_set_trust_raises(site: Platform) -> None:
    admin(site, "admin", "set-limit", "bob", "running", "default")
    admin(site, "admin", "set-limit", "bob", "vms", "default")
    assert "bob is now citizen" in admin(site, "admin", "set-trust", "bob", "citizen")
    data = json.loads(bob(site, "whoami --json")[1].split("\n", 1)[-1])
    assert data["tier"] == "citizen"
    assert data["limits"]["vms"] == {"limit": 5, "use": 1, "override": False}
    admin(site, "admin", "set-trust", "bob", "newbie")


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (("set-trust", "bob", "king"), 'invalid tier "king"'),
        (("set-limit", "bob", "gpus", "1"), "unknown limit 'gpus'"),
        (("set-limit", "bob", "vms", "-1"), "vms must be a whole number of 0 or more"),
        (("set-limit", "bob", "memory", "lots"), "not a size"),
        (("set-trust", "nobody", "citizen"), 'no user "nobody"'),
        (("suspend", "root-admin"), "you cannot suspend yourself"),
    ],
)
def test_quota_admin_bad_input(site: Platform, words: tuple[str, ...], message: str) -> None:
    result = login(site, site.make_user("root-admin"), ["admin", *words])
    assert result.status == 1
    assert message in result.stderr


def test_quota_admin_lists(site: Platform) -> None:
    users = admin(site, "admin", "users")
    assert "bob" in users
    assert "newbie" in users
    vms = json.loads(admin(site, "admin", "vms", "--json"))
    assert [vm["name"] for vm in vms] == [FAKE_VM]
    assert vms[0]["owner"] == "bob"


def test_quota_suspend_refuses_login(site: Platform) -> None:
    admin(site, "admin", "suspend", "bob", "--reason", "spam")
    refused = login(site, site.make_user("bob"), "whoami")
    assert refused.status == 255
    assert 'the account "bob" is suspended (spam)' in refused.stderr
    admin(site, "admin", "reinstate", "bob")
    assert bob(site, "whoami")[0] == 0
