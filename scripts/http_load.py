"""Send HTTP(S) requests for a fixed time from several connections; print a JSON summary.

Used by the benchmark inside its network namespace:
    python http_load.py URL --seconds 10 --connections 8 [--cacert FILE] [--connect-to IP]
`--connect-to` sends the requests to IP while keeping the URL's host for SNI and Host;
`--unix-socket PATH` sends them to a unix socket instead, with the URL's host as Host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

MAX_REQUESTS = 200_000


class FixedResolver(AbstractResolver):
    """Resolves every host name to one address."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[ResolveResult]:
        return [{"hostname": host, "host": self.address, "port": port, "family": 2, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


def request(session: aiohttp.ClientSession, args: argparse.Namespace) -> Any:
    headers = dict(header.split(": ", 1) for header in args.header)
    data = args.data.encode() if args.data is not None else None
    return session.request(args.method, args.url, headers=headers, data=data)


async def worker(
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    deadline: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    while time.monotonic() < deadline and len(latencies) < MAX_REQUESTS:
        started = time.perf_counter()
        try:
            async with request(session, args) as response:
                await response.read()
                if response.status != 200:
                    errors.append(str(response.status))
                    continue
        except aiohttp.ClientError as exc:
            errors.append(type(exc).__name__)
            await asyncio.sleep(0.01)
            continue
        latencies.append(time.perf_counter() - started)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None
    resolver = FixedResolver(args.connect_to) if args.connect_to else None
    connector: aiohttp.BaseConnector
    if args.unix_socket:
        connector = aiohttp.UnixConnector(path=args.unix_socket, limit=args.connections)
    else:
        connector = aiohttp.TCPConnector(
            ssl=context if urlsplit(args.url).scheme == "https" else False,
            resolver=resolver,
            limit=args.connections,
        )
    latencies: list[float] = []
    errors: list[str] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        async with request(session, args) as response:
            await response.read()
        started = time.monotonic()
        deadline = started + args.seconds
        await asyncio.gather(
            *(worker(session, args, deadline, latencies, errors) for _ in range(args.connections))
        )
        elapsed = time.monotonic() - started
    return {
        "url": args.url,
        "requests": len(latencies),
        "errors": len(errors),
        "seconds": round(elapsed, 2),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "median_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p95_ms": round(statistics.quantiles(latencies, n=20)[-1] * 1000, 2)
        if len(latencies) >= 20
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration in seconds")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--cacert", help="CA certificate file for HTTPS")
    parser.add_argument("--method", default="GET", help="HTTP method")
    parser.add_argument("--data", help="request body")
    parser.add_argument(
        "--header", action="append", default=[], help='extra header "Name: value" (repeatable)'
    )
    parser.add_argument("--connect-to", help="IP address to connect to instead of resolving the host")
    parser.add_argument("--unix-socket", help="unix socket to send plain HTTP requests to, for any URL host")
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
