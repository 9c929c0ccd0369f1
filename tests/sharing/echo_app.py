"""A web app that reports the request it received, for VMs and stand-in VMs in tests.

    python3 echo_app.py ADDRESS PORT NAME

It responds to every GET and POST with JSON: its NAME, the method, path, headers (in order,
repeats kept) and body. A request that accepts text/html gets the same JSON inside an HTML page
whose heading is NAME. Only the standard library is used, so it runs in a bare guest image.
"""

import html
import http.server
import json
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _respond(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        report = {
            "app": sys.argv[3],
            "method": self.command,
            "path": self.path,
            "headers": [[name, value] for name, value in self.headers.items()],
            "body": body,
        }
        text = json.dumps(report)
        if "text/html" in (self.headers.get("Accept") or ""):
            payload = (
                f"<!doctype html><html><head><title>{html.escape(sys.argv[3])}</title></head>"
                f"<body><h1>{html.escape(sys.argv[3])}</h1>"
                f"<pre id='report' style='white-space:pre-wrap'>{html.escape(text)}</pre>"
                "</body></html>"
            ).encode()
            content_type = "text/html; charset=utf-8"
        else:
            payload = text.encode()
            content_type = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _respond
    do_POST = _respond

    def log_message(self, format: str, *args: object) -> None:
        pass


http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
