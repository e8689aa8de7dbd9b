"""Tests for services/demo/app.py, run as a real process on a free loopback port."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools import build_release as builder  # tests/unit/conftest.py puts the root on sys.path

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_PATH = REPO_ROOT / "services" / "demo" / "app.py"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.2).close()
    except OSError:
        return False
    return True


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def wait_listening(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"service exited with {self.proc.returncode}:\n{self.log()}")
            if port_open(self.port):
                return
            time.sleep(0.02)
        pytest.fail(f"service did not listen on {self.port} within {timeout}s:\n{self.log()}")

    def request(self, method: str, path: str, body: bytes | None = None,
                ) -> tuple[int, http.client.HTTPResponse, bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        return response.status, response, data

    def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, response, data = self.request("GET", path)
        assert response.getheader("Content-Type") == "application/json"
        assert int(response.getheader("Content-Length", "-1")) == len(data)
        return status, json.loads(data)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=5)


def spawn(tmp_path: Path, app: Path = APP_PATH, wait: bool = True, **env: str) -> Service:
    port = free_port()
    log_path = tmp_path / f"service-{port}.log"
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    with log_path.open("wb") as log_file:
        # cwd is not the release directory: app.py must find release.json next to itself.
        proc = subprocess.Popen([sys.executable, str(app), "--port", str(port)], cwd=tmp_path,
                                env={**clean_env, **env}, stdout=log_file,
                                stderr=subprocess.STDOUT)
    service = Service(proc, port, log_path)
    if wait:
        service.wait_listening()
    return service


def extract_release(tmp_path: Path, version: str, unhealthy: bool = False,
                    startup_delay: float = 0.0, error_share: float = 0.0, latency: float = 0.0) -> Path:
    archive = builder.build_release(version, tmp_path / "releases", unhealthy, startup_delay, error_share, latency)
    dest = tmp_path / "srv" / version
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / "app.py"


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Collects started services and kills any the test left running."""
    started: list[Service] = []
    yield started
    for service in started:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One development service (no release.json) shared by the read-only tests."""
    service = spawn(tmp_path_factory.mktemp("demo"), DEMO_SERVICE_NAME="personas-api")
    yield service
    service.stop()


def test_health_reports_identity(demo: Service) -> None:
    status, body = demo.get_json("/health")

    assert status == 200
    assert body["status"] == "ok"
    assert body["service"] == "personas-api"
    assert body["version"] == "dev"
    assert body["port"] == demo.port
    assert body["pid"] == demo.proc.pid
    assert isinstance(body["uptime_s"], float) and body["uptime_s"] >= 0


def test_other_paths_describe_the_request(demo: Service) -> None:
    status, body = demo.get_json("/some/path?x=1")

    assert status == 200
    assert body["path"] == "/some/path"
    assert (body["service"], body["version"], body["port"]) == ("personas-api", "dev", demo.port)


def test_head_sends_headers_only(demo: Service) -> None:
    _, _, get_data = demo.request("GET", "/")
    status, response, data = demo.request("HEAD", "/")

    assert status == 200
    assert data == b""
    assert response.getheader("Content-Length") == str(len(get_data))


def test_post_echoes_length_and_sha256(demo: Service) -> None:
    payload = os.urandom(200_000)
    status, _, data = demo.request("POST", "/ingest", body=payload)

    body = json.loads(data)
    assert status == 200
    assert body["body_length"] == len(payload)
    assert body["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert body["path"] == "/ingest"


def test_slow_sleeps_before_answering(demo: Service) -> None:
    started = time.monotonic()
    status, body = demo.get_json("/slow?seconds=0.3")

    assert status == 200
    assert body["slept_s"] == 0.3
    assert time.monotonic() - started >= 0.3


def test_slow_rejects_a_non_number(demo: Service) -> None:
    status, body = demo.get_json("/slow?seconds=soon")

    assert status == 400
    assert "seconds" in body["error"]


def test_status_answers_the_error_status_asked_for(demo: Service) -> None:
    status, body = demo.get_json("/status/503")
    assert (status, body["path"]) == (503, "/status/503")
    assert demo.get_json("/status/429")[0] == 429
    for bad in ("200", "600", "abc"):
        status, body = demo.get_json(f"/status/{bad}")
        assert status == 400 and "400 to 599" in body["error"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "BREW"])
def test_other_methods_are_not_allowed(demo: Service, method: str) -> None:
    status, response, _ = demo.request(method, "/")

    assert status == 405
    assert response.getheader("Allow") == "GET, HEAD, POST"


def test_keep_alive_serves_several_requests_on_one_connection(demo: Service) -> None:
    conn = http.client.HTTPConnection(HOST, demo.port, timeout=5)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        assert first.status == 200
        first.read()
        sock = conn.sock
        assert sock is not None
        local = sock.getsockname()

        conn.request("POST", "/x", body=b"hello")
        second = conn.getresponse()
        assert second.status == 200
        assert json.loads(second.read())["body_length"] == 5
        conn.request("GET", "/y")
        third = conn.getresponse()
        assert third.status == 200
        third.read()

        assert conn.sock is sock and sock.getsockname() == local  # no reconnect
        assert first.version == 11 and not first.will_close
    finally:
        conn.close()


def test_version_comes_from_release_json(tmp_path: Path, services: list[Service]) -> None:
    app = extract_release(tmp_path, "1.2.0")
    service = spawn(tmp_path, app, DEMO_SERVICE_NAME="main-api")
    services.append(service)

    status, body = service.get_json("/health")

    assert status == 200
    assert (body["service"], body["version"], body["port"]) == ("main-api", "1.2.0", service.port)


def test_unhealthy_release_fails_health_but_serves(tmp_path: Path,
                                                   services: list[Service]) -> None:
    app = extract_release(tmp_path, "9.9.9-unhealthy", unhealthy=True)
    service = spawn(tmp_path, app)
    services.append(service)

    status, body = service.get_json("/health")
    assert status == 503
    assert body["status"] == "failing"
    assert body["version"] == "9.9.9-unhealthy"

    status, body = service.get_json("/")
    assert status == 200


def test_a_flaky_release_fails_its_exact_share_of_requests_while_health_stays_green(
        tmp_path: Path, services: list[Service]) -> None:
    service = spawn(tmp_path, extract_release(tmp_path, "4.0.0-flaky", error_share=0.2))
    services.append(service)

    statuses = [service.request("GET", f"/item/{n}")[0] for n in range(10)]
    statuses.append(service.request("POST", "/orders", body=b"{}")[0])
    assert [service.get_json("/health")[0] for _ in range(5)] == [200] * 5
    statuses += [service.request("GET", "/")[0] for _ in range(4)]
    # Every fifth request other than /health, GET or POST: 3 of 15.
    assert statuses == [200, 200, 200, 200, 500] * 3
    assert [service.request("GET", "/")[0] for _ in range(4)] == [200] * 4
    status, body = service.get_json("/x")  # the 20th
    assert (status, body["error"], body["version"]) == (500, "release built with error_share=0.2", "4.0.0-flaky")


def test_a_laggy_release_adds_its_latency_to_requests_but_not_to_health(
        tmp_path: Path, services: list[Service]) -> None:
    service = spawn(tmp_path, extract_release(tmp_path, "4.1.0-laggy", latency=0.3))
    services.append(service)

    started = time.monotonic()
    assert service.request("GET", "/")[0] == 200
    lagged = time.monotonic() - started
    started = time.monotonic()
    assert service.get_json("/health")[0] == 200
    assert lagged >= 0.3 > time.monotonic() - started


@pytest.mark.parametrize(("field", "value"), [("error_share", 1.5), ("error_share", True), ("latency", -1),
                                              ("latency", "slow")])
def test_a_bad_fault_in_release_json_is_refused_naming_it(tmp_path: Path, field: str, value: object) -> None:
    app = tmp_path / "app.py"
    app.write_bytes(APP_PATH.read_bytes())
    (tmp_path / "release.json").write_text(json.dumps({"version": "1.0.0", field: value}))
    result = subprocess.run([sys.executable, str(app), "--port", str(free_port())], capture_output=True, text=True,
                            timeout=10, check=False)

    assert result.returncode == 2
    assert f"'{field}'" in result.stderr


def _time_to_listen(service: Service) -> float:
    started = time.monotonic()
    service.wait_listening(timeout=5)
    return time.monotonic() - started


def test_baked_startup_delay_delays_binding(tmp_path: Path, services: list[Service]) -> None:
    app = extract_release(tmp_path, "3.0.0-slow", startup_delay=1.0)
    service = spawn(tmp_path, app, wait=False)
    services.append(service)

    time.sleep(0.5)
    assert service.proc.poll() is None
    assert not port_open(service.port)
    assert _time_to_listen(service) >= 0.3  # about 1 s after launch, minus the 0.5 s above
    assert service.get_json("/health")[1]["version"] == "3.0.0-slow"


def test_env_startup_delay_overrides_the_release(tmp_path: Path,
                                                 services: list[Service]) -> None:
    app = extract_release(tmp_path, "3.0.0-slow", startup_delay=30.0)
    service = spawn(tmp_path, app, wait=False, DEMO_STARTUP_DELAY="0")
    services.append(service)

    assert _time_to_listen(service) < 3


def test_sigterm_during_startup_delay_exits_cleanly(tmp_path: Path,
                                                    services: list[Service]) -> None:
    service = spawn(tmp_path, wait=False, DEMO_STARTUP_DELAY="30")
    services.append(service)
    deadline = time.monotonic() + 5
    while "waiting service=demo" not in service.log() and time.monotonic() < deadline:
        time.sleep(0.02)  # until it is in its delay, past interpreter start-up

    assert service.stop() == 0
    assert not port_open(service.port)


def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path: Path,
                                                        services: list[Service]) -> None:
    service = spawn(tmp_path, DEMO_SERVICE_NAME="infrastructure")
    services.append(service)

    # An idle keep-alive connection must not keep the process alive.
    idle = http.client.HTTPConnection(HOST, service.port, timeout=5)
    idle.request("GET", "/health")
    idle.getresponse().read()

    result: dict[str, Any] = {}

    def slow_request() -> None:
        conn = http.client.HTTPConnection(HOST, service.port, timeout=10)
        try:
            conn.request("GET", "/slow?seconds=1")
            response = conn.getresponse()
            result["status"] = response.status
            result["connection"] = response.getheader("Connection")
            result["body"] = json.loads(response.read())
        finally:
            conn.close()

    client = threading.Thread(target=slow_request)
    client.start()
    time.sleep(0.3)  # the request is in flight
    signalled = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)

    refused = False
    while time.monotonic() - signalled < 0.6:
        try:
            socket.create_connection((HOST, service.port), timeout=0.2).close()
        except ConnectionRefusedError:
            refused = True
            break
        except ConnectionResetError:
            pass  # the listening socket closed while this connection waited in its backlog
        time.sleep(0.02)
    assert refused, "new connections still accepted after SIGTERM"
    assert service.proc.poll() is None, "exited before the in-flight request finished"

    client.join(timeout=5)
    assert result["status"] == 200
    assert result["body"]["slept_s"] == 1.0
    assert result["connection"] == "close"
    assert service.proc.wait(timeout=3) == 0
    assert time.monotonic() - signalled < 3
    idle.close()

    log = service.log()
    assert "signal=SIGTERM in_flight=1" in log  # the /slow request was in flight at SIGTERM
    assert "drained=true" in log


def test_logs_start_requests_and_stop(tmp_path: Path, services: list[Service]) -> None:
    app = extract_release(tmp_path, "1.1.0")
    service = spawn(tmp_path, app, DEMO_SERVICE_NAME="zapier-mcp")
    services.append(service)
    service.get_json("/health")
    service.request("POST", "/hook", body=b"{}")

    assert service.stop() == 0

    lines = service.log().splitlines()
    assert f"start service=zapier-mcp version=1.1.0 host=127.0.0.1 port={service.port}" in lines[0]
    assert any('"GET /health HTTP/1.1" 200' in line for line in lines)
    assert any('"POST /hook HTTP/1.1" 200' in line for line in lines)
    assert f"stop service=zapier-mcp version=1.1.0 port={service.port}" in lines[-1]


def test_rejects_a_bad_startup_delay(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(APP_PATH), "--port", str(free_port())],
                            env={**os.environ, "DEMO_STARTUP_DELAY": "soon"},
                            capture_output=True, text=True, timeout=10, check=False)

    assert result.returncode == 2
    assert "DEMO_STARTUP_DELAY" in result.stderr


def test_port_is_required() -> None:
    result = subprocess.run([sys.executable, str(APP_PATH)], capture_output=True, text=True,
                            timeout=10, check=False)

    assert result.returncode == 2
    assert "--port" in result.stderr
