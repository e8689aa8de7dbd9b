"""Steady HTTP load through nginx on lab hosts, recording every request's outcome.

One thread per (host, mode) stream sends requests on a fixed schedule (open loop: a slow answer
does not lower the offered rate, it only delays that stream). Modes combine keep-alive on/off with
GET/POST. Nothing is retried: a reset, a refused connection or a non-2xx is recorded as such, so
the figures show every drop a client would see.

Keep-alive streams behave like production HTTP clients (urllib3, browsers): before reusing an
idle connection they check whether the server already closed it (it is readable at EOF) and then
open a new one; no request is ever sent twice. nginx closes idle keep-alive connections whenever
it likes (keepalive_timeout, and on every reload, when old workers exit). `naive_reuse=True` turns
the check off, to measure what a client that ignores this sees.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
import time
from dataclasses import dataclass, field

MODES = ("keepalive-get", "keepalive-post", "close-get", "close-post")
POST_BODY = b'{"payload": "' + b"x" * 200 + b'"}'


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


@dataclass
class Stream:
    target: Target
    mode: str
    rate: float
    timeout: float
    naive_reuse: bool = False
    samples: list[Sample] = field(default_factory=list)
    reconnects: int = 0
    _conn: http.client.HTTPConnection | None = None

    @property
    def keepalive(self) -> bool:
        return self.mode.startswith("keepalive")

    def request(self, t0: float) -> Sample:
        method = "POST" if self.mode.endswith("post") else "GET"
        headers = {"Host": self.target.server_name}
        if not self.keepalive:
            headers["Connection"] = "close"
        body = POST_BODY if method == "POST" else None
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._conn is not None and not self.naive_reuse and self._closed_by_server():
            self.reconnects += 1
            self._drop()
        start = time.monotonic()
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.target.address, self.target.port, timeout=self.timeout)
            self._conn.request(method, "/", body=body, headers=headers)
            response = self._conn.getresponse()
            payload = response.read()
            status, error = response.status, ""
            if not self.keepalive or response.will_close:
                self._drop()
        except (OSError, http.client.HTTPException) as err:
            self._drop()
            return Sample(start - t0, self.target.host, self.mode, time.monotonic() - start, 0,
                          f"{type(err).__name__}: {err}", None, None)
        slot, version = None, None
        try:
            data = json.loads(payload)
            slot, version = data.get("port"), data.get("version")
        except ValueError:
            pass
        return Sample(start - t0, self.target.host, self.mode, time.monotonic() - start, status, error, slot, version)

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
                 timeout: float = 5.0, naive_reuse: bool = False) -> None:
        per_stream = total_rate / (len(targets) * len(modes))
        self.streams = [Stream(t, m, per_stream, timeout, naive_reuse) for t in targets for m in modes]
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
    return [s for s in samples if s.error or not 200 <= s.status < 300]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def summarize(samples: list[Sample]) -> dict[str, float | int]:
    """Counts and latency percentiles (milliseconds) of a set of samples."""
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
    }
