"""Log rotation on a host running every lab service behind nginx: the configuration passes
`logrotate --debug`, covers every log fleet writes, and a forced rotation keeps every service and
nginx writing to their (new) logs without restarting anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

CATALOG = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "inventories/lab/group_vars/all/fleet_services.yml"
SERVICES = {name: spec["port"] for name, spec in yaml.safe_load(CATALOG.read_text())["fleet_services"].items()}
JOB_LOGS = ["/var/log/fleet/health.log", "/var/log/fleet/backup.log"]


def service_log(service: str) -> str:
    return f"/var/log/fleet/{service}/{SERVICES[service]}.log"


def main_pid(host, unit: str) -> str:
    return host.check_output(f"systemctl show -p MainPID --value {unit}")


def debug_output(host) -> str:
    result = host.run("logrotate --debug /etc/logrotate.conf")
    assert result.rc == 0, result.stderr
    return result.stdout + result.stderr


def test_logrotate_configuration_has_no_errors(host):
    errors = [line for line in debug_output(host).splitlines() if line.startswith("error:")]
    assert errors == []


def test_every_log_fleet_writes_is_covered(host):
    host.check_output("touch " + " ".join(JOB_LOGS))
    out = debug_output(host)
    for path in [*map(service_log, SERVICES), *JOB_LOGS, "/var/log/nginx/access.log", "/var/log/nginx/error.log"]:
        assert f"considering log {path}\n" in out, path


def test_nginx_rule_is_the_roles_own(host):
    rule = host.file("/etc/logrotate.d/nginx").content_string
    assert "Ansible managed" in rule
    assert "kill -USR1" in rule


def test_extra_rules_are_written_and_retired_ones_removed(host):
    assert "/var/log/fleet-audit/*.log {" in host.file("/etc/logrotate.d/fleet-extra-audit").content_string
    # prepare.yml left /etc/logrotate.d/fleet-extra-retired; the converge removed it.
    assert not host.file("/etc/logrotate.d/fleet-extra-retired").exists


def test_timer_runs_logrotate_hourly(host):
    timer = host.service("logrotate.timer")
    assert timer.is_enabled and timer.is_running
    assert "OnCalendar=hourly" in host.check_output("systemctl cat logrotate.timer")


def test_forced_rotation_keeps_every_service_writing(host):
    units = [f"{service}@{port}.service" for service, port in SERVICES.items()] + ["nginx.service"]
    pids = {unit: main_pid(host, unit) for unit in units}
    for path in JOB_LOGS:
        host.check_output(f"echo '{{\"before\": \"rotation\"}}' >> {path} && chmod 0640 {path}")
    for service, port in SERVICES.items():
        host.check_output(f"curl -fsS -o /dev/null http://127.0.0.1:{port}/health?before-rotation")
        host.check_output(f"curl -fsS -o /dev/null -H 'Host: {service}.fleet.test' http://127.0.0.1/health")

    host.check_output("logrotate --force /etc/logrotate.conf")

    for service, port in SERVICES.items():
        host.check_output(f"curl -fsS -o /dev/null http://127.0.0.1:{port}/health?after-rotation")
        host.check_output(f"curl -fsS -o /dev/null -H 'Host: {service}.fleet.test' http://127.0.0.1/health")
    for service in SERVICES:
        log = service_log(service)
        assert "before-rotation" in host.file(f"{log}.1").content_string, log
        current = host.file(log).content_string
        assert "before-rotation" not in current, log
        assert "after-rotation" in current, f"{service} stopped writing {log} after the rotation"
        # O_APPEND: writing carried on at the start of the truncated file, not past a hole of NULs.
        assert not current.startswith("\0"), log
    access = host.file("/var/log/nginx/access.log").content_string
    assert all(f'"{service}.fleet.test"' in access for service in SERVICES), access
    for path in JOB_LOGS:
        rotated, fresh = host.file(f"{path}.1"), host.file(path)
        assert "before" in rotated.content_string
        assert (fresh.exists, fresh.mode, fresh.user) == (True, 0o640, "root")
    # Nothing was restarted to rotate a log.
    assert {unit: main_pid(host, unit) for unit in units} == pids


@pytest.mark.parametrize("unit", ["logrotate.service"])
def test_logrotate_runs_under_its_systemd_unit(host, unit):
    host.check_output(f"systemctl start {unit}")
    assert host.check_output(f"systemctl show -p Result --value {unit}") == "success"
