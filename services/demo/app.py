#!/usr/bin/python3
"""Demo HTTP service for the fleet lab: one slot of a blue/green pair behind nginx.

Standard library only; runs with Debian 12's /usr/bin/python3 (3.11). systemd starts it from its
release directory as `python3 app.py --port 8090`. The release directory holds `release.json`
(written by tools/build_release.py) next to this file:

    {"version": "1.2.0", "unhealthy": false, "startup_delay": 0}

and, for the release-safety drills, optionally `error_share` (0 to 1: that share of the requests
other than /health answer 500, spread evenly: with 0.2 every fifth one) and `latency` (seconds
added to each of them), while /health stays green.

Endpoints: GET /health (503 when the release was built unhealthy), GET /slow?seconds=N, GET
/status/NNN (answers that error status, 400 to 599: the request figures' tests send 5xx with it), GET/HEAD
of any other path (describes the request), POST of any path (length and sha256 of the body).
Other methods answer 405. On SIGTERM or SIGINT it closes its listening socket, lets in-flight
requests finish (bounded by DEMO_DRAIN_TIMEOUT), and exits 0; idle keep-alive connections do not
hold it up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

RELEASE_FILE = Path(__file__).resolve().parent / "release.json"
SLOW_CAP_S = 120.0
DEFAULT_DRAIN_TIMEOUT_S = 130.0  # above SLOW_CAP_S; systemd's TimeoutStopSec is the real bound
# Longer than nginx's upstream keepalive_timeout (60 s): the server must not close a pooled
# connection just as nginx reuses it.
IDLE_TIMEOUT_S = 75.0
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
ALLOWED_METHODS = "GET, HEAD, POST"
READ_CHUNK = 64 * 1024

_log_lock = threading.Lock()


class ConfigError(Exception):
    """A bad release.json, environment variable or argument; the message says which."""


def log(message: str) -> None:
    """Write one timestamped line to stdout (the journal) and flush it."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    with _log_lock:
        sys.stdout.write(f"{stamp} {message}\n")
        sys.stdout.flush()


@dataclass(frozen=True)
class Release:
    """What the release builder baked into release.json."""

    version: str = "dev"
    unhealthy: bool = False
    startup_delay: float = 0.0
    error_share: float = 0.0  # share of the requests other than /health answered with 500
    latency: float = 0.0  # seconds added to each request other than /health


def load_release(path: Path = RELEASE_FILE) -> Release:
    """Read release.json; a missing file means a development checkout ("dev")."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Release()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    version = data.get("version", "dev")
    unhealthy = data.get("unhealthy", False)
    delay = data.get("startup_delay", 0)
    if not isinstance(version, str) or not version:
        raise ConfigError(f"{path}: 'version' must be a non-empty string")
    if not isinstance(unhealthy, bool):
        raise ConfigError(f"{path}: 'unhealthy' must be true or false")
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise ConfigError(f"{path}: 'startup_delay' must be a number of seconds")
    share, latency = data.get("error_share", 0), data.get("latency", 0)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
        raise ConfigError(f"{path}: 'error_share' must be a number from 0 to 1, got {share!r}")
    if isinstance(latency, bool) or not isinstance(latency, int | float):
        raise ConfigError(f"{path}: 'latency' must be a number of seconds")
    return Release(version, unhealthy, _seconds(float(delay), f"{path}: 'startup_delay'"), float(share),
                   _seconds(float(latency), f"{path}: 'latency'"))


def _seconds(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return value


def _env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return _seconds(float(raw), name)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from exc


class InFlight:
    """Counts requests between reading their request line and finishing their response."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def enter(self) -> None:
        with self._cond:
            self._count += 1

    def leave(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return self._count

    def wait_idle(self, timeout: float) -> bool:
        """True once no request is in flight; False if `timeout` seconds pass first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout=timeout)


class DemoServer(ThreadingHTTPServer):
    """Threaded HTTP/1.1 server carrying the service's identity and stop state."""

    daemon_threads = True  # idle keep-alive connections must not keep the process alive
    block_on_close = False
    allow_reuse_address = True  # SO_REUSEADDR
    request_queue_size = 1024  # listen backlog; the kernel caps it at net.core.somaxconn

    def __init__(self, address: tuple[str, int], service: str, release: Release) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.service = service
        self.release = release
        self.started = time.monotonic()
        self.in_flight = InFlight()
        self.stopping = threading.Event()
        self._served = 0  # requests other than /health, for the release's error_share
        self._served_lock = threading.Lock()

    def next_fails(self) -> bool:
        """Whether the next request other than /health gets the release's built-in 500: the
        n-th fails when n * error_share passes a whole number, so the share is exact and even."""
        share = self.release.error_share
        with self._served_lock:
            self._served += 1
            n = self._served
        return math.floor(n * share) > math.floor((n - 1) * share)

    def stop_listening(self) -> None:
        """Close the listening socket, first serving connections already in its backlog
        (closing would reset them); call after shutdown()."""
        self.socket.setblocking(False)
        while True:
            try:
                conn, client = self.socket.accept()
            except OSError:  # BlockingIOError: the backlog is empty
                break
            conn.setblocking(True)
            self.process_request(conn, client)
        self.server_close()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def identity(self) -> dict[str, Any]:
        return {"service": self.service, "version": self.release.version, "port": self.port}


class Handler(BaseHTTPRequestHandler):
    """One connection; serves requests until the client closes it or it idles out."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body are separate writes

    _counted = False
    _started = 0.0
    _status: int | str = "-"
    _sent = 0

    @property
    def app(self) -> DemoServer:
        return cast(DemoServer, self.server)

    def version_string(self) -> str:
        return "demo-service"

    # -- request bookkeeping ---------------------------------------------------------------

    def parse_request(self) -> bool:
        # Called right after the request line is read: from here the request is in flight.
        self.app.in_flight.enter()
        self._counted = True
        self._started = time.monotonic()
        self._status, self._sent = "-", 0
        return super().parse_request()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            if self._counted:
                self._counted = False
                self._log_done()
                self.app.in_flight.leave()

    def _log_done(self) -> None:
        elapsed_ms = (time.monotonic() - self._started) * 1000
        line = getattr(self, "requestline", "") or "-"
        client = self.client_address[0] if self.client_address else "-"
        log(f'{client} "{line}" {self._status} {self._sent} {elapsed_ms:.1f}ms')

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self._status = int(code) if isinstance(code, int) else code

    def log_error(self, format: str, *args: Any) -> None:
        """Errors show as the status of the request's log line."""

    # -- responses -------------------------------------------------------------------------

    def _send_json(self, status: int, payload: dict[str, Any], close: bool = False) -> None:
        body = (json.dumps(payload, sort_keys=True) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == 405:
            self.send_header("Allow", ALLOWED_METHODS)
        if close or self.app.stopping.is_set():
            self.send_header("Connection", "close")  # also sets self.close_connection
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self._sent = len(body)

    def _bad_request(self, message: str) -> None:
        self._send_json(400, {**self.app.identity(), "error": message}, close=True)

    # -- request bodies ----------------------------------------------------------------------

    def _body_chunks(self) -> Iterator[bytes]:
        """Yield the request body; raise ValueError when its framing is broken."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            if "Content-Length" in self.headers:
                self.close_connection = True  # ambiguous framing (RFC 9112 6.3): do not reuse
            yield from self._chunked_body()
            return
        raw = self.headers.get("Content-Length")
        if raw is None:
            return
        if not raw.strip().isdigit():
            raise ValueError(f"bad Content-Length {raw!r}")
        remaining = int(raw)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, READ_CHUNK))
            if not chunk:
                raise ValueError("client closed the connection before sending the whole body")
            remaining -= len(chunk)
            yield chunk

    def _chunked_body(self) -> Iterator[bytes]:
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError as exc:
                raise ValueError(f"bad chunk size {size_line!r}") from exc
            if size < 0:
                raise ValueError(f"bad chunk size {size_line!r}")
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            remaining = size
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, READ_CHUNK))
                if not chunk:
                    raise ValueError("client closed the connection inside a chunk")
                remaining -= len(chunk)
                yield chunk
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise ValueError("chunk not followed by CRLF")

    def _discard_body(self) -> bool:
        try:
            for _ in self._body_chunks():
                pass
        except ValueError as exc:
            self._bad_request(str(exc))
            return False
        return True

    # -- methods -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._discard_body():
            return
        url = urlsplit(self.path)
        if url.path == "/health":
            self._health()
        elif self._built_in_fault():
            return
        elif url.path == "/slow":
            self._slow(url.query)
        elif url.path.startswith("/status/"):
            self._answer_status(url.path.removeprefix("/status/"))
        else:
            # No "method" field: HEAD must announce the Content-Length that GET would send.
            self._send_json(200, {**self.app.identity(), "path": url.path, "query": url.query})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        length = 0
        try:
            for chunk in self._body_chunks():
                digest.update(chunk)
                length += len(chunk)
        except ValueError as exc:
            self._bad_request(str(exc))
            return
        if self._built_in_fault():
            return
        self._send_json(200, {**self.app.identity(), "method": "POST",
                              "path": urlsplit(self.path).path,
                              "body_length": length, "body_sha256": digest.hexdigest()})

    def _built_in_fault(self) -> bool:
        """The release's latency, then its error share: True when this request got the 500."""
        release = self.app.release
        if release.latency:
            time.sleep(release.latency)
        if release.error_share and self.app.next_fails():
            self._send_json(500, {**self.app.identity(), "error": f"release built with error_share="
                                                                 f"{release.error_share:g}"})
            return True
        return False

    def _method_not_allowed(self) -> None:
        # The body (if any) is not read, so the connection cannot be reused.
        self._send_json(405, {**self.app.identity(), "error": f"method {self.command} not allowed"},
                        close=True)

    def __getattr__(self, name: str) -> Callable[[], None]:
        # BaseHTTPRequestHandler looks up do_<METHOD>; any method we do not serve gets 405.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _health(self) -> None:
        app = self.app
        payload = {**app.identity(), "status": "ok", "pid": os.getpid(),
                   "uptime_s": round(time.monotonic() - app.started, 3)}
        if app.release.unhealthy:
            payload["status"] = "failing"
            payload["reason"] = "release built with unhealthy=true"
            self._send_json(503, payload)
        else:
            self._send_json(200, payload)

    def _slow(self, query: str) -> None:
        raw = parse_qs(query).get("seconds", ["1"])[-1]
        try:
            seconds = float(raw)
        except ValueError:
            self._bad_request(f"seconds must be a number, got {raw!r}")
            return
        if math.isnan(seconds):
            self._bad_request("seconds must be a number, got nan")
            return
        seconds = min(max(seconds, 0.0), SLOW_CAP_S)
        time.sleep(seconds)
        self._send_json(200, {**self.app.identity(), "path": "/slow", "slept_s": seconds})


    def _answer_status(self, code: str) -> None:
        if not (code.isdigit() and 400 <= int(code) <= 599):
            self._bad_request(f"/status/NNN takes a status from 400 to 599, got {code!r}")
            return
        self._send_json(int(code), {**self.app.identity(), "path": f"/status/{code}"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fleet demo HTTP service (one blue/green slot).",
        epilog="Environment: DEMO_SERVICE_NAME (default 'demo'), DEMO_STARTUP_DELAY (seconds "
               "before binding; default from release.json, else 0), DEMO_DRAIN_TIMEOUT (seconds "
               f"to wait for in-flight requests on stop; default {DEFAULT_DRAIN_TIMEOUT_S:g}).")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: slots stay on loopback)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = os.environ
    try:
        release = load_release()
        delay = _env_seconds(env, "DEMO_STARTUP_DELAY", release.startup_delay)
        drain_timeout = _env_seconds(env, "DEMO_DRAIN_TIMEOUT", DEFAULT_DRAIN_TIMEOUT_S)
    except ConfigError as exc:
        print(f"demo-service: {exc}", file=sys.stderr, flush=True)
        return 2
    service = env.get("DEMO_SERVICE_NAME", "").strip() or "demo"

    # Stop signals are blocked in every thread (threads inherit the mask) and collected by the
    # main thread with sigwait, so stopping never races a Python-level signal handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if delay > 0:
        log(f"waiting service={service} version={release.version} delay_s={delay:g}")
        received = signal.sigtimedwait(STOP_SIGNALS, delay)
        if received is not None:
            log(f"stop service={service} version={release.version} "
                f"signal={signal.Signals(received.si_signo).name} before binding")
            return 0

    try:
        server = DemoServer((args.host, args.port), service, release)
    except OSError as exc:
        print(f"demo-service: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr, flush=True)
        return 1
    log(f"start service={service} version={release.version} host={args.host} "
        f"port={server.port} pid={os.getpid()} unhealthy={str(release.unhealthy).lower()}")
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                            name="accept-loop")
    loop.start()

    signum = signal.sigwait(STOP_SIGNALS)
    server.stopping.set()
    server.shutdown()  # stop the accept loop (within poll_interval)
    server.stop_listening()  # from here new connections are refused
    waiting = server.in_flight.count
    log(f"stopping service={service} version={release.version} port={server.port} "
        f"signal={signal.Signals(signum).name} in_flight={waiting}")
    drained = server.in_flight.wait_idle(drain_timeout)
    log(f"stop service={service} version={release.version} port={server.port} "
        f"drained={str(drained).lower()} in_flight={server.in_flight.count}")
    loop.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
