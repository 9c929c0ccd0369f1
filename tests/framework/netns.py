"""Network namespaces that tests and benchmarks create for themselves and always remove.

Anything that needs a bridge, a TAP device, an nftables rule or an address outside 127.0.0.0/8
runs inside a `NetNS`. Processes started through it are recorded by PID and ended by PID when the
namespace is closed, before the namespace is deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

log = logging.getLogger(__name__)

NAME_PREFIX = "ussyt-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def end_pid(pid: int, timeout: float = 10.0) -> None:
    """Send SIGTERM to `pid`, then SIGKILL if it is still alive after `timeout` seconds."""
    if not _pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class NetNS:
    """A network namespace named `ussyt-<random>` with loopback up.

    Use as a context manager. `extra_pids` lets a caller register processes that were started
    indirectly (QEMU daemonizes, for example), so that they are ended with the namespace.
    """

    def __init__(self, label: str = "") -> None:
        suffix = secrets.token_hex(3)
        self.name = f"{NAME_PREFIX}{label[:6]}{'-' if label else ''}{suffix}"
        self._processes: list[subprocess.Popen[Any]] = []
        self.extra_pids: list[int] = []
        self._open = False

    def __enter__(self) -> NetNS:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self._open = True
        self.run(["ip", "link", "set", "lo", "up"])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def prefix(self) -> list[str]:
        """Return the argv prefix that runs a command inside this namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 120.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the namespace and wait for it."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run([*self.prefix(), *argv], check=check, timeout=timeout, **kwargs)

    def popen(
        self,
        argv: Sequence[str],
        *,
        stdout: IO[Any] | int | None = None,
        stderr: IO[Any] | int | None = None,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start `argv` inside the namespace; it is ended by PID when the namespace closes."""
        process = subprocess.Popen([*self.prefix(), *argv], stdout=stdout, stderr=stderr, env=env, **kwargs)
        self._processes.append(process)
        return process

    def pids_inside(self) -> list[int]:
        """Return the PIDs of every process whose network namespace is this one."""
        result = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        return [int(line) for line in result.stdout.split() if line.isdigit()]

    def close(self) -> None:
        """End the processes started here, then delete the namespace."""
        if not self._open:
            return
        for process in reversed(self._processes):
            if process.poll() is None:
                end_pid(process.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
        for pid in self.extra_pids:
            end_pid(pid)
        leftover = self.pids_inside()
        if leftover:
            log.warning("namespace %s still has processes %s after teardown", self.name, leftover)
        subprocess.run(["ip", "netns", "delete", self.name], check=False)
        self._open = False


@contextlib.contextmanager
def netns(label: str = "") -> Iterator[NetNS]:
    """Create a `NetNS` and remove it afterwards."""
    namespace = NetNS(label)
    with namespace:
        yield namespace
