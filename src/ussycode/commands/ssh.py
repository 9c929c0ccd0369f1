"""The `ssh VM [COMMAND…]` command: a shell or command inside a VM.

On a terminal that can attach (the REPL, or exec mode with a PTY) the session runs on the user's
terminal, as `ssh VM@host` would. Elsewhere (exec mode without a PTY, `/exec`, `--json`) the
command runs to its end and its output and exit status are returned.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex

import asyncssh

from ussycode.auth.access import vm_for_ssh
from ussycode.commands.base import ArgumentParser, AttachTerminal, Command, CommandContext, CommandResult
from ussycode.errors import Conflict, InvalidInput, RuntimeFailure
from ussycode.vm.state import VMState

log = logging.getLogger(__name__)

SSH_COMMAND_TIMEOUT = 25.0
MAX_OUTPUT_BYTES = 1024 * 1024


def _arguments(parser: ArgumentParser) -> None:
    parser.add_argument("name", metavar="VM", help="VM name")
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="COMMAND",
        help="command to run in the VM (default: a login shell, on a terminal only)",
    )


def _text(output: bytes | str | None) -> str:
    """Decode at most MAX_OUTPUT_BYTES of a command's output."""
    if output is None:
        return ""
    data = output.encode() if isinstance(output, str) else output
    return data[:MAX_OUTPUT_BYTES].decode(errors="replace")


async def ssh(ctx: CommandContext, args: argparse.Namespace) -> CommandResult:
    manager = ctx.services.manager
    vm = vm_for_ssh(ctx.services.store, ctx.user, args.name)
    terminal = ctx.terminal
    attach = isinstance(terminal, AttachTerminal) and terminal.can_attach and not ctx.json_output
    if not args.command and not attach:
        login = ctx.services.config.ssh_command(vm.name)
        raise InvalidInput(f'ssh needs a command here; for an interactive shell run "{login}"')
    vm = await manager.wake(vm, reason=f"ssh command by {ctx.user.handle}")
    if vm.state != VMState.RUNNING:
        raise Conflict(f'vm "{vm.name}" is {vm.state}: run "start {vm.name}" first')
    command = None
    if args.command:
        command = shlex.join(args.command) if len(args.command) > 1 else args.command[0]
    if attach:
        assert isinstance(terminal, AttachTerminal)

        async def connect(agent_path: str | None) -> asyncssh.SSHClientConnection:
            return await manager.connect_guest(vm, agent_path=agent_path)

        status = await terminal.attach(connect, command)
        log.info("conn=%s vm=%s attached session exited with %d", ctx.conn_id, vm.name, status)
        data = {"vm": vm.name, "command": command or "", "exit_status": status, "stdout": "", "stderr": ""}
        return CommandResult(data, "", exit_status=status)
    assert command is not None
    conn = await manager.connect_guest(vm)
    try:
        async with conn:
            result = await asyncio.wait_for(
                conn.run(command, check=False, encoding=None), SSH_COMMAND_TIMEOUT
            )
    except TimeoutError as exc:
        raise RuntimeFailure(f'command in vm "{vm.name}" ran over {SSH_COMMAND_TIMEOUT:g} s') from exc
    except (OSError, asyncssh.Error) as exc:
        raise RuntimeFailure(f'command in vm "{vm.name}" failed: {exc}') from exc
    stdout = _text(result.stdout)
    stderr = _text(result.stderr)
    status = result.exit_status if result.exit_status is not None else 255
    log.info("conn=%s vm=%s ssh command exited with %d", ctx.conn_id, vm.name, status)
    data = {"vm": vm.name, "command": command, "exit_status": status, "stdout": stdout, "stderr": stderr}
    return CommandResult(data, (stdout + stderr).rstrip("\n"), exit_status=status)


COMMANDS = [
    Command(
        "ssh",
        "Open a shell in a VM, or run a command in it and print its output.",
        ssh,
        group="vms",
        arguments=_arguments,
        examples=["ssh mild-owl", "ssh mild-owl uname -a", "ssh mild-owl 'cd app && git pull'"],
    ),
]
