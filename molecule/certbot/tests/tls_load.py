"""Requests over TLS through nginx until a stop file appears; a JSON summary, rewritten every second.

Copied into the guest and run there by test_certbot.py while certbot renews:

    python3 tls_load.py --ca ROOT.pem --target main-api=main-api.fleet.test [--target ...]
                        --stop /tmp/stop --out /tmp/summary.json [--threads 4]

Every request is a new TCP connection and TLS handshake to 127.0.0.1:443 (SNI and Host: the
service's name, the certificate verified against the ACME server's root) and a GET of /health.
It counts as failed unless it completes within the timeout with status 200 and the JSON names
the service. The serial numbers of the certificates seen show when nginx switched certificates.
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
            data = {"ok": self.ok, "failed": self.failed, "errors": self.errors, "serials": self.serials, "done": done}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


def read_response(tls: ssl.SSLSocket) -> tuple[bytes, bytes]:
    """Status line + headers, and the body of Content-Length bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
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


def one_request(context: ssl.SSLContext, service: str, name: str, timeout: float) -> str:
    """One GET /health on a fresh TLS connection; returns the served certificate's serial."""
    with (
        socket.create_connection(("127.0.0.1", 443), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        serial = str((tls.getpeercert() or {}).get("serialNumber", ""))
        tls.sendall(f"GET /health HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        head, body = read_response(tls)
    status = head.split(b" ", 2)[1].decode()
    if status != "200":
        raise RuntimeError(f"status {status}")
    answered = json.loads(body).get("service")
    if answered != service:
        raise RuntimeError(f"answered by {answered}")
    return serial


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--target", action="append", required=True, help="SERVICE=NAME")
    parser.add_argument("--stop", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()

    context = ssl.create_default_context(cafile=args.ca)
    targets = [(service, name) for service, _, name in (t.partition("=") for t in args.target)]
    summary = Summary()
    threads = [
        threading.Thread(target=client, args=(context, targets, i, summary, args.stop, args.timeout), daemon=True)
        for i in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        summary.write(args.out, done=False)
        time.sleep(1)
    summary.write(args.out, done=True)


if __name__ == "__main__":
    main()
