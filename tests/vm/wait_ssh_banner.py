"""Wait until an SSH server sends its banner, then print the seconds waited and the banner.

Runs inside a test's network namespace. Exits 1 if no banner arrives within --timeout seconds.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("--port", type=int, default=22)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    started = time.monotonic()
    deadline = started + args.timeout
    last_error = "no attempt made"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((args.host, args.port), timeout=2.0) as connection:
                connection.settimeout(5.0)
                banner = connection.recv(256).decode(errors="replace").strip()
            if banner.startswith("SSH-"):
                print(f"{time.monotonic() - started:.2f} {banner}")
                return 0
            last_error = f"unexpected banner {banner!r}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.25)
    print(f"no SSH banner from {args.host}:{args.port} in {args.timeout:g} s: {last_error}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
