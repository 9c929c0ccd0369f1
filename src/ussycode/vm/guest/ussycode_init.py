#!/usr/bin/python3
"""Boot agent of the ussycode guest image: network, identity and SSH setup, run on every boot.

`ussycode-init.service` runs this script early in boot and orders sshd after it. The host passes
the network settings on the kernel command line:

    ussy.ip=<address>/<prefixlen> ussy.gw=<gateway> ussy.dns=<address>[,<address>...]

and serves the VM's identity as JSON at http://169.254.169.254/v1/vm. The script brings up eth0,
applies the identity (hostname, SSH keys, environment), creates missing sshd host keys, posts them
to http://169.254.169.254/v1/host-keys and tells systemd it is ready, so that sshd starts. Then it
grows the root filesystem to the size of its disk and, at the first boot that gets one, runs the
owner's setup script and reports it to http://169.254.169.254/v1/setup-log. If the metadata
service does not respond, the response saved by the last boot that reached it is applied again.

Every step prints one line prefixed "ussycode-init:" to stdout, which the unit sends to the
journal and the console. The script runs on the guest's python3 (3.11 on Debian 12, 3.12 on
Ubuntu 24.04) and imports little, because each import costs boot time under emulation: it speaks
HTTP over a plain socket instead of importing http.client, which pulls in ssl and email.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")

METADATA_HOST = "169.254.169.254"
METADATA_VM_PATH = "/v1/vm"
METADATA_HOST_KEYS_PATH = "/v1/host-keys"
METADATA_SETUP_LOG_PATH = "/v1/setup-log"
# Total time to wait for the metadata service at boot. The host normally responds within seconds.
METADATA_WAIT_SECONDS = 60.0
# Time to retry a POST of host keys or of the setup script's final state.
POST_RETRY_SECONDS = 15.0
REQUEST_TIMEOUT_SECONDS = 3.0
RETRY_INTERVAL_SECONDS = 1.0
MAX_RESPONSE_BYTES = 1 << 20
NIC_WAIT_SECONDS = 30.0

NIC = "eth0"
USER = "ussycode"
DEFAULT_ROOT_DEVICE = "/dev/vda"
CACHE_PATH = "/var/lib/ussycode/metadata.json"
SETUP_SCRIPT_PATH = "/var/lib/ussycode/setup-script"
# Created when the setup script starts, so that it runs at most once, even if it reboots the VM.
SETUP_STARTED_PATH = "/var/lib/ussycode/setup-script.started"
SETUP_LOG_PATH = "/var/log/ussycode-setup.log"
SETUP_TIMEOUT_SECONDS = 3600.0
# The first prompt of `new --prompt` and the marker that keeps it from being sent twice.
AGENT_PROMPT_PATH = "/var/lib/ussycode/agent-prompt"
AGENT_STARTED_PATH = "/var/lib/ussycode/agent-prompt.started"
AGENT_UNIT = "ussycode-agent.service"
SETUP_REPORT_INTERVAL_SECONDS = 10.0
# The metadata service takes at most 48 KiB of output in a body of at most 64 KiB.
SETUP_OUTPUT_MAX_CHARS = 48 * 1024
SETUP_BODY_MAX_BYTES = 60 * 1024
ENVIRONMENT_PATH = "/etc/environment"
PROFILE_PATH = "/etc/profile.d/ussycode.sh"
SSH_DIR = "/etc/ssh"
# RSA is left out: generating a 3072-bit key takes about 10 s under QEMU's TCG emulation, and
# every SSH client of the last ten years supports Ed25519 or ECDSA host keys.
HOST_KEY_TYPES = ("ed25519", "ecdsa")
ENV_HEADER = "# Written at boot by ussycode-init from the VM's metadata; edits are overwritten.\n"

_HOSTNAME_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def say(message: str) -> None:
    """Print one log line for the journal and the console."""
    print(f"ussycode-init: {message}", flush=True)


class NetworkConfig(NamedTuple):
    """Static network settings from the kernel command line."""

    interface: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    nameservers: tuple[ipaddress.IPv4Address, ...]


class Metadata(NamedTuple):
    """The VM identity served at /v1/vm, after validation. `hostname` is "" if the served one was invalid."""

    name: str
    hostname: str
    instance_id: str
    owner: str
    ssh_keys: tuple[str, ...]
    env: dict[str, str]
    setup_script: str | None
    agent_prompt: str | None


class Command(NamedTuple):
    """A command started by `start`."""

    argv: list[str]
    process: subprocess.Popen[str]
    input_text: str | None


class MetadataError(Exception):
    """The metadata service did not respond, or its response was unusable."""


def parse_cmdline(text: str) -> dict[str, str]:
    """Return the `key=value` words of a kernel command line (a bare word maps to "")."""
    params: dict[str, str] = {}
    for word in shlex.split(text):
        key, _, value = word.partition("=")
        params[key] = value
    return params


def parse_network(params: dict[str, str]) -> NetworkConfig:
    """Build the static network settings from the `ussy.*` parameters.

    :raise ValueError: a parameter is missing or is not an IPv4 address.
    """
    missing = [key for key in ("ussy.ip", "ussy.gw") if not params.get(key)]
    if missing:
        raise ValueError(f"missing kernel parameters: {', '.join(missing)}")
    if "/" not in params["ussy.ip"]:
        raise ValueError(f"ussy.ip={params['ussy.ip']} has no prefix length, expected ADDR/LEN")
    interface = ipaddress.IPv4Interface(params["ussy.ip"])
    gateway = ipaddress.IPv4Address(params["ussy.gw"])
    nameservers = tuple(ipaddress.IPv4Address(item) for item in params.get("ussy.dns", "").split(",") if item)
    return NetworkConfig(interface, gateway, nameservers)


def parse_metadata(data: Any) -> Metadata:
    """Validate the JSON document served at /v1/vm.

    Invalid SSH key lines, environment entries and host names are dropped with a log line, so
    that one bad entry does not lock the owner out. A missing field or a wrong type raises
    `MetadataError`.
    """
    if not isinstance(data, dict):
        raise MetadataError("metadata is not a JSON object")
    strings: dict[str, str] = {}
    for field in ("name", "hostname", "instance_id", "owner"):
        value = data.get(field)
        if not isinstance(value, str):
            raise MetadataError(f"metadata field {field!r} is missing or not a string")
        strings[field] = value
    if not valid_hostname(strings["hostname"]):
        say(f"ignoring hostname {strings['hostname']!r}: not a valid host name")
        strings["hostname"] = ""

    raw_keys = data.get("ssh_keys")
    if not isinstance(raw_keys, list):
        raise MetadataError("metadata field 'ssh_keys' is missing or not a list")
    keys: list[str] = []
    for index, key in enumerate(raw_keys):
        if not isinstance(key, str) or not key.strip() or any(c in key.strip() for c in "\r\n\0"):
            say(f"ignoring ssh_keys[{index}]: not a single-line public key")
            continue
        keys.append(key.strip())

    raw_env = data.get("env")
    if not isinstance(raw_env, dict):
        raise MetadataError("metadata field 'env' is missing or not an object")
    env: dict[str, str] = {}
    for key, value in raw_env.items():
        if not _ENV_KEY_RE.match(key):
            say(f"ignoring env entry {key!r}: not a valid variable name")
            continue
        if not isinstance(value, str) or any(char in value for char in "\r\n\0"):
            # The value is not logged: environment values can be secrets.
            say(f"ignoring env entry {key}: value is not a single-line string")
            continue
        env[key] = value

    setup_script = data.get("setup_script")
    if setup_script is not None and (not isinstance(setup_script, str) or not setup_script.strip()):
        say("ignoring setup_script: not a non-empty string")
        setup_script = None

    agent_prompt = data.get("agent_prompt")
    if agent_prompt is not None and (not isinstance(agent_prompt, str) or not agent_prompt.strip()):
        say("ignoring agent_prompt: not a non-empty string")
        agent_prompt = None

    return Metadata(
        name=strings["name"],
        hostname=strings["hostname"],
        instance_id=strings["instance_id"],
        owner=strings["owner"],
        ssh_keys=tuple(keys),
        env=env,
        setup_script=setup_script,
        agent_prompt=agent_prompt,
    )


def valid_hostname(name: str) -> bool:
    """Return whether `name` is a lowercase RFC 1123 host name that fits the kernel's 64 bytes."""
    if not name or len(name) > 63:
        return False
    return all(_HOSTNAME_LABEL_RE.match(label) for label in name.split("."))


def run(argv: Sequence[str], *, timeout: float = 60.0, input_text: str | None = None) -> None:
    """Run a command and raise `RuntimeError` with its output if it fails."""
    finish(start(argv, input_text=input_text), timeout=timeout)


def start(argv: Sequence[str], *, input_text: str | None = None) -> Command:
    """Start a command in the background for `finish` to wait for."""
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    except OSError as exc:
        raise RuntimeError(f"{shlex.join(argv)}: {exc}") from exc
    return Command(list(argv), process, input_text)


def finish(command: Command, *, timeout: float = 60.0) -> None:
    """Wait for a started command and raise `RuntimeError` with its output if it failed."""
    try:
        output, _ = command.process.communicate(command.input_text, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        command.process.kill()
        command.process.wait()
        raise RuntimeError(f"{shlex.join(command.argv)} timed out after {timeout:g} s") from exc
    if command.process.returncode != 0:
        tail = output.strip()[-500:]
        raise RuntimeError(f"{shlex.join(command.argv)} exited with {command.process.returncode}: {tail}")


def write_file(path: str, text: str, *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    """Replace `path` atomically with `text`, owned by uid:gid with `mode`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp_path = f"{path}.ussycode-tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp_path, flags, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchown(handle.fileno(), uid, gid)
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise


def wait_for_nic(name: str, timeout: float) -> None:
    """Wait until the kernel has created network interface `name`."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(f"/sys/class/net/{name}"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"network interface {name} did not appear within {timeout:g} s")
        time.sleep(0.1)


def configure_network(config: NetworkConfig) -> NetworkConfig:
    """Bring up lo and eth0 with the static address, default route and resolv.conf.

    Returns `config`, so that `step` can tell success from failure.
    """
    run(["ip", "link", "set", "lo", "up"])
    wait_for_nic(NIC, NIC_WAIT_SECONDS)
    # One ip process for the three changes: each process start costs time under emulation.
    batch = (
        f"link set {NIC} up\n"
        f"address replace {config.interface} dev {NIC}\n"
        f"route replace default via {config.gateway} dev {NIC}\n"
    )
    run(["ip", "-4", "-batch", "-"], input_text=batch)
    say(f"{NIC} is up with {config.interface} via {config.gateway}")

    lines = ["# Written at boot by ussycode-init from the kernel command line (ussy.dns).\n"]
    lines += [f"nameserver {server}\n" for server in config.nameservers]
    # resolv.conf may be a symlink to a resolver's stub file: replace the link, not its target.
    if os.path.islink("/etc/resolv.conf"):
        os.unlink("/etc/resolv.conf")
    write_file("/etc/resolv.conf", "".join(lines))
    servers = ",".join(map(str, config.nameservers)) or "none"
    say(f"wrote /etc/resolv.conf with nameservers {servers}")
    return config


def request(method: str, path: str, body: bytes | None = None, *, timeout: float) -> tuple[int, bytes]:
    """Send one HTTP/1.0 request to the metadata service and return (status, body).

    HTTP/1.0 keeps the response simple to read: the server closes the connection after the
    body and does not use chunked encoding.
    """
    head = f"{method} {path} HTTP/1.0\r\nHost: {METADATA_HOST}\r\nAccept: application/json\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    deadline = time.monotonic() + timeout
    received = bytearray()
    with socket.create_connection((METADATA_HOST, 80), timeout=timeout) as connection:
        connection.sendall(head.encode() + b"\r\n" + (body or b""))
        while len(received) <= MAX_RESPONSE_BYTES:
            connection.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
        else:
            raise ValueError(f"response larger than {MAX_RESPONSE_BYTES} bytes")

    header, separator, content = bytes(received).partition(b"\r\n\r\n")
    status_line = header.split(b"\r\n", 1)[0].split()
    if not separator or len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError("malformed HTTP response")
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            content = content[: int(value)]
    return int(status_line[1]), content


def fetch_metadata(budget: float) -> tuple[Metadata, dict[str, Any]]:
    """GET /v1/vm until it returns 200 with valid JSON or `budget` seconds pass.

    Returns the validated metadata and the raw document.
    :raise MetadataError: no usable response within the budget.
    """
    deadline = time.monotonic() + budget
    attempt = 0
    while True:
        attempt += 1
        try:
            status, body = request("GET", METADATA_VM_PATH, timeout=REQUEST_TIMEOUT_SECONDS)
            if status == 200:
                raw = json.loads(body)
                return parse_metadata(raw), raw
            last_error = f"HTTP status {status}"
        except (OSError, ValueError, MetadataError) as exc:
            last_error = str(exc) or type(exc).__name__
        if attempt == 1 or attempt % 10 == 0:
            say(f"metadata request {attempt} failed: {last_error}; retrying")
        if time.monotonic() + RETRY_INTERVAL_SECONDS > deadline:
            raise MetadataError(
                f"no response from http://{METADATA_HOST}{METADATA_VM_PATH} after "
                f"{attempt} attempts in {budget:g} s: {last_error}"
            )
        time.sleep(RETRY_INTERVAL_SECONDS)


def cached_instance_id() -> str | None:
    """Return the instance id of the metadata saved by the last boot that reached the service."""
    try:
        with open(CACHE_PATH) as handle:
            value = json.load(handle).get("instance_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def remove_host_keys() -> None:
    """Delete every sshd host key, so that `ensure_host_keys` makes new ones.

    A disk copied from another VM (`cp`) boots with that VM's keys and saved instance id; a
    new instance id means the keys belong to someone else.
    """
    for name in sorted(os.listdir(SSH_DIR)):
        if name.startswith("ssh_host_") and (name.endswith("_key") or name.endswith("_key.pub")):
            os.unlink(os.path.join(SSH_DIR, name))
    say("removed the host keys of the VM this disk was copied from")


def save_metadata(raw: dict[str, Any]) -> None:
    """Keep the last good response for boots where the metadata service is unreachable."""
    write_file(CACHE_PATH, json.dumps(raw, indent=2, sort_keys=True) + "\n", mode=0o600)


def load_cached_metadata() -> Metadata | None:
    """Return the response saved by the last boot that reached the metadata service, if any."""
    try:
        with open(CACHE_PATH) as handle:
            return parse_metadata(json.load(handle))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, MetadataError) as exc:
        say(f"ignoring unreadable {CACHE_PATH}: {exc}")
        return None


def apply_hostname(hostname: str) -> None:
    """Set the running hostname, /etc/hostname and the 127.0.1.1 line of /etc/hosts."""
    socket.sethostname(hostname)
    write_file("/etc/hostname", hostname + "\n")
    short = hostname.split(".", maxsplit=1)[0]
    aliases = hostname if short == hostname else f"{hostname} {short}"
    write_file(
        "/etc/hosts",
        "# Written at boot by ussycode-init.\n"
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{aliases}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n",
    )
    say(f"hostname is {hostname}")


def apply_ssh_keys(keys: Sequence[str]) -> None:
    """Replace the login user's authorized_keys with `keys` (mode 600, owned by the user)."""
    user = pwd.getpwnam(USER)
    ssh_dir = os.path.join(user.pw_dir, ".ssh")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    os.chown(ssh_dir, user.pw_uid, user.pw_gid)
    os.chmod(ssh_dir, 0o700)
    path = os.path.join(ssh_dir, "authorized_keys")
    text = "".join(f"{key}\n" for key in keys)
    write_file(path, text, mode=0o600, uid=user.pw_uid, gid=user.pw_gid)
    say(f"wrote {len(keys)} keys to {path}")


def render_environment(env: dict[str, str]) -> str:
    """Return /etc/environment for `env`, which pam_env reads for SSH and sudo sessions.

    pam_env takes each line literally, without expansion, after stripping one pair of quotes.
    """
    return ENV_HEADER + "".join(f'{key}="{value}"\n' for key, value in sorted(env.items()))


def render_profile(env: dict[str, str]) -> str:
    """Return /etc/profile.d/ussycode.sh for `env`, which login shells source."""
    exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))
    return ENV_HEADER + exports


def apply_env(env: dict[str, str]) -> Command | None:
    """Publish `env` to login shells, PAM sessions and systemd services started from now on.

    The files are written at once. The `systemctl set-environment` call that passes `env` to
    services is returned still running, so that it overlaps host key creation. Call `finish` on
    it before sshd may start.
    """
    write_file(ENVIRONMENT_PATH, render_environment(env))
    write_file(PROFILE_PATH, render_profile(env))
    say(f"wrote {len(env)} environment variables: {' '.join(sorted(env)) or 'none'}")
    if not env:
        return None
    return start(["systemctl", "set-environment", *(f"{k}={v}" for k, v in sorted(env.items()))])


def ensure_host_keys() -> list[str]:
    """Create the missing sshd host keys of `HOST_KEY_TYPES` and return every public key line."""
    comment = f"root@{socket.gethostname()}"
    started = []
    for key_type in HOST_KEY_TYPES:
        path = os.path.join(SSH_DIR, f"ssh_host_{key_type}_key")
        if not os.path.exists(path):
            argv = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", comment, "-f", path]
            started.append((path, start(argv)))
    for path, command in started:
        finish(command)
        say(f"created host key {path}")

    keys = []
    for name in sorted(os.listdir(SSH_DIR)):
        if name.startswith("ssh_host_") and name.endswith("_key.pub"):
            with open(os.path.join(SSH_DIR, name)) as handle:
                keys.append(handle.read().strip())
    return keys


def post_json(path: str, document: dict[str, Any], budget: float) -> str | None:
    """POST `document` to the metadata service, retrying for up to `budget` seconds.

    Returns None on a 2xx status, or else the last error.
    """
    body = json.dumps(document).encode()
    deadline = time.monotonic() + budget
    while True:
        try:
            status, _ = request("POST", path, body, timeout=REQUEST_TIMEOUT_SECONDS)
            if 200 <= status < 300:
                return None
            error = f"HTTP status {status}"
        except (OSError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
        if time.monotonic() + RETRY_INTERVAL_SECONDS > deadline:
            return error
        time.sleep(RETRY_INTERVAL_SECONDS)


def post_host_keys(keys: Sequence[str], budget: float) -> None:
    """POST the host keys to the metadata service, retrying for up to `budget` seconds."""
    error = post_json(METADATA_HOST_KEYS_PATH, {"keys": list(keys)}, budget)
    if error is None:
        say(f"posted {len(keys)} host keys to the metadata service")
    else:
        say(f"error: posting host keys failed: {error}")


def setup_output() -> str:
    """Return the end of the setup script's output, short enough for one setup-log body."""
    try:
        with open(SETUP_LOG_PATH, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - SETUP_OUTPUT_MAX_CHARS, 0))
            output = handle.read().decode(errors="replace")[-SETUP_OUTPUT_MAX_CHARS:]
    except FileNotFoundError:
        return ""
    # JSON escapes control characters, so cut more until the body fits.
    while len(json.dumps(output)) > SETUP_BODY_MAX_BYTES:
        output = output[len(output) // 4 :]
    return output


def report_setup(status: str, exit_status: int | None, budget: float) -> None:
    """POST the setup script's state and output so far to /v1/setup-log."""
    document: dict[str, Any] = {"status": status, "output": setup_output()}
    if exit_status is not None:
        document["exit_status"] = exit_status
    error = post_json(METADATA_SETUP_LOG_PATH, document, budget)
    if error is not None:
        say(f"error: reporting the setup script as {status} failed: {error}")


def run_setup_script(script: str) -> None:
    """Run the owner's setup script once, as the login user in a login shell, and report it.

    The script runs in the user's home directory with bash, so it reads /etc/profile.d and needs
    sudo for root. Its output goes to /var/log/ussycode-setup.log, and its state and output are
    posted to /v1/setup-log when it starts, every 10 s while it runs, and when it ends.
    """
    if os.path.exists(SETUP_STARTED_PATH):
        return
    write_file(SETUP_SCRIPT_PATH, script)
    write_file(SETUP_STARTED_PATH, f"{time.time():.0f}\n")
    home = pwd.getpwnam(USER).pw_dir
    say(f"running the setup script as {USER}, output in {SETUP_LOG_PATH}")
    with open(SETUP_LOG_PATH, "wb") as output:
        process = subprocess.Popen(
            ["runuser", "--login", USER, "--command", f"bash {SETUP_SCRIPT_PATH}"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=home,
            start_new_session=True,
        )
    report_setup("running", None, REQUEST_TIMEOUT_SECONDS)

    deadline = time.monotonic() + SETUP_TIMEOUT_SECONDS
    while True:
        try:
            exit_status = process.wait(timeout=SETUP_REPORT_INTERVAL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                say(f"error: the setup script ran for {SETUP_TIMEOUT_SECONDS:g} s, ending it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            else:
                report_setup("running", None, REQUEST_TIMEOUT_SECONDS)

    status = "succeeded" if exit_status == 0 else "failed"
    say(f"the setup script {status} with exit status {exit_status}")
    report_setup(status, exit_status, POST_RETRY_SECONDS)


def start_agent(prompt: str) -> None:
    """Queue the start of pi in the tmux session "agent" with the prompt of `new --prompt`, once.

    `ussycode-agent.service` runs it as the login user once the boot has reached sysinit.target.
    """
    if os.path.exists(AGENT_STARTED_PATH):
        return
    user = pwd.getpwnam(USER)
    write_file(AGENT_PROMPT_PATH, prompt, mode=0o600, uid=user.pw_uid, gid=user.pw_gid)
    write_file(AGENT_STARTED_PATH, f"{time.time():.0f}\n")
    run(["systemctl", "start", "--no-block", AGENT_UNIT])
    say(f'queued {AGENT_UNIT}, which starts pi in tmux session "agent" as {USER}')


def notify_ready() -> None:
    """Tell systemd the unit is ready (Type=notify), which lets sshd start."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.connect(address)
        notify.sendall(b"READY=1")


def root_device(params: dict[str, str]) -> str:
    """Return the root block device named by `root=`, or /dev/vda if it is not a /dev path."""
    device = params.get("root", "")
    return device if device.startswith("/dev/") else DEFAULT_ROOT_DEVICE


def grow_root(device: str) -> None:
    """Grow the mounted root filesystem to fill its disk. resize2fs does nothing if it already does."""
    # Lowest CPU priority: it runs while sshd starts and takes its first connections.
    run(["nice", "-n", "19", "resize2fs", device], timeout=600.0)
    stats = os.statvfs("/")
    say(f"root filesystem on {device} is {stats.f_blocks * stats.f_frsize >> 20} MiB")


def step(description: str, action: Callable[..., T], *args: Any) -> T | None:
    """Run one boot step and return its result, or log its failure and return None.

    A failed step does not stop the others: sshd must start even if, say, the hostname is bad.
    """
    try:
        return action(*args)
    except Exception as exc:
        say(f"error: {description} failed: {exc}")
        return None


def load_metadata(network_up: bool) -> tuple[Metadata | None, bool]:
    """Fetch the metadata or fall back to the saved copy. Return it and whether it is fresh."""
    if network_up:
        try:
            metadata, raw = fetch_metadata(METADATA_WAIT_SECONDS)
        except MetadataError as exc:
            say(f"error: {exc}")
        else:
            say(f"metadata: vm {metadata.name} ({metadata.instance_id}), owner {metadata.owner}")
            step("saving the metadata", save_metadata, raw)
            return metadata, True

    cached = load_cached_metadata()
    if cached is not None:
        say("using the metadata saved by an earlier boot")
    else:
        say("error: no metadata from this or an earlier boot: hostname and keys unchanged")
    return cached, False


def main() -> int:
    # The first line shows when Python has started, which under TCG emulation takes seconds.
    say("starting")
    with open("/proc/cmdline") as handle:
        params = parse_cmdline(handle.read())

    network_up = False
    try:
        network = parse_network(params)
    except ValueError as exc:
        say(f"error: no network configuration: {exc}")
    else:
        network_up = step("network setup", configure_network, network) is not None

    previous_instance = cached_instance_id()
    metadata, fresh = load_metadata(network_up)
    if fresh and metadata is not None and previous_instance not in (None, metadata.instance_id):
        say(f"instance id changed from {previous_instance} to {metadata.instance_id}: this disk is a copy")
        step("removing the copied host keys", remove_host_keys)
    env_command: Command | None = None
    if metadata is not None:
        if metadata.hostname:
            step("setting the hostname", apply_hostname, metadata.hostname)
        step("writing authorized_keys", apply_ssh_keys, metadata.ssh_keys)
        env_command = step("writing the environment", apply_env, metadata.env)

    host_keys = step("creating host keys", ensure_host_keys) or []
    if env_command is not None:
        step("passing the environment to systemd", finish, env_command)
    say(f"sshd has {len(host_keys)} host keys")
    if host_keys and fresh:
        post_host_keys(host_keys, POST_RETRY_SECONDS)
    elif host_keys:
        say("not posting host keys: the metadata service did not respond")

    step("notifying systemd", notify_ready)
    say("ready, sshd may start")

    step("growing the root filesystem", grow_root, root_device(params))
    if fresh and metadata is not None and metadata.setup_script is not None:
        step("running the setup script", run_setup_script, metadata.setup_script)
    # After the setup script, so that the agent finds what the script installed.
    if fresh and metadata is not None and metadata.agent_prompt is not None:
        step("starting the agent", start_agent, metadata.agent_prompt)
    say("done")
    return 0


# Hand-out of a warm-pool VM: `--reidentify`, run by the host over SSH with sudo.
#
# A pooled VM booted with the identity of no user: its metadata named no owner, so its
# authorized_keys contains only the gateway's key. When `new` takes the VM, the host changes the
# VM's record and sends this agent "go", and the agent applies the new identity without a reboot.
# With `--wait`, the agent first does the slow part (new host keys), then waits for "go" on stdin.
# Lines for the host start with "@" and carry JSON. Every other line is a log line.

NEXT_HOST_KEYS_DIR = "/etc/ssh/ussycode-next"
SSHD_PID_PATH = "/run/sshd.pid"
SSHD_PORT = 22
SSHD_RESTART_SECONDS = 10.0
REIDENTIFY_METADATA_SECONDS = 10.0
REIDENTIFY_LOG_PATH = "/var/log/ussycode-reidentify.log"


def emit(kind: str, document: dict[str, Any]) -> None:
    """Print one protocol line for the host: "@kind" and a JSON document."""
    print(f"@{kind} {json.dumps(document, sort_keys=True)}", flush=True)


def stage_host_keys() -> list[str]:
    """Create new sshd host keys in NEXT_HOST_KEYS_DIR and return their public key lines.

    sshd does not serve them until `install_staged_host_keys` moves them into place, so nobody has
    seen them before the VM's owner. The directory is on the same filesystem as /etc/ssh, which
    makes the move atomic.
    """
    if os.path.isdir(NEXT_HOST_KEYS_DIR):
        for name in os.listdir(NEXT_HOST_KEYS_DIR):
            os.unlink(os.path.join(NEXT_HOST_KEYS_DIR, name))
    os.makedirs(NEXT_HOST_KEYS_DIR, mode=0o700, exist_ok=True)
    started = []
    for key_type in HOST_KEY_TYPES:
        path = os.path.join(NEXT_HOST_KEYS_DIR, f"ssh_host_{key_type}_key")
        argv = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "root@ussycode", "-f", path]
        started.append(start(argv))
    for command in started:
        finish(command)
    keys = []
    for key_type in HOST_KEY_TYPES:
        with open(os.path.join(NEXT_HOST_KEYS_DIR, f"ssh_host_{key_type}_key.pub")) as handle:
            keys.append(handle.read().strip())
    say(f"staged {len(keys)} new host keys in {NEXT_HOST_KEYS_DIR}")
    return keys


def install_staged_host_keys() -> None:
    """Replace every sshd host key with the staged ones; the old keys are deleted."""
    staged = set(os.listdir(NEXT_HOST_KEYS_DIR))
    for name in sorted(os.listdir(SSH_DIR)):
        if name.startswith("ssh_host_") and name not in staged:
            os.unlink(os.path.join(SSH_DIR, name))
    # Private keys first: sshd loads a key by its private file.
    for name in sorted(staged, key=lambda entry: entry.endswith(".pub")):
        os.replace(os.path.join(NEXT_HOST_KEYS_DIR, name), os.path.join(SSH_DIR, name))
    os.rmdir(NEXT_HOST_KEYS_DIR)
    say("installed the staged host keys and deleted the old ones")


def listening_inodes(port: int) -> set[str]:
    """Return the socket inodes listening on TCP `port`, from /proc/net/tcp and tcp6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # Field 3 is the state: 0A is LISTEN. Field 9 is the inode.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def restart_sshd() -> tuple[int, set[str]]:
    """Send sshd SIGHUP, which makes it re-execute itself and load the new host keys, and return
    its PID and the inodes of its listening sockets from before.

    sshd closes its listening socket and opens a new one; open connections, the host's among
    them, stay up. The restart runs at the lowest CPU priority, because it takes seconds under
    TCG emulation while the owner's first session, over the host's open connection, needs the
    one vCPU. `wait_for_sshd` restores the priority.
    """
    with open(SSHD_PID_PATH) as handle:
        pid = int(handle.read().strip())
    before = listening_inodes(SSHD_PORT)
    os.setpriority(os.PRIO_PROCESS, pid, 19)
    os.kill(pid, signal.SIGHUP)
    return pid, before


def wait_for_sshd(pid: int, before: set[str]) -> None:
    """Wait until sshd listens on a socket that is not one of `before`, then give it the normal
    CPU priority back."""
    deadline = time.monotonic() + SSHD_RESTART_SECONDS
    while True:
        now = listening_inodes(SSHD_PORT)
        if now and not now & before:
            os.setpriority(os.PRIO_PROCESS, pid, 0)
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not listen again within {SSHD_RESTART_SECONDS:g} s")
        # Not shorter: the owner's first commands share the one vCPU with this loop.
        time.sleep(0.1)
    say("sshd listens again, with the new host keys")


def read_go() -> tuple[Metadata, dict[str, Any]] | None:
    """Wait for the host's "go" line; return the identity it carries, or None to fetch it.

    The host may append the metadata document to "go", which saves a request to the metadata
    service at hand-out.

    :raise MetadataError: no "go" line, or an unusable document.
    """
    line = sys.stdin.readline().strip()
    word, _, body = line.partition(" ")
    if word != "go":
        raise MetadataError(f"no go from the host ({line[:40] or 'end of input'}): keeping the pool identity")
    if not body:
        return None
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise MetadataError(f"the metadata after go is not JSON: {exc}") from exc
    return parse_metadata(raw), raw


def reidentify(wait: bool) -> int:
    """Take on the VM's new identity without a reboot.

    Steps: stage new host keys, (with `wait`) report them and wait for "go" on stdin, fetch the
    metadata unless "go" carried it, write hostname, authorized_keys and environment, install the
    staged host keys and restart sshd, then report. A child process then waits for sshd, posts
    the host keys and passes the environment to systemd.
    """
    keys = stage_host_keys()
    received = None
    if wait:
        emit("ready", {"host_keys": keys})
        received = read_go()
    metadata, raw = received or fetch_metadata(REIDENTIFY_METADATA_SECONDS)
    say(f"metadata: vm {metadata.name} ({metadata.instance_id}), owner {metadata.owner}")
    save_metadata(raw)
    if metadata.hostname:
        apply_hostname(metadata.hostname)
    apply_ssh_keys(metadata.ssh_keys)
    write_file(ENVIRONMENT_PATH, render_environment(metadata.env))
    write_file(PROFILE_PATH, render_profile(metadata.env))
    install_staged_host_keys()
    sshd_pid, listening_before = restart_sshd()
    # sshd takes a second or more under TCG emulation to listen again. The host's connection
    # stays up meanwhile, so the report does not wait for it.
    emit("done", {"host_keys": keys, "hostname": metadata.hostname})

    # The rest is not needed for the owner's first login. A child in its own session does it, so
    # that the host may close this SSH session at once without ending it.
    if os.fork() > 0:
        return 0
    os.setsid()
    os.nice(19)
    log_fd = os.open(REIDENTIFY_LOG_PATH, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    step("waiting for sshd", wait_for_sshd, sshd_pid, listening_before)
    post_host_keys(keys, POST_RETRY_SECONDS)
    if metadata.env:
        assignments = [f"{key}={value}" for key, value in sorted(metadata.env.items())]
        step("passing the environment to systemd", run, ["systemctl", "set-environment", *assignments])
    say("done")
    sys.stdout.flush()
    os._exit(0)


def reidentify_main(argv: Sequence[str]) -> int:
    """Run `reidentify` and report a failure as an "@error" line."""
    try:
        return reidentify(wait="--wait" in argv)
    except Exception as exc:
        say(f"error: taking the new identity failed: {exc}")
        emit("error", {"message": str(exc)})
        return 1


if __name__ == "__main__":
    sys.exit(reidentify_main(sys.argv[1:]) if "--reidentify" in sys.argv[1:] else main())
