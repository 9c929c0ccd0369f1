"""The full command surface against real VMs: new with options, ls, tag, comment, stat, vm-logs,
resize, cp, rename, rm, the REPL's ssh and completion, port and agent forwarding, rsync and git.

One platform serves the whole module, and the tests run in file order on two VMs (the second is
a copy of the first), because each boot takes one to two minutes under TCG.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_exec import NAMESPACE, post
from tests.conftest import require_image, require_root
from tests.framework.netns import end_pid
from tests.framework.platform import Platform, Result, SSHUser, wait_until
from tests.framework.terminal import Terminal
from tests.framework.tokens import sign_usy0
from ussycode.commands.dispatch import REGISTRY

pytestmark = [pytest.mark.vm, pytest.mark.netns]

VM = "web-owl"
COPY = "web-copy"
RENAMED = "calm-copy"
SETUP_SCRIPT = """#!/bin/bash
echo "setup ran as $(whoami)"
echo "greeting=$GREETING"
echo done > ~/setup-done
"""
GiB = 1024**3


@dataclass
class Surface:
    platform: Platform
    alice: SSHUser
    bob: SSHUser
    token: str

    def ssh(self, command: str | list[str], *, login: str | None = None, stdin: str | None = None) -> Result:
        return self.platform.ssh(self.alice, command, login=login, stdin=stdin)

    def json(self, command: str) -> Any:
        result = self.ssh(command)
        assert result.status == 0, f"{command}: {result.stderr}{self.platform.log_tail()}"
        return json.loads(result.stdout)

    def in_vm(self, command: str, vm: str = VM) -> str:
        result = self.ssh(command, login=vm)
        assert result.status == 0, f"{command} in {vm}: {result.stderr}"
        return result.stdout

    def api(self, line: str) -> tuple[int, Any]:
        result, _ = post(self.platform, line, self.token)
        return result.status, json.loads(result.stdout)

    def ssh_options(self) -> list[str]:
        """The options of `ssh_argv` without the command and target, for scp, rsync and git."""
        return self.platform.ssh_argv(self.alice)[1:-2]


@pytest.fixture(scope="module")
def surface(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Surface]:
    require_root()
    require_image()
    failed_before = request.session.testsfailed
    # The admin tier's limits leave room for two running VMs with two vCPUs.
    extra_env = {"USSYCODE_DEFAULT_TIER": "admin"}
    with Platform(tmp_path_factory.mktemp("surface"), extra_env=extra_env) as platform:
        alice = platform.make_user("alice")
        bob = platform.make_user("bob")
        assert platform.ssh(bob, "whoami").status == 0
        assert platform.ssh(alice, "whoami").status == 0
        # The terminal tests expect a shell at login, not the coding agent (tests/vm/test_agents.py).
        assert platform.ssh(alice, "settings agent-on-login off").status == 0
        names = [n for c in REGISTRY.values() for n in (c.name, *(f"{c.name} {a}" for a in c.subcommands))]
        token = sign_usy0(alice.key, {"cmds": names}, NAMESPACE)
        yield Surface(platform, alice, bob, token)
        if request.session.testsfailed > failed_before:
            platform.keep_logs("test_command_surface")


def expect_error(
    surface: Surface, line: str, code: str, message: str, *, user: SSHUser | None = None
) -> None:
    """Check `line` fails with `message` in exec mode (text and --json) and through /exec."""
    name, _, rest = line.partition(" ")
    result = surface.platform.ssh(user or surface.alice, f"{name} --json {rest}")
    assert result.status == 1, line
    assert result.stderr == f"error: {message}\n", line
    assert json.loads(result.stdout) == {"error": {"code": code, "message": message}}, line
    if user is None:
        status, document = surface.api(line)
        assert status == 422, (line, document)
        assert document == {"error": {"code": code, "message": message}}, line


def test_new_with_options(surface: Surface) -> None:
    started = time.monotonic()
    result = surface.ssh(
        [
            "new", "--name", VM, "--cpu", "2", "--memory", "768M", "--disk", "3G",
            "--env", "GREETING=hello", "--env", "MODE=test", "--tag", "web,demo", "--tag", "first",
            "--comment", "'the first VM'", "--setup-script", "-", "--json",
        ],
        stdin=SETUP_SCRIPT,
    )  # fmt: skip
    assert result.status == 0, result.stderr + surface.platform.log_tail()
    print(f"new with options: {time.monotonic() - started:.1f} s")
    vm = json.loads(result.stdout)
    assert vm["name"] == VM
    assert vm["state"] == "running"
    assert vm["cpus"] == 2
    assert vm["memory"] == "768M"
    assert vm["disk"] == "3G"
    assert vm["tags"] == ["demo", "first", "web"]
    assert vm["comment"] == "the first VM"
    assert vm["env"] == ["GREETING", "MODE"]
    assert vm["setup_script"] in ("pending", "running", "succeeded")

    assert surface.in_vm("nproc").strip() == "2"
    meminfo = re.search(r"MemTotal:\s+(\d+)", surface.in_vm("cat /proc/meminfo"))
    assert meminfo is not None
    mem_kib = int(meminfo.group(1))
    assert 600 * 1024 < mem_kib <= 768 * 1024
    assert surface.in_vm("bash -lc 'echo $GREETING $MODE'").strip() == "hello test"
    assert "GREETING=hello" in surface.in_vm("sudo -n systemctl show-environment")
    wait_until(
        lambda: surface.ssh(f"vm-logs {VM} --json").stdout.count('"succeeded"') > 0,
        120,
        "the setup script to succeed",
        interval=2,
    )
    assert surface.in_vm("cat ~/setup-done").strip() == "done"


def test_vm_logs_console_and_setup(surface: Surface) -> None:
    logs = surface.json(f"vm-logs {VM} -n 2000 --json")
    assert isinstance(logs, dict)
    assert "ussycode-init: ready, sshd may start" in logs["console"]
    assert "\r" not in logs["console"]
    assert logs["setup_script"]["status"] == "succeeded"
    assert logs["setup_script"]["exit_status"] == 0
    assert "setup ran as ussycode" in logs["setup_script"]["output"]
    assert "greeting=hello" in logs["setup_script"]["output"]
    assert "created" in [event["kind"] for event in logs["events"]]
    text = surface.ssh(f"vm-logs {VM} -n 5").stdout
    console = text.split("== setup script")[0]
    assert len(console.strip().splitlines()) <= 6
    assert "== setup script: succeeded, exit status 0 ==" in text
    assert "\x1b" not in text
    expect_error(surface, f"vm-logs {VM} -n 0", "invalid_input", "invalid --lines 0: choose 1 to 2000")


def test_ls_long_pattern_and_tag(surface: Surface) -> None:
    listing = surface.ssh("ls -l").stdout
    header, row = listing.splitlines()[:2]
    assert header.split() == ["NAME", "STATE", "CPUS", "MEMORY", "DISK", "UPTIME", "TAGS", "COMMENT"]
    assert row.split()[:5] == [VM, "running", "2", "768M", "3G"]
    assert "demo,first,web" in row
    assert "the first VM" in row
    assert [vm["name"] for vm in surface.json("ls 'web-*' --json")] == [VM]
    assert surface.json("ls 'db-*' --json") == []
    assert [vm["name"] for vm in surface.json("ls --tag demo --json")] == [VM]
    assert surface.json("ls --tag nope --json") == []
    status, document = surface.api("ls -l")
    assert status == 200
    assert document[0]["uptime_seconds"] >= 0


def test_tag_and_comment(surface: Surface) -> None:
    assert surface.json(f"tag {VM} api --json") == {"name": VM, "tags": ["api", "demo", "first", "web"]}
    assert surface.ssh(f"tag -d {VM} first api").stdout == f'vm "{VM}" tags: demo, web\n'
    expect_error(
        surface,
        f"tag -d {VM} nothere",
        "not_found",
        f'vm "{VM}" has no tag "nothere": its tags are demo, web',
    )
    expect_error(
        surface,
        f"tag {VM} {' '.join(f't{n}' for n in range(15))}",
        "invalid_input",
        f'vm "{VM}" would have 17 tags: the limit is 16',
    )
    status, document = surface.api(f"comment {VM} 'serves the demo'")
    assert status == 200
    assert document == {"name": VM, "comment": "serves the demo"}
    expect_error(
        surface, f"comment {VM} {'x' * 201}", "invalid_input", "comment is 201 bytes: the limit is 200 bytes"
    )


def test_stat_now_and_history(surface: Surface) -> None:
    def sampled() -> bool:
        data = surface.json(f"stat {VM} --json")
        return isinstance(data, dict) and len(data["history"]) >= 2

    wait_until(sampled, 60, "two resource samples", interval=5)
    data = surface.json(f"stat {VM} --json")
    assert isinstance(data, dict)
    now = data["now"]
    assert now["memory_bytes"] > 50 * 1024**2
    assert now["cpu_percent"] is not None
    assert now["disk_allocated_bytes"] > 0
    assert now["net_rx_bytes_per_second"] is not None
    assert data["interval_seconds"] == 10
    text = surface.ssh(f"stat {VM}").stdout
    assert re.search(r"^cpu\s+\d+\.\d% of 2 vCPUs\s+\S*[▁▂▃▄▅▆▇█]", text, re.MULTILINE), text
    assert re.search(r"^memory\s+\d+\.\d MiB of 768M", text, re.MULTILINE), text
    assert "written of 3G" in text
    status, document = surface.api(f"stat {VM}")
    assert status == 200
    assert document["name"] == VM


def test_errors_with_a_vm(surface: Surface) -> None:
    not_found = f'no VM named "{VM}": run "ls" to see your VMs'
    for line in (
        f"stop {VM}", f"cp {VM}", f"rename {VM} bobs-owl", f"tag {VM} x", f"comment {VM} x",
        f"resize {VM} --disk 9G", f"stat {VM}", f"vm-logs {VM}", f"ssh {VM} true", f"rm {VM} --force",
        f"share show {VM}",
    ):  # fmt: skip
        expect_error(surface, line, "not_found", not_found, user=surface.bob)

    expect_error(
        surface,
        f"resize {VM} --disk 2G",
        "invalid_input",
        f'cannot shrink the disk of vm "{VM}" from 3G to 2G: disks only grow',
    )
    expect_error(
        surface,
        f"cp {VM} --disk 2G",
        "invalid_input",
        f'--disk 2G is smaller than the disk of vm "{VM}" (3G): a copy\'s disk is at least as large',
    )
    expect_error(
        surface,
        f"resize {VM} --cpu 2",
        "invalid_input",
        f'vm "{VM}" already has these resources: nothing to change',
    )
    expect_error(
        surface, f"new --name {VM}", "conflict", f'a VM named "{VM}" already exists: choose another name'
    )
    expect_error(
        surface,
        "new --disk 1G",
        "invalid_input",
        "--disk 1G is smaller than the image ussyuntu (3G): choose at least 3G",
    )
    expect_error(surface, f"rename {VM} {VM}", "invalid_input", f'vm "{VM}" already has that name')
    expect_error(
        surface,
        f"rename {VM} Bad_Name",
        "invalid_input",
        'invalid VM name "Bad_Name": use 3 to 32 lowercase letters, digits and single dashes,'
        " starting with a letter and not ending with a dash",
    )

    expect_error(
        surface, f"rm {VM} nope --force", "not_found", 'no VM named "nope": run "ls" to see your VMs'
    )
    assert surface.json("ls --json")[0]["name"] == VM
    unconfirmed = surface.ssh(f"rm {VM}")
    assert (
        unconfirmed.stderr
        == f'error: rm needs confirmation: type the command in the REPL, or add --force: "rm {VM} --force"\n'
    )


def test_resize_disk_live_and_cpu_at_restart(surface: Surface) -> None:
    before = int(surface.in_vm("df -B1 --output=size / | tail -1"))
    grown = surface.json(f"resize {VM} --disk 4G --json")
    assert isinstance(grown, dict)
    assert grown["disk"] == "4G"
    assert grown["restart_needed"] is False
    after = int(surface.in_vm("df -B1 --output=size / | tail -1"))
    assert after - before > 900 * 1024**2

    text = surface.ssh(f"resize {VM} --cpu 1 --memory 512M").stdout
    assert "cpus:    2 → 1 (at the next start)" in text
    assert "memory:  768M → 512M (at the next start)" in text
    assert f'Restart to apply: "restart {VM}"' in text
    listed = surface.json(f"ls {VM} --json")[0]
    assert listed["cpus"] == 2
    assert listed["pending"] == {"cpus": 1, "memory": "512M"}
    assert "2→1" in surface.ssh("ls -l").stdout
    assert surface.in_vm("nproc").strip() == "2"

    started = time.monotonic()
    restarted = surface.json(f"restart {VM} --json")
    print(f"restart: {time.monotonic() - started:.1f} s")
    assert isinstance(restarted, dict)
    assert restarted["cpus"] == 1
    assert restarted["memory"] == "512M"
    assert restarted["pending"] == {}
    assert surface.in_vm("nproc").strip() == "1"
    assert int(surface.in_vm("df -B1 --output=size / | tail -1")) == after


def test_port_forwarding(surface: Surface) -> None:
    platform = surface.platform
    surface.in_vm("mkdir -p ~/site && echo forwarded > ~/site/index.html")
    surface.in_vm(
        "cd ~/site && setsid -f python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 < /dev/null"
    )
    argv = platform.ssh_argv(surface.alice, VM)
    tunnel = platform.ns.popen(
        [argv[0], "-N", "-o", "ExitOnForwardFailure=yes", "-L", "127.0.0.1:18000:localhost:8000", *argv[1:]]
    )
    try:
        wait_until(
            lambda: platform.curl("http://127.0.0.1:18000/").stdout == "forwarded\n", 60, "the forwarded port"
        )
        assert platform.curl("http://127.0.0.1:18000/index.html").status == 200
    finally:
        end_pid(tunnel.pid)
    errors = platform.workdir / "lobby-tunnel.log"
    with errors.open("wb") as log:
        lobby = platform.ns.popen(
            # The first -o for a setting wins, so this LogLevel replaces the ERROR of ssh_argv.
            [
                argv[0],
                "-o",
                "LogLevel=INFO",
                "-N",
                "-L",
                "127.0.0.1:18001:localhost:8000",
                *platform.ssh_argv(surface.alice)[1:],
            ],
            stderr=log,
        )
        try:

            def refused() -> bool:
                # Until ssh listens, curl fails without reaching the gateway; retry until it does.
                assert platform.curl("http://127.0.0.1:18001/", timeout=5).status == 0
                return "administratively prohibited" in errors.read_text()

            wait_until(refused, 30, "the gateway to refuse the forward")
        finally:
            end_pid(lobby.pid)
    assert (
        "port forwarding works with VM logins: ssh -p 2224 -L LOCAL:localhost:PORT VM@localhost"
        in errors.read_text()
    )


def test_agent_forwarding(surface: Surface) -> None:
    platform = surface.platform
    socket = platform.workdir / "agent.sock"
    agent = platform.ns.popen(["ssh-agent", "-D", "-a", str(socket)])
    try:
        wait_until(socket.exists, 10, "the ssh-agent socket")
        env = {"SSH_AUTH_SOCK": str(socket), "PATH": "/usr/bin:/bin"}
        platform.ns.run(["ssh-add", str(surface.alice.key)], env=env)
        fingerprint = platform.ns.run(["ssh-keygen", "-lf", f"{surface.alice.key}.pub"]).stdout.split()[1]
        argv = platform.ssh_argv(surface.alice, VM)
        forwarded = platform.ns.run([argv[0], "-A", *argv[1:], "ssh-add -l"], env=env, check=False)
        assert forwarded.returncode == 0, forwarded.stderr
        assert fingerprint in forwarded.stdout
        without = platform.ns.run([*argv, "ssh-add -l"], env=env, check=False)
        assert without.returncode != 0
        lobby = [argv[0], "-A", *platform.ssh_argv(surface.alice, tty=True)[1:]]
        with Terminal(platform.ns, platform.workdir, lobby, env={"SSH_AUTH_SOCK": str(socket)}) as term:
            term.wait_for("ussy> ")
            term.line(f"ssh {VM} ssh-add -l")
            term.wait_for(fingerprint, timeout=60)
    finally:
        end_pid(agent.pid)


def test_rsync_and_git_over_gateway(surface: Surface) -> None:
    platform = surface.platform
    workdir = platform.workdir
    ssh_command = " ".join(["ssh", "-p", "2224", *surface.ssh_options()[2:]])
    source = workdir / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("alpha\n")
    (source / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    synced = platform.ns.run(
        ["rsync", "-a", "-e", ssh_command, f"{source}/", f"{VM}@127.0.0.1:tree/"], check=False
    )
    assert synced.returncode == 0, synced.stderr
    assert surface.in_vm("cat tree/a.txt") == "alpha\n"
    assert surface.in_vm("stat -c %s tree/sub/b.bin").strip() == "25600"
    (source / "a.txt").write_text("changed\n")
    again = platform.ns.run(
        ["rsync", "-a", "--stats", "-e", ssh_command, f"{source}/", f"{VM}@127.0.0.1:tree/"], check=False
    )
    assert again.returncode == 0, again.stderr
    assert "Number of regular files transferred: 1" in again.stdout
    assert surface.in_vm("cat tree/a.txt") == "changed\n"

    surface.in_vm("git init -q --bare -b main repo.git")
    env = {"GIT_SSH_COMMAND": ssh_command, "PATH": "/usr/bin:/bin", "HOME": str(workdir)}
    local = workdir / "repo"

    def git(*args: str, cwd: Path = local) -> subprocess.CompletedProcess[str]:
        return platform.ns.run(["git", "-C", str(cwd), *args], env=env, check=False)

    local.mkdir()
    assert git("init", "-q", "-b", "main").returncode == 0
    (local / "README").write_text("pushed through the gateway\n")
    assert git("add", "README").returncode == 0
    assert (
        git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "first").returncode
        == 0
    )
    url = f"ssh://{VM}@127.0.0.1:2224/home/ussycode/repo.git"
    pushed = git("push", "-q", url, "main")
    assert pushed.returncode == 0, pushed.stderr
    clone = workdir / "clone"
    cloned = git("clone", "-q", url, str(clone), cwd=workdir)
    assert cloned.returncode == 0, cloned.stderr
    assert (clone / "README").read_text() == "pushed through the gateway\n"


def test_repl_ssh_into_vm_and_completion(surface: Surface) -> None:
    platform = surface.platform
    with Terminal(
        platform.ns, platform.workdir, platform.ssh_argv(surface.alice, tty=True), width=80
    ) as term:
        term.wait_for("ussy> ")
        term.type("stat we")
        term.press("tab")
        wait_until(lambda: term.prompt_line() == f"ussy> stat {VM}", 10, "VM name completion")
        term.press("ctrl-u")
        term.line(f"ssh {VM}")
        term.wait_for(f"ussycode@{VM}", timeout=60)
        term.line("echo inside-$(hostname); tty")
        term.wait_for(f"inside-{VM}")
        term.wait_for("/dev/pts/")
        term.line("exit 0")
        term.wait_for("logout")
        term.wait_for("ussy> ", count=2)
        term.line("whoami")
        term.wait_for("handle:   alice")
        term.line(f"ssh {VM} echo one-shot")
        term.wait_for("one-shot", count=2)
        term.line("ls -l")
        screen = term.wait_for("COMMENT")
        table = [line for line in screen.splitlines() if line.startswith((VM, "NAME"))]
        assert all(len(line) <= 80 for line in table)


def test_cp_keeps_files_new_identity(surface: Surface) -> None:
    surface.in_vm("echo 'kept in the copy' > ~/note.txt && sync")
    started = time.monotonic()
    copied = surface.json(f"cp {VM} {COPY} --copy-tags=false --json")
    print(f"cp (snapshot and boot): {time.monotonic() - started:.1f} s")
    assert isinstance(copied, dict)
    assert copied["name"] == COPY
    assert copied["state"] == "running"
    assert copied["copied_from"] == VM
    assert copied["tags"] == []
    assert copied["env"] == ["GREETING", "MODE"]
    assert copied["setup_script"] is None
    source = surface.json(f"ls {VM} --json")[0]
    assert copied["ip"] != source["ip"]
    assert surface.in_vm("cat ~/note.txt", COPY) == "kept in the copy\n"
    assert surface.in_vm("cat ~/setup-done", COPY).strip() == "done"
    assert surface.in_vm("hostname", COPY).strip() == COPY
    assert surface.in_vm("bash -lc 'echo $GREETING'", COPY).strip() == "hello"
    keys = "cat /etc/ssh/ssh_host_ed25519_key.pub"
    assert surface.in_vm(keys, COPY).split()[1] != surface.in_vm(keys).split()[1]
    assert surface.in_vm("hostname -I", COPY).split()[0] == copied["ip"]
    # The source's first disk is now a layer under the source's new disk and the copy's disk.
    assert len(list((surface.platform.data_dir / "disks").glob("*.qcow2"))) == 3
    surface.in_vm("echo changed > ~/note.txt && sync")
    assert surface.in_vm("cat ~/note.txt", COPY) == "kept in the copy\n"
    # The source reads the data under its new disk and writes on after the snapshot.
    surface.in_vm("dd if=/dev/urandom of=~/after.bin bs=1M count=64 status=none && sync")
    assert surface.in_vm("sha256sum ~/setup-done ~/after.bin | wc -l").strip() == "2"
    assert "Remounting filesystem read-only" not in surface.json(f"vm-logs {VM} -n 2000 --json")["console"]


def test_rename_url_and_login_follow(surface: Surface) -> None:
    platform = surface.platform
    renamed = surface.json(f"rename {COPY} {RENAMED} --json")
    assert isinstance(renamed, dict)
    assert renamed["https_url"] == f"https://{RENAMED}.ussy.localhost/"
    assert surface.in_vm("hostname", RENAMED).strip() == RENAMED
    assert surface.ssh("true", login=COPY).status != 0
    surface.in_vm(
        "mkdir -p ~/www && echo renamed > ~/www/index.html && cd ~/www &&"
        " setsid -f python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 < /dev/null",
        RENAMED,
    )
    assert surface.ssh(f"share set-public {RENAMED}").status == 0

    def fetch(name: str) -> Result:
        host = f"{name}.ussy.localhost"
        return platform.curl(f"https://{host}/", "--resolve", f"{host}:443:127.0.0.1")

    wait_until(lambda: fetch(RENAMED).stdout == "renamed\n", 60, "the app at the new URL")
    old = fetch(COPY)
    assert old.status == 404
    assert f'No VM named "{COPY}"' in old.stdout


def test_tutorial_walkthrough(surface: Surface) -> None:
    def lesson() -> dict[str, object]:
        data = surface.json("tutorial --json")
        assert isinstance(data, dict)
        return data

    assert surface.json("tutorial --reset --json")["lesson"] == 1
    assert lesson()["lesson"] == 2
    assert lesson()["lesson"] == 2
    surface.ssh("ls -l")
    assert lesson()["lesson"] == 3
    surface.in_vm("rm -f ~/hello.txt")
    assert surface.ssh("tutorial").stdout.startswith(
        f"Not done yet: ~/hello.txt in {VM} is missing or empty."
    )
    surface.in_vm("echo hello > ~/hello.txt")
    assert lesson()["lesson"] == 4
    surface.in_vm(
        "cd ~/site && setsid -f python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 < /dev/null"
    )
    wait_until(lambda: lesson()["lesson"] == 5, 30, "lesson 4 to pass", interval=2)
    assert lesson()["lesson"] == 6
    surface.ssh(f"stat {VM}")
    surface.ssh(f"vm-logs {VM}")
    assert lesson()["lesson"] == 7
    surface.ssh(f"resize {VM} --disk 5G")
    assert lesson()["lesson"] == 8
    assert lesson()["lesson"] == 9
    surface.ssh(f"share add-link {VM}")
    assert lesson()["lesson"] == 10
    text = surface.ssh("tutorial").stdout
    assert f'Not done yet: the copy {RENAMED} still exists: "rm {RENAMED}".' in text


def test_rm_several_cleans_up(surface: Surface) -> None:
    platform = surface.platform
    pids = platform.vm_pids()
    assert len(pids) == 2
    removed = surface.json(f"rm {RENAMED} {VM} --force --json")
    assert removed == {"removed": [RENAMED, VM]}
    assert surface.json("ls --json") == []
    assert list((platform.data_dir / "disks").iterdir()) == []
    assert list((platform.data_dir / "vms").iterdir()) == []
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 15, "QEMU to exit")
    finished = surface.json("tutorial --json")
    assert isinstance(finished, dict)
    assert finished["finished"] is True
    assert finished["completed"] == list(range(1, 11))


def test_repl_ctrl_c_cancels_new(surface: Surface) -> None:
    platform = surface.platform
    with Terminal(platform.ns, platform.workdir, platform.ssh_argv(surface.alice, tty=True)) as term:
        term.wait_for("ussy> ")
        term.line("new --name cancel-me")
        term.wait_for("booting (qemu)", timeout=60)
        term.press("ctrl-c")
        term.wait_for("cancelled", timeout=60)
        term.wait_for("ussy> ", count=2)
    assert surface.json("ls --json") == []
    assert list((platform.data_dir / "vms").iterdir()) == []
    assert list((platform.data_dir / "disks").iterdir()) == []
    assert platform.vm_pids() == []
