"""The Caddy child process and its admin API.

`Caddy` starts `caddy run` with a config file written once per start, then changes routes only
through the admin API, which listens on a unix socket in the data directory. Files under
`<data_dir>`:

    caddy/admin.sock       admin API socket
    caddy/caddy.json       config loaded at start (stale after the first route change)
    caddy/caddy.pid        PID of the running Caddy, to find a leftover after a crash
    caddy/data, caddy/config  XDG_DATA_HOME and XDG_CONFIG_HOME: the internal CA and certificates
    logs/caddy.log         Caddy's output, appended across starts
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shlex
import signal
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from ussycode.errors import ConfigError, Conflict, RuntimeFailure
from ussycode.proxy.caddy_config import (
    TLS_MODES,
    VM_SUBROUTE_ID,
    ProxySettings,
    VMRoute,
    build_config,
    build_vm_route,
    check_domain,
    check_upstream,
    route_id,
)

log = logging.getLogger(__name__)

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
ADMIN_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
LOG_TAIL_CHARS = 2000
# sun_path in struct sockaddr_un has room for 108 bytes, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
# The host name checked in a TLS handshake to tell that the wildcard certificate is in place.
_PROBE_LABEL = "ussycode-tls-probe"
_PR_SET_PDEATHSIG = 1


class AdminAPI:
    """Client of Caddy's admin API on a unix socket.

    Requests carry an empty Host header, because Caddy 2.6.2 rejects any other Host on a unix
    socket ("host not allowed").
    """

    def __init__(self, socket_path: Path, *, timeout: float = ADMIN_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def request(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        """Send one request and return the decoded JSON response (None for an empty one).

        With `missing_ok`, a 404 (such as "unknown object ID") returns None.
        :raise RuntimeFailure: Caddy is unreachable, timed out, or rejected the request.
        """
        data = None if body is None else json.dumps(body)
        headers = {"Host": ""}
        if data is not None:
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            connector = aiohttp.UnixConnector(path=str(self.socket_path))
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.request(method, f"http://caddy{path}", data=data, headers=headers) as response,
            ):
                status = response.status
                text = await response.text()
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeFailure(
                f"Caddy admin API at {self.socket_path} failed on {method} {path}: {exc}"
            ) from exc
        except TimeoutError as exc:
            raise RuntimeFailure(
                f"Caddy admin API at {self.socket_path} timed out after {self.timeout:g} s on {method} {path}"
            ) from exc

        if status == 404 and missing_ok:
            return None
        if not 200 <= status < 300:
            raise RuntimeFailure(
                f"Caddy rejected {method} {path} with status {status}: {_error_text(text)}",
                output=text[-LOG_TAIL_CHARS:],
            )
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise RuntimeFailure(f"Caddy returned invalid JSON for {method} {path}: {text[:200]!r}") from exc


def _error_text(text: str) -> str:
    """Return the `error` field of Caddy's error body, or the body itself."""
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        return str(decoded["error"])
    return text.strip()


# Looked up in the parent, so that the forked child only calls the function.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this child when the thread that forked it exits."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _pid_state(pid: int) -> str | None:
    """Return the state letter of `pid` from /proc (R, S, Z, ...), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else None


def _pid_alive(pid: int) -> bool:
    state = _pid_state(pid)
    return state is not None and state not in ("Z", "X")


def _read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


async def _wait_until_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        await asyncio.sleep(POLL_INTERVAL)
    return not _pid_alive(pid)


async def _end_pid(pid: int, seconds: float) -> None:
    """Send SIGTERM to `pid`, then SIGKILL if it is still alive after `seconds`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if await _wait_until_gone(pid, seconds):
        return
    log.warning("caddy pid=%d ignored SIGTERM for %g s: sending SIGKILL", pid, seconds)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not await _wait_until_gone(pid, seconds):
        raise RuntimeFailure(f"Caddy pid {pid} is still alive after SIGKILL")


class Caddy:
    """One supervised Caddy process serving the platform's domain and its VMs' hosts.

    Route changes are serialized by a lock. They apply to the running Caddy only, so the caller
    passes every current route to `start` again after a restart. Call `start` from the thread
    that runs for the server's lifetime: Linux sends Caddy the parent-death signal when the
    thread that forked it exits.

    NOTE: nothing restarts Caddy if it exits on its own; `is_running` reports it.
    """

    def __init__(
        self,
        *,
        binary: str,
        data_dir: Path,
        domain: str,
        https_addr: tuple[str, int],
        http_addr: tuple[str, int],
        tls_mode: str,
        acme_email: str,
        api_upstream: str,
        ask_url: str | None = None,
        auth_socket: Path | None = None,
    ) -> None:
        """Check the settings; nothing starts until `start`.

        :raise ConfigError: a setting is invalid.
        """
        data_dir = data_dir.absolute()
        self._binary = binary
        self._caddy_dir = data_dir / "caddy"
        self._log_path = data_dir / "logs" / "caddy.log"
        self._config_path = self._caddy_dir / "caddy.json"
        self._pid_path = self._caddy_dir / "caddy.pid"
        self._admin_socket = self._caddy_dir / "admin.sock"
        self._settings = ProxySettings(
            domain=domain,
            https_addr=https_addr,
            http_addr=http_addr,
            tls_mode=tls_mode,
            acme_email=acme_email,
            api_upstream=api_upstream,
            auth_upstream=api_upstream if auth_socket is None else f"unix/{auth_socket.absolute()}",
            ask_url=ask_url,
            admin_socket=self._admin_socket,
        )
        self._check_settings()

        self._admin = AdminAPI(self._admin_socket)
        self._process: subprocess.Popen[bytes] | None = None
        self._argv: list[str] = []
        self._lock = asyncio.Lock()

    def _check_settings(self) -> None:
        settings = self._settings
        try:
            check_domain(settings.domain)
        except ValueError as exc:
            raise ConfigError(f"invalid proxy domain: {exc}") from exc
        for what, (host, port) in (("HTTPS", settings.https_addr), ("HTTP", settings.http_addr)):
            if not 0 < port < 65536:
                raise ConfigError(f"invalid {what} address {host}:{port}: port out of range")
        if settings.https_addr[1] == settings.http_addr[1]:
            raise ConfigError(
                f"HTTPS and HTTP addresses use the same port {settings.https_addr[1]}: "
                "choose two different ports"
            )
        if settings.tls_mode not in TLS_MODES:
            raise ConfigError(
                f"invalid TLS mode {settings.tls_mode!r}: expected one of {', '.join(TLS_MODES)}"
            )
        if settings.tls_mode == "acme" and not settings.ask_url:
            raise ConfigError(
                "TLS mode acme needs an ask URL, so that Caddy obtains certificates only for "
                "hosts the platform serves"
            )
        try:
            check_upstream(settings.api_upstream)
        except ValueError as exc:
            raise ConfigError(f"invalid API upstream: {exc}") from exc
        socket_bytes = len(os.fsencode(self._admin_socket))
        if socket_bytes > MAX_SOCKET_PATH_BYTES:
            raise ConfigError(
                f"admin socket path {self._admin_socket} is {socket_bytes} bytes, more than the "
                f"{MAX_SOCKET_PATH_BYTES} a unix socket allows: use a shorter data directory"
            )

    @property
    def root_ca_path(self) -> Path:
        """Root certificate of Caddy's internal CA; it exists once Caddy has started."""
        return self._caddy_dir / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    @property
    def log_path(self) -> Path:
        """File that receives Caddy's output."""
        return self._log_path

    @property
    def pid_path(self) -> Path:
        """File that contains the PID of the running Caddy."""
        return self._pid_path

    @property
    def admin_socket(self) -> Path:
        """Unix socket of Caddy's admin API."""
        return self._admin_socket

    @property
    def pid(self) -> int | None:
        """PID of the Caddy process this object started, while it runs."""
        return self._process.pid if self.is_running() and self._process else None

    def is_running(self) -> bool:
        """Return whether the Caddy process this object started is alive."""
        return self._process is not None and self._process.poll() is None

    async def start(self, routes: Sequence[VMRoute]) -> None:
        """Start Caddy serving `routes` and wait until its admin API and listeners are ready.

        A Caddy left over from a crashed server (found through the PID file) is ended first.
        :raise InvalidInput: a route is invalid.
        :raise Conflict: this Caddy is already running.
        :raise RuntimeFailure: Caddy failed to start; the error carries its exit code and the
            tail of its log.
        """
        async with self._lock:
            if self.is_running():
                raise Conflict(f"Caddy is already running (pid {self.pid}): stop it first")
            config = build_config(self._settings, routes)

            self._prepare_dirs()
            await self._end_leftover()
            self._write_config(config)
            log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
            self._spawn()
            try:
                await self._wait_ready(log_offset)
            except BaseException:
                await self._end_process()
                raise

            log.info(
                "caddy started pid=%d https=%s http=%s tls=%s routes=%d",
                self._process.pid if self._process else -1,
                self._settings.https_addr,
                self._settings.http_addr,
                self._settings.tls_mode,
                len(routes),
            )

    async def set_route(self, route: VMRoute) -> None:
        """Add VM `route.name`'s route, or replace it; other routes stay as they are.

        :raise InvalidInput: the route is invalid; Caddy keeps its current config.
        :raise RuntimeFailure: Caddy is not running or rejected the route.
        """
        body = build_vm_route(route, self._settings)
        async with self._lock:
            self._require_running()
            if await self._has_route(route.name):
                # PATCH replaces the object in place. A PUT on /id/<route id> would insert a
                # second route with the same @id in front of the first.
                await self._admin.request("PATCH", f"/id/{route_id(route.name)}", body)
                action = "replaced"
            else:
                await self._admin.request("PUT", f"/id/{VM_SUBROUTE_ID}/routes/0", body)
                action = "added"
        log.info("vm=%s route %s state=%s upstream=%s", route.name, action, route.state, route.upstream)

    async def remove_route(self, name: str) -> None:
        """Remove VM `name`'s route, if there is one, so its host gets the 404 page.

        :raise RuntimeFailure: Caddy is not running or failed the request.
        """
        async with self._lock:
            self._require_running()
            if not await self._has_route(name):
                log.debug("vm=%s has no route to remove", name)
                return
            await self._admin.request("DELETE", f"/id/{route_id(name)}", missing_ok=True)
        log.info("vm=%s route removed", name)

    async def stop(self) -> None:
        """Stop Caddy: the admin API's /stop, then SIGTERM, then SIGKILL, each with a timeout.

        :raise RuntimeFailure: the process survived SIGKILL.
        """
        async with self._lock:
            if self._process is None:
                return
            await self._end_process()

    def _require_running(self) -> None:
        if not self.is_running():
            raise RuntimeFailure(f"Caddy is not running: see {self._log_path}, then restart the server")

    async def _has_route(self, name: str) -> bool:
        found = await self._admin.request("GET", f"/id/{route_id(name)}", missing_ok=True)
        return found is not None

    def _prepare_dirs(self) -> None:
        try:
            self._caddy_dir.mkdir(parents=True, exist_ok=True)
            # The admin socket inside grants full control of Caddy; keep it to this user.
            self._caddy_dir.chmod(0o700)
            (self._caddy_dir / "data").mkdir(exist_ok=True)
            (self._caddy_dir / "config").mkdir(exist_ok=True)
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeFailure(f"cannot create Caddy's directories under {self._caddy_dir}: {exc}") from exc

    def _write_config(self, config: dict[str, Any]) -> None:
        temporary = self._config_path.with_suffix(".json.tmp")
        try:
            temporary.write_text(json.dumps(config, indent=2) + "\n")
            temporary.chmod(0o600)
            temporary.replace(self._config_path)
        except OSError as exc:
            raise RuntimeFailure(f"cannot write Caddy config {self._config_path}: {exc}") from exc

    def _is_our_caddy(self, argv: Sequence[str]) -> bool:
        """Return whether `argv` is a `caddy run` of this object's config file."""
        if len(argv) < 4 or Path(argv[0]).name != Path(self._binary).name:
            return False
        return argv[1] == "run" and str(self._config_path) in argv

    async def _end_leftover(self) -> None:
        """End a Caddy named by the PID file if it still runs our config, then remove the file."""
        try:
            pid = int(self._pid_path.read_text().strip())
        except FileNotFoundError:
            pid = None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable caddy pid file %s: %s", self._pid_path, exc)
            pid = None

        if pid is not None and _pid_alive(pid) and self._is_our_caddy(_read_cmdline(pid)):
            log.warning("ending leftover caddy pid=%d from an earlier server run", pid)
            await _end_pid(pid, STOP_TIMEOUT)
        with contextlib.suppress(FileNotFoundError):
            self._pid_path.unlink()
        # A socket file left by a killed Caddy would make the new one fail to listen.
        with contextlib.suppress(FileNotFoundError):
            self._admin_socket.unlink()

    def _spawn(self) -> None:
        self._argv = [self._binary, "run", "--config", str(self._config_path)]
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self._caddy_dir),
            "XDG_DATA_HOME": str(self._caddy_dir / "data"),
            "XDG_CONFIG_HOME": str(self._caddy_dir / "config"),
        }
        command_line = shlex.join(self._argv)
        try:
            with self._log_path.open("ab") as log_file:
                log_file.write(f"--- ussycode starting caddy: {command_line}\n".encode())
                log_file.flush()
                self._process = subprocess.Popen(
                    self._argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    cwd=self._caddy_dir,
                    env=env,
                    start_new_session=True,
                    # Only prctl runs between fork and exec; there is no other way to set
                    # the parent-death signal from Python.
                    preexec_fn=_die_with_parent,  # noqa: PLW1509
                )
        except FileNotFoundError as exc:
            raise RuntimeFailure(
                f"Caddy binary not found: {self._binary}: install the caddy package or set --caddy-bin"
            ) from exc
        except OSError as exc:
            raise RuntimeFailure(f"cannot start Caddy ({command_line}): {exc}") from exc

        try:
            self._pid_path.write_text(f"{self._process.pid}\n")
        except OSError as exc:
            log.warning("cannot write caddy pid file %s: %s", self._pid_path, exc)
        log.info("caddy starting pid=%d: %s", self._process.pid, command_line)

    def _launch_failure(self, reason: str, log_offset: int) -> RuntimeFailure:
        tail = self._log_tail(log_offset)
        returncode = self._process.poll() if self._process else None
        return RuntimeFailure(
            f"Caddy {reason} (exit code {returncode}, command: {shlex.join(self._argv)}); "
            f"see {self._log_path}: {tail[-500:]}",
            output=tail,
            returncode=returncode,
        )

    def _log_tail(self, offset: int) -> str:
        try:
            with self._log_path.open("rb") as log_file:
                log_file.seek(offset)
                text = log_file.read().decode(errors="replace")
        except OSError:
            return ""
        return text[-LOG_TAIL_CHARS:].strip()

    async def _wait_ready(self, log_offset: int) -> None:
        """Wait until the config is loaded and, with the internal CA, certificates are served."""
        deadline = time.monotonic() + START_TIMEOUT
        probe = AdminAPI(self._admin_socket, timeout=2.0)
        while True:
            if not self.is_running():
                raise self._launch_failure("exited during start", log_offset)
            if self._admin_socket.exists():
                # The admin API responds to GET /config/ only after the initial config has loaded.
                with contextlib.suppress(RuntimeFailure):
                    if await probe.request("GET", "/config/apps/http/servers") is not None:
                        break
            if time.monotonic() > deadline:
                raise self._launch_failure(
                    f"did not respond on {self._admin_socket} within {START_TIMEOUT:g} s", log_offset
                )
            await asyncio.sleep(POLL_INTERVAL)

        if self._settings.tls_mode != "internal":
            return
        while not await self._tls_ready():
            if not self.is_running():
                raise self._launch_failure("exited during start", log_offset)
            if time.monotonic() > deadline:
                raise self._launch_failure(
                    f"served no certificate for *.{self._settings.domain} within {START_TIMEOUT:g} s",
                    log_offset,
                )
            await asyncio.sleep(POLL_INTERVAL)

    async def _tls_ready(self) -> bool:
        """Return whether a TLS handshake for the domain and for a VM host verifies."""
        if not self.root_ca_path.exists():
            return False
        host, port = self._settings.https_addr
        connect_host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        domain = self._settings.domain
        try:
            context = ssl.create_default_context(cafile=str(self.root_ca_path))
        except (OSError, ssl.SSLError):
            return False
        for server_name in (domain, f"{_PROBE_LABEL}.{domain}"):
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(connect_host, port, ssl=context, server_hostname=server_name),
                    timeout=2.0,
                )
            except (OSError, ssl.SSLError, TimeoutError):
                return False
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        return True

    async def _end_process(self) -> None:
        """Stop the process in stages, reap it and remove the PID file."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                await self._admin.request("POST", "/stop")
            except RuntimeFailure as exc:
                log.debug("caddy pid=%d admin /stop failed: %s", process.pid, exc)
            if not await self._wait_exit(process, STOP_TIMEOUT):
                log.warning("caddy pid=%d still running after /stop: sending SIGTERM", process.pid)
                process.terminate()
                if not await self._wait_exit(process, STOP_TIMEOUT):
                    log.warning("caddy pid=%d ignored SIGTERM: sending SIGKILL", process.pid)
                    process.kill()
                    if not await self._wait_exit(process, STOP_TIMEOUT):
                        raise RuntimeFailure(f"Caddy pid {process.pid} is still alive after SIGKILL")

        with contextlib.suppress(OSError):
            if self._pid_path.read_text().strip() == str(process.pid):
                self._pid_path.unlink()
        log.info("caddy stopped pid=%d exit_code=%s", process.pid, process.returncode)
        self._process = None

    @staticmethod
    async def _wait_exit(process: subprocess.Popen[bytes], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while process.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL)
        return True


__all__ = ["AdminAPI", "Caddy", "VMRoute"]
