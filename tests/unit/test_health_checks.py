"""Service, disk, memory, backup and config checks of the health checker (services on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from health_support import ROOT, Behaviour, fake_service, fake_systemctl, fh, make_config, write_deploy_state


def service_spec(name: str = "main-api", slots: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": "/health", "slots": slots or [], "unit": f"{name}@", **extra}


def check(tmp_path: Path, spec: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    systemctl, _, _ = fake_systemctl(tmp_path, "active")
    sections.setdefault("self_heal", {})["systemctl"] = str(systemctl)
    config = make_config(tmp_path, [spec], **sections)
    outcome = fh.check_service(config.services[0], config, fh.Metrics(), fh.run_command)
    return {f.key: f for f in outcome.findings}


def test_healthy_live_slot_from_the_deploy_state(tmp_path):
    with fake_service() as (port, behaviour):
        write_deploy_state(tmp_path, "main-api", port)
        findings = check(tmp_path, service_spec())
    assert {k: f.severity for k, f in findings.items()} == {"service:main-api": fh.OK}
    assert findings["service:main-api"].message.startswith(f"GET http://127.0.0.1:{port}/health: 200 in ")
    assert behaviour.requests == [{"path": "/health", "host": f"127.0.0.1:{port}"}]


def test_the_live_slot_is_read_never_guessed(tmp_path):
    findings = check(tmp_path, service_spec())
    assert findings["service:main-api"].severity == fh.UNKNOWN
    assert "no deploy state at" in findings["service:main-api"].message
    write_deploy_state(tmp_path, "main-api", 8010)
    findings = check(tmp_path, service_spec(slots=[8020, 9020]))
    assert findings["service:main-api"].severity == fh.UNKNOWN
    assert "says live_port 8010, not a slot of main-api [8020, 9020]" in findings["service:main-api"].message


def test_through_nginx_with_the_server_name(tmp_path):
    with fake_service() as (port, _), fake_service() as (nginx_port, nginx):
        write_deploy_state(tmp_path, "main-api", port)
        findings = check(tmp_path, service_spec(nginx_host="main-api.fleet.test", nginx_path="/health"),
                         nginx={"enabled": True, "port": nginx_port})
    assert findings["nginx:main-api"].severity == fh.OK
    assert nginx.requests == [{"path": "/health", "host": "main-api.fleet.test"}]


def test_nginx_routing_to_another_slot_than_the_state_says_warns(tmp_path):
    with fake_service() as (port, _), fake_service(Behaviour(body={"status": "ok", "port": 9010})) as (nginx_port, _):
        write_deploy_state(tmp_path, "main-api", port)
        findings = check(tmp_path, service_spec(nginx_path="/health"), nginx={"enabled": True, "port": nginx_port})
    assert findings["nginx:main-api"].severity == fh.WARN
    assert f"served by slot 9010, but the deploy state says {port} is live" in findings["nginx:main-api"].message


@pytest.mark.parametrize(("behaviour", "severity", "words"), [
    (Behaviour(status=503, body={"status": "unhealthy"}), fh.CRITICAL, "answered 503, expected 200"),
    (Behaviour(body={"status": "degraded"}), fh.CRITICAL, "status is 'degraded', expected ok"),
    (Behaviour(body="ok"), fh.WARN, "no 'status' field in the body"),
    (Behaviour(delay=0.3), fh.WARN, "(warning above 200 ms)"),
    (Behaviour(delay=0.6), fh.CRITICAL, "(critical above 500 ms)"),
    (Behaviour(delay=2.0), fh.CRITICAL, "failed: timed out after 1 s"),
])
def test_status_body_and_latency_are_judged(tmp_path, behaviour, severity, words):
    with fake_service(behaviour) as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        findings = check(tmp_path, service_spec(),
                         http={"timeout_s": 1.0, "latency_warn_ms": 200.0, "latency_critical_ms": 500.0})
    assert findings["service:main-api"].severity == severity
    assert words in findings["service:main-api"].message


def test_required_body_text(tmp_path):
    with fake_service() as (port, _):
        write_deploy_state(tmp_path, "main-api", port)
        findings = check(tmp_path, service_spec(body="ready"))
    assert "body lacks 'ready'" in findings["service:main-api"].message


def test_a_failing_slot_says_what_systemd_thinks(tmp_path):
    with fake_service() as (port, _):
        pass  # the port is free again: connection refused
    write_deploy_state(tmp_path, "main-api", port)
    findings = check(tmp_path, service_spec())
    assert findings["service:main-api"].severity == fh.CRITICAL
    assert findings["service:main-api"].message == (
        f"GET http://127.0.0.1:{port}/health failed: connection refused; main-api@{port}.service is active")


# --------------------------------------------------------------------------- disk, memory, backup

class FakeVfs:
    def __init__(self, free: int, files_free: int) -> None:
        self.f_blocks, self.f_bavail, self.f_files, self.f_favail = 1000, free, 1000, files_free


def test_disk_space_and_inodes_once_per_filesystem(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "statvfs", lambda path: FakeVfs(free=120, files_free=30))
    (tmp_path / "sub").mkdir()
    metrics = fh.Metrics()
    findings = fh.check_disks(fh.DiskSettings(paths=[str(tmp_path), str(tmp_path / "sub"), "/nonexistent"],
                                              warn_free_pct=15, critical_free_pct=5), metrics)
    assert [(f.key, f.severity) for f in findings] == [
        (f"disk:{tmp_path}", fh.WARN), (f"disk_inodes:{tmp_path}", fh.CRITICAL), ("disk:/nonexistent", fh.OK)]
    assert findings[0].message == f"{tmp_path}: 12.0% space free"
    assert f'fleet_health_disk_free_ratio{{path="{tmp_path}"}} 0.12' in metrics.render()


@pytest.mark.parametrize(("available", "severity"), [(50, fh.OK), (8, fh.WARN), (3, fh.CRITICAL)])
def test_memory_headroom(tmp_path, available, severity):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       1000 kB\nMemFree:          1 kB\nMemAvailable:   {available * 10} kB\n")
    findings = fh.check_memory(fh.MemorySettings(), fh.Metrics(), str(meminfo))
    assert [(f.key, f.severity) for f in findings] == [("memory:host", severity)]


NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)


def backup(tmp_path: Path, record: dict[str, Any] | str | None, **settings: Any) -> Any:
    status_file = tmp_path / "last-run.json"
    if record is not None:
        status_file.write_text(record if isinstance(record, str) else json.dumps(record))
    findings = fh.check_backup(fh.BackupSettings(enabled=True, status_file=str(status_file), **settings),
                               fh.Metrics(), NOW)
    assert len(findings) == 1
    return findings[0]


def record(status: str, hours_ago: float, message: str = "") -> dict[str, Any]:
    finished = NOW - dt.timedelta(hours=hours_ago)
    return {"status": status, "started": (finished - dt.timedelta(minutes=3)).isoformat(),
            "finished": finished.isoformat().replace("+00:00", "Z"), "message": message}


def test_backup_ok_and_recent(tmp_path):
    finding = backup(tmp_path, record("ok", 3))
    assert (finding.severity, finding.message) == (fh.OK, "last backup ok, 3.0 h ago")


def test_backup_failed_is_critical_with_its_message(tmp_path):
    finding = backup(tmp_path, record("failed", 1, "pg_dump: connection refused"))
    assert finding.severity == fh.CRITICAL and finding.message.endswith("pg_dump: connection refused")


@pytest.mark.parametrize(("hours", "severity"), [(30, fh.WARN), (60, fh.CRITICAL)])
def test_backup_too_old(tmp_path, hours, severity):
    assert backup(tmp_path, record("ok", hours)).severity == severity


@pytest.mark.parametrize("missing", [fh.OK, fh.WARN, fh.CRITICAL])
def test_absent_backup_status_has_a_configurable_severity(tmp_path, missing):
    finding = backup(tmp_path, None, missing=missing)
    assert finding.severity == missing
    assert finding.message == f"no backup has run yet ({tmp_path / 'last-run.json'} is absent)"


def test_garbled_backup_status_is_critical(tmp_path):
    assert backup(tmp_path, "{not json").severity == fh.CRITICAL
    assert backup(tmp_path, {"status": "ok", "finished": "yesterday"}).severity == fh.WARN


# --------------------------------------------------------------------------- config

def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(fh.ConfigError, match=r"gpu\.timeout: unknown key; known keys: "):
        fh.load_config({"gpu": {"timeout": 3}})
    with pytest.raises(fh.ConfigError, match=r"http\.timeout_s: must be a number, got '5'"):
        fh.load_config({"http": {"timeout_s": "5"}})
    with pytest.raises(fh.ConfigError, match=r"services\.a\.nginx: unknown key"):
        fh.load_config({"services": [{"name": "a", "nginx": {}}]})
    with pytest.raises(fh.ConfigError, match="warn_free_pct must be at least"):
        fh.load_config({"disk": {"warn_free_pct": 1, "critical_free_pct": 5}})


def test_config_errors_never_echo_the_webhook_url():
    for raw in ({"webhook": {"url": "ftp://hooks.example/T0/s3cr3t"}}, {"webhook": {"url": ["s3cr3t"]}}):
        with pytest.raises(fh.ConfigError) as error:
            fh.load_config(raw)
        assert "s3cr3t" not in str(error.value)
    assert "s3cr3t" not in repr(fh.load_config({"webhook": {"url": "https://hooks.example/T0/s3cr3t"}}))


def test_check_config_cli(tmp_path, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"_comment": "Ansible managed", "services": [{"name": "a"}],
                                "webhook": {"url": "https://hooks.example/s3cr3t"}}))
    bad.write_text("{")
    assert fh.main(["--check-config", "--config", str(good)]) == 0
    assert fh.main(["--check-config", "--config", str(bad)]) == 3
    out = capsys.readouterr()
    assert "config ok (1 services, gpu off, webhook set)" in out.out
    assert "not valid JSON" in out.err and "s3cr3t" not in out.out + out.err


def test_the_role_template_renders_a_config_the_checker_accepts():
    """The role's defaults and the checker's config keys stay in step (names checked, not values)."""
    template = (ROOT / "roles/health_check/templates/health.json.j2").read_text()
    keys = set(re.findall(r'"([a-z_]+)":', template))
    known = {f.name for cls in [fh.Config, fh.ServiceSpec, *fh._SECTIONS.values()] for f in dataclasses.fields(cls)}
    assert keys - known - set(fh._SECTIONS) - {"_comment"} == set()


def test_environment_paths_reach_sbin(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert "/usr/sbin" in fh._search_path().split(os.pathsep)
