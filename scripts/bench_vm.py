"""Benchmark sections that drive a running platform and its QEMU guests.

Each `measure_*` function takes a `Platform` started by scripts/bench.py inside its own network
namespace, returns a JSON-ready dict, and removes the VMs it created. A section that needs a server
feature this build lacks returns {"available": False, "reason": ...}.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_web import interleave  # noqa: E402

from tests.framework.platform import Platform, Result, SSHUser, wait_until  # noqa: E402
from tests.framework.tokens import sign_usy0  # noqa: E402
from tests.sharing.web import Runner, WebClient, jar_cookie, sign_in  # noqa: E402
from ussycode.auth.access import TOKEN_HEADER  # noqa: E402
from ussycode.auth.api_tokens import vm_namespace  # noqa: E402
from ussycode.auth.cookies import SESSION_COOKIE  # noqa: E402

SSH_ROUNDS = 10
TRANSFER_MIB = 100
CP_FILL_MIB = 256
ECHO_APP = REPO / "tests" / "sharing" / "echo_app.py"
APP_PORT = 8080
POOL_READY_TIMEOUT = 600.0
SUSPEND_COMMANDS = ("suspend", "resume")


class BenchError(Exception):
    """A step of the benchmark failed; the message names the step and the server's output."""


def check(result: Result, step: str) -> Result:
    if result.status != 0:
        raise BenchError(f"{step} failed (exit {result.status}): {result.stderr.strip()[-500:]}")
    return result


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Return the runs, their median and their 95th percentile (nearest rank, so the max of few runs)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(0.95 * len(ordered)))
    return {
        "runs": [round(value, digits) for value in values],
        "median": round(statistics.median(ordered), digits),
        "p95": round(ordered[rank - 1], digits),
    }


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


# VMs.


def new_vm(platform: Platform, user: SSHUser, name: str, *extra: str) -> Result:
    return check(platform.ssh(user, ["new", "--name", name, *extra]), f"new {name}")


def first_command(platform: Platform, user: SSHUser, vm: str) -> None:
    check(platform.ssh(user, "true", login=vm), f"first command in {vm}")


def remove_vm(platform: Platform, user: SSHUser, *names: str) -> None:
    check(platform.ssh(user, ["rm", *names, "--force"]), f"rm {' '.join(names)}")


def vm_listing(platform: Platform, user: SSHUser, vm: str) -> dict[str, Any]:
    listing = json.loads(check(platform.ssh(user, "ls --json"), "ls").stdout)
    for entry in listing:
        if entry["name"] == vm:
            found: dict[str, Any] = entry
            return found
    raise BenchError(f"ls --json does not list {vm}")


def qemu_pid(platform: Platform, vm: str) -> int:
    """Return the PID of VM `vm`'s QEMU, found by the process name QEMU was given."""
    marker = f"process=ussy-{vm}".encode()
    for pid in platform.vm_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            return pid
    raise BenchError(f"no running QEMU process for {vm}")


def command_exists(platform: Platform, user: SSHUser, command: str) -> bool:
    return platform.ssh(user, [command, "--help"]).status == 0


# new, start.


def measure_new_cold(platform: Platform, user: SSHUser, runs: int, keep: str) -> dict[str, Any]:
    """Time `new` plus the first `ssh VM@host true`; the last VM stays, named `keep`."""
    times = []
    for index in range(runs):
        name = keep if index == runs - 1 else f"bench-new-{index}"
        times.append(timed(lambda vm=name: (new_vm(platform, user, vm), first_command(platform, user, vm))))
        if name != keep:
            remove_vm(platform, user, name)
    return summary(times, 2)


def measure_start(platform: Platform, user: SSHUser, vm: str, runs: int) -> dict[str, Any]:
    """Stop `vm`, then time `start VM` plus the first command, `runs` times; it is left running."""
    times = []
    for _ in range(runs):
        check(platform.ssh(user, ["stop", vm]), f"stop {vm}")
        times.append(
            timed(
                lambda: (
                    check(platform.ssh(user, ["start", vm]), f"start {vm}"),
                    first_command(platform, user, vm),
                )
            )
        )
    return summary(times, 2)


def pool_ready(platform: Platform, user: SSHUser) -> int | None:
    """Return the number of ready pooled VMs that `admin pool --json` reports, or None without a pool."""
    result = platform.ssh(user, ["admin", "pool", "--json"])
    if result.status != 0:
        return None
    try:
        document = json.loads(result.stdout)
        if isinstance(document, dict) and document.get("enabled") is False:
            return None
        return _sum_ready(document)
    except json.JSONDecodeError:
        counts = re.findall(r"ready\D{0,20}(\d+)", result.stdout)
        return sum(int(count) for count in counts) if counts else None


def _sum_ready(document: Any) -> int:
    """Sum every integer field named `ready` in `document`, at any depth."""
    if isinstance(document, dict):
        total = 0
        for key, value in document.items():
            if key == "ready" and isinstance(value, int):
                total += value
            else:
                total += _sum_ready(value)
        return total
    if isinstance(document, list):
        return sum(_sum_ready(item) for item in document)
    return 0


def measure_new_pooled(platform: Platform, user: SSHUser, runs: int) -> dict[str, Any]:
    """Time `new` plus the first command with a ready pooled VM each time, waiting for the refill."""
    if pool_ready(platform, user) is None:
        return unavailable('this server has no warm pool ("admin pool" failed or reports it off)')
    times = []
    from_pool = []
    for index in range(runs):
        wait_until(
            lambda: (pool_ready(platform, user) or 0) >= 1, POOL_READY_TIMEOUT, "a ready VM in the pool", 2.0
        )
        name = f"bench-pool-{index}"
        started = time.perf_counter()
        created = new_vm(platform, user, name)
        first_command(platform, user, name)
        times.append(time.perf_counter() - started)
        from_pool.append("warm pool" in created.stderr)
        remove_vm(platform, user, name)
    # `from_pool` records whether `new` reported taking a pooled VM, by its progress line.
    return {"available": True, **summary(times, 2), "from_pool": from_pool}


# SSH.


def direct_ssh_argv(platform: Platform, user: SSHUser, ip: str) -> list[str]:
    return [
        *platform.ns.prefix(),
        "ssh", "-i", str(user.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        f"ussycode@{ip}",
    ]  # fmt: skip


def gateway_ssh_argv(platform: Platform, user: SSHUser, vm: str) -> list[str]:
    return [*platform.ns.prefix(), *platform.ssh_argv(user, vm)]


def run_argv(argv: Sequence[str], step: str, stdin: Path | None = None, timeout: float = 600) -> None:
    with open(stdin or "/dev/null", "rb") as source:
        completed = subprocess.run(argv, stdin=source, capture_output=True, timeout=timeout, check=False)
    if completed.returncode != 0:
        raise BenchError(f"{step} failed (exit {completed.returncode}): {completed.stderr.decode()[-500:]}")


def measure_ssh(
    platform: Platform, user: SSHUser, vm: str, ip: str, *, runs: int, workdir: Path
) -> dict[str, Any]:
    """Round trip of `ssh VM@host true` and the rate of a 100 MiB upload, via the gateway and direct.

    The direct client uses the same key: the guest's sshd accepts the VM owner's keys.
    """
    gateway = gateway_ssh_argv(platform, user, vm)
    direct = direct_ssh_argv(platform, user, ip)
    round_trips = {
        "gateway": summary(
            [timed(lambda: run_argv([*gateway, "true"], "ssh via gateway")) for _ in range(SSH_ROUNDS)]
        ),
        "direct": summary(
            [timed(lambda: run_argv([*direct, "true"], "ssh direct")) for _ in range(SSH_ROUNDS)]
        ),
    }

    payload = workdir / "transfer.bin"
    with open(payload, "wb") as out, open("/dev/urandom", "rb") as source:
        out.write(source.read(TRANSFER_MIB << 20))
    upload = "cat > /dev/null"
    rates: dict[str, list[float]] = {"gateway": [], "direct": []}
    for _ in range(runs):
        for label, argv in (("gateway", gateway), ("direct", direct)):
            seconds = timed(
                lambda argv=argv, label=label: run_argv([*argv, upload], f"upload {label}", payload)
            )
            rates[label].append(TRANSFER_MIB / seconds)
    payload.unlink()
    return {
        "round_trip_s": round_trips,
        "round_trip_ratio": round(round_trips["gateway"]["median"] / round_trips["direct"]["median"], 2),
        "upload_mib_per_s": {label: summary(values, 1) for label, values in rates.items()},
        "upload_ratio": round(statistics.median(rates["gateway"]) / statistics.median(rates["direct"]), 2),
    }


# HTTPS and /exec.


def http_load(platform: Platform, url: str, seconds: float, *extra: str) -> dict[str, Any]:
    argv = [sys.executable, str(REPO / "scripts" / "http_load.py"), url, "--seconds", str(seconds), *extra]
    completed = platform.ns.run(argv, timeout=seconds + 60)
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def in_namespace(platform: Platform) -> Runner:
    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*platform.ns.prefix(), *argv], capture_output=True, timeout=60, check=False)

    return run


def start_app(platform: Platform, user: SSHUser, vm: str) -> None:
    """Start the tests' echo app (HTTP/1.1 keep-alive, standard library only) on port 8080 in `vm`."""
    check(platform.ssh(user, "cat > echo_app.py", login=vm, stdin=ECHO_APP.read_bytes()), "copy echo app")
    serve = f"python3 echo_app.py 0.0.0.0 {APP_PORT} {shlex.quote(vm)}"
    check(platform.ssh(user, f"setsid -f {serve} >/dev/null 2>&1 </dev/null", login=vm), "start echo app")


def measure_https(platform: Platform, user: SSHUser, vm: str, ip: str, seconds: float) -> dict[str, Any]:
    """Load the VM's app straight, through its public URL, and its private URL with a session and a token.

    The routes take turns (see `interleave`); the VM is made public before each public turn and
    private again after it.
    """
    start_app(platform, user, vm)
    host = f"{vm}.{platform.domain}"
    url = f"https://{host}/"
    tls = ("--cacert", str(platform.root_ca), "--connect-to", "127.0.0.1")
    wait_until(lambda: platform.curl(f"http://{ip}:{APP_PORT}/").status == 200, 60, "the app in the VM")

    client = WebClient(
        cacert=platform.root_ca, jar=platform.workdir / "bench.cookies", run=in_namespace(platform)
    )
    login = json.loads(check(platform.ssh(user, ["browser", "--json"]), "browser").stdout)["url"]
    if sign_in(client, url, login).status != 200:
        raise BenchError(f"the app at {url} did not respond with 200 after signing in")
    cookie = f"{SESSION_COOKIE}={jar_cookie(client.jar, host, SESSION_COOKIE)}"
    token = sign_usy0(user.key, {}, vm_namespace(vm, platform.domain))
    routes = {
        "direct": [f"http://{ip}:{APP_PORT}/"],
        "public": [url, *tls],
        "private_session": [url, *tls, "--header", f"Cookie: {cookie}"],
        "private_token": [url, *tls, "--header", f"{TOKEN_HEADER}: Bearer {token}"],
    }

    def load(route: str, duration: float) -> dict[str, Any]:
        if route != "public":
            return http_load(platform, routes[route][0], duration, *routes[route][1:])
        check(platform.ssh(user, ["share", "set-public", vm]), "share set-public")
        wait_until(lambda: platform.curl(url).status == 200, 60, "the app at its public URL")
        result = http_load(platform, url, duration, *tls)
        check(platform.ssh(user, ["share", "set-private", vm]), "share set-private")
        wait_until(lambda: platform.curl(url).status == 401, 60, "the URL to be private again")
        return result

    return {"app": "tests/sharing/echo_app.py in the VM", **interleave(load, list(routes), seconds)}


def measure_exec(platform: Platform, user: SSHUser, seconds: float) -> dict[str, Any]:
    """Load `POST /exec whoami` with a usy0 token and with its usy1 short form."""
    usy0 = sign_usy0(user.key, {"cmds": ["whoami"]}, f"v0@{platform.domain}")
    shortened = check(platform.ssh(user, ["token", "shorten", usy0, "--json"]), "token shorten")
    usy1 = json.loads(shortened.stdout)["token"]
    tls = ("--cacert", str(platform.root_ca), "--connect-to", "127.0.0.1")
    results = {}
    for label, token in (("usy0", usy0), ("usy1", usy1)):
        post = ("--method", "POST", "--data", "whoami", "--header", f"Authorization: Bearer {token}")
        results[label] = http_load(platform, f"https://{platform.domain}/exec", seconds, *tls, *post)
    return results


# cp.

_STEP_RE = re.compile(r"\[\s*([0-9.]+)s\] (.*)")


def _step_times(progress: str) -> dict[str, float]:
    """Return the seconds at which each progress step of a command began, by its first word."""
    times: dict[str, float] = {}
    for match in _STEP_RE.finditer(progress):
        times.setdefault(match.group(2).split()[0], float(match.group(1)))
    return times


def measure_cp(platform: Platform, user: SSHUser) -> dict[str, Any]:
    """Time `cp` of a running VM with a 2 GiB and with a 10 GiB disk, each holding 256 MiB of data.

    `total_s` is the whole command (disk snapshot and boot of the copy). `snapshot_s` is the time
    between the `snapshotting` and `attaching` progress lines, which have 0.1 s resolution.
    """
    results: dict[str, Any] = {}
    for size in ("2G", "10G"):
        name = f"cp-{size.lower()}"
        new_vm(platform, user, name, "--disk", size)
        fill = f"dd if=/dev/urandom of=fill bs=1M count={CP_FILL_MIB} status=none && sync"
        check(platform.ssh(user, fill, login=name), f"filling {name}")
        started = time.perf_counter()
        copied = check(platform.ssh(user, ["cp", name, f"{name}-copy"]), f"cp {name}")
        total = time.perf_counter() - started
        steps = _step_times(copied.stderr)
        check(platform.ssh(user, "test -s fill", login=f"{name}-copy"), f"data in {name}-copy")
        results[size] = {
            "total_s": round(total, 1),
            "snapshot_s": round(steps["attaching"] - steps["snapshotting"], 1),
        }
        remove_vm(platform, user, name, f"{name}-copy")
    return results


# Host memory.


def _smaps_mappings(pid: int) -> list[dict[str, Any]]:
    """Parse /proc/PID/smaps into one dict per mapping: name, perms, size_kb, rss_kb."""
    mappings: list[dict[str, Any]] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            name = fields[5] if len(fields) > 5 else ""
            mappings.append({"name": name, "perms": fields[1], "size_kb": 0, "rss_kb": 0})
        elif fields and fields[0] == "Size:":
            mappings[-1]["size_kb"] = int(fields[1])
        elif fields and fields[0] == "Rss:":
            mappings[-1]["rss_kb"] = int(fields[1])
    return mappings


def qemu_memory(pid: int, guest_mib: int) -> dict[str, Any]:
    """Split the resident memory of a QEMU process into guest RAM and QEMU's own use.

    QEMU (7.2, `-m SIZE` without a memory backend) maps guest RAM as one anonymous mapping of at
    least SIZE. Its resident part is memory the guest touched. Everything else that is resident
    (QEMU's heap, TCG's translation buffer, device state, libraries) is the host's cost beyond
    the guest's RAM.
    """
    mappings = _smaps_mappings(pid)
    guest_kb = guest_mib * 1024
    candidates = [m for m in mappings if m["name"] == "" and guest_kb <= m["size_kb"] <= guest_kb + 4096]
    if not candidates:
        raise BenchError(f"no anonymous mapping of {guest_mib} MiB in /proc/{pid}/smaps")
    guest_ram = max(candidates, key=lambda mapping: mapping["rss_kb"])
    rss_kb = sum(mapping["rss_kb"] for mapping in mappings)
    others = sorted((m for m in mappings if m is not guest_ram), key=lambda m: m["rss_kb"], reverse=True)
    return {
        "rss_mib": round(rss_kb / 1024, 1),
        "guest_ram_resident_mib": round(guest_ram["rss_kb"] / 1024, 1),
        "overhead_mib": round((rss_kb - guest_ram["rss_kb"]) / 1024, 1),
        # Under TCG the largest is usually the translation buffer (`-accel tcg,tb-size=N`, N MiB).
        "largest_other_mappings": [
            {
                "name": m["name"] or "[anonymous]",
                "perms": m["perms"],
                "size_mib": round(m["size_kb"] / 1024, 1),
                "rss_mib": round(m["rss_kb"] / 1024, 1),
            }
            for m in others[:3]
        ],
    }


def qemu_guest_mib(pid: int) -> int:
    """Return the guest RAM size in MiB from QEMU's `-m NNNM` argument."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    size = argv[argv.index("-m") + 1]
    if not size.endswith("M"):
        raise BenchError(f"unexpected QEMU memory argument -m {size} for pid {pid}")
    return int(size[:-1])


def measure_memory(platform: Platform, vm: str, idle_seconds: float) -> dict[str, Any]:
    """Measure QEMU's resident memory for the idle `vm`, after `idle_seconds` without commands."""
    time.sleep(idle_seconds)  # The guest settles; there is no condition to poll for.
    pid = qemu_pid(platform, vm)
    guest_mib = qemu_guest_mib(pid)
    return {"guest_memory_mib": guest_mib, **qemu_memory(pid, guest_mib)}


# Suspend and resume.


def host_memory_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise BenchError("no MemAvailable in /proc/meminfo")


def vm_files_mib(platform: Platform) -> dict[str, float]:
    """Return the size in MiB of every file in the VM directories, by path."""
    return {
        str(path): path.stat().st_size / 2**20
        for path in platform.data_dir.glob("vms/*/**/*")
        if path.is_file()
    }


def suspended_footprint(
    platform: Platform, vm: str, guest_mib: int, files_before: dict[str, float]
) -> dict[str, Any]:
    """Return what a suspended VM keeps on the host: QEMU's resident memory if QEMU still runs, and
    the growth of the VM directories since `files_before` (the saved state, if suspend writes one)."""
    after = vm_files_mib(platform)
    grown = sum(size - files_before.get(path, 0.0) for path, size in after.items())
    footprint: dict[str, Any] = {"files_grown_mib": round(max(grown, 0.0), 1)}
    try:
        pid = qemu_pid(platform, vm)
    except BenchError:
        return {**footprint, "qemu_running": False, "rss_mib": 0.0}
    return {**footprint, "qemu_running": True, **qemu_memory(pid, guest_mib)}


def saved_state_mib(output: str) -> float | None:
    """Return the saved state's size from the `state_bytes` field of `suspend --json`, if it has one."""
    try:
        document = json.loads(output)
    except json.JSONDecodeError:
        return None
    size = document.get("state_bytes") if isinstance(document, dict) else None
    return round(size / 2**20, 1) if isinstance(size, int) else None


def measure_suspend(
    platform: Platform, user: SSHUser, vm: str, runs: int, running_rss_mib: float | None
) -> dict[str, Any]:
    """Time `resume` plus the first command, the host memory of a suspended VM, and a capacity estimate."""
    missing = [command for command in SUSPEND_COMMANDS if not command_exists(platform, user, command)]
    if missing:
        return unavailable(f"this server has no {' or '.join(missing)} command")
    guest_mib = qemu_guest_mib(qemu_pid(platform, vm))
    times = []
    suspended: dict[str, Any] = {}
    for _ in range(runs):
        files_before = vm_files_mib(platform)
        output = check(platform.ssh(user, ["suspend", vm, "--json"]), f"suspend {vm}").stdout
        suspended = suspended_footprint(platform, vm, guest_mib, files_before)
        suspended["saved_state_mib"] = saved_state_mib(output)
        times.append(
            timed(
                lambda: (
                    check(platform.ssh(user, ["resume", vm]), f"resume {vm}"),
                    first_command(platform, user, vm),
                )
            )
        )
    results: dict[str, Any] = {"available": True, "resume_to_first_command_s": summary(times, 2)}
    results["suspended"] = suspended
    if running_rss_mib:
        available = host_memory_available_mib()
        suspended_mib = float(suspended.get("rss_mib", 0.0))
        results["capacity_estimate"] = {
            "host_memory_available_mib": available,
            "idle_vms_running": int(available // running_rss_mib),
            # None: a suspended VM keeps no process, so memory does not limit their number.
            "idle_vms_suspended": int(available // suspended_mib) if suspended_mib >= 1 else None,
            "method": "host MemAvailable divided by one idle VM's QEMU RSS, running or suspended",
        }
    return results
