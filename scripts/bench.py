"""Benchmark ussycode on this machine, side by side, in one run; print a Markdown table and write JSON.

Run as root from the checkout (it needs network namespaces and QEMU):

    .venv/bin/python scripts/bench.py [--runs 3] [--seconds 8] [--only SECTION ...] [--json PATH]

Every server runs inside a network namespace created for it and removed afterwards, and every VM
it creates is removed. Sections (all by default):

  new      `new` to the first command in the VM, cold boot (warm pool disabled), median and p95
  pool     the same with a ready VM in the warm pool (USSYCODE_POOL_SIZE=1), if the server has one
  start    `start` of a stopped VM to the first command
  ssh      `ssh VM@host true` via the gateway against straight to the VM's sshd, and the rate of
           a 100 MiB upload (`cat > /dev/null`) both ways
  https    requests/s and median latency to the app in a VM: straight, the public URL, the
           private URL with a browser session, and with a VM-scoped token
  web      the same four routes with a fast app on loopback instead of a guest (no QEMU)
  exec     `POST /exec whoami` requests/s with a usy0 and a usy1 token
  cp       `cp` of a running VM with a 2 GiB and a 10 GiB disk
  memory   host memory of an idle VM beyond its guest RAM (QEMU RSS minus the guest RAM mapping)
  suspend  `resume` to the first command, host memory of a suspended VM, and an estimate of how
           many idle VMs fit running against suspended, if the server has suspend and resume
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host_platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bench_report  # noqa: E402
import bench_vm  # noqa: E402

from tests.framework.netns import NetNS  # noqa: E402
from tests.framework.platform import Platform  # noqa: E402

SECTIONS = ("new", "pool", "start", "ssh", "https", "web", "exec", "cp", "memory", "suspend")
MAIN_VM = "bench-main"
MEMORY_IDLE_SECONDS = 20.0
POOL_SIZE = 1
# The admin tier's limits leave room for the VMs of every section at once. Boots under TCG on a
# loaded 2-core host took over 200 s, more than the framework's 240 s boot timeout allows for.
BASE_ENV = {"USSYCODE_API_RATE": "1000000", "USSYCODE_DEFAULT_TIER": "admin", "USSYCODE_BOOT_TIMEOUT": "900"}


def describe_machine() -> dict[str, Any]:
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git("rev-parse", "--short", "HEAD")
        + (" (with uncommitted changes)" if git("status", "--porcelain", "src", "scripts") else ""),
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(int(meminfo["MemTotal"].split()[0]) / 1024**2, 1),
        "kernel": host_platform.release(),
        # The test framework's Platform starts the server with USSYCODE_ACCEL=tcg: KVM does not run
        # guests on the machines this was written on.
        "accel": "tcg",
        "load_average_start": [round(value, 2) for value in os.getloadavg()],
    }


def run_web(seconds: float) -> dict[str, Any]:
    """Run scripts/bench_web.py in a network namespace of its own and return its JSON."""
    with NetNS("bweb") as namespace:
        completed = namespace.run(
            [sys.executable, str(REPO / "scripts" / "bench_web.py"), "--seconds", str(seconds)],
            timeout=seconds * 6 + 120,
        )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def run_platform_sections(
    sections: set[str], args: argparse.Namespace, workdir: Path, results: dict[str, Any]
) -> None:
    """Run every section that needs the main platform (warm pool disabled) and its VM.

    Each figure goes into `results` as soon as it is measured, so a failure keeps the earlier ones.
    """
    env = {**BASE_ENV, "USSYCODE_POOL_SIZE": "0"}
    with Platform(workdir / "main", extra_env=env) as platform:
        user = platform.make_user("bench")
        vm = MAIN_VM
        if "new" in sections:
            results["new_cold_s"] = bench_vm.measure_new_cold(platform, user, args.runs, keep=vm)
        elif sections - {"exec", "cp"}:
            bench_vm.new_vm(platform, user, vm)
        ip = bench_vm.vm_listing(platform, user, vm)["ip"] if sections - {"new", "exec", "cp"} else ""

        if "memory" in sections:
            results["memory"] = bench_vm.measure_memory(platform, vm, MEMORY_IDLE_SECONDS)
        if "ssh" in sections:
            results["ssh"] = bench_vm.measure_ssh(platform, user, vm, ip, runs=args.runs, workdir=workdir)
        if "https" in sections:
            results["https"] = bench_vm.measure_https(platform, user, vm, ip, args.seconds)
        if "exec" in sections:
            results["exec"] = bench_vm.measure_exec(platform, user, args.seconds)
        if "start" in sections:
            results["start_s"] = bench_vm.measure_start(platform, user, vm, args.runs)
        if "suspend" in sections:
            running_rss = results.get("memory", {}).get("rss_mib")
            results["suspend"] = bench_vm.measure_suspend(platform, user, vm, args.runs, running_rss)
        if sections - {"exec", "cp"}:
            bench_vm.remove_vm(platform, user, vm)
        if "cp" in sections:
            results["cp"] = bench_vm.measure_cp(platform, user)


def run_pool_section(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    env = {**BASE_ENV, "USSYCODE_POOL_SIZE": str(POOL_SIZE), "USSYCODE_POOL_MAX": str(POOL_SIZE)}
    with Platform(workdir / "pool", extra_env=env) as platform:
        user = platform.make_user("bench")
        return bench_vm.measure_new_pooled(platform, user, args.runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs of each timed VM step (new, start, resume, upload)"
    )
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="duration of each HTTP load run, in seconds"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only these: {', '.join(SECTIONS)}",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON to PATH")
    args = parser.parse_args()
    if not 1 <= args.runs <= 20:
        parser.error(f"--runs must be between 1 and 20, got {args.runs}")
    if not 1 <= args.seconds <= 120:
        parser.error(f"--seconds must be between 1 and 120, got {args.seconds:g}")
    sections = set(args.only or SECTIONS)

    results: dict[str, Any] = {"machine": describe_machine(), "runs": args.runs, "seconds": args.seconds}
    failure = None
    try:
        with tempfile.TemporaryDirectory(prefix="ussybench-") as workdir:
            if "web" in sections:
                results["web"] = run_web(args.seconds)
            if sections - {"web", "pool"}:
                run_platform_sections(sections, args, Path(workdir), results)
            if "pool" in sections:
                results["new_pooled_s"] = run_pool_section(args, Path(workdir))
    except (bench_vm.BenchError, AssertionError, subprocess.SubprocessError) as exc:
        # AssertionError comes from the framework's bounded waits (wait_until).
        failure = f"{type(exc).__name__}: {exc}"
        results["error"] = failure
    results["machine"]["load_average_end"] = [round(value, 2) for value in os.getloadavg()]

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(bench_report.markdown(results))
    if failure is not None:
        raise SystemExit(f"bench: stopped early, the figures above are partial: {failure}")


if __name__ == "__main__":
    main()
