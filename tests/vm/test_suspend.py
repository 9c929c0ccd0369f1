"""Suspend and resume with a real guest: processes survive, and SSH, HTTPS and idleness work.

The tests share one VM and run in file order; each leaves the VM running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_image, require_root
from tests.framework.platform import Platform, SSHUser, wait_until

pytestmark = [pytest.mark.vm, pytest.mark.netns]

VM = "nap-owl"
COUNTER = (
    "setsid -f sh -c 'echo $$ > ~/counter.pid; i=0;"
    " while true; do i=$((i+1)); echo $i > ~/counter; sleep 1; done' >/dev/null 2>&1 < /dev/null"
)
APP = (
    "mkdir -p ~/site && echo napping-owl-page > ~/site/index.html &&"
    " setsid -f python3 -m http.server 8080 --directory ~/site >/dev/null 2>&1 < /dev/null"
)

# The guest files live in the home directory, because /tmp is a tmpfs that the guest may
# mount over files written early in its boot.
# The command line is checked too, because a cold boot may give the counter's PID to another process.
ALIVE = "grep -qs counter /proc/$(cat ~/counter.pid)/cmdline && echo alive || echo gone"


class Stack:
    """The user `user` of `platform` and their VM `name`, driven over SSH."""

    def __init__(self, platform: Platform, user: SSHUser, name: str = VM) -> None:
        self.platform = platform
        self.user = user
        self.name = name

    def run(self, command: str, *, status: int = 0) -> str:
        result = self.platform.ssh(self.user, command)
        assert result.status == status, f"{command}: {result.stderr}"
        return result.stdout if status == 0 else result.stderr

    def json(self, command: str) -> Any:
        return json.loads(self.run(command + " --json"))

    def guest(self, command: str) -> str:
        # A guest under TCG on a loaded host can miss the gateway's 10 s login timeout, which
        # the gateway reports as "not reachable right now"; such attempts are retried.
        for _ in range(8):
            result = self.platform.ssh(self.user, command, login=self.name, timeout=180)
            if "not reachable right now" not in result.stderr:
                break
        assert result.status == 0, f"{command} in the guest: {result.stderr}"
        return result.stdout.strip()

    def state(self) -> str:
        vms = self.json("ls")
        return str(next(vm["state"] for vm in vms if vm["name"] == self.name))

    def qemu_alive(self) -> bool:
        return any(Path(f"/proc/{pid}").exists() for pid in self.platform.vm_pids())

    @property
    def vm_dir(self) -> Path:
        return next(self.platform.data_dir.glob("vms/*"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_root()
    require_image()
    platform = Platform(tmp_path_factory.mktemp("suspend"))
    with platform:
        user = platform.make_user("alice")
        stack = Stack(platform, user)
        stack.run(f"new --name {VM}")
        stack.guest(COUNTER)
        stack.guest(APP)
        try:
            yield stack
        except BaseException:
            platform.keep_logs("test_suspend")
            raise


def counter(stack: Stack) -> tuple[str, int]:
    pid = stack.guest("cat ~/counter.pid")
    return pid, int(stack.guest("cat ~/counter"))


def test_suspend_resume_keeps_processes(stack: Stack) -> None:
    wait_until(lambda: counter(stack)[1] >= 3, 60, "the counter to count")
    pid, before = counter(stack)

    suspended = stack.json(f"suspend {VM}")
    assert suspended["state"] == "suspended"
    assert suspended["state_bytes"] > 0
    assert stack.state() == "suspended"
    assert not stack.qemu_alive()
    assert (stack.vm_dir / "state.qemu").stat().st_size == suspended["state_bytes"]
    limits = stack.json("whoami")["limits"]
    assert limits["disk"]["use"] >= 4 * 1024**3 + suspended["state_bytes"]
    # Stay suspended long enough that a guest clock left as it was would be clearly behind.
    suspended_at = time.monotonic()
    while time.monotonic() - suspended_at < 20:
        assert stack.state() == "suspended"
        assert not stack.qemu_alive()
        time.sleep(2)

    resumed = stack.json(f"resume {VM}")
    assert resumed["state"] == "running"
    assert not (stack.vm_dir / "state.qemu").exists()
    after_pid, after = counter(stack)
    assert after_pid == pid
    assert after >= before
    assert stack.guest(ALIVE) == "alive"
    wait_until(lambda: counter(stack)[1] > after, 30, "the counter to go on counting")

    def clock_set() -> bool:
        return abs(int(stack.guest("date +%s")) - time.time()) < 5

    wait_until(clock_set, 60, "the guest clock to be set after the resume", interval=2)


def test_suspend_errors(stack: Stack) -> None:
    stack.run(f"suspend {VM}")
    assert 'vm "nap-owl" is already suspended' in stack.run(f"suspend {VM}", status=1)
    stack.run(f"resume {VM}")
    assert 'vm "nap-owl" is running, not suspended' in stack.run(f"resume {VM}", status=1)
    assert 'no VM named "ghost-owl"' in stack.run("suspend ghost-owl", status=1)


def test_idle_vm_suspends_itself(stack: Stack) -> None:
    changed = stack.json(f"resize {VM} --idle 10s")
    assert changed["idle_timeout"] == "10s"
    wait_until(lambda: stack.state() == "suspended", 120, "the idle VM to be suspended", interval=2)
    events = stack.json(f"vm-logs {VM}")["events"]
    assert any(event["kind"] == "saved" and "idle for" in event["detail"] for event in events)
    stack.run(f"resize {VM} --idle never")
    assert stack.json("ls")[0]["idle_timeout"] == "never"


def test_ssh_login_wakes(stack: Stack) -> None:
    if stack.state() != "suspended":
        stack.run(f"suspend {VM}")
    pid, _ = counter(stack)
    assert stack.state() == "running"
    assert Path(f"/proc/{stack.platform.vm_pids()[0]}").exists()
    assert pid == stack.guest("cat ~/counter.pid")
    assert stack.guest(ALIVE) == "alive"


def test_restart_between_suspend_and_resume(stack: Stack) -> None:
    pid, before = counter(stack)
    stack.run(f"suspend {VM}")
    stack.platform.restart()
    assert stack.state() == "suspended"
    assert not stack.qemu_alive()
    stack.run(f"resume {VM}")
    after_pid, after = counter(stack)
    assert after_pid == pid
    assert after >= before


def test_https_request_wakes(stack: Stack) -> None:
    stack.run(f"share set-public {VM}")
    url = f"https://{VM}.{stack.platform.domain}/"
    wait_until(lambda: stack.platform.curl(url).status == 200, 60, "the app in the VM to serve its page")
    stack.run(f"suspend {VM}")
    response = stack.platform.curl(url, timeout=90)
    assert response.status == 200, response.stdout
    assert "napping-owl-page" in response.stdout
    assert stack.state() == "running"


def test_damaged_state_boots_from_disk(stack: Stack) -> None:
    stack.guest("echo kept-across-damage > ~/synced.txt && sync")
    stack.run(f"suspend {VM}")
    state = stack.vm_dir / "state.qemu"
    size = state.stat().st_size
    with state.open("r+b") as handle:
        handle.seek(size // 3)
        handle.write(b"\xff" * 65536)
        handle.truncate(size // 2)

    resumed = stack.json(f"resume {VM}")
    assert resumed["state"] == "running"
    assert stack.guest("cat ~/synced.txt") == "kept-across-damage"
    assert stack.guest(ALIVE) == "gone"
    events = stack.json(f"vm-logs {VM}")["events"]
    assert any(event["kind"] == "resume_failed" for event in events)


def test_stop_and_remove_suspended(stack: Stack) -> None:
    stack.run(f"suspend {VM}")
    assert stack.json(f"stop {VM}")["state"] == "stopped"
    assert not (stack.vm_dir / "state.qemu").exists()
    assert 'vm "nap-owl" is stopped: run "start nap-owl" first' in stack.run(f"suspend {VM}", status=1)
    stack.run(f"start {VM}")
    stack.run(f"suspend {VM}")
    stack.run(f"rm {VM} --force")
    assert list(stack.platform.data_dir.glob("vms/*")) == []
