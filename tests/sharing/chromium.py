"""Headless Chromium driven over the DevTools protocol on a pipe, for browser tests.

Chromium reads protocol messages from file descriptor 3 and writes its own to descriptor 4
(`--remote-debugging-pipe`); each message is JSON followed by a NUL byte. A pipe needs no port,
so the browser can run inside a network namespace while the test drives it from outside.
It trusts Caddy's internal CA through `--ignore-certificate-errors-spki-list`, which Chromium
honours only together with `--user-data-dir`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.framework.netns import end_pid

CHROMIUM = "/usr/bin/chromium"
COMMAND_TIMEOUT = 30.0
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1024,768",
    "--remote-debugging-pipe",
)


def spki_hash(certificate: Path) -> str:
    """Return the base64 SHA-256 of a PEM certificate's public key, as Chromium's flag takes it."""
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class BrowserError(AssertionError):
    """Chromium returned an error or did not respond in time."""


class Chromium:
    """One headless Chromium with one page; every call waits at most `COMMAND_TIMEOUT` seconds."""

    def __init__(self, workdir: Path, trusted: Sequence[Path], prefix: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.profile = workdir / "chromium-profile"
        self.log_path = workdir / "chromium.log"
        self._trusted = [spki_hash(path) for path in trusted]
        self._prefix = list(prefix)
        self._process: subprocess.Popen[bytes] | None = None
        self._to_browser = -1
        self._from_browser = -1
        self._next_id = 0
        self._responses: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.session_id = ""

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        commands_read, commands_write = os.pipe()
        events_read, events_write = os.pipe()
        flags = [*FLAGS, f"--user-data-dir={self.profile}"]
        flags.append(f"--ignore-certificate-errors-spki-list={','.join(self._trusted)}")
        # bash moves the two pipe ends to the descriptors Chromium expects.
        script = f'exec "$@" 3<&{commands_read} 4>&{events_write}'
        argv = [*self._prefix, "bash", "-c", script, "chromium", CHROMIUM, *flags, "about:blank"]
        env = {"HOME": str(self.workdir), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(commands_read, events_write),
                env=env,
            )
        os.close(commands_read)
        os.close(events_write)
        self._to_browser, self._from_browser = commands_write, events_read
        self._reader = threading.Thread(target=self._read_loop, name="chromium-reader", daemon=True)
        self._reader.start()

        targets = self.call("Target.getTargets")["targetInfos"]
        page = next((target for target in targets if target["type"] == "page"), None)
        target_id = (
            page["targetId"] if page else self.call("Target.createTarget", url="about:blank")["targetId"]
        )
        self.session_id = self.call("Target.attachToTarget", targetId=target_id, flatten=True)["sessionId"]
        self.page("Page.enable")

    def close(self) -> None:
        if self._process is not None:
            with contextlib.suppress(BrowserError, OSError):
                self.call("Browser.close", timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=10)
            end_pid(self._process.pid)
            self._process = None
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._to_browser = self._from_browser = -1

    # Protocol.

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        waiter = self._responses.get(message["id"])
                    if waiter is not None:
                        waiter.put(message)

    def call(self, method: str, *, session: str = "", timeout: float = COMMAND_TIMEOUT, **params: Any) -> Any:
        """Send one command and return its result; `session` addresses the page instead of the browser."""
        with self._lock:
            self._next_id += 1
            message_id = self._next_id
            waiter: queue.Queue[dict[str, Any]] = queue.Queue()
            self._responses[message_id] = waiter
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            response = waiter.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(
                f"Chromium did not answer {method} within {timeout:g} s; see {self.log_path}"
            ) from None
        finally:
            with self._lock:
                self._responses.pop(message_id, None)
        if "error" in response:
            raise BrowserError(f"Chromium failed {method}: {response['error']}")
        return response.get("result", {})

    def page(self, method: str, **params: Any) -> Any:
        return self.call(method, session=self.session_id, **params)

    # Page actions.

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def open(self, url: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Navigate to `url`, follow its redirects, wait for the page to load; return the final URL."""
        navigation = self.page("Page.navigate", url=url)
        if navigation.get("errorText"):
            raise BrowserError(f"navigation to {url} failed: {navigation['errorText']}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.evaluate("document.readyState")
            if state == "complete":
                return str(self.evaluate("location.href"))
            time.sleep(0.1)
        raise BrowserError(f"{url} did not finish loading within {timeout:g} s")

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''"))

    def cookies(self) -> list[dict[str, Any]]:
        cookies: list[dict[str, Any]] = self.call("Storage.getCookies")["cookies"]
        return cookies

    def screenshot(self, path: Path) -> Path:
        data = self.page("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
