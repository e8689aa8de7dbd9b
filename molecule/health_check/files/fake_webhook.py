#!/usr/bin/python3
"""Slack-style incoming webhook for the health_check scenario, inside the guest on 127.0.0.1:9999.

Appends {"path", "body"} per POST to /var/lib/fake-webhook/received.jsonl and answers `ok`, as
Slack does. The tests truncate the file to start counting afresh.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RECEIVED = Path("/var/lib/fake-webhook/received.jsonl")


class Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with RECEIVED.open("a", encoding="utf-8") as log:
            log.write(json.dumps({"path": self.path, "body": json.loads(body)}) + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        return  # quiet: the request line holds the URL, which the tests look for everywhere else


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", 9999), Hook).serve_forever()
