"""Benchmark the core loop on this machine, inside a network namespace it creates and removes.

Prints a table and writes JSON to bench-results/core-<time>.json:
- seconds from `new` to the first command run in the VM (cold boot), over --runs VMs;
- round trip of `ssh VM@host true` through the gateway against the same straight to the VM's sshd;
- HTTPS requests per second and median latency through Caddy, for the VM's URL made public and
  for it private with a logged-in browser session, against the app fetched directly;
- seconds for `cp` of a VM with a 2 GiB disk and of one with a 10 GiB disk, each with 256 MiB of
  data: the whole command (snapshot and boot of the copy) and the disk snapshot alone.

Run as root from the checkout: .venv/bin/python scripts/bench.py [--runs 2] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import platform as host_platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.framework.platform import Platform, SSHUser, wait_until  # noqa: E402
from tests.framework.tokens import sign_usy0  # noqa: E402
from tests.sharing.web import Runner, WebClient, jar_cookie, sign_in  # noqa: E402
from ussycode.auth.cookies import SESSION_COOKIE  # noqa: E402

SSH_ROUNDS = 10


def timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def check(result: Any, what: str) -> Any:
    if result.status != 0:
        raise SystemExit(f"bench: {what} failed ({result.status}): {result.stderr.strip()}")
    return result


def bench_new(platform: Platform, user: SSHUser, runs: int) -> list[float]:
    times = []
    for index in range(runs):
        name = f"bench-{index}"

        def create_and_run(vm: str = name) -> None:
            check(platform.ssh(user, ["new", "--name", vm]), f"new {vm}")
            check(platform.ssh(user, "true", login=vm), f"first command in {vm}")

        times.append(timed(create_and_run))
        if index < runs - 1:
            check(platform.ssh(user, ["rm", name, "--force"]), f"rm {name}")
    return times


def bench_ssh(platform: Platform, user: SSHUser, vm: str, ip: str) -> dict[str, float]:
    gateway = [
        timed(lambda: check(platform.ssh(user, "true", login=vm), "ssh via gateway"))
        for _ in range(SSH_ROUNDS)
    ]
    direct_argv = [
        "ssh", "-i", str(user.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        f"ussycode@{ip}", "true",
    ]  # fmt: skip
    direct = [timed(lambda: platform.ns.run(direct_argv, timeout=60)) for _ in range(SSH_ROUNDS)]
    return {"gateway_median_s": statistics.median(gateway), "direct_median_s": statistics.median(direct)}


def http_load(platform: Platform, url: str, seconds: float, *extra: str) -> dict[str, Any]:
    argv = [sys.executable, str(REPO / "scripts" / "http_load.py"), url, "--seconds", str(seconds), *extra]
    completed = platform.ns.run(argv, timeout=seconds + 60)
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def bench_vm_url(platform: Platform, user: SSHUser, vm: str, host: str, seconds: float) -> dict[str, Any]:
    """Load the VM's URL made public, then private with a browser session's cookie.

    A public URL goes straight to the VM; a private one costs Caddy a forward-auth request to the
    platform's API for every request.
    """
    tls = ("--cacert", str(platform.root_ca), "--connect-to", "127.0.0.1")
    url = f"https://{host}/"
    check(platform.ssh(user, ["share", "set-public", vm]), "share set-public")
    wait_until(lambda: platform.curl(url).status == 200, 60, "the app at its public URL")
    public = http_load(platform, url, seconds, *tls)

    check(platform.ssh(user, ["share", "set-private", vm]), "share set-private")
    client = WebClient(
        cacert=platform.root_ca, jar=platform.workdir / "bench.cookies", run=in_namespace(platform)
    )
    login = json.loads(check(platform.ssh(user, ["browser", "--json"]), "browser").stdout)["url"]
    if sign_in(client, url, login).status != 200:
        raise SystemExit(f"bench: the app at {url} did not respond with 200 after signing in")
    cookie = f"{SESSION_COOKIE}={jar_cookie(client.jar, host, SESSION_COOKIE)}"
    private = http_load(platform, url, seconds, *tls, "--header", f"Cookie: {cookie}")
    return {"https_public_url": public, "https_private_url_session": private}


CP_FILL_MIB = 256
_STEP_RE = re.compile(r"\[\s*([0-9.]+)s\] (.*)")


def _step_times(progress: str) -> dict[str, float]:
    """Return the seconds at which each progress step of a command began, by its first word."""
    times = {}
    for match in _STEP_RE.finditer(progress):
        times.setdefault(match.group(2).split()[0], float(match.group(1)))
    return times


def bench_cp(platform: Platform, user: SSHUser) -> dict[str, Any]:
    """Time `cp` of a VM with a 2 GiB disk and of one with a 10 GiB disk, each holding 256 MiB of
    data: the whole command (snapshot and boot of the copy) and the disk snapshot alone."""
    results: dict[str, Any] = {}
    for size in ("2G", "10G"):
        name = f"cp-{size.lower()}"
        check(platform.ssh(user, ["new", "--name", name, "--disk", size]), f"new {name}")
        fill = f"dd if=/dev/urandom of=fill bs=1M count={CP_FILL_MIB} status=none && sync"
        check(platform.ssh(user, fill, login=name), f"filling {name}")
        started = time.perf_counter()
        copied = check(platform.ssh(user, ["cp", name, f"{name}-copy"]), f"cp {name}")
        total = time.perf_counter() - started
        steps = _step_times(copied.stderr)
        snapshot = steps["attaching"] - steps["snapshotting"]
        check(platform.ssh(user, "test -s fill", login=f"{name}-copy"), f"data in {name}-copy")
        results[size] = {"cp_total_s": round(total, 1), "disk_snapshot_s": round(snapshot, 1)}
        check(platform.ssh(user, ["rm", name, f"{name}-copy", "--force"]), f"rm {name}")
    return results


def in_namespace(platform: Platform) -> Runner:
    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*platform.ns.prefix(), *argv], capture_output=True, timeout=60, check=False)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=2, help="VMs created for the new-to-first-command figure")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="duration of each HTTP load run, in seconds"
    )
    args = parser.parse_args()

    results: dict[str, Any] = {
        "machine": {
            "cpus": subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip(),
            "kernel": host_platform.release(),
            "accel": "tcg",
        }
    }
    with (
        tempfile.TemporaryDirectory(prefix="ussybench-") as workdir,
        # The admin tier's limits leave room for the two VMs and two copies of the cp figures.
        Platform(
            Path(workdir), extra_env={"USSYCODE_API_RATE": "1000000", "USSYCODE_DEFAULT_TIER": "admin"}
        ) as platform,
    ):
        user = platform.make_user("bench")
        new_times = bench_new(platform, user, args.runs)
        results["new_to_first_command_s"] = {"runs": new_times, "median": statistics.median(new_times)}

        vm = f"bench-{args.runs - 1}"
        listing = json.loads(check(platform.ssh(user, "ls --json"), "ls").stdout)
        ip = next(entry["ip"] for entry in listing if entry["name"] == vm)
        results["ssh_true_round_trip"] = bench_ssh(platform, user, vm, ip)

        app = "setsid -f python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 < /dev/null"
        check(
            platform.ssh(user, f"mkdir -p ~/site && cd ~/site && echo ok > index.html && {app}", login=vm),
            "app",
        )
        host = f"{vm}.{platform.domain}"
        results.update(bench_vm_url(platform, user, vm, host, args.seconds))
        results["http_direct"] = http_load(platform, f"http://{ip}:8080/", args.seconds)

        usy0 = sign_usy0(user.key, {"cmds": ["whoami"]}, f"v0@{platform.domain}")
        usy1 = json.loads(
            check(platform.ssh(user, ["token", "shorten", usy0, "--json"]), "token shorten").stdout
        )["token"]
        exec_url = f"https://{platform.domain}/exec"
        for label, token in (("exec_whoami_usy0", usy0), ("exec_whoami_usy1", usy1)):
            tls = ("--cacert", str(platform.root_ca), "--connect-to", "127.0.0.1")
            post = ("--method", "POST", "--data", "whoami", "--header", f"Authorization: Bearer {token}")
            results[label] = http_load(platform, exec_url, args.seconds, *tls, *post)
        check(platform.ssh(user, ["rm", vm, "--force"]), f"rm {vm}")
        results["cp"] = bench_cp(platform, user)

    out_dir = REPO / "bench-results"
    out_dir.mkdir(exist_ok=True)
    out_file = out_dir / f"core-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_file.write_text(json.dumps(results, indent=2))

    ssh = results["ssh_true_round_trip"]
    public, private = results["https_public_url"], results["https_private_url_session"]
    direct = results["http_direct"]
    median_new = results["new_to_first_command_s"]["median"]
    rows = [
        ("new -> first command (s)", f"median {median_new:.1f}, runs {[round(t, 1) for t in new_times]}"),
        (
            "ssh VM@host true (s)",
            f"gateway {ssh['gateway_median_s']:.3f}, direct {ssh['direct_median_s']:.3f}",
        ),
        ("HTTPS public URL", f"{public['requests_per_second']} req/s, median {public['median_ms']} ms"),
        (
            "HTTPS private URL, session",
            f"{private['requests_per_second']} req/s, median {private['median_ms']} ms",
        ),
        ("HTTP direct to the app", f"{direct['requests_per_second']} req/s, median {direct['median_ms']} ms"),
        *[
            (f"cp, {size} disk (s)", f"total {cp['cp_total_s']}, disk snapshot {cp['disk_snapshot_s']}")
            for size, cp in results["cp"].items()
        ],
        *[
            (
                f"POST /exec whoami ({kind})",
                f"{results[key]['requests_per_second']} req/s, median {results[key]['median_ms']} ms",
            )
            for kind, key in (("usy0", "exec_whoami_usy0"), ("usy1", "exec_whoami_usy1"))
        ],
    ]
    print(f"machine: {results['machine']}")
    for label, value in rows:
        print(f"{label:<26} {value}")
    print(f"results: {out_file}")


if __name__ == "__main__":
    main()
