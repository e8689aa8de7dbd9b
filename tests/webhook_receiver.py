"""A webhook receiver for tests: an HTTP server on loopback that records every JSON body posted to it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


class Webhook:
    """Records each posted JSON body in `events`; answers the statuses of `refuse_first` first, then 200.
    `url` ends in `path` (a webhook's path is often its secret)."""

    def __init__(self, refuse_first: tuple[int, ...] = (), path: str = "/hook/secret-key") -> None:
        self.events: list[dict[str, Any]] = []
        answers = list(refuse_first)
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(answers.pop(0) if answers else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
