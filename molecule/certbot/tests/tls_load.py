"""Requests over TLS through nginx until a stop file appears; a JSON summary, rewritten every second.

Copied into the guest and run there by test_certbot.py while certbot renews:

    python3 tls_load.py --ca ROOT.pem --target main-api=main-api.fleet.test [--target ...]
                        --stop /tmp/stop --out /tmp/summary.json [--threads 4] [--keepalive-threads 1]

Each --threads client makes every request on a new TCP connection and TLS handshake to
127.0.0.1:443 (SNI and Host: the service's name, the certificate verified against the ACME
server's root): a GET of /health. A request counts as failed unless it completes within the
timeout with status 200 and the JSON names the service. Each --keepalive-threads client reuses
one connection for as long as nginx keeps it open; when a reload closes a reused idle connection
before any byte of the response, it retries once on a new connection, as HTTP clients do for
idempotent requests (counted in "retried"; a failed retry is a failed request). The serial
numbers of the certificates seen show when nginx switched certificates.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path


class Summary:
    """Counts shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.retried = 0
        self.errors: list[str] = []
        self.serials: dict[str, list[str]] = {}

    def record(self, service: str, serial: str | None, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.ok += 1
                seen = self.serials.setdefault(service, [])
                if serial and serial not in seen:
                    seen.append(serial)
            else:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{time.strftime('%H:%M:%S')} {service}: {error}")

    def write(self, path: Path, done: bool) -> None:
        with self.lock:
            data = {"ok": self.ok, "failed": self.failed, "retried": self.retried, "errors": self.errors,
                    "serials": self.serials, "done": done}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


class ClosedBeforeResponse(ConnectionError):
    """The server closed the connection before sending a byte of the response."""


def read_response(tls: ssl.SSLSocket) -> tuple[bytes, bytes]:
    """Status line + headers, and the body of Content-Length bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = tls.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as error:
            if not data:
                raise ClosedBeforeResponse(str(error)) from error
            raise
        if not chunk:
            if not data:
                raise ClosedBeforeResponse("connection closed before the response")
            raise ConnectionError(f"connection closed after {len(data)} bytes of headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {len(body)} of {length} body bytes")
        body += chunk
    return head, body


def connect(context: ssl.SSLContext, name: str, timeout: float) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", 443), timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname=name)
    except BaseException:
        raw.close()
        raise


def serial_of(tls: ssl.SSLSocket) -> str:
    return str((tls.getpeercert() or {}).get("serialNumber", ""))


def exchange(tls: ssl.SSLSocket, service: str, name: str, keep_alive: bool) -> bool:
    """GET /health on an open connection; raises unless it is a good answer. True: still open."""
    connection = "keep-alive" if keep_alive else "close"
    request = f"GET /health HTTP/1.1\r\nHost: {name}\r\nConnection: {connection}\r\n\r\n".encode()
    try:
        tls.sendall(request)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as error:
        raise ClosedBeforeResponse(f"{type(error).__name__} on send: {error}") from error
    head, body = read_response(tls)
    check(head, body, service)
    return keep_alive and b"\r\nconnection: close" not in head.lower()


def one_request(context: ssl.SSLContext, service: str, name: str, timeout: float) -> str:
    """One GET /health on a fresh TLS connection; returns the served certificate's serial."""
    with connect(context, name, timeout) as tls:
        exchange(tls, service, name, keep_alive=False)
        return serial_of(tls)


def check(head: bytes, body: bytes, service: str) -> None:
    status = head.split(b" ", 2)[1].decode()
    if status != "200":
        raise RuntimeError(f"status {status}")
    answered = json.loads(body).get("service")
    if answered != service:
        raise RuntimeError(f"answered by {answered}")


def client(context: ssl.SSLContext, targets: list[tuple[str, str]], offset: int, summary: Summary,
           stop: Path, timeout: float) -> None:
    index = offset
    while not stop.exists():
        service, name = targets[index % len(targets)]
        index += 1
        try:
            serial = one_request(context, service, name, timeout)
        except Exception as error:  # every failure counts, whatever its kind
            summary.record(service, None, f"{type(error).__name__}: {error}")
        else:
            summary.record(service, serial, None)


def keepalive_client(context: ssl.SSLContext, target: tuple[str, str], summary: Summary, stop: Path,
                     timeout: float) -> None:
    service, name = target
    tls: ssl.SSLSocket | None = None
    while not stop.exists():
        reused = tls is not None
        try:
            if tls is None:
                tls = connect(context, name, timeout)
            serial = serial_of(tls)
            try:
                still_open = exchange(tls, service, name, keep_alive=True)
            except ClosedBeforeResponse:
                if not reused:
                    raise
                with summary.lock:
                    summary.retried += 1
                tls.close()
                tls = connect(context, name, timeout)
                serial = serial_of(tls)
                still_open = exchange(tls, service, name, keep_alive=True)
        except Exception as error:  # every failure counts, whatever its kind
            summary.record(service, None, f"keep-alive {type(error).__name__}: {error}")
            still_open = False
        else:
            summary.record(service, serial, None)
        if not still_open and tls is not None:
            tls.close()
            tls = None
    if tls is not None:
        tls.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--target", action="append", required=True, help="SERVICE=NAME")
    parser.add_argument("--stop", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--keepalive-threads", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()

    context = ssl.create_default_context(cafile=args.ca)
    targets = [(service, name) for service, _, name in (t.partition("=") for t in args.target)]
    summary = Summary()
    threads = [
        threading.Thread(target=client, args=(context, targets, i, summary, args.stop, args.timeout), daemon=True)
        for i in range(args.threads)
    ] + [
        threading.Thread(
            target=keepalive_client, args=(context, targets[i % len(targets)], summary, args.stop, args.timeout),
            daemon=True,
        )
        for i in range(args.keepalive_threads)
    ]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        summary.write(args.out, done=False)
        time.sleep(1)
    summary.write(args.out, done=True)


if __name__ == "__main__":
    main()
