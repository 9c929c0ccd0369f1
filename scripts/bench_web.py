"""Measure Caddy's routes to a VM's URL with a fast app, without QEMU; print JSON.

The app inside a guest under TCG serves far fewer requests per second than Caddy and the
forward-auth endpoint, so it hides what the proxy costs. This runs the platform's web side
(real Store, API server, Caddy, command layer) with VM rows whose app is the tests' echo app on
a loopback address. It loads four routes: straight to the app, the public URL of a second such
VM, and the private URL with a browser session and with a VM-scoped token. The routes take turns,
so that other work on the machine slows them alike.

scripts/bench.py runs this inside a network namespace it created:
    python scripts/bench_web.py --seconds 8 --connections 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.framework.tokens import sign_usy0  # noqa: E402
from tests.sharing.stack import DOMAIN, running_stack  # noqa: E402
from tests.sharing.web import jar_cookie, sign_in  # noqa: E402
from ussycode.auth.access import TOKEN_HEADER  # noqa: E402
from ussycode.auth.api_tokens import vm_namespace  # noqa: E402
from ussycode.auth.cookies import SESSION_COOKIE  # noqa: E402
from ussycode.auth.hosts import AUTH_PATH  # noqa: E402

VM_NAME = "fast-app"
ROUNDS = 3


def interleave(
    load: Callable[[str, float], dict[str, Any]],
    routes: Sequence[str],
    seconds: float,
    rounds: int = ROUNDS,
) -> dict[str, dict[str, Any]]:
    """Load each route for `seconds` in all, in `rounds` turns that alternate between routes.

    Other work on the machine then slows every route alike, so their ratios stay comparable.
    `load(route, seconds)` runs one http_load.py measurement; the result per route sums the
    requests and errors of its turns and takes the median of their medians.
    """
    turns: dict[str, list[dict[str, Any]]] = {route: [] for route in routes}
    for _ in range(rounds):
        for route in routes:
            turns[route].append(load(route, seconds / rounds))
    combined = {}
    for label, results in turns.items():
        requests = sum(result["requests"] for result in results)
        elapsed = sum(result["seconds"] for result in results)
        combined[label] = {
            "url": results[0]["url"],
            "requests": requests,
            "errors": sum(result["errors"] for result in results),
            "seconds": round(elapsed, 2),
            "requests_per_second": round(requests / elapsed, 1),
            "median_ms": statistics.median(result["median_ms"] for result in results if result["median_ms"]),
            "rounds": rounds,
        }
    return combined


def http_load(url: str, seconds: float, connections: int, *extra: str) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(REPO / "scripts" / "http_load.py"),
        url,
        "--seconds",
        str(seconds),
        "--connections",
        str(connections),
        *extra,
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def measure(workdir: Path, seconds: float, connections: int) -> dict[str, Any]:
    with running_stack(workdir) as stack:
        key = workdir / "bench_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        public_key = key.with_suffix(".pub").read_text().strip()
        fingerprint = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(key)], capture_output=True, text=True, check=True
        ).stdout.split()[1]
        user = stack.store.create_user("bench", fingerprint, public_key, "bench key")
        vm, app = stack.add_vm(VM_NAME, user)
        # A second VM row with its own echo app, made public: both routes then stay as they are.
        public_vm, _ = stack.add_vm(f"{VM_NAME}-public", user)
        url = stack.vm_url(vm.name)
        tls = ("--cacert", str(stack.caddy.root_ca_path), "--connect-to", "127.0.0.1")

        outcome = stack.command(user, f"share set-public {public_vm.name}")
        if outcome.status != 0:
            raise SystemExit(f"bench_web: share set-public failed: {outcome.stderr}")
        client = stack.client("bench")
        if sign_in(client, url, stack.login_link(user)).status != 200:
            raise SystemExit(f"bench_web: {url} did not respond with 200 after signing in")
        cookie = jar_cookie(client.jar, f"{vm.name}.{DOMAIN}", SESSION_COOKIE)
        session = ("--header", f"Cookie: {SESSION_COOKIE}={cookie}")
        token = sign_usy0(key, {}, vm_namespace(vm.name, DOMAIN))
        token_header = ("--header", f"{TOKEN_HEADER}: Bearer {token}")

        routes = {
            "direct": [f"http://{app.address}:{app.port}/"],
            "public": [stack.vm_url(public_vm.name), *tls],
            "private_session": [url, *tls, *session],
            "private_token": [url, *tls, *token_header],
        }
        results: dict[str, Any] = {"app": "tests/sharing/echo_app.py on loopback"}

        def load(route: str, duration: float) -> dict[str, Any]:
            return http_load(routes[route][0], duration, connections, *routes[route][1:])

        results.update(interleave(load, list(routes), seconds))

        # The forward-auth socket alone, requested as Caddy requests it for the session row.
        auth_url = f"http://{vm.name}.{DOMAIN}{AUTH_PATH}"
        socket = ("--unix-socket", str(stack.auth_socket), "--header", "X-Forwarded-Uri: /")
        results["auth_endpoint_session"] = http_load(auth_url, seconds, connections, *socket, *session)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each load run, in seconds")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections of each load run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ussybench-web-") as workdir:
        print(json.dumps(measure(Path(workdir), args.seconds, args.connections)))


if __name__ == "__main__":
    main()
