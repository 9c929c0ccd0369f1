"""Suspend settings and commands without a guest: idle durations, the idle_timeout setting,
outgoing connection detection, and the errors of suspend, resume and --idle."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import pytest

from tests.conftest import require_root
from tests.framework.platform import Platform
from ussycode import config
from ussycode.errors import ConfigError, Conflict, InvalidInput
from ussycode.vm import qemu
from ussycode.vm.idle import format_idle, host_connected_ips, parse_idle
from ussycode.vm.state import VMState, check_transition


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("1h30m", 5400),
        ("90s", 90),
        ("2d", 172800),
        ("never", 0),
        (" NEVER ", 0),
        ("10s", 10),
        ("000000000000030m", 1800),
    ],
)
def test_parse_idle_valid(text: str, seconds: int) -> None:
    assert parse_idle(text) == seconds


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", 'invalid --idle "": use a duration with units s, m, h or d'),
        ("30", 'invalid --idle "30": use a duration'),
        ("5x", 'invalid --idle "5x": use a duration'),
        ("m30", 'invalid --idle "m30": use a duration'),
        ("-5m", 'invalid --idle "-5m": use a duration'),
        ("1h 30m", 'invalid --idle "1h 30m": use a duration'),
        ("9s", 'invalid --idle "9s": choose between 10s and 30d, or "never"'),
        ("31d", 'invalid --idle "31d": choose between 10s and 30d'),
        ("always", 'invalid --idle "always"'),
        ("\uff13\uff10m", 'invalid --idle "\uff13\uff10m": use a duration'),
        ("\u0663\u0660m", 'invalid --idle "\u0663\u0660m": use a duration'),
        ("1" * 5000 + "s", 'choose between 10s and 30d, or "never"'),
    ],
)
def test_parse_idle_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment.replace("(", r"\(")) as raised:
        parse_idle(text)
    assert fragment in raised.value.message


def test_format_idle_round_trips() -> None:
    for seconds in (10, 90, 1800, 5400, 90061):
        assert parse_idle(format_idle(seconds)) == seconds
    assert format_idle(None) == "never"
    assert format_idle(0) == "never"


def _load(environ: dict[str, str]) -> config.Config:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args([]), {"USSYCODE_ENV_FILE": "/nonexistent/ussycode.env", **environ})


def test_idle_timeout_setting() -> None:
    assert _load({}).idle_timeout == 1800
    assert _load({"USSYCODE_IDLE_TIMEOUT": "2h"}).idle_timeout == 7200
    assert _load({"USSYCODE_IDLE_TIMEOUT": "never"}).idle_timeout == 0


def test_idle_timeout_setting_invalid() -> None:
    with pytest.raises(ConfigError) as raised:
        _load({"USSYCODE_IDLE_TIMEOUT": "soon"})
    message = raised.value.message
    assert "--idle-timeout (USSYCODE_IDLE_TIMEOUT, from environment): 'soon'" in message
    assert "use a duration with units s, m, h or d" in message


def test_suspended_state_transitions() -> None:
    check_transition("nap-owl", "running", VMState.SUSPENDING)
    check_transition("nap-owl", "suspended", VMState.STARTING)
    check_transition("nap-owl", "suspended", VMState.STOPPING)
    with pytest.raises(Conflict, match='vm "nap-owl" is stopped: run "start nap-owl" first'):
        check_transition("nap-owl", "stopped", VMState.SUSPENDING)
    with pytest.raises(Conflict, match='vm "nap-owl" is suspended: run "resume nap-owl" first'):
        check_transition("nap-owl", "suspended", VMState.SUSPENDING)


def test_host_connected_ips_outgoing_only() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                assert "127.0.0.1" in host_connected_ips()
                del client


def test_host_connected_ips_parses_table(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    # 10.0.0.5 and 10.0.0.1 as /proc/net/tcp prints them on a little-endian host; state 0A is
    # LISTEN and 01 ESTABLISHED. Port 1F90 (8080) on the host listens, so the VM's connection
    # to it is incoming; the host's connection from port C350 to the VM's port 22 is outgoing.
    table.write_text(
        "  sl  local_address rem_address   st\n"
        "   0: 0100000A:1F90 00000000:0000 0A\n"
        "   1: 0100000A:1F90 0500000A:D431 01\n"
        "   2: 0100000A:C350 0600000A:0016 01\n"
    )
    assert host_connected_ips(table) == {"10.0.0.6"}
    assert host_connected_ips(tmp_path / "missing") == set()


@pytest.mark.netns
def test_suspend_commands_bad_input(platform: Platform) -> None:
    require_root()
    alice = platform.make_user("alice")
    cases = [
        ("new --idle 5x", 'invalid --idle "5x": use a duration with units s, m, h or d'),
        ("new --idle 1s", 'invalid --idle "1s": choose between 10s and 30d, or "never"'),
        ("resize ghost-owl --idle soon", 'invalid --idle "soon"'),
        ("resize ghost-owl --idle 10m", 'no VM named "ghost-owl"'),
        ("suspend ghost-owl", 'no VM named "ghost-owl"'),
        ("resume ghost-owl", 'no VM named "ghost-owl"'),
        ("suspend", "VM"),
        ("new --idle \uff13\uff10m", 'invalid --idle "\uff13\uff10m": use a duration'),
        ("new --idle " + "9" * 5000 + "s", 'choose between 10s and 30d, or "never"'),
        ("new --idle=-1m", 'invalid --idle "-1m": use a duration'),
    ]
    for command, fragment in cases:
        result = platform.ssh(alice, command)
        assert result.status != 0, command
        assert fragment in result.stderr, f"{command}: {result.stderr}"
    assert json.loads(platform.ssh(alice, "ls --json").stdout) == []
    assert platform.ssh(alice, "whoami").status == 0


def test_saved_argv_options_replaced() -> None:
    saved = ["qemu", "-name", "ussycode-vm-1,process=ussy-old", "-drive", "file=/d/old.qcow2,if=none"]
    saved += ["-incoming", "exec:cat /run/state.qemu.loading", "-daemonize"]
    current = ["qemu", "-name", "ussycode-vm-1,process=ussy-new", "-drive", "file=/d/new.qcow2,if=none"]

    without = qemu._without_option(saved, "-incoming")
    assert "-incoming" not in without
    assert without[-1] == "-daemonize"

    replaced = qemu._replace_options(without, current, ("-drive", "-name"))
    assert replaced == [
        "qemu",
        "-name",
        "ussycode-vm-1,process=ussy-new",
        "-drive",
        "file=/d/new.qcow2,if=none",
        "-daemonize",
    ]
