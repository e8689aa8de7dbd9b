"""What status.yml and audit.yml read on a host, in one call each: fleet_slots.status.report (state,
units, health, lock, newest audit line) and fleet_slots.audit (the audit log and its rotated copies,
newest first)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fleet_slots import audit, engine, host, lock, state, status
from fleet_slots.state import Move


class Health(BaseHTTPRequestHandler):
    """A slot's /health: 200 "ok", or whatever the test sets; /slow never answers in time."""

    code = 200

    def do_GET(self) -> None:  # http.server calls it by this name
        if self.path == "/slow":
            time.sleep(1.0)
        body = b"ok"
        self.send_response(self.code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slot() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """State, lock and log directories, and a systemd that knows which units run."""
    running: set[str] = set()

    def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert args[0] == "is-active", args  # status only ever asks this
        lines = ["active" if unit in running else "inactive" for unit in args[1:]]
        return subprocess.CompletedProcess(["systemctl", *args], 0, "\n".join(lines) + "\n", "")

    monkeypatch.setattr(host, "systemctl", systemctl)
    paths = {name: str(tmp_path / name) for name in ("state", "locks", "log")}
    paths["audit_log"] = str(tmp_path / "log" / "deploy.log")
    paths["socket"] = str(tmp_path / "no-nginx.sock")
    paths["running"] = running  # type: ignore[assignment]  # the fake systemd's units
    return paths


def write_audit(path: str, service: str, mode: str = "deploy", to_release: str = "1.1.0") -> None:
    engine.write_audit(path, engine.Outcome("ok", "", "drain", 8010, 9010, "1.0.0", to_release), service, mode,
                       f"{service}-{mode}", "alice@laptop", "web-1", time.time())


def report(dirs: dict[str, Any], checks: list[engine.Spec], include_unlisted: bool = True,
           timeout: float = 2.0) -> dict[str, Any]:
    return status.report(checks, include_unlisted=include_unlisted, state_dir=dirs["state"], lock_dir=dirs["locks"],
                         control_socket=dirs["socket"], audit_log=dirs["audit_log"], probe_timeout=timeout)


# --------------------------------------------------------------------------- status.report

def test_a_live_service_reports_its_slots_health_and_last_deploy(dirs: dict[str, Any], slot: int):
    state.save(state.initial("main-api", slot, "1.0.0"), dirs["state"])
    dirs["running"].add(host.unit_of("main-api", slot))
    write_audit(dirs["audit_log"], "main-api", "install", "1.0.0")
    write_audit(dirs["audit_log"], "other", "deploy")
    answer = report(dirs, [engine.Spec("main-api", slot)])
    assert answer["routes"] == {} and "no-nginx.sock" in answer["routes_error"]
    main = answer["services"]["main-api"]
    assert (main["live_port"], main["idle_port"], main["in_catalog"]) == (slot, slot + 1000, True)
    assert main["units"] == {str(slot): "active", str(slot + 1000): "inactive"}
    assert main["state"]["slots"][str(slot)]["release"] == "1.0.0" and main["state_error"] == ""
    assert main["health"]["status"] == 200 and main["health"]["ok"] and main["health"]["ms"] >= 0
    assert json.loads(main["last_audit"])["mode"] == "install"
    assert main["lock"] is None and main["routed"] is None


def test_a_failing_or_slow_health_answer_is_reported_not_raised(dirs: dict[str, Any], slot: int):
    state.save(state.initial("main-api", slot, "1.0.0"), dirs["state"])
    Health.code = 503
    try:
        failing = report(dirs, [engine.Spec("main-api", slot)])["services"]["main-api"]["health"]
    finally:
        Health.code = 200
    assert (failing["status"], failing["ok"]) == (503, False)
    slow = report(dirs, [engine.Spec("main-api", slot, health_path="/slow")], timeout=0.2)
    health = slow["services"]["main-api"]["health"]
    assert health["status"] == 0 and "timed out" in health["error"] and health["ms"] < 900
    body = report(dirs, [engine.Spec("main-api", slot, health_body="ready")])["services"]["main-api"]["health"]
    assert (body["status"], body["ok"]) == (200, False)


def test_a_held_lock_and_a_pending_move_are_reported(dirs: dict[str, Any], slot: int):
    current = state.initial("main-api", slot, "1.0.0")
    current.begin(Move("main-api-9", "deploy", slot, slot + 1000, "1.0.0", "1.1.0", owner="bob@ci"))
    state.save(current, dirs["state"])
    lock.acquire("main-api", "main-api-9", "bob@ci", 600, lock_dir=dirs["locks"])
    main = report(dirs, [engine.Spec("main-api", slot)])["services"]["main-api"]
    assert main["state"]["pending"]["deploy_id"] == "main-api-9" and main["state"]["pending"]["phase"] == "started"
    held = main["lock"]
    assert (held["owner"], held["deploy_id"], held["orphaned"], held["stale"]) == ("bob@ci", "main-api-9", False,
                                                                                   False)
    assert held["describe"].startswith("held by bob@ci since")


def test_a_lock_whose_process_died_is_reported_as_dead(dirs: dict[str, Any], slot: int):
    os.makedirs(dirs["locks"])
    dead = {"deploy_id": "x", "owner": "carol@ci", "pid": 2 ** 22 + 1, "expires_epoch": 0}
    Path(dirs["locks"], "main-api.lock").write_text(json.dumps(dead))
    held = report(dirs, [engine.Spec("main-api", slot)])["services"]["main-api"]["lock"]
    assert held["orphaned"] and held["stale"]


def test_services_without_state_broken_states_and_unlisted_ones(dirs: dict[str, Any]):
    os.makedirs(dirs["state"])
    Path(dirs["state"], "broken.json").write_text("[]")
    state.save(state.initial("old-api", 8020, "0.9.0"), dirs["state"])
    answer = report(dirs, [engine.Spec("main-api", 8010), engine.Spec("broken", 8030)])
    assert sorted(answer["services"]) == ["broken", "main-api", "old-api"]
    main = answer["services"]["main-api"]
    assert (main["state"], main["live_port"], main["idle_port"], main["health"]) == (None, None, None, None)
    assert main["units"] == {"8010": "inactive", "9010": "inactive"}  # a stray start would show here
    assert "not a JSON object" in answer["services"]["broken"]["state_error"]
    old = answer["services"]["old-api"]
    assert (old["in_catalog"], old["live_port"], old["idle_port"], old["health"]) == (False, 8020, None, None)
    only = report(dirs, [engine.Spec("main-api", 8010)], include_unlisted=False)
    assert sorted(only["services"]) == ["main-api"]


def test_status_changes_nothing(dirs: dict[str, Any], slot: int):
    state.save(state.initial("main-api", slot, "1.0.0"), dirs["state"])
    lock.acquire("main-api", "d", "bob@ci", 600, lock_dir=dirs["locks"])
    write_audit(dirs["audit_log"], "main-api")
    root = Path(dirs["state"]).parent
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    report(dirs, [engine.Spec("main-api", slot)])
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


# --------------------------------------------------------------------------- the audit log

def rotated(dirs: dict[str, Any]) -> Path:
    """deploy.log.2.gz (oldest), deploy.log.1, deploy.log (newest), as logrotate leaves them."""
    log = Path(dirs["audit_log"])
    log.parent.mkdir(parents=True)
    with gzip.open(f"{log}.2.gz", "wt") as handle:
        handle.write(json.dumps({"service": "main-api", "n": 1}) + "\n" + json.dumps({"service": "b", "n": 2}) + "\n")
    Path(f"{log}.1").write_text(json.dumps({"service": "main-api", "n": 3}) + "\n\n")
    log.write_text("".join(json.dumps({"service": s, "n": n}) + "\n" for s, n in (("b", 4), ("main-api", 5))))
    Path(f"{log}.old").write_text("not a rotated copy\n")
    for age, name in ((3, f"{log}.2.gz"), (2, f"{log}.1"), (1, str(log))):
        os.utime(name, (time.time() - age * 86400, time.time() - age * 86400))
    return log


def numbers(lines: list[str]) -> list[int]:
    return [json.loads(line)["n"] for line in lines]


def test_the_log_and_its_rotated_copies_are_read_newest_first(dirs: dict[str, Any]):
    log = rotated(dirs)
    assert [p.name for p in audit.log_files(str(log))] == ["deploy.log", "deploy.log.1", "deploy.log.2.gz"]
    assert numbers(audit.newest(str(log))) == [5, 4, 3, 2, 1]
    assert numbers(audit.newest(str(log), ["main-api"])) == [5, 3, 1]
    assert numbers(audit.newest(str(log), ["main-api"], limit=2)) == [5, 3]
    assert audit.last_of_each(str(log), ["main-api", "b", "none"]) == {
        "main-api": json.dumps({"service": "main-api", "n": 5}), "b": json.dumps({"service": "b", "n": 4})}


def test_copies_written_before_since_are_skipped(dirs: dict[str, Any]):
    log = rotated(dirs)
    since = time.time() - 2.5 * 86400 + audit.CLOCK_SKEW  # after .2.gz was last written, less the skew
    assert numbers(audit.newest(str(log), since_epoch=since)) == [5, 4, 3]
    assert audit.newest(str(log), since_epoch=time.time() + 2 * audit.CLOCK_SKEW) == []


def test_unreadable_lines_are_returned_without_a_service_filter_only(dirs: dict[str, Any]):
    write_audit(dirs["audit_log"], "main-api")
    with open(dirs["audit_log"], "a") as handle:
        handle.write("{half a line\n")
    assert audit.newest(dirs["audit_log"])[0] == "{half a line"
    assert len(audit.newest(dirs["audit_log"], ["main-api"])) == 1


def test_a_missing_log_has_no_lines(tmp_path: Path):
    assert audit.newest(str(tmp_path / "deploy.log")) == []
    assert audit.last_of_each(str(tmp_path / "deploy.log"), ["main-api"]) == {}
