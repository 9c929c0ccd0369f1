"""Suspended VMs under commands that change or read them, and two wakes at once.

The tests share one VM and run in file order; each leaves the VM running.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.auth.gateway_login import key_fingerprint
from tests.conftest import require_image, require_root
from tests.framework.platform import Platform, wait_until
from tests.vm.test_suspend import Stack

pytestmark = [pytest.mark.vm, pytest.mark.netns]

VM = "doze-lark"
RENAMED = "doze-wren"
APP = (
    "mkdir -p ~/site && echo dozing-lark-page > ~/site/index.html &&"
    " setsid -f python3 -m http.server 8080 --directory ~/site >/dev/null 2>&1 < /dev/null"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_root()
    require_image()
    platform = Platform(tmp_path_factory.mktemp("suspend-edges"))
    platform.extra_env = {"USSYCODE_ADMINS": key_fingerprint(platform.make_user("root-admin"))}
    with platform:
        stack = Stack(platform, platform.make_user("alice"), VM)
        stack.run(f"new --name {VM}")
        stack.guest(APP)
        try:
            yield stack
        except BaseException:
            platform.keep_logs("test_suspend_edges")
            raise


def test_suspended_vm_readable(stack: Stack) -> None:
    stack.run(f"suspend {stack.name}")
    assert stack.json(f"stat {stack.name}")["state"] == "suspended"
    events = stack.json(f"vm-logs {stack.name}")["events"]
    assert any(event["kind"] == "saved" for event in events)
    assert stack.state() == "suspended"
    stack.run(f"resume {stack.name}")


def test_rename_suspended_sets_hostname(stack: Stack) -> None:
    stack.run(f"suspend {stack.name}")
    stack.run(f"rename {stack.name} {RENAMED}")
    stack.name = RENAMED
    assert stack.state() == "suspended"
    stack.run(f"resume {stack.name}")
    wait_until(lambda: stack.guest("hostname") == RENAMED, 90, "the guest hostname to follow the rename")


def test_login_and_request_wake_together(stack: Stack) -> None:
    stack.run(f"share set-public {stack.name}")
    url = f"https://{stack.name}.{stack.platform.domain}/"
    wait_until(lambda: stack.platform.curl(url).status == 200, 60, "the app in the VM to serve its page")
    stack.run(f"suspend {stack.name}")
    results: dict[str, Any] = {}

    def request() -> None:
        results["request"] = stack.platform.curl(url, timeout=120)

    thread = threading.Thread(target=request)
    thread.start()
    login = stack.guest("cat ~/site/index.html")
    thread.join(180)
    assert not thread.is_alive()
    assert login == "dozing-lark-page"
    assert results["request"].status == 200
    assert "dozing-lark-page" in results["request"].stdout
    assert stack.state() == "running"
    events = stack.json(f"vm-logs {stack.name}")["events"]
    # The events come newest first, so the ones before the last "saved" followed it.
    saved = next(index for index, event in enumerate(events) if event["kind"] == "saved")
    resumes = [event for event in events[:saved] if event["kind"] == "resumed"]
    assert len(resumes) == 1, events[:saved]


def test_rejected_resize_keeps_idle(stack: Stack) -> None:
    stack.run(f"resize {stack.name} --idle 2h")
    stack.run(f"suspend {stack.name}")
    error = stack.run(f"resize {stack.name} --idle 10m --disk 1G", status=1)
    assert "cannot shrink the disk" in error
    listed = next(vm for vm in stack.json("ls") if vm["name"] == stack.name)
    assert listed["idle_timeout"] == "2h"
    assert listed["state"] == "suspended"
    stack.run(f"resize {stack.name} --idle never")
    stack.run(f"resume {stack.name}")


def test_suspend_during_ssh_session(stack: Stack) -> None:
    results: dict[str, Any] = {}

    def session() -> None:
        command = "touch ~/session-started; sleep 25; echo session-done"
        results["session"] = stack.platform.ssh(stack.user, command, login=stack.name, timeout=240)

    thread = threading.Thread(target=session)
    thread.start()
    wait_until(lambda: stack.guest("ls ~").count("session-started") == 1, 60, "the session to start")
    stack.run(f"suspend {stack.name}")
    stack.run(f"resume {stack.name}")
    thread.join(240)
    assert not thread.is_alive()
    assert results["session"].status == 0, results["session"].stderr
    assert results["session"].stdout.strip() == "session-done"


def test_copy_suspended(stack: Stack) -> None:
    stack.guest("echo before-copy > ~/copied.txt && sync")
    stack.run(f"suspend {stack.name}")
    # A suspended VM keeps its place among the running VMs, so the copy is over the limit of 1.
    error = stack.run(f"cp {stack.name} doze-copy", status=1)
    assert "over your limit of running VMs: 1" in error
    assert [vm["name"] for vm in stack.json("ls")] == [stack.name]
    assert stack.state() == "suspended"
    root = stack.platform.make_user("root-admin")
    raised = stack.platform.ssh(root, "admin set-limit alice running 2")
    assert raised.status == 0, raised.stderr

    stack.run(f"cp {stack.name} doze-copy")
    assert stack.state() == "suspended"
    copy = Stack(stack.platform, stack.user)
    copy.name = "doze-copy"
    assert copy.guest("cat ~/copied.txt") == "before-copy"
    stack.run("rm doze-copy --force")
    stack.run(f"resume {stack.name}")
    assert stack.guest("cat ~/copied.txt") == "before-copy"
