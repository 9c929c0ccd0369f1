"""The warm pool end to end: booted VMs handed out by `new` with the new owner's identity, refilled,
adopted after a restart, bypassed by options that need a fresh boot, and turned off with size 0."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAILED, require_image, require_root
from tests.framework.platform import Platform, SSHUser, wait_until

pytestmark = [pytest.mark.vm, pytest.mark.netns]

# Two pool boots in a row, on two cores that other tests share.
POOL_FILL_SECONDS = 600


def fingerprint(user: SSHUser) -> str:
    output = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{user.key}.pub"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return output.split()[1]


def rows(platform: Platform, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    """Read the server's store; WAL mode lets this run beside the server."""
    with sqlite3.connect(platform.data_dir / "ussycode.db") as db:
        db.row_factory = sqlite3.Row
        return list(db.execute(sql, params))


def pool_rows(platform: Platform) -> list[sqlite3.Row]:
    return rows(
        platform,
        "SELECT vms.* FROM vms JOIN users ON users.id = vms.owner_id"
        " WHERE users.handle = '_pool' ORDER BY vms.id",
    )


def pool_status(platform: Platform, admin: SSHUser) -> dict[str, object]:
    result = platform.ssh(admin, ["admin", "pool", "--json"])
    assert result.status == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def ready_count(platform: Platform, admin: SSHUser) -> int:
    images = pool_status(platform, admin)["images"]
    assert isinstance(images, list)
    return int(images[0]["ready"])


def key_set(text: str) -> set[str]:
    """Return the "type base64" part of each public key line, without comments."""
    return {
        " ".join(line.split()[:2]) for line in text.splitlines() if line.strip() and not line.startswith("#")
    }


def scan_host_keys(platform: Platform, ip: str) -> set[str]:
    completed = platform.ns.run(["ssh-keyscan", "-T", "20", ip], timeout=60, check=False)
    # Lines are "host type base64".
    return key_set("\n".join(line.partition(" ")[2] for line in completed.stdout.splitlines()))


@pytest.fixture
def pool_platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Platform, SSHUser]]:
    """A platform with a warm pool of 2 and an admin, who may run `admin pool`."""
    require_root()
    require_image()
    admin_key = Platform(tmp_path).make_user("root-admin")
    env = {"USSYCODE_POOL_SIZE": "2", "USSYCODE_POOL_MAX": "2", "USSYCODE_ADMINS": fingerprint(admin_key)}
    with Platform(tmp_path, extra_env=env) as running:
        yield running, admin_key
        if request.node.stash.get(FAILED, False):
            running.keep_logs(request.node.name)


def test_pool_hand_out_identity(pool_platform: tuple[Platform, SSHUser]) -> None:
    platform, admin = pool_platform
    alice = platform.make_user("alice")
    bob = platform.make_user("bob")
    wait_until(lambda: ready_count(platform, admin) == 2, POOL_FILL_SECONDS, "2 ready pool VMs", interval=3)

    pooled = pool_rows(platform)
    assert len(pooled) == 2
    pool_ids = {row["id"] for row in pooled}
    pool_keys = set().union(*(key_set(row["host_keys"]) for row in pooled))
    assert len(pool_keys) == 4

    # Nobody sees or reaches a pool VM.
    assert "_pool" not in platform.ssh(admin, ["admin", "vms"]).stdout
    assert "_pool" not in platform.ssh(admin, ["admin", "users"]).stdout
    assert json.loads(platform.ssh(alice, ["ls", "--json"]).stdout) == []
    sneaky = platform.ssh(alice, "true", login=pooled[0]["name"])
    assert sneaky.status != 0

    made = {}
    for user, name, extra in ((alice, "alice-vm", []), (bob, "bob-vm", ["--env", "GREETING=hi-bob"])):
        result = platform.ssh(user, ["new", "--name", name, *extra, "--json"])
        assert result.status == 0, result.stderr + platform.log_tail()
        made[name] = json.loads(result.stdout)
        assert made[name]["state"] == "running"

    vms = {
        row["name"]: row for row in rows(platform, "SELECT * FROM vms WHERE name IN ('alice-vm', 'bob-vm')")
    }
    assert {vms["alice-vm"]["id"], vms["bob-vm"]["id"]} == pool_ids
    assert "from the pool" in platform.log_path.read_text()

    for user, other, name in ((alice, bob, "alice-vm"), (bob, alice, "bob-vm")):
        own_key = Path(f"{user.key}.pub").read_text().split()[1]
        other_key = Path(f"{other.key}.pub").read_text().split()[1]
        authorized = platform.ssh(user, "cat ~/.ssh/authorized_keys", login=name)
        assert authorized.status == 0, authorized.stderr
        assert own_key in authorized.stdout
        assert other_key not in authorized.stdout
        assert platform.ssh(other, "true", login=name).status != 0

        hostname = platform.ssh(user, "hostname; cat /etc/hostname", login=name)
        assert hostname.stdout.split() == [name, name]
        metadata = json.loads(platform.ssh(user, "curl -s http://169.254.169.254/v1/vm", login=name).stdout)
        assert metadata["name"] == name
        assert metadata["owner"] == user.name
        url = platform.ssh(user, "bash -lc 'echo $USSYCODE_PUBLIC_URL'", login=name)
        assert url.stdout.strip() == f"https://{name}.{platform.domain}"

        # New host keys: served by sshd, recorded by the host, none from the pool's time.
        recorded = key_set(
            rows(platform, "SELECT host_keys FROM vms WHERE name = ?", (name,))[0]["host_keys"]
        )
        assert len(recorded) == 2
        assert not recorded & pool_keys
        assert scan_host_keys(platform, vms[name]["ip"]) == recorded
        on_disk = platform.ssh(user, "cat /etc/ssh/ssh_host_*_key.pub", login=name)
        assert key_set(on_disk.stdout) == recorded

    greeting = platform.ssh(bob, "bash -lc 'echo $GREETING'", login="bob-vm")
    assert greeting.stdout.strip() == "hi-bob"
    assert (
        platform.ssh(alice, "bash -lc 'echo ${GREETING:-unset}'", login="alice-vm").stdout.strip() == "unset"
    )

    # The URL reaches the app in that VM, through Caddy.
    app = (
        "mkdir -p ~/site && echo hello-from-alice > ~/site/index.html && cd ~/site && "
        "setsid -f python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 < /dev/null"
    )
    assert platform.ssh(alice, app, login="alice-vm").status == 0
    assert platform.ssh(alice, ["share", "set-public", "alice-vm"]).status == 0
    host = f"alice-vm.{platform.domain}"

    def app_served() -> bool:
        fetched = platform.curl(f"https://{host}/", "--resolve", f"{host}:443:127.0.0.1")
        return fetched.status == 200 and "hello-from-alice" in fetched.stdout

    wait_until(app_served, 60, "alice-vm's app through Caddy")

    # The pool boots replacements, and none of them is a VM it handed out.
    wait_until(lambda: ready_count(platform, admin) == 2, POOL_FILL_SECONDS, "the pool to refill", interval=3)
    refilled = pool_rows(platform)
    assert len(refilled) == 2
    assert not {row["id"] for row in refilled} & pool_ids

    # A disk size other than the default boots a VM of its own. Each newbie runs one VM at most.
    carol = platform.make_user("carol")
    before = {row["id"] for row in refilled}
    cold = platform.ssh(carol, ["new", "--name", "big-disk", "--disk", "5G", "--json"])
    assert cold.status == 0, cold.stderr + platform.log_tail()
    assert json.loads(cold.stdout)["disk"] == "5G"
    big = rows(platform, "SELECT id FROM vms WHERE name = 'big-disk'")[0]["id"]
    assert big not in before
    assert "new boots a VM: --disk 5G differs from the pool's" in platform.log_path.read_text()
    assert {row["id"] for row in pool_rows(platform)} == before

    # A restart of the server adopts the ready pool VMs: same VMs, same QEMU processes.
    pids_before = set(platform.vm_pids())
    platform.restart()
    wait_until(
        lambda: ready_count(platform, admin) == 2, 120, "the pool adopted after the restart", interval=2
    )
    assert {row["id"] for row in pool_rows(platform)} == before
    assert set(platform.vm_pids()) == pids_before
    dave = platform.make_user("dave")
    handed = platform.ssh(dave, ["new", "--name", "after-restart", "--json"])
    assert handed.status == 0, handed.stderr + platform.log_tail()
    assert rows(platform, "SELECT id FROM vms WHERE name = 'after-restart'")[0]["id"] in before
    assert platform.ssh(dave, "hostname", login="after-restart").stdout.strip() == "after-restart"


def process_alive(pid: int) -> bool:
    """Return whether `pid` runs; a zombie, which has an empty command line, does not."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


def tap_devices(platform: Platform) -> list[str]:
    listed = platform.ns.run(["ip", "-o", "link", "show"], timeout=10).stdout
    return sorted(
        line.split(":")[1].strip().split("@")[0] for line in listed.splitlines() if ": ussyt" in line
    )


@pytest.fixture
def small_pool_platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    """A platform with a warm pool of 1."""
    require_root()
    require_image()
    with Platform(tmp_path, extra_env={"USSYCODE_POOL_SIZE": "1"}) as running:
        yield running
        if request.node.stash.get(FAILED, False):
            running.keep_logs(request.node.name)


def test_pool_size_zero_boots(small_pool_platform: Platform) -> None:
    platform = small_pool_platform
    # A server with a pool of 1 starts booting a pool VM at once.
    wait_until(
        lambda: len(pool_rows(platform)) == 1 and len(platform.vm_pids()) == 1, 60, "a pool VM to boot"
    )
    leftover = pool_rows(platform)[0]
    leftover_pid = platform.vm_pids()[0]

    # With the pool off, the restarted server removes the leftover: process, TAP, disk and row.
    platform.stop_server()
    platform.extra_env["USSYCODE_POOL_SIZE"] = "0"
    platform.start_after(platform.log_path.stat().st_size)
    assert pool_rows(platform) == []
    assert platform.vm_pids() == []
    assert not process_alive(leftover_pid)
    assert tap_devices(platform) == []
    assert not (platform.data_dir / "vms" / str(leftover["id"])).exists()
    assert list((platform.data_dir / "disks").glob("*")) == []

    alice = platform.make_user("alice")
    created = platform.ssh(alice, ["new", "--name", "cold-vm", "--json"])
    assert created.status == 0, created.stderr + platform.log_tail()
    assert json.loads(created.stdout)["state"] == "running"
    assert platform.ssh(alice, "hostname", login="cold-vm").stdout.strip() == "cold-vm"
    assert pool_rows(platform) == []
    assert len(platform.vm_pids()) == 1
    assert len(tap_devices(platform)) == 1
    assert "from the pool" not in platform.log_path.read_text()
