"""bench/loadgen.py against a real HTTP/1.1 keep-alive server on 127.0.0.1 that closes idle
connections after IDLE_TIMEOUT: what each client kind does with a connection the server closed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bench.loadgen import (
    MODES,
    POST_BODY,
    LoadGenerator,
    Sample,
    Stream,
    Target,
    client_of,
    failures,
    summarize_by_client,
)

IDLE_TIMEOUT = 0.15  # seconds a keep-alive connection may stay idle before the server closes it


class KeepAliveServer(ThreadingHTTPServer):
    """Counts the connections it accepted and closed; answers like the demo service."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.accepted = 0
        self.closed = 0
        self.requests: list[tuple[str, str, int]] = []  # method, Connection header, body length
        self.changed = threading.Condition()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.changed:
            self.accepted += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self.changed:
            self.closed += 1
            self.changed.notify_all()

    def wait_closed(self, count: int) -> None:
        """Until the server has closed `count` connections (then the client's FIN is on its way)."""
        with self.changed:
            assert self.changed.wait_for(lambda: self.closed >= count, timeout=2), (self.accepted, self.closed)
        time.sleep(0.02)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT  # an idle keep-alive connection times out and is closed
    server: KeepAliveServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, body_length: int) -> None:
        self.server.requests.append((self.command, self.headers.get("Connection", ""), body_length))
        payload = json.dumps({"port": self.server.server_address[1], "version": "test"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._answer(0)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self._answer(len(self.rfile.read(length)))


@pytest.fixture
def server() -> Iterator[KeepAliveServer]:
    httpd = KeepAliveServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def stream(server: KeepAliveServer, mode: str) -> Stream:
    target = Target("local", "127.0.0.1", "demo.fleet.test", server.server_address[1])
    return Stream(target, mode, rate=10.0, timeout=2.0)


@pytest.mark.parametrize("mode", ["reuse-get", "reuse-post"])
def test_a_reuse_client_sends_on_a_connection_the_server_closed_and_records_the_failure(server, mode):
    client = stream(server, mode)
    t0 = time.monotonic()
    first = client.request(t0)
    assert not first.failed and first.new_connection and first.slot == server.server_address[1]
    second = client.request(t0)  # right away: the connection is still open and is reused
    assert not second.failed and not second.new_connection
    server.wait_closed(1)  # idle longer than the server allows: it closed the connection

    dead = client.request(t0)
    assert dead.failed and dead.status == 0 and dead.error, dead
    assert not dead.new_connection and not dead.reconnected  # it went out on the closed connection
    assert server.accepted == 1 and len(server.requests) == 2  # the server never saw it

    after = client.request(t0)  # a failed connection is not reused
    assert not after.failed and after.new_connection
    assert (server.accepted, client.connections, client.reconnects) == (2, 2, 0)
    assert failures([first, second, dead, after]) == [dead]


@pytest.mark.parametrize("mode", ["check-get", "check-post"])
def test_a_check_client_reconnects_instead_of_using_a_closed_connection(server, mode):
    client = stream(server, mode)
    t0 = time.monotonic()
    first, second = client.request(t0), client.request(t0)
    assert not first.failed and not second.failed and not second.new_connection
    server.wait_closed(1)

    third = client.request(t0)
    assert not third.failed, third
    assert third.new_connection and third.reconnected
    assert (server.accepted, client.connections, client.reconnects) == (2, 2, 1)
    assert len(server.requests) == 3
    if mode.endswith("post"):
        assert {(method, length) for method, _, length in server.requests} == {("POST", len(POST_BODY))}


@pytest.mark.parametrize("mode", ["close-get", "close-post"])
def test_a_close_client_opens_one_connection_per_request(server, mode):
    client = stream(server, mode)
    t0 = time.monotonic()
    samples = [client.request(t0) for _ in range(5)]
    assert failures(samples) == []
    assert all(s.new_connection and not s.reconnected for s in samples)
    server.wait_closed(5)
    assert (server.accepted, client.connections, client.reconnects) == (5, 5, 0)
    assert [connection for _, connection, _ in server.requests] == ["close"] * 5


def test_the_generator_runs_every_mode_and_summarizes_per_client_kind(server):
    targets = [Target("local", "127.0.0.1", "demo.fleet.test", server.server_address[1])]
    load = LoadGenerator(targets, total_rate=120).start()
    time.sleep(0.5)
    samples = load.stop()
    assert {s.mode for s in samples} == set(MODES)
    assert failures(samples) == []
    assert [s.t for s in samples] == sorted(s.t for s in samples)
    by_client = summarize_by_client(samples)
    assert list(by_client) == ["reuse", "check", "close"]
    for kind, figures in by_client.items():
        assert figures["requests"] == sum(1 for s in samples if s.client == kind) > 0
        assert figures["non_2xx"] == figures["connection_errors"] == 0
    # keep-alive kinds opened one connection per stream; close opened one per request
    assert by_client["reuse"]["connections"] == by_client["check"]["connections"] == 2
    assert by_client["close"]["connections"] == by_client["close"]["requests"]


def test_modes_name_a_client_kind_and_a_method():
    assert MODES == ("reuse-get", "reuse-post", "check-get", "check-post", "close-get", "close-post")
    assert [client_of(m) for m in MODES] == ["reuse", "reuse", "check", "check", "close", "close"]
    with pytest.raises(ValueError, match="keepalive-get"):
        client_of("keepalive-get")
    sample = Sample(0.0, "h", "check-post", 0.01, 502, "", None, None)
    assert sample.client == "check" and sample.failed
