"""The smoke checks (fleet_slots.smoke) and where the move runs them: against the new slot before
the switch (a failure leaves traffic where it was) and through nginx after it (a failure switches
traffic back); either marks the release bad on the host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fleet_slots import engine, host, nginx, smoke, state

OK = host.Probe(200, '{"pong": true}', "", "")


def test_checks_come_from_the_catalog_entries() -> None:
    assert smoke.checks_of([{"method": "post", "path": "/api/ping", "status": 201, "body": "pong"},
                            {"path": "/"}]) == (
        smoke.Check("POST", "/api/ping", 201, "pong"), smoke.Check("GET", "/", 200, ""))
    assert smoke.checks_of(None) == ()


def test_all_passing_checks_say_nothing() -> None:
    sent: list[tuple[str, str | None, str]] = []

    def probe(url: str, header: str | None, timeout: float, method: str) -> host.Probe:
        sent.append((url, header, method))
        return OK

    checks = smoke.checks_of([{"path": "/a", "body": "pong"}, {"method": "HEAD", "path": "/b?x=1"}])
    assert smoke.first_failure(checks, "http://127.0.0.1", "through nginx", "app.test", probe=probe) == ""
    assert sent == [("http://127.0.0.1/a", "app.test", "GET"), ("http://127.0.0.1/b?x=1", "app.test", "HEAD")]


@pytest.mark.parametrize(("answer", "saw"), [
    (host.Probe(404, "not found", "", ""), "saw status 404; body: 'not found'"),
    (host.Probe(200, "pang", "", ""), "saw status 200; body: 'pang'"),
    (host.Probe(0, "", "", "ConnectionRefusedError: refused"), "saw no response (ConnectionRefusedError: refused)"),
])
def test_the_first_failing_check_is_named_with_what_came_back(answer: host.Probe, saw: str) -> None:
    checks = smoke.checks_of([{"path": "/health"}, {"method": "POST", "path": "/api/ping", "body": "pong"},
                              {"path": "/never-sent"}])
    answers = iter([OK, answer])
    message = smoke.first_failure(checks, "http://127.0.0.1:9010", "against the new slot 9010",
                                  probe=lambda *_: next(answers))
    assert message == (f"smoke check 2 of 3 failed against the new slot 9010: POST http://127.0.0.1:9010/api/ping "
                       f"wanted status 200 and a body containing 'pong'; {saw}")


# -- the move, with the host and nginx faked -----------------------------------------------------
@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A host where units start and stop, nginx's slot table is a dict, and requests answer from
    `answers`: {(port or 'nginx', path): Probe}; the health answers OK everywhere."""
    world: dict[str, Any] = {"route": 8010, "active": {"app@8010.service"}, "answers": {}, "switches": []}

    def get(url: str, host_header: str | None = None, timeout: float = 5.0, method: str = "GET") -> host.Probe:
        rest = url.removeprefix("http://127.0.0.1")
        where: int | str = int(rest[1:].split("/", 1)[0]) if rest.startswith(":") else "nginx"
        path = "/" + rest.split("/", 1)[1] if rest.startswith(":") else rest
        if path == "/health":
            port = world["route"] if where == "nginx" else where
            return host.Probe(200, "ok", f"127.0.0.1:{port}", "")
        return world["answers"].get((where, path), OK)

    def switch(service: str, port: int, control_socket: str = "") -> None:
        world["route"] = port
        world["switches"].append(port)

    monkeypatch.setattr(host, "get", get)
    monkeypatch.setattr(host, "listeners", lambda port: [host.Listener(1, "app", f"app@{port}.service")]
                        if f"app@{port}.service" in world["active"] else [])
    monkeypatch.setattr(host, "unit_active", lambda unit: "active" if unit in world["active"] else "inactive")
    monkeypatch.setattr(host, "start", lambda unit: world["active"].add(unit))
    monkeypatch.setattr(host, "stop", lambda unit, wait=True: world["active"].discard(unit))
    monkeypatch.setattr(host, "wait_inactive", lambda unit, timeout: True)
    monkeypatch.setattr(host, "enable_at_boot", lambda enable, disable: None)
    monkeypatch.setattr(host, "systemctl", lambda *args, check=True: world["active"].discard(args[-1]))
    monkeypatch.setattr(nginx, "route", lambda service, control_socket="": world["route"])
    monkeypatch.setattr(nginx, "switch", switch)
    for release in ("1.0.0", "1.1.0"):
        (tmp_path / "opt" / "app" / "releases" / release).mkdir(parents=True)
        (tmp_path / "opt" / "app" / "releases" / release / ".fleet-release").write_text("{}")
    (tmp_path / "opt" / "app" / "slots").mkdir()
    world["spec"] = engine.Spec(
        service="app", blue_port=8010, verify_url="http://127.0.0.1/health", verify_host="app.test",
        verify_timeout=0.2, service_root=str(tmp_path / "opt"), state_dir=str(tmp_path / "state"),
        lock_dir=str(tmp_path / "locks"), config_dir=str(tmp_path / "etc"),
        watch=engine.watching.Limits(seconds=0),
        smoke=smoke.checks_of([{"path": "/api/ping", "body": "pong"}]))
    world["state"] = state.initial("app", 8010, "1.0.0")
    state.save(world["state"], world["spec"].state_dir)
    return world


def test_a_passing_smoke_check_lets_the_move_through(fake_host: dict[str, Any]) -> None:
    outcome = engine.move(fake_host["spec"], fake_host["state"], "1.1.0", "deploy", "d1", "alice")
    assert outcome.result == "ok", outcome.message
    assert {"smoke", "smoke_nginx"} <= set(outcome.durations)
    assert fake_host["route"] == 9010


def test_a_failing_smoke_check_on_the_new_slot_never_moves_traffic(fake_host: dict[str, Any]) -> None:
    fake_host["answers"][(9010, "/api/ping")] = host.Probe(500, "boom", "", "")
    outcome = engine.move(fake_host["spec"], fake_host["state"], "1.1.0", "deploy", "d1", "alice")
    assert (outcome.result, outcome.phase) == ("failed", "smoke")
    assert outcome.message.startswith("smoke check 1 of 1 failed against the new slot 9010: GET "
                                      "http://127.0.0.1:9010/api/ping wanted status 200 and a body containing "
                                      "'pong'; saw status 500; body: 'boom'.")
    assert "Traffic stays on 1.0.0 (slot 8010), release marked bad on this host." in outcome.message
    assert fake_host["switches"] == [] and fake_host["route"] == 8010
    after = state.load("app", fake_host["spec"].state_dir)
    assert after is not None and after.live_port == 8010 and "1.1.0" in after.bad_releases
    assert "app@9010.service" not in fake_host["active"]


def test_a_failing_smoke_check_through_nginx_switches_traffic_back(fake_host: dict[str, Any]) -> None:
    fake_host["answers"][("nginx", "/api/ping")] = host.Probe(502, "bad gateway", "", "")
    outcome = engine.move(fake_host["spec"], fake_host["state"], "1.1.0", "deploy", "d1", "alice")
    assert (outcome.result, outcome.phase) == ("failed", "smoke")
    assert outcome.message.startswith("smoke check 1 of 1 failed through nginx: GET http://127.0.0.1/api/ping "
                                      "(Host: app.test) wanted status 200")
    assert fake_host["switches"] == [9010, 8010] and fake_host["route"] == 8010
    after = state.load("app", fake_host["spec"].state_dir)
    assert after is not None and after.live_port == 8010 and "1.1.0" in after.bad_releases


def test_the_audit_line_carries_the_release_archive_sha256(fake_host: dict[str, Any], tmp_path: Path) -> None:
    spec = fake_host["spec"]
    digest = "ab" * 32
    (Path(spec.release_dir("1.1.0")) / ".fleet-release").write_text(json.dumps({"sha256": digest}))
    log = tmp_path / "deploy.log"
    outcome = engine.run(spec, mode="deploy", release="1.1.0", deploy_id="d1", owner="alice", hostname="web-1",
                         lock_ttl=60, break_lock=False, audit_log=str(log))
    assert outcome.result == "ok", outcome.message
    line = json.loads(log.read_text().splitlines()[-1])
    assert (line["to_release"], line["release_sha256"]) == ("1.1.0", digest)
    assert engine.release_sha256(spec, "1.0.0") == ""  # a marker without the sum (an older unpack)
    assert engine.release_sha256(spec, "7.7.7") == ""  # no such release
