"""Stand-in for the metadata service, for tests that boot the guest image in a namespace.

Run inside the test's network namespace (the test process cannot serve there itself): serves the
JSON document in --vm-json at GET /v1/vm, appends each POST /v1/host-keys body to --host-keys and
each POST /v1/setup-log body to --setup-log as one JSON line, and creates --ready once it is
listening.
"""

from __future__ import annotations

import argparse
import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def make_handler(vm_json: bytes, records: dict[str, Path]) -> type[BaseHTTPRequestHandler]:
    """Return a handler that serves `vm_json` and appends POST bodies to `records[path]`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Without this, responses on a kept-alive connection wait for delayed ACKs.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send_body(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/v1/vm":
                self.send_body(200, vm_json)
            else:
                self.send_body(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path not in records:
                self.send_body(404, b'{"error": "not found"}')
                return
            try:
                document = json.loads(body)
            except ValueError:
                self.send_body(400, b'{"error": "body must be JSON"}')
                return
            with records[self.path].open("a") as handle:
                handle.write(json.dumps(document) + "\n")
            self.send_body(200, b'{"accepted": true}')

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="169.254.169.254")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--vm-json", type=Path, required=True)
    parser.add_argument("--host-keys", type=Path, required=True)
    parser.add_argument("--setup-log", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    args = parser.parse_args()

    records = {"/v1/host-keys": args.host_keys, "/v1/setup-log": args.setup_log}
    handler = make_handler(args.vm_json.read_bytes(), records)
    server = ThreadingHTTPServer((args.bind, args.port), handler)
    args.ready.touch()
    server.serve_forever()


if __name__ == "__main__":
    main()
