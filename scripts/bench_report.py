"""Render the results of scripts/bench.py as Markdown, ready for docs/benchmarks.md."""

from __future__ import annotations

from typing import Any

NOT_RUN = "not run"
TARGET_ROUND_TRIP_RATIO = 1.5
TARGET_TRANSFER_RATIO = 0.70
TARGET_PRIVATE_RATIO = 0.70


def _seconds(stats: dict[str, Any]) -> str:
    runs = ", ".join(f"{value:g}" for value in stats["runs"])
    return f"median {stats['median']:g} s, p95 {stats['p95']:g} s ({runs})"


def _timed(section: dict[str, Any] | None) -> str:
    if section is None:
        return NOT_RUN
    if section.get("available") is False:
        return f"not available: {section['reason']}"
    text = _seconds(section)
    if "from_pool" in section:
        text += f"; {sum(section['from_pool'])} of {len(section['from_pool'])} taken from the pool"
    return text


def _load(result: dict[str, Any]) -> str:
    errors = f", {result['errors']} errors" if result.get("errors") else ""
    return f"{result['requests_per_second']:g} req/s, median {result['median_ms']:g} ms{errors}"


def _ratio(value: float, target: str, met: bool) -> str:
    return f"{value:.2f} (target {target}: {'met' if met else 'not met'})"


def _suspended_capacity(count: int | None) -> str:
    return "not limited by memory, only by disk" if count is None else str(count)


def machine_line(machine: dict[str, Any]) -> str:
    start = ", ".join(f"{value:g}" for value in machine["load_average_start"])
    end = ", ".join(f"{value:g}" for value in machine.get("load_average_end", []))
    return (
        f"{machine['date']}, commit {machine['commit']}: {machine['cores']} cores ({machine['cpu_model']}), "
        f"{machine['memory_gib']:g} GiB RAM, kernel {machine['kernel']}, QEMU {machine['accel'].upper()}, "
        f"load average {start} at the start and {end} at the end"
    )


def _web_rows(label: str, web: dict[str, Any], *, judge: bool) -> list[tuple[str, str]]:
    """Return the rows of one set of HTTP routes; `judge` compares the private/public ratio with its target.

    The target is judged on the fast app only: an app in a TCG guest is slower than every proxy
    step, so its ratio shows the guest's noise more than the proxy's cost.
    """
    rows = [
        (f"{label}: straight to the app", _load(web["direct"])),
        (f"{label}: public URL through Caddy", _load(web["public"])),
        (f"{label}: private URL, browser session", _load(web["private_session"])),
        (f"{label}: private URL, VM-scoped token", _load(web["private_token"])),
    ]
    ratio = web["private_session"]["requests_per_second"] / web["public"]["requests_per_second"]
    judged = _ratio(ratio, ">= 0.70", ratio >= TARGET_PRIVATE_RATIO) if judge else f"{ratio:.2f}"
    rows.append((f"{label}: private with session / public req/s", judged))
    if "auth_endpoint_session" in web:
        rows.append((f"{label}: forward-auth socket alone, session", _load(web["auth_endpoint_session"])))
    return rows


def rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    runs = results["runs"]
    table = [
        (f"`new` to first command, cold boot ({runs} runs)", _timed(results.get("new_cold_s"))),
        (f"`new` to first command, warm pool ({runs} runs)", _timed(results.get("new_pooled_s"))),
        (f"`start` of a stopped VM to first command ({runs} runs)", _timed(results.get("start_s"))),
    ]

    ssh = results.get("ssh")
    if ssh is not None:
        trips, uploads = ssh["round_trip_s"], ssh["upload_mib_per_s"]
        table += [
            ("`ssh VM@host true` via the gateway", _seconds(trips["gateway"])),
            ("`ssh VM@host true` straight to the VM's sshd", _seconds(trips["direct"])),
            (
                "gateway / direct round trip",
                _ratio(ssh["round_trip_ratio"], "<= 1.5", ssh["round_trip_ratio"] <= TARGET_ROUND_TRIP_RATIO),
            ),
            ("100 MiB upload via the gateway", f"median {uploads['gateway']['median']:g} MiB/s"),
            ("100 MiB upload straight to the VM's sshd", f"median {uploads['direct']['median']:g} MiB/s"),
            (
                "gateway / direct upload rate",
                _ratio(ssh["upload_ratio"], ">= 0.70", ssh["upload_ratio"] >= TARGET_TRANSFER_RATIO),
            ),
        ]
    else:
        table.append(("`ssh VM@host true` and 100 MiB upload", NOT_RUN))

    if "https" in results:
        table += _web_rows("HTTPS, app in the VM", results["https"], judge=False)
    if "web" in results:
        table += _web_rows("HTTPS, fast app on loopback", results["web"], judge=True)

    for kind, result in results.get("exec", {}).items():
        table.append((f"`POST /exec whoami`, {kind} token", _load(result)))

    for size, cp in results.get("cp", {}).items():
        table.append(
            (
                f"`cp` of a running VM, {size}B disk",
                f"{cp['total_s']:g} s in all, disk snapshot {cp['snapshot_s']:g} s",
            )
        )

    memory = results.get("memory")
    if memory is not None:
        table.append(
            (
                f"host memory of an idle VM ({memory['guest_memory_mib']} MiB guest)",
                f"QEMU RSS {memory['rss_mib']:g} MiB: guest RAM resident"
                f" {memory['guest_ram_resident_mib']:g} MiB, {memory['overhead_mib']:g} MiB beyond guest RAM",
            )
        )
        largest = memory.get("largest_other_mappings") or []
        if largest:
            parts = [f"{m['name']} {m['perms']} {m['rss_mib']:g} of {m['size_mib']:g} MiB" for m in largest]
            table.append(("largest resident mappings beyond guest RAM", "; ".join(parts)))

    suspend = results.get("suspend")
    if suspend is None:
        table.append(("suspend and resume", NOT_RUN))
    elif suspend.get("available") is False:
        table.append(("suspend and resume", f"not available: {suspend['reason']}"))
    else:
        table.append(
            (f"`resume` to first command ({runs} runs)", _seconds(suspend["resume_to_first_command_s"]))
        )
        footprint = suspend["suspended"]
        kept = f"{footprint.get('rss_mib', 0):g} MiB resident"
        if not footprint.get("qemu_running", True):
            kept += " (QEMU exits)"
        if footprint.get("saved_state_mib") is not None:
            kept += f", saved state {footprint['saved_state_mib']:g} MiB on disk"
        else:
            kept += f", VM directory grew {footprint.get('files_grown_mib', 0):g} MiB on disk"
        table.append(("host memory of a suspended VM", kept))
        estimate = suspend.get("capacity_estimate")
        if estimate is not None:
            table.append(
                (
                    "idle VMs this host holds (estimate from memory alone)",
                    f"{estimate['idle_vms_running']} running;"
                    f" suspended: {_suspended_capacity(estimate['idle_vms_suspended'])},"
                    f" in {estimate['host_memory_available_mib']} MiB available",
                )
            )
    return table


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Machine: {machine_line(results['machine'])}.", "", "| measurement | result |", "| --- | --- |"]
    lines += [f"| {label} | {value} |" for label, value in rows(results) if value != NOT_RUN]
    return "\n".join(lines)
