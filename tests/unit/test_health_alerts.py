"""Whole runs of the health checker: webhook alerts on change only, retries, secrecy, self-healing,
metrics, the JSON log line, exit codes and the run lock. Every server listens on 127.0.0.1."""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from fleet_slots import state as deploy_state
from health_support import (
    XID_LOG,
    Behaviour,
    fake_service,
    fake_systemctl,
    fh,
    log_records,
    make_config,
    webhook_receiver,
    write_deploy_state,
)

SERVICE = {"name": "main-api", "path": "/health", "unit": "main-api@"}


def config_for(tmp_path: Path, url: str, **sections: dict[str, Any]) -> Any:
    tmp_path.mkdir(exist_ok=True)
    if "systemctl" not in sections.setdefault("self_heal", {}):
        sections["self_heal"]["systemctl"] = str(fake_systemctl(tmp_path, "inactive")[0])
    webhook = {"url": url, "timeout_s": 1.0, "retries": 2, "total_timeout_s": 5.0, **sections.pop("webhook", {})}
    http = {"timeout_s": 1.0, **sections.pop("http", {})}
    return make_config(tmp_path, [SERVICE], webhook=webhook, http=http, **sections)


def run(config: Any, read_only: bool = False) -> tuple[int, dict[str, Any]]:
    return fh.execute(config, fh.Options(read_only=read_only))


def test_one_alert_when_a_service_breaks_and_one_recovery_when_it_heals(tmp_path):
    with webhook_receiver() as hook, fake_service() as (port, service):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, hook.url)
        assert run(config)[0] == 0
        assert hook.messages == []  # healthy from the start: nothing to say

        service.status = 503
        code, record = run(config)
        assert (code, record["new"]) == (2, ["service:main-api"])
        assert hook.kinds() == ["ALERT"]
        assert hook.messages[0]["text"].splitlines()[0] == "ALERT test-host: CRITICAL (1 new problem)"
        assert f"- CRITICAL service:main-api: GET http://127.0.0.1:{port}/health answered 503" in (
            hook.messages[0]["text"])

        for _ in range(3):  # still broken: de-duplicated
            assert run(config)[0] == 2
        assert hook.kinds() == ["ALERT"]

        service.status = 200
        code, record = run(config)
        assert (code, record["recovered"]) == (0, [])  # one clean run is not yet a recovery (recover_after 2)
        assert hook.kinds() == ["ALERT"]
        code, record = run(config)
        assert (code, record["recovered"]) == (0, ["service:main-api"])
        assert hook.kinds() == ["ALERT", "RECOVERY"]
        assert hook.messages[1]["text"].startswith(
            "RECOVERY test-host: now OK (1 problem cleared)\n- service:main-api: ok")
        assert run(config)[0] == 0
        assert hook.kinds() == ["ALERT", "RECOVERY"]
        assert set(hook.messages[0]) == {"text"}  # plain Slack-compatible payloads


def test_worse_alerts_again_better_is_silent_and_relapse_alerts(tmp_path):
    with webhook_receiver() as hook, fake_service(Behaviour(delay=0.3)) as (port, service):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, hook.url, http={"timeout_s": 2.0, "latency_warn_ms": 100.0,
                                                      "latency_critical_ms": 1000.0})
        assert run(config)[0] == 1
        service.delay, service.status = 0.0, 500
        assert run(config)[0] == 2
        service.delay, service.status = 0.3, 200
        assert run(config)[0] == 1
        service.delay, service.status = 0.0, 500
        assert run(config)[0] == 2
        assert [m["text"].splitlines()[0].split(": ", 1)[1] for m in hook.messages] == ["WARN (1 new problem)",
                                                                           "CRITICAL (1 new problem)",
                                                                           "CRITICAL (1 new problem)"]


def test_retries_until_delivered(tmp_path):
    with webhook_receiver() as hook, fake_service(Behaviour(status=500)) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        hook.fail_next = 2
        code, record = run(config_for(tmp_path, hook.url))
    assert code == 2 and hook.kinds() == ["ALERT"]
    assert record["webhook"]["sent"] == [{"kind": "alert", "attempts": 3}]


def test_an_undelivered_alert_is_sent_by_the_next_run(tmp_path):
    with webhook_receiver() as hook, fake_service(Behaviour(status=500)) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, hook.url)
        hook.fail_next, hook.fail_status = 1, 404  # refused: no retry
        _, record = run(config)
        assert record["webhook"]["failed"] == [{"kind": "alert", "attempts": 1, "error": "HTTP 404"}]
        assert hook.messages == []
        _, record = run(config)
        assert hook.kinds() == ["ALERT"] and record["webhook"]["sent"] == [{"kind": "alert", "attempts": 1}]


def test_a_stalled_receiver_costs_a_bounded_time(tmp_path):
    with webhook_receiver() as hook:
        hook.stall = 3.0
        settings = fh.WebhookSettings(url=hook.url, timeout_s=0.5, retries=10, total_timeout_s=2.0)
        started = time.monotonic()
        delivered, error, attempts = fh.post_webhook(settings, {"text": "x"})
        elapsed = time.monotonic() - started
    assert not delivered and error == "timed out"
    assert attempts >= 2 and elapsed < 3.0


def test_the_webhook_url_never_reaches_the_log_state_or_metrics(tmp_path):
    with webhook_receiver(token="T0/B0/s3cr3t-t0ken") as hook, fake_service(Behaviour(status=500)) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        hook.fail_next = 100
        config = config_for(tmp_path, hook.url, webhook={"retries": 0})
        run(config)
    refused = config_for(tmp_path / "refused", "http://127.0.0.1:9/services/T0/B0/s3cr3t-t0ken",
                         webhook={"retries": 0})
    run(refused)
    for cfg in (config, refused):
        for path in (cfg.log_file, cfg.state_file, Path(cfg.metrics_dir) / fh.METRICS_FILE):
            text = Path(path).read_text()
            assert "s3cr3t" not in text, path
    assert log_records(refused)[0]["webhook"]["failed"][0]["error"] == "[Errno 111] Connection refused"


@pytest.mark.parametrize("url", ["http://user:s3cr3t@localhost/services/T0", "http://user:s3%40cr3t@localhost/hook"],
                         ids=["plain", "percent-encoded"])
def test_a_webhook_password_never_reaches_the_report_log_or_state(tmp_path, url):
    # Without a port, urllib's error quotes what follows "user:" (decoded): "nonnumeric port: 's3cr3t@localhost'".
    with fake_service(Behaviour(status=500)) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, url, webhook={"retries": 0})
        _, record = run(config)
    error = record["webhook"]["failed"][0]["error"]
    assert error.startswith("nonnumeric port")
    for text in (error, Path(config.log_file).read_text(), Path(config.state_file).read_text()):
        assert "cr3t" not in text, text


@pytest.mark.parametrize("cut_inside_the_password", [False, True])
def test_urls_quoted_by_the_backup_status_never_reach_alerts_log_or_state(tmp_path, cut_inside_the_password):
    with webhook_receiver(token="T0/B0/s3cr3t-t0ken") as hook:
        head = f"alerting {hook.url} failed; cannot open repository rest:https://svc:"
        # The checker keeps 200 characters of the message: make the cut fall 3 characters into the password.
        padding = "x" * (197 - len(head)) if cut_inside_the_password else ""
        status = tmp_path / "last-run.json"
        status.write_text(json.dumps({"status": "failed", "finished": fh.iso(fh.utcnow()),
                                      "message": f"{padding}{head}CANARY-pw@backup.example:8000/web-1: 401"}))
        config = make_config(tmp_path, webhook={"url": hook.url}, backup={"enabled": True, "status_file": str(status)})
        code, record = run(config)
    assert code == 2 and hook.kinds() == ["ALERT"]
    texts = [m["text"] for m in hook.messages] + [json.dumps(record), Path(config.log_file).read_text(),
                                                   Path(config.state_file).read_text()]
    for text in texts:
        assert "s3cr3t" not in text and "CANARY" not in text, text
        assert not re.search(r"svc:(?!\*\*\*)", text), text  # not even the head of a cut-off password
    if not cut_inside_the_password:
        assert "alerting <webhook> failed; cannot open repository rest:https://svc:***@backup.example:8000" in (
            hook.messages[0]["text"])


def test_xid_events_alert_once_and_never_recover(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_NVIDIA_SMI_SCENARIO", "normal")
    with webhook_receiver() as hook:
        config = make_config(tmp_path, webhook={"url": hook.url},
                             gpu={"enabled": True, "expected_count": 8, "xid_ignore": [13, 31, 48]})
        (tmp_path / "kmsg").write_text("")
        assert run(config)[0] == 0
        (tmp_path / "kmsg").write_text(XID_LOG.read_text())
        code, record = run(config)
        assert code == 2 and record["new"] == ["gpu_xid:79@PCI:0000:ba:00"]
        assert run(config)[0] == 0
        assert hook.kinds() == ["ALERT"]
        assert "CRITICAL gpu_xid:79@PCI:0000:ba:00: XID 79 on PCI:0000:ba:00 (GPU 6)" in hook.messages[0]["text"]


def test_undelivered_events_wait_for_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_NVIDIA_SMI_SCENARIO", "normal")
    (tmp_path / "kmsg").write_text(XID_LOG.read_text())
    with webhook_receiver() as hook:
        config = make_config(tmp_path, webhook={"url": hook.url, "retries": 0},
                             gpu={"enabled": True, "expected_count": 8, "xid_ignore": [13, 31, 48]})
        hook.fail_next = 1
        run(config)
        assert hook.messages == []
        run(config)
        assert hook.kinds() == ["ALERT"] and "XID 79" in hook.messages[0]["text"]
        run(config)
        assert hook.kinds() == ["ALERT"]


def test_self_healing_restarts_a_hung_slot_systemd_sees_as_active(tmp_path):
    systemctl, _, calls = fake_systemctl(tmp_path, "active")
    with webhook_receiver() as hook, fake_service(Behaviour(delay=2.0)) as (port, service):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, hook.url, self_heal={"enabled": True, "after_failures": 2,
                                                           "systemctl": str(systemctl)},
                            webhook={"recover_after": 1})
        assert run(config)[1]["actions"] == []
        _, record = run(config)
        assert record["actions"] == [f"restarted main-api@{port}.service after 2 failed health checks in a row "
                                     "while systemd saw it active"]
        assert f"restart main-api@{port}.service" in calls.read_text().splitlines()
        assert hook.kinds() == ["ALERT", "ALERT"]
        assert "WARN self_heal:main-api: restarted" in hook.messages[1]["text"]
        service.delay = 0.0
        assert run(config)[0] == 0
        assert hook.kinds() == ["ALERT", "ALERT", "RECOVERY"]
        metrics = (Path(config.metrics_dir) / fh.METRICS_FILE).read_text()
        assert 'fleet_health_self_heal_restarts_total{service="main-api"} 1' in metrics


def test_self_healing_restarts_one_slot_per_run(tmp_path):
    systemctl, _, calls = fake_systemctl(tmp_path, "active")
    with fake_service(Behaviour(delay=2.0)) as (port_a, _), fake_service(Behaviour(delay=2.0)) as (port_b, _):
        write_deploy_state(tmp_path, "a", port_a)
        write_deploy_state(tmp_path, "b", port_b)
        config = make_config(tmp_path, [{"name": "a"}, {"name": "b"}], http={"timeout_s": 0.5},
                             self_heal={"enabled": True, "after_failures": 1, "systemctl": str(systemctl)})
        first = run(config)[1]["actions"]
        second = run(config)[1]["actions"]
    assert [len(first), len(second)] == [1, 1]
    assert [c for c in calls.read_text().splitlines() if c.startswith("restart")] == [
        f"restart a@{port_a}.service", f"restart b@{port_b}.service"]


def test_self_healing_switches_slots_through_the_slot_engine(tmp_path, monkeypatch):
    """With the service's slots known, the restart is the slot engine's: the release started again
    on the idle slot, traffic switched, the hung slot drained (the engine is tested on real hosts:
    molecule/health_check and the lab)."""
    systemctl, _, calls = fake_systemctl(tmp_path, "active")
    runs: list[dict[str, Any]] = []

    def engine_run(spec: Any, **how: Any) -> Any:
        runs.append({"spec": spec, **how})
        return fh.slot_engine.Outcome("ok", "", "", spec.blue_port, spec.blue_port + 1000, "1.0.0", "1.0.0")

    monkeypatch.setattr(fh.slot_engine, "run", engine_run)
    with fake_service(Behaviour(status=503)) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        config = make_config(tmp_path, [{**SERVICE, "slots": [port, port + 1000], "nginx_path": "/health",
                                         "nginx_host": "main-api.fleet.test", "drain_timeout": 12.0}],
                             self_heal={"enabled": True, "after_failures": 1, "systemctl": str(systemctl),
                                        "audit_log": str(tmp_path / "deploy.log")})
        _, record = run(config)
    (call,) = runs
    assert (call["mode"], call["release"], call["owner"]) == ("restart", None, "fleet-health")
    assert call["audit_log"] == str(tmp_path / "deploy.log")
    spec = call["spec"]
    assert (spec.service, spec.blue_port, spec.drain_timeout) == ("main-api", port, 12.0)
    assert (spec.verify_url, spec.verify_host) == ("http://127.0.0.1/health", "main-api.fleet.test")
    assert record["actions"] == [f"moved main-api 1.0.0 from slot {port} to {port + 1000} (a restart through "
                                 "the slot switch) after 1 failed health checks in a row while systemd saw it active"]
    assert not [c for c in calls.read_text().splitlines() if c.startswith("restart")]  # never in place


def test_self_healing_leaves_a_service_a_deploy_is_moving_alone(tmp_path, monkeypatch):
    systemctl, _, _ = fake_systemctl(tmp_path, "active")
    monkeypatch.setattr(fh.slot_engine, "run", lambda *_a, **_k: pytest.fail("a deploy holds the lock"))
    with fake_service(Behaviour(status=503)) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        config = make_config(tmp_path, [{**SERVICE, "slots": [port, port + 1000]}],
                             self_heal={"enabled": True, "after_failures": 1, "systemctl": str(systemctl)})
        Path(config.slots.lock_dir).mkdir(parents=True)
        (Path(config.slots.lock_dir) / "main-api.lock").write_text(json.dumps(
            {"deploy_id": "d1", "owner": "ops", "pid": os.getpid(), "expires_epoch": time.time() + 600}))
        assert run(config)[1]["actions"] == []


def test_self_healing_leaves_a_unit_systemd_knows_is_down_alone(tmp_path):
    systemctl, _, calls = fake_systemctl(tmp_path, "failed")
    with fake_service() as (port, _):
        pass
    write_deploy_state(tmp_path, "main-api", port)
    config = config_for(tmp_path, "", self_heal={"enabled": True, "after_failures": 1, "systemctl": str(systemctl)})
    for _ in range(3):
        assert run(config)[1]["actions"] == []
    assert not [c for c in calls.read_text().splitlines() if c.startswith("restart")]


def test_read_only_runs_send_nothing_and_keep_no_state(tmp_path):
    with webhook_receiver() as hook, fake_service(Behaviour(status=500)) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, hook.url)
        code, record = run(config, read_only=True)
        assert code == 2 and hook.messages == [] and not Path(config.state_file).exists()
        assert record["webhook"]["skipped"] == "read-only run (--no-webhook)"
        run(config)
        assert hook.kinds() == ["ALERT"]  # the next real run still alerts


def test_no_webhook_configured_tracks_changes_in_the_log_only(tmp_path):
    with fake_service(Behaviour(status=500)) as (port, service):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, "")
        assert run(config)[1]["new"] == ["service:main-api"]
        assert run(config)[1]["new"] == []
        service.status = 200
        assert run(config)[1]["recovered"] == []
        assert run(config)[1]["recovered"] == ["service:main-api"]


def test_a_flapping_problem_alerts_once_and_recovers_only_after_clean_runs_in_a_row(tmp_path):
    """A health check hovering at its limit: broken, fine, broken, fine, fine. One alert, one recovery."""
    with webhook_receiver() as hook, fake_service() as (port, service):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, hook.url, webhook={"recover_after": 2})
        for status in (503, 200, 503, 200):
            service.status = status
            run(config)
        assert hook.kinds() == ["ALERT"]
        service.status = 200
        assert run(config)[1]["recovered"] == ["service:main-api"]
        assert hook.kinds() == ["ALERT", "RECOVERY"]


def test_self_healing_leaves_a_slow_but_working_slot_alone(tmp_path):
    """Over the critical latency, but it answers: an alert, never a restart."""
    systemctl, _, calls = fake_systemctl(tmp_path, "active")
    with fake_service(Behaviour(delay=0.3)) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, "", http={"timeout_s": 2.0, "latency_warn_ms": 50.0,
                                                "latency_critical_ms": 100.0},
                            self_heal={"enabled": True, "after_failures": 1, "systemctl": str(systemctl)})
        for _ in range(3):
            code, record = run(config)
            assert (code, record["actions"]) == (2, [])
    assert not [c for c in calls.read_text().splitlines() if c.startswith("restart")]


def test_self_healing_restarts_a_slot_answering_5xx(tmp_path):
    systemctl, _, calls = fake_systemctl(tmp_path, "active")
    with fake_service(Behaviour(status=502)) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, "", self_heal={"enabled": True, "after_failures": 1,
                                                     "systemctl": str(systemctl)})
        assert len(run(config)[1]["actions"]) == 1
    assert f"restart main-api@{port}.service" in calls.read_text().splitlines()


def test_self_healing_gives_up_after_max_per_hour_with_a_critical_alert(tmp_path):
    systemctl, _, calls = fake_systemctl(tmp_path, "active")
    with webhook_receiver() as hook, fake_service(Behaviour(status=500)) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, hook.url, self_heal={"enabled": True, "after_failures": 1, "max_per_hour": 2,
                                                           "systemctl": str(systemctl)})
        assert [len(run(config)[1]["actions"]) for _ in range(4)] == [1, 1, 0, 0]
        restarts = [c for c in calls.read_text().splitlines() if c.startswith("restart")]
        assert restarts == [f"restart main-api@{port}.service"] * 2
        gave_up = [m["text"] for m in hook.messages if "gave up restarting main-api" in m["text"]]
        assert len(gave_up) == 1 and "CRITICAL self_heal:main-api: gave up restarting main-api: 2 restarts in " \
            "the last hour" in gave_up[0]  # alerted once, de-duplicated after
        # An hour later the window is free again: one more restart.
        state = json.loads(Path(config.state_file).read_text())
        state["restart_times"]["main-api"] = ["2000-01-01T00:00:00Z"] * 2
        Path(config.state_file).write_text(json.dumps(state))
        assert len(run(config)[1]["actions"]) == 1


def test_one_json_line_per_run_and_metrics_written_atomically(tmp_path):
    with fake_service() as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        config = config_for(tmp_path, "")
        run(config)
        run(config)
    records = log_records(config)
    assert len(records) == 2
    assert set(records[0]) >= {"time", "host", "status", "exit_code", "duration_s", "summary", "problems",
                               "new", "recovered", "actions", "webhook", "checks"}
    assert records[0]["status"] == "ok" and records[0]["exit_code"] == 0
    metrics_dir = Path(config.metrics_dir)
    assert sorted(p.name for p in metrics_dir.iterdir()) == ["fleet_health.prom"]  # no temporary left over
    text = (metrics_dir / "fleet_health.prom").read_text()
    sample = re.compile(r'^fleet_health_[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+-]+$')
    for line in text.splitlines():
        assert line.startswith(("# HELP fleet_health_", "# TYPE fleet_health_")) or sample.match(line), line
    assert "fleet_health_status 0" in text
    assert f'fleet_health_service_live_port{{service="main-api"}} {port}' in text
    assert 'fleet_health_service_up{service="main-api",via="direct"} 1' in text


def test_exit_codes_follow_the_worst_finding():
    assert fh.EXIT_CODES == {"ok": 0, "warn": 1, "critical": 2, "unknown": 3}
    assert fh.worst(["ok", "warn"]) == "warn"
    assert fh.worst(["warn", "unknown"]) == "unknown"
    assert fh.worst(["unknown", "critical"]) == "critical"
    assert fh.worst([]) == "ok"


def test_a_run_waits_for_the_lock_then_gives_up_unknown(tmp_path):
    config = config_for(tmp_path, "", **{})
    config.lock_wait_s = 0.3
    lock = Path(config.state_file).with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, record = run(config)
    assert (code, record["status"]) == (3, "unknown")
    assert "another run held the lock" in log_records(config)[-1]["message"]


def test_the_command_line_runs_once_and_reports_crashes_as_unknown(tmp_path, monkeypatch, capsys):
    config_file = tmp_path / "health.json"
    log = tmp_path / "health.log"
    config_file.write_text(json.dumps({"log_file": str(log), "state_file": str(tmp_path / "s.json"),
                                       "disk": {"paths": [str(tmp_path)]}}))
    assert fh.main(["--config", str(config_file), "--once"]) == 0
    assert json.loads(log.read_text())["status"] == "ok"

    def boom(*args: Any) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(fh.cli, "execute", boom)
    assert fh.main(["--config", str(config_file), "--once"]) == 3
    assert json.loads(log.read_text().splitlines()[-1])["message"] == "checker crashed: RuntimeError: kaput"
    assert "checker crashed" in capsys.readouterr().err


def test_standalone_run_without_config_prints_the_record(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_NVIDIA_SMI_SCENARIO", "normal")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    (tmp_path / "nvidia-smi").symlink_to(Path(__file__).parent / "fixtures/nvidia-smi/fake-nvidia-smi")
    code = fh.main(["--once", "--no-webhook", "--gpu", "--expect-gpus", "8", "--log-file", "-",
                    "--state-file", str(tmp_path / "none.json")])
    record = json.loads(capsys.readouterr().out)
    assert code in (0, 1)  # the XID check may warn where this machine's kernel log is unreadable
    assert record["summary"]["critical"] == 0
    assert any(c["key"] == "gpu_count:host" and c["message"] == "8 GPUs visible" for c in record["checks"])
    assert not (tmp_path / "none.json").exists()


def put_in_maintenance(tmp_path: Path, service: str, on: bool = True) -> None:
    """What maintenance.yml leaves in the deploy state (through fleet_slots.state, its owner)."""
    state_dir = str(tmp_path / "deploy-state")
    current = deploy_state.load(service, state_dir)
    assert current is not None
    if on:
        current.start_maintenance("alice@laptop", "db migration", 600)
    else:
        current.end_maintenance()
    deploy_state.save(current, state_dir)


def test_a_service_in_maintenance_is_reported_not_alerted_and_not_healed(tmp_path):
    systemctl, _, calls = fake_systemctl(tmp_path, "active")
    with webhook_receiver() as hook, fake_service(Behaviour(status=503)) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        put_in_maintenance(tmp_path, "main-api")
        config = config_for(tmp_path, hook.url, self_heal={"enabled": True, "after_failures": 1,
                                                           "systemctl": str(systemctl)})
        for _ in range(2):
            code, record = run(config)
            assert (code, record["new"], record["actions"], record["maintenance"]) == (0, [], [], ["main-api"])
        [finding] = [c for c in record["checks"] if c["key"] == "maintenance:main-api"]
        assert finding["severity"] == "ok"
        assert "in maintenance since" in finding["message"] and "by alice@laptop: db migration" in finding["message"]
        assert not [c for c in record["checks"] if c["key"] in ("service:main-api", "slots:main-api")]
        assert hook.messages == [] and not calls.exists()  # systemctl never asked: no restart
        metrics = (Path(config.metrics_dir) / fh.METRICS_FILE).read_text()
        assert 'fleet_health_service_maintenance{service="main-api"} 1' in metrics

        put_in_maintenance(tmp_path, "main-api", on=False)  # off, and still broken: alerted and healed again
        code, record = run(config)
        assert (code, record["new"], record["maintenance"]) == (2, ["service:main-api", "self_heal:main-api"], [])
        assert hook.kinds() == ["ALERT"] and f"restart main-api@{port}.service" in calls.read_text()
