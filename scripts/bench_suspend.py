"""Benchmark suspend and resume on this machine, inside a network namespace it creates and removes.

Boots one VM with 512 MiB of memory and measures, over --rounds rounds:
- seconds of `suspend VM` (guest sync, saving the state, ending QEMU) and the state file's size;
- seconds from a suspended VM to the first command run in it (`ssh VM@host true`, which wakes it);
- resident memory of the VM's QEMU while it runs, against while it is suspended (no process).

Prints JSON. Run as root from the checkout: .venv/bin/python scripts/bench_suspend.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.framework.platform import Platform  # noqa: E402

VM = "bench-nap"


def check(result: Any, what: str) -> Any:
    if result.status != 0:
        raise SystemExit(f"bench: {what} failed ({result.status}): {result.stderr.strip()}")
    return result


def qemu_rss_bytes(platform: Platform) -> int:
    """Return the summed resident memory of the platform's live QEMU processes."""
    total = 0
    for pid in platform.vm_pids():
        try:
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        total += pages * 4096
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="suspend and resume rounds (default 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ussy-bench-suspend-") as workdir:
        platform = Platform(Path(workdir), extra_env={"USSYCODE_IDLE_TIMEOUT": "never"})
        with platform:
            user = platform.make_user("bench")
            check(platform.ssh(user, ["new", "--name", VM]), "new")
            suspend_seconds, resume_seconds, state_bytes, running_rss = [], [], [], []
            for _ in range(args.rounds):
                check(platform.ssh(user, "true", login=VM), "command in the running VM")
                running_rss.append(qemu_rss_bytes(platform))
                started = time.perf_counter()
                result = check(platform.ssh(user, ["suspend", VM, "--json"]), "suspend")
                suspend_seconds.append(time.perf_counter() - started)
                state_bytes.append(json.loads(result.stdout)["state_bytes"])
                suspended_rss = qemu_rss_bytes(platform)
                started = time.perf_counter()
                check(platform.ssh(user, "true", login=VM), "first command after resume")
                resume_seconds.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "vm_memory": "512M",
                "resume_to_first_command_s": {
                    "median": round(statistics.median(resume_seconds), 2),
                    "all": [round(value, 2) for value in resume_seconds],
                },
                "suspend_s": {
                    "median": round(statistics.median(suspend_seconds), 2),
                    "all": [round(value, 2) for value in suspend_seconds],
                },
                "state_file_bytes_median": int(statistics.median(state_bytes)),
                "host_rss_running_bytes_median": int(statistics.median(running_rss)),
                "host_rss_suspended_bytes": suspended_rss,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
