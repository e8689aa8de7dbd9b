"""Steady HTTP load through nginx on lab hosts, recording every request's outcome.

One thread per (host, mode) stream sends requests on a fixed schedule (open loop: a slow answer
does not lower the offered rate, it only delays that stream). Nothing is retried: a reset, a
refused connection or a non-2xx is recorded as such, so the figures show every drop a client of
that kind would see.

A mode is a client kind and a method (GET, or POST with a small JSON body):

    reuse-get, reuse-post   keep-alive; an idle connection is reused WITHOUT checking it, as Node's
                            http agent and Python's http.client do. If the server closed it while it
                            was idle, the request goes out on a dead connection and fails.
    check-get, check-post   keep-alive; before reusing an idle connection the client checks whether
                            the server already closed it (readable at EOF) and then opens a new one,
                            as urllib3 and browsers do. Those reconnects are counted.
    close-get, close-post   a new connection for every request (`Connection: close`).

Every kind honours `Connection: close` in a response (the next request opens a new connection).
nginx closes idle keep-alive connections whenever it likes (keepalive_timeout, and on every
reload, when old workers exit): reuse clients show what that costs, check clients that it costs
nothing to a careful client.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
import time
from dataclasses import dataclass, field

CLIENTS = ("reuse", "check", "close")
METHODS = ("get", "post")
MODES = tuple(f"{client}-{method}" for client in CLIENTS for method in METHODS)
POST_BODY = b'{"payload": "' + b"x" * 200 + b'"}'


def client_of(mode: str) -> str:
    """The client kind of a mode: "reuse-post" -> "reuse"."""
    client = mode.split("-", 1)[0]
    if client not in CLIENTS or mode.split("-", 1)[-1] not in METHODS:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    return client


@dataclass(frozen=True)
class Target:
    """One host's nginx and the service name to route to."""

    host: str
    address: str
    server_name: str
    port: int = 80


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the generator started
    host: str
    mode: str
    latency: float  # seconds
    status: int  # 0 when no response came
    error: str  # exception type and text, "" when a response came
    slot: int | None  # the slot port that answered (from the demo service's JSON)
    version: str | None
    new_connection: bool = False  # this request opened a connection (it did not reuse one)
    reconnected: bool = False  # a check client found its idle connection closed by the server

    @property
    def client(self) -> str:
        return client_of(self.mode)

    @property
    def failed(self) -> bool:
        return bool(self.error) or not 200 <= self.status < 300


@dataclass
class Stream:
    """One client: one host, one mode, at most one connection, requests at `rate` per second."""

    target: Target
    mode: str
    rate: float
    timeout: float
    samples: list[Sample] = field(default_factory=list)
    connections: int = 0  # connections opened
    reconnects: int = 0  # idle connections a check client found closed and replaced
    _conn: http.client.HTTPConnection | None = None

    def __post_init__(self) -> None:
        self.client = client_of(self.mode)
        self.method = "POST" if self.mode.endswith("post") else "GET"

    def request(self, t0: float) -> Sample:
        """Send one request and wait for its answer (or error); never retried."""
        headers = {"Host": self.target.server_name}
        if self.client == "close":
            headers["Connection"] = "close"
        body = POST_BODY if self.method == "POST" else None
        if body is not None:
            headers["Content-Type"] = "application/json"
        reconnected = False
        if self.client == "check" and self._conn is not None and self._closed_by_server():
            self.reconnects += 1
            reconnected = True
            self._drop()
        start = time.monotonic()
        new_connection = self._conn is None
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.target.address, self.target.port, timeout=self.timeout)
                self.connections += 1
                self._conn.connect()
            self._conn.request(self.method, "/", body=body, headers=headers)
            response = self._conn.getresponse()
            payload = response.read()
            if self.client == "close" or response.will_close:
                self._drop()
        except (OSError, http.client.HTTPException) as err:
            self._drop()
            return Sample(start - t0, self.target.host, self.mode, time.monotonic() - start, 0,
                          f"{type(err).__name__}: {err}", None, None, new_connection, reconnected)
        latency = time.monotonic() - start
        slot, version = None, None
        try:
            data = json.loads(payload)
            slot, version = data.get("port"), data.get("version")
        except (ValueError, AttributeError):
            pass
        return Sample(start - t0, self.target.host, self.mode, latency, response.status, "", slot, version,
                      new_connection, reconnected)

    def _closed_by_server(self) -> bool:
        """An idle connection that is readable has been closed (or broken) by the server."""
        sock = self._conn.sock if self._conn is not None else None
        if sock is None:
            return True
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def run(self, t0: float, stop: threading.Event) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not stop.is_set():
            self.samples.append(self.request(t0))
            next_at = max(next_at + interval, time.monotonic() - interval)
            stop.wait(max(0.0, next_at - time.monotonic()))
        self._drop()


class LoadGenerator:
    """Start streams to every target in every mode; stop() returns all samples in time order."""

    def __init__(self, targets: list[Target], total_rate: float, modes: tuple[str, ...] = MODES,
                 timeout: float = 5.0) -> None:
        per_stream = total_rate / (len(targets) * len(modes))
        self.streams = [Stream(t, m, per_stream, timeout) for t in targets for m in modes]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.t0 = 0.0

    def start(self) -> LoadGenerator:
        self.t0 = time.monotonic()
        for stream in self.streams:
            thread = threading.Thread(target=stream.run, args=(self.t0, self._stop), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def now(self) -> float:
        """Seconds since start, on the samples' clock."""
        return time.monotonic() - self.t0

    def stop(self) -> list[Sample]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        return sorted((s for stream in self.streams for s in stream.samples), key=lambda s: s.t)


def failures(samples: list[Sample]) -> list[Sample]:
    """Requests a client would count as failed: no response, or a status outside 2xx."""
    return [s for s in samples if s.failed]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def summarize(samples: list[Sample]) -> dict[str, float | int]:
    """Counts and latency percentiles (milliseconds) of a set of samples (in time order).

    connections: requests that opened a connection; reconnects: of those, the ones a check client
    opened because the server had closed its idle connection."""
    failed = failures(samples)
    latencies = [s.latency * 1000 for s in samples if not s.error]
    span = (samples[-1].t - samples[0].t) if len(samples) > 1 else 0.0
    return {
        "requests": len(samples),
        "rate": round(len(samples) / span, 1) if span else 0.0,
        "non_2xx": sum(1 for s in failed if not s.error),
        "connection_errors": sum(1 for s in failed if s.error),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "connections": sum(1 for s in samples if s.new_connection),
        "reconnects": sum(1 for s in samples if s.reconnected),
    }


def summarize_by_client(samples: list[Sample]) -> dict[str, dict[str, float | int]]:
    """summarize() per client kind ("reuse", "check", "close"), for the kinds present, in that order."""
    return {client: summarize(subset) for client in CLIENTS
            if (subset := [s for s in samples if s.client == client])}
