"""Shared helpers for the health checker's tests: load the checker, fake services, a webhook receiver.

The checker is the package roles/health_check/files/fleet_health; `fh` sees its modules as one
namespace (fh.check_service, fh.WARN, ...), and fh.<module> is each module itself, where a test
must patch a name. Every server here listens on 127.0.0.1 only.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "roles" / "health_check" / "files"
FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "nvidia-smi"
FAKE_SMI = FIXTURES / "fake-nvidia-smi"
XID_LOG = FIXTURES / "kernel-log" / "xid.log"


class Checker:
    """The checker's modules as one namespace: an attribute is looked up in each module in turn."""

    MODULES = ("config", "common", "services", "host", "gpu", "alerts", "cli")

    def __init__(self) -> None:
        if str(CHECKER) not in sys.path:
            sys.path.insert(0, str(CHECKER))
        self.modules = [importlib.import_module(f"fleet_health.{name}") for name in self.MODULES]
        for name, module in zip(self.MODULES, self.modules, strict=True):
            setattr(self, name, module)

    def __getattr__(self, name: str) -> Any:
        for module in self.modules:
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"no fleet_health module defines {name}")


def load_checker() -> Any:
    return Checker()


fh = load_checker()


# --------------------------------------------------------------------------- fake services

@dataclass
class Behaviour:
    """What a fake service answers; tests change it between runs."""

    status: int = 200
    body: dict[str, Any] | str = field(default_factory=lambda: {"status": "ok"})
    delay: float = 0.0
    requests: list[dict[str, str]] = field(default_factory=list)


class _ServiceHandler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        behaviour = self.server.behaviour
        behaviour.requests.append({"path": self.path, "host": self.headers.get("Host", "")})
        if behaviour.delay:
            time.sleep(behaviour.delay)
        body = behaviour.body
        if isinstance(body, dict) and "port" in body and body["port"] is None:
            body = {**body, "port": self.server.server_address[1]}
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        try:
            self.send_response(behaviour.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (a timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour


@contextmanager
def fake_service(behaviour: Behaviour | None = None) -> Iterator[tuple[int, Behaviour]]:
    """A health endpoint on 127.0.0.1:<free port>; yields the port and its (mutable) behaviour."""
    server = _Server(("127.0.0.1", 0), _ServiceHandler)
    server.behaviour = behaviour or Behaviour()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.behaviour
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- webhook receiver

@dataclass
class Receiver:
    """Slack-style incoming webhook: records JSON bodies; can fail or stall on purpose."""

    url: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0
    fail_status: int = 500
    stall: float = 0.0
    attempts: int = 0

    def kinds(self) -> list[str]:
        return [m["text"].split(" ", 1)[0] for m in self.messages]


class _HookHandler(BaseHTTPRequestHandler):
    server: _HookServer

    def do_POST(self) -> None:
        receiver = self.server.receiver
        receiver.attempts += 1
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if receiver.stall:
            time.sleep(receiver.stall)
            return  # too late: the sender has given up
        if receiver.fail_next > 0:
            receiver.fail_next -= 1
            self.send_response(receiver.fail_status)
            self.end_headers()
            return
        receiver.messages.append(json.loads(data))
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok")
        except OSError:
            pass  # the sender gave up (a timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _HookServer(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


@contextmanager
def webhook_receiver(token: str = "T000/B000/s3cr3t-t0ken") -> Iterator[Receiver]:
    server = _HookServer(("127.0.0.1", 0), _HookHandler)
    server.receiver = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/services/{token}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.receiver
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- config and fakes

def fake_systemctl(tmp_path: Path, state: str = "active") -> tuple[Path, Path, Path]:
    """A systemctl stand-in: `is-active` prints the content of a state file, every call is logged.

    Returns (script, state file, call log).
    """
    state_file, calls = tmp_path / "unit-state", tmp_path / "systemctl-calls"
    state_file.write_text(state + "\n")
    script = tmp_path / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'case "$1" in\n'
        f'  is-active) cat {state_file}; [ "$(cat {state_file})" = active ];;\n'
        "  restart) exit 0;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return script, state_file, calls


def make_config(tmp_path: Path, services: list[Any] | None = None, **sections: dict[str, Any]) -> Any:
    """A checker Config whose files all live under tmp_path (gpu off unless a section says so)."""
    raw: dict[str, Any] = {
        "host": "test-host",
        "deploy_state_dir": str(tmp_path / "deploy-state"),
        "state_file": str(tmp_path / "health" / "state.json"),
        "log_file": str(tmp_path / "log" / "health.log"),
        "metrics_dir": str(tmp_path / "metrics"),
        "lock_wait_s": 2.0,
        "services": services or [],
        "nginx": {"enabled": False},
        "disk": {"paths": [str(tmp_path)]},
        "gpu": {"nvidia_smi": str(FAKE_SMI), "kernel_log_command": ["cat", str(tmp_path / "kmsg")]},
        # The test doubles listen from this process, not from a slot unit: the slot checks have tests
        # of their own (test_health_slots.py).
        "slots": {"enabled": False, "lock_dir": str(tmp_path / "locks")},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return fh.load_config(raw)


def write_deploy_state(tmp_path: Path, service: str, live_port: int) -> None:
    state_dir = tmp_path / "deploy-state"
    state_dir.mkdir(exist_ok=True)
    (state_dir / f"{service}.json").write_text(json.dumps({
        "service": service, "live_port": live_port, "slots": {str(live_port): {"release": "1.0.0"}},
        "last_good_release": "1.0.0", "bad_releases": []}))


def log_records(config: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(config.log_file).read_text().splitlines()]
