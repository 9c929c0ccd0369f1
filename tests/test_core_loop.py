"""The core loop end to end: SSH in, create a VM, run an app, fetch it over HTTPS, stop, start,
restart the server, remove. Real OpenSSH client, real QEMU guest, real Caddy, inside a namespace."""

from __future__ import annotations

import json
import time

import pytest

from tests.api.test_exec import post
from tests.conftest import require_image
from tests.framework import openapi
from tests.framework.platform import Platform, wait_until
from tests.framework.tokens import sign_usy0

pytestmark = [pytest.mark.vm, pytest.mark.netns]

APP_MARKER = "hello from mild-owl"


def fetch_app(platform: Platform, host: str) -> tuple[int, str]:
    result = platform.curl(f"https://{host}/", "--resolve", f"{host}:443:127.0.0.1")
    return result.status, result.stdout


def start_app(platform: Platform, user: object, vm: str) -> None:
    command = (
        f"mkdir -p ~/site && echo '{APP_MARKER}' > ~/site/index.html && cd ~/site && "
        "setsid -f python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 < /dev/null"
    )
    result = platform.ssh(user, command, login=vm)  # type: ignore[arg-type]
    assert result.status == 0, result.stderr


def test_core_loop_end_to_end(platform: Platform) -> None:
    require_image()
    alice = platform.make_user("alice")
    bob = platform.make_user("bob")
    host = f"mild-owl.{platform.domain}"

    created = platform.ssh(alice, ["new", "--name", "mild-owl", "--json"])
    assert created.status == 0, created.stderr + platform.log_tail()
    vm = json.loads(created.stdout)
    assert vm["name"] == "mild-owl"
    assert vm["state"] == "running"
    assert vm["https_url"] == f"https://{host}/"
    assert vm["ssh_command"] == "ssh -p 2224 mild-owl@localhost"
    assert vm["ip"].startswith("10.0.0.")
    assert vm["created_at"]

    listed = json.loads(platform.ssh(alice, "ls --json").stdout)
    assert [entry["name"] for entry in listed] == ["mild-owl"]

    whoami = platform.ssh(alice, "whoami", login="mild-owl")
    assert whoami.status == 0, whoami.stderr
    assert whoami.stdout.strip() == "ussycode"
    assert platform.ssh(alice, "sudo -n true", login="mild-owl").status == 0
    assert platform.ssh(alice, "exit 7", login="mild-owl").status == 7
    env = platform.ssh(alice, "bash -lc 'echo $USSYCODE_PUBLIC_URL'", login="mild-owl")
    assert env.stdout.strip() == f"https://{host}"

    metadata = platform.ssh(alice, "curl -s http://169.254.169.254/v1/vm", login="mild-owl")
    assert metadata.status == 0, metadata.stderr
    document = json.loads(metadata.stdout)
    openapi.validate("metadata.yaml", "VMDocument", document)
    assert document["name"] == "mild-owl"
    assert document["owner"] == "alice"
    assert document["env"]["USSYCODE_PUBLIC_URL"] == f"https://{host}"
    hostname = platform.ssh(
        alice, "curl -s http://169.254.169.254/latest/meta-data/hostname", login="mild-owl"
    )
    assert hostname.stdout == "mild-owl\n"

    written = platform.ssh(
        alice, "cat > ~/note.txt && sync", login="mild-owl", stdin="kept across restarts\n"
    )
    assert written.status == 0, written.stderr

    upload = platform.workdir / "upload.txt"
    upload.write_text("sent with scp\n")
    scp = platform.ns.run(
        ["scp", "-P", "2224", *platform.ssh_argv(alice)[3:-2], str(upload), "mild-owl@127.0.0.1:up.txt"],
        check=False,
    )
    assert scp.returncode == 0, scp.stderr
    assert platform.ssh(alice, "cat up.txt", login="mild-owl").stdout == "sent with scp\n"

    tty_argv = [*platform.ssh_argv(alice, "mild-owl", tty=True), "tty; echo term=$TERM; exit 3"]
    tty = platform.ns.run(tty_argv, check=False, env={"TERM": "xterm-256color", "PATH": "/usr/bin:/bin"})
    assert tty.returncode == 3
    assert "/dev/pts/" in tty.stdout
    assert "term=xterm-256color" in tty.stdout

    token = sign_usy0(alice.key, {"cmds": ["ssh"]}, "v0@ussy.localhost")
    remote, headers = post(platform, "ssh mild-owl sh -c 'echo from-api; exit 3'", token)
    assert remote.status == 200, remote.stdout
    assert headers["x-ussycode-exit-status"] == "3"
    assert json.loads(remote.stdout)["stdout"] == "from-api\n"
    via_gateway = platform.ssh(alice, "ssh mild-owl sh -c 'exit 4'")
    assert via_gateway.status == 4

    duplicate = platform.ssh(alice, "new --name mild-owl")
    assert duplicate.status != 0
    assert 'a VM named "mild-owl" already exists' in duplicate.stderr

    intruder = platform.ssh(bob, "stop mild-owl")
    assert intruder.status != 0
    assert 'no VM named "mild-owl"' in intruder.stderr
    intruder_shell = platform.ssh(bob, "true", login="mild-owl")
    assert intruder_shell.status != 0
    assert 'no VM named "mild-owl"' in intruder_shell.stderr

    in_repl = platform.repl(bob, ["stop mild-owl", "new --name mild-owl", "whoami"])
    assert 'no VM named "mild-owl"' in in_repl.stderr
    assert 'a VM named "mild-owl" already exists' in in_repl.stderr
    assert "handle:   bob" in in_repl.stdout

    start_app(platform, alice, "mild-owl")
    assert fetch_app(platform, host)[0] == 401
    assert platform.ssh(alice, "share set-public mild-owl").status == 0
    wait_until(lambda: fetch_app(platform, host) == (200, APP_MARKER + "\n"), 60, "the app over HTTPS")

    stopped = platform.ssh(alice, "stop mild-owl --json")
    assert stopped.status == 0, stopped.stderr
    assert json.loads(stopped.stdout)["state"] == "stopped"
    status, body = fetch_app(platform, host)
    assert status == 503
    assert "stopped" in body
    assert "start mild-owl" in body
    refused = platform.ssh(alice, "true", login="mild-owl")
    assert refused.status != 0
    assert 'is stopped: run "ssh -p 2224 localhost start mild-owl" first' in refused.stderr

    started = platform.ssh(alice, "start mild-owl --json")
    assert started.status == 0, started.stderr + platform.log_tail()
    assert json.loads(started.stdout)["state"] == "running"
    assert platform.ssh(alice, "cat ~/note.txt", login="mild-owl").stdout == "kept across restarts\n"

    start_app(platform, alice, "mild-owl")
    wait_until(lambda: fetch_app(platform, host)[0] == 200, 60, "the app after start")
    pids_before = platform.vm_pids()
    platform.restart()
    assert platform.vm_pids() == pids_before
    after_restart = platform.ssh(alice, "cat ~/note.txt", login="mild-owl")
    assert after_restart.status == 0, after_restart.stderr + platform.log_tail()
    assert after_restart.stdout == "kept across restarts\n"
    wait_until(
        lambda: fetch_app(platform, host) == (200, APP_MARKER + "\n"),
        60,
        "the app after a server restart",
    )
    assert json.loads(platform.ssh(alice, "ls --json").stdout)[0]["state"] == "running"

    unconfirmed = platform.ssh(alice, "rm mild-owl")
    assert unconfirmed.status != 0
    assert "rm needs confirmation" in unconfirmed.stderr
    mistyped = platform.repl(alice, ["rm mild-owl", "mild-cat", "ls"])
    assert 'rm cancelled: the typed name did not match "mild-owl"' in mistyped.stderr
    assert "mild-owl" in mistyped.stdout

    disk_dir = next(platform.data_dir.glob("vms/*"))
    removed = platform.ssh(alice, "rm mild-owl --force")
    assert removed.status == 0, removed.stderr
    assert not disk_dir.exists()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids_before):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids_before)
    status, body = fetch_app(platform, host)
    assert status == 404
    assert 'No VM named "mild-owl"' in body
    assert json.loads(platform.ssh(alice, "ls --json").stdout) == []
    assert platform.ns.run(["ip", "link", "show", "ussyt1"], check=False).returncode != 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
