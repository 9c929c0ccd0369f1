"""A running `ussycode serve` inside its own network namespace, driven with real clients.

`Platform` starts the server with a fresh data directory, talks to it with the OpenSSH client
and curl run inside the namespace, and at teardown ends the server, every QEMU process the
server started (by the PIDs in the VM directories), and the namespace. Logs of a failed test are
copied to test-logs/.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.framework.netns import NetNS, end_pid

REPO = Path(__file__).resolve().parents[2]
USSYCODE = str(Path(sys.executable).with_name("ussycode"))
DEFAULT_IMAGE_DIR = "/var/cache/ussycode-test/images"


def image_dir() -> Path:
    return Path(os.environ.get("USSYCODE_TEST_IMAGE_DIR", DEFAULT_IMAGE_DIR))


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll `condition` until it is true; raise AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class SSHUser:
    """A person with an SSH key pair, as a test client."""

    name: str
    key: Path


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str


class Platform:
    def __init__(
        self,
        workdir: Path,
        *,
        domain: str = "ussy.localhost",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.domain = domain
        self.ns = NetNS("plat")
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "serve.log"
        self.extra_env = extra_env or {}
        self._log_handles: list[object] = []
        self.ssh_port = 2224

    # Lifecycle.

    def __enter__(self) -> Platform:
        self.ns.__enter__()
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "USSYCODE_ENV_FILE": str(self.workdir / "none.env"),
                "USSYCODE_DATA_DIR": str(self.data_dir),
                "USSYCODE_IMAGE_DIR": str(image_dir()),
                "USSYCODE_DOMAIN": self.domain,
                "USSYCODE_ACCEL": "tcg",
                "USSYCODE_VM_MEMORY": "512M",
                "USSYCODE_VM_DISK": "4G",
                "USSYCODE_BOOT_TIMEOUT": "240",
                "USSYCODE_LOG_LEVEL": "debug",
                # A warm pool boots VMs in the background, which would slow every test and make
                # `new` take either path. Tests of the pool turn it on.
                "USSYCODE_POOL_SIZE": "0",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        self._log_handles.append(handle)
        self.process = self.ns.popen(
            [USSYCODE, "serve"], stdout=handle, stderr=subprocess.STDOUT, env=self.env()
        )
        wait_until(self._ready, 60, "ussycode serve to report ready", interval=0.3)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"ussycode serve exited with {self.process.returncode}:\n{self.log_tail()}")
        return "ready: ssh" in self.log_path.read_text(errors="replace")

    def stop_server(self) -> None:
        """End `ussycode serve` with SIGTERM (VMs keep running)."""
        if self.process is not None and self.process.poll() is None:
            end_pid(self.process.pid, timeout=30)
            self.process.wait(timeout=5)
        self.process = None

    def restart(self) -> None:
        self.stop_server()
        with open(self.log_path, "ab") as handle:
            handle.write(b"\n--- restart ---\n")
        offset = self.log_path.stat().st_size
        self.start_after(offset)

    def start_after(self, offset: int) -> None:
        handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        self._log_handles.append(handle)
        self.process = self.ns.popen(
            [USSYCODE, "serve"], stdout=handle, stderr=subprocess.STDOUT, env=self.env()
        )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"ussycode serve exited:\n{self.log_tail()}")
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return b"ready: ssh" in log.read()

        wait_until(ready, 60, "ussycode serve to report ready after restart", interval=0.3)

    def vm_pids(self) -> list[int]:
        pids = []
        for pidfile in self.data_dir.glob("vms/*/qemu.pid"):
            with contextlib.suppress(ValueError, OSError):
                pids.append(int(pidfile.read_text().strip()))
        return pids

    def close(self) -> None:
        self.stop_server()
        for pid in self.vm_pids():
            end_pid(pid, timeout=5)
        self.ns.close()
        for handle in self._log_handles:
            with contextlib.suppress(Exception):
                handle.close()  # type: ignore[attr-defined]

    def keep_logs(self, test_name: str) -> Path:
        """Copy the server log and VM console logs to test-logs/<test_name>/."""
        target = REPO / "test-logs" / test_name
        target.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists():
            shutil.copy(self.log_path, target / "serve.log")
        for console in self.data_dir.glob("vms/*/console.log"):
            shutil.copy(console, target / f"console-{console.parent.name}.log")
        caddy_log = self.data_dir / "logs" / "caddy.log"
        if caddy_log.exists():
            shutil.copy(caddy_log, target / "caddy.log")
        return target

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # Clients.

    def make_user(self, name: str) -> SSHUser:
        key = self.workdir / f"{name}_ed25519"
        if not key.exists():
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"{name}@test",
                    "-f",
                    str(key),
                ],
                check=True,
            )
        return SSHUser(name, key)

    def ssh_argv(self, user: SSHUser, login: str | None = None, *, tty: bool = False) -> list[str]:
        target = f"{login or user.name}@127.0.0.1"
        return [
            "ssh",
            "-p",
            str(self.ssh_port),
            "-i",
            str(user.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=20",
            *(["-tt"] if tty else ["-T"]),
            target,
        ]

    def ssh(
        self,
        user: SSHUser,
        command: Sequence[str] | str,
        *,
        login: str | None = None,
        stdin: str | bytes | None = None,
        timeout: float = 600,
    ) -> Result:
        """Run one command through the gateway (`ssh -p 2224 [login@]host COMMAND`)."""
        argv = [*self.ssh_argv(user, login), *([command] if isinstance(command, str) else command)]
        data = stdin.encode() if isinstance(stdin, str) else stdin
        completed = self.ns.run(argv, input=data, timeout=timeout, check=False, text=False)
        return Result(
            completed.returncode,
            completed.stdout.decode(errors="replace"),
            completed.stderr.decode(errors="replace"),
        )

    def repl(self, user: SSHUser, lines: Sequence[str], *, timeout: float = 120) -> Result:
        """Feed lines to the REPL over a session without a PTY and return what it printed."""
        argv = self.ssh_argv(user)
        completed = self.ns.run(
            argv, input=("\n".join(lines) + "\n").encode(), timeout=timeout, check=False, text=False
        )
        return Result(
            completed.returncode,
            completed.stdout.decode(errors="replace"),
            completed.stderr.decode(errors="replace"),
        )

    @property
    def root_ca(self) -> Path:
        return self.data_dir / "caddy" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def curl(self, url: str, *extra: str, timeout: float = 30) -> Result:
        """Fetch `url` with curl inside the namespace, trusting Caddy's internal root CA."""
        argv = [
            "curl",
            "-sS",
            "--max-time",
            str(int(timeout)),
            "--cacert",
            str(self.root_ca),
            "-w",
            "\n%{http_code}",
            *extra,
            url,
        ]
        completed = self.ns.run(argv, timeout=timeout + 10, check=False)
        body, _, code = completed.stdout.rpartition("\n")
        return Result(int(code) if code.isdigit() else 0, body, completed.stderr)
