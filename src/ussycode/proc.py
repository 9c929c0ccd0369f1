"""Running external commands (ip, nft, qemu-img, mkfs) with timeouts and translated errors."""

from __future__ import annotations

import asyncio
import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ussycode.errors import RuntimeFailure

log = logging.getLogger(__name__)

OUTPUT_TAIL_CHARS = 2000


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def _tail(text: str) -> str:
    return text[-OUTPUT_TAIL_CHARS:]


def _failure(argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> RuntimeFailure:
    output = _tail((stderr or stdout).strip())
    return RuntimeFailure(
        f"command failed with exit code {returncode}: {shlex.join(argv)}: {output}",
        output=output,
        returncode=returncode,
    )


def run_sync(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60.0,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run `argv` to completion and return its output.

    :raise RuntimeFailure: the command is missing, timed out, or exited non-zero with `check`.
    """
    log.debug("running %s", shlex.join(argv))
    try:
        completed = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError as exc:
        raise RuntimeFailure(f"command not found: {argv[0]}: install it first") from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeFailure(f"command timed out after {timeout:g} s: {shlex.join(argv)}") from exc
    result = CommandResult(tuple(argv), completed.returncode, completed.stdout, completed.stderr)
    if check and completed.returncode != 0:
        raise _failure(argv, completed.returncode, completed.stdout, completed.stderr)
    return result


async def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60.0,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run `argv` without blocking the event loop; errors as in `run_sync`."""
    log.debug("running %s", shlex.join(argv))
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError as exc:
        raise RuntimeFailure(f"command not found: {argv[0]}: install it first") from exc
    data = input_text.encode() if input_text is not None else None
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(data), timeout)
    except TimeoutError as exc:
        process.kill()
        await process.wait()
        raise RuntimeFailure(f"command timed out after {timeout:g} s: {shlex.join(argv)}") from exc
    returncode = process.returncode if process.returncode is not None else -1
    result = CommandResult(
        tuple(argv), returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )
    if check and returncode != 0:
        raise _failure(argv, returncode, result.stdout, result.stderr)
    return result
