"""A stand-in for Routussy's authorized-keys endpoint, for tests.

    python routussy_standin.py HOST PORT TOKEN ANSWER_FILE

It answers `GET /ussycode/authorized-keys` with a valid bearer TOKEN by reading ANSWER_FILE on
each request: the first line is the status code and the rest is the body, sent as it is, so a
test can switch between good, malformed and failing answers. A wrong token gets 401. It
appends one line per request to ANSWER_FILE.log.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    host, port, token, answer_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    log_file = answer_file.with_suffix(".log")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            authorized = self.headers.get("Authorization") == f"Bearer {token}"
            with log_file.open("a") as log:
                log.write(f"{self.path} authorized={authorized}\n")
            if self.path != "/ussycode/authorized-keys":
                self._send(404, b"not found")
            elif not authorized:
                self._send(401, b"unauthorized")
            else:
                status, _, body = answer_file.read_text().partition("\n")
                self._send(int(status), body.encode())

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    ThreadingHTTPServer((host, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
