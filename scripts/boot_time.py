#!/usr/bin/env python3
"""Measure how long the guest image takes to boot under QEMU, from launch to a first SSH command.

Each run boots a fresh qcow2 overlay of the image (a first boot, which creates host keys) in a
network namespace of its own, with a metadata stand-in on 169.254.169.254, using the QEMU command
line that `ussycode serve` builds. It records the seconds from starting QEMU to the SSH banner
and to the first `ssh VM true` that succeeds, then saves `systemd-analyze`, its critical chain
for ssh.service, `blame` and the boot agent's journal lines from inside the guest.

    sudo .venv/bin/python scripts/boot_time.py --runs 5
    sudo .venv/bin/python scripts/boot_time.py --runs 3 --append "quiet" --out /tmp/boot-quiet

Runs as root (network namespaces, TAP devices). The machine's load average is printed with
each run, because other QEMU guests on the same cores change the figures a lot.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.framework.netns import NetNS  # noqa: E402
from ussycode.vm.image import DEFAULT_IMAGE, MANIFEST_FILE, ImageManifest, build_image  # noqa: E402
from ussycode.vm.qemu import PIDFILE, QemuRuntime  # noqa: E402
from ussycode.vm.runtime import VMSpec  # noqa: E402

STUB = ROOT / "tests" / "vm" / "metadata_stub.py"
BANNER_PROBE = ROOT / "tests" / "vm" / "wait_ssh_banner.py"
GUEST_IP = "10.77.0.2"
GATEWAY_IP = "10.77.0.1"
BOOT_TIMEOUT_SECONDS = 300.0
GUEST_REPORT = (
    "sudo systemd-analyze; echo; sudo systemd-analyze critical-chain ssh.service; echo;"
    " sudo systemd-analyze blame | head -n 25; echo;"
    " sudo journalctl -b -o short-monotonic -t python3 | grep ussycode-init; echo;"
    " sudo journalctl -b -o short-monotonic _PID=1 | grep -E -m 4 'running in system mode|Queued start"
    " job|Starting ussycode-init|Started ssh.service'; echo;"
    " sudo journalctl -b -o short-monotonic -u ssh.service | head -n 20; echo;"
    " ls /etc/ssh/ssh_host_*_key.pub; cat /proc/cmdline; echo;"
    " grep . /sys/devices/system/cpu/vulnerabilities/*; echo;"
    " echo 'python3 -I -S -c pass:'; { time python3 -I -S -c pass; } 2>&1"
)


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages, as `uptime` prints them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    """Return the CPU time that process `pid` has used, which other guests' load changes less
    than the wall-clock time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ssh_argv(key: Path, known_hosts: Path, command: str) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-i", str(key),
        "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR",
        f"ussycode@{GUEST_IP}", command,
    ]  # fmt: skip


def boot_once(args: argparse.Namespace, run: int, workdir: Path) -> dict[str, object]:
    if args.build:
        data = json.loads((args.build / MANIFEST_FILE).read_text())
        manifest = ImageManifest.from_json(data, args.build)
    else:
        manifest = build_image(args.image_dir, name=args.image)
    kernel = Path(args.kernel) if args.kernel else manifest.kernel
    initrd = Path(args.initrd) if args.initrd else manifest.initrd
    rootfs = Path(args.rootfs) if args.rootfs else manifest.rootfs
    key = workdir / "key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    vm_json = workdir / "vm.json"
    vm_json.write_text(
        json.dumps(
            {
                "name": "boot-time",
                "hostname": "boot-time",
                "instance_id": f"vm-boot-{run}",
                "owner": "bench",
                "ssh_keys": [(workdir / "key.pub").read_text().strip()],
                "env": {"USSY_BENCH": "1"},
            }
        )
    )
    disk = workdir / f"disk-{run}.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(rootfs.absolute()),
         str(disk), "4G"],
        check=True,
    )  # fmt: skip
    run_dir = workdir / f"run-{run}"
    run_dir.mkdir()
    cmdline = (
        f"{args.cmdline or manifest.kernel_cmdline} {args.append} ussy.ip={GUEST_IP}/24"
        f" ussy.gw={GATEWAY_IP} ussy.dns={GATEWAY_IP}"
    )
    spec = VMSpec(
        vm_id=run,
        name=f"boot-{run}",
        cpus=args.cpus,
        memory_mb=args.memory,
        disk=disk,
        kernel=kernel,
        initrd=initrd,
        cmdline=" ".join(cmdline.split()),
        tap="tap0",
        mac="52:54:00:77:00:02",
        run_dir=run_dir,
    )
    argv = QemuRuntime(accel=args.accel).command(spec) + args.qemu_arg
    known_hosts = workdir / f"known_hosts-{run}"

    with NetNS("boot") as ns:
        for command in (
            ["ip", "link", "add", "br0", "type", "bridge"],
            ["ip", "address", "add", f"{GATEWAY_IP}/24", "dev", "br0"],
            ["ip", "address", "add", "169.254.169.254/32", "dev", "br0"],
            ["ip", "link", "set", "br0", "up"],
            ["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"],
            ["ip", "link", "set", "tap0", "master", "br0", "up"],
        ):
            ns.run(command)
        ready = workdir / f"metadata-{run}.ready"
        ns.popen(
            [sys.executable, str(STUB), "--vm-json", str(vm_json), "--host-keys", str(workdir / "hk"),
             "--setup-log", str(workdir / "sl"), "--ready", str(ready)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while not ready.exists():
            if time.monotonic() > deadline:
                raise SystemExit("metadata stand-in did not start in 15 s")
            time.sleep(0.05)

        load_before = load_average()
        started = time.monotonic()
        ns.run(argv, timeout=30)
        qemu_pid = int((run_dir / PIDFILE).read_text())
        ns.extra_pids.append(qemu_pid)
        probe = ns.run(
            [sys.executable, str(BANNER_PROBE), GUEST_IP, "--timeout", str(BOOT_TIMEOUT_SECONDS)],
            check=False,
            timeout=BOOT_TIMEOUT_SECONDS + 20,
        )
        banner = time.monotonic() - started
        banner_cpu = cpu_seconds(qemu_pid)
        if probe.returncode != 0:
            console = (run_dir / "console.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"run {run}: no SSH banner: {probe.stdout}\n{console}")
        deadline = time.monotonic() + 120
        login_errors = []
        while True:
            result = ns.run(ssh_argv(key, known_hosts, "true"), check=False, timeout=60)
            if result.returncode == 0:
                break
            login_errors.append(f"{time.monotonic() - started:.1f} s: {result.stderr.strip()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"run {run}: no SSH login within 120 s of the banner: {result.stderr}")
            time.sleep(0.2)
        first_command = time.monotonic() - started
        first_command_cpu = cpu_seconds(qemu_pid)
        report = ns.run(ssh_argv(key, known_hosts, GUEST_REPORT), check=False, timeout=120).stdout
        (workdir / f"report-{run}.txt").write_text(
            report + "\nfailed logins:\n" + "\n".join(login_errors) + "\n"
        )
        (workdir / f"console-{run}.log").write_bytes((run_dir / "console.log").read_bytes())
    disk.unlink()
    startup = next((line for line in report.splitlines() if line.startswith("Startup finished")), "")
    return {
        "run": run,
        "banner_s": round(banner, 2),
        "first_command_s": round(first_command, 2),
        "banner_cpu_s": round(banner_cpu, 2),
        "first_command_cpu_s": round(first_command_cpu, 2),
        "load_before": load_before,
        "load_after": load_average(),
        "systemd_analyze": startup,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="boots to measure (default 3)")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="image name (built if missing)")
    parser.add_argument(
        "--image-dir",
        type=Path,
        default=Path(os.environ.get("USSYCODE_TEST_IMAGE_DIR", "/var/cache/ussycode-test/images")),
    )
    parser.add_argument("--build", type=Path, default=None, help="boot this build directory as it is")
    parser.add_argument("--cmdline", default="", help="replace the image's kernel command line")
    parser.add_argument("--append", default="", help="extra kernel command line words")
    parser.add_argument("--kernel", default="", help="boot this kernel instead of the image's")
    parser.add_argument("--initrd", default="", help="boot this initrd instead of the image's")
    parser.add_argument("--rootfs", default="", help="boot an overlay of this raw root filesystem")
    parser.add_argument("--qemu-arg", action="append", default=[], help="extra QEMU argument")
    parser.add_argument("--accel", default="tcg", choices=("tcg", "kvm"))
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--memory", type=int, default=1024, help="guest memory in MiB")
    parser.add_argument("--out", type=Path, default=None, help="directory for reports and console logs")
    args = parser.parse_args()
    # Let `kill PID` unwind the namespace, which ends the guest and the metadata stand-in.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))

    workdir = args.out or Path(tempfile.mkdtemp(prefix="ussycode-boot-time-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for run in range(1, args.runs + 1):
        result = boot_once(args, run, workdir)
        results.append(result)
        print(json.dumps(result), flush=True)
    for field in ("banner_s", "first_command_s", "banner_cpu_s", "first_command_cpu_s"):
        values = [float(str(result[field])) for result in results]
        print(
            f"{field}: median {statistics.median(values):.2f} s, min {min(values):.2f}, max {max(values):.2f}"
        )
    print(f"reports in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
