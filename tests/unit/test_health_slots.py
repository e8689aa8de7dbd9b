"""The health checker's slot checks (pending moves, idle slots left running, strangers on slot
ports) and TLS expiry, with a stand-in `ss` and real certificates made by openssl."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from health_support import fh, make_config

SS_HEADERLESS = """\
LISTEN 0      511          0.0.0.0:80         0.0.0.0:*    users:(("nginx",pid=101,fd=6),("nginx",pid=102,fd=6))
LISTEN 0      128        127.0.0.1:8010       0.0.0.0:*    users:(("python3",pid=201,fd=3))
LISTEN 0      128             [::]:22            [::]:*    users:(("sshd",pid=301,fd=4))
LISTEN 0      128                *:9010              *:*
"""
OWNERS = {"101": "nginx.service", "102": "nginx.service", "201": "main-api@8010.service", "301": "ssh.service"}


def test_listeners_are_grouped_by_port_with_their_units():
    ports = fh.parse_listeners(SS_HEADERLESS, OWNERS.__getitem__)
    assert ports == {80: {"nginx.service"}, 8010: {"main-api@8010.service"}, 22: {"ssh.service"},
                     9010: {fh.NOT_VISIBLE}}


def test_a_process_is_named_by_its_unit_or_by_pid_and_command():
    me = fh.unit_of_pid(str(os.getpid()))
    assert me.endswith(".service") or me.startswith(f"pid {os.getpid()} (")
    assert fh.unit_of_pid("999999999") == "pid 999999999"  # gone


# --------------------------------------------------------------------------- judging one service

def keys(findings: list[Any]) -> dict[str, str]:
    return {f.key: f.severity for f in findings}


def judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listeners: dict[int, set[str]],
          pending: dict[str, Any] | None = None, lock: dict[str, Any] | None = None) -> dict[str, str]:
    """check_slots with `listeners` as what ss shows (a real ss shows this test's own sockets)."""
    state_dir = tmp_path / "deploy-state"
    state_dir.mkdir(exist_ok=True)
    (state_dir / "main-api.json").write_text(json.dumps({
        "service": "main-api", "live_port": 8010, "slots": {"8010": {"release": "1.0.0"}},
        "last_good_release": "1.0.0", "bad_releases": [], "pending": pending}))
    config = make_config(tmp_path, [{"name": "main-api", "slots": [8010, 9010], "unit": "main-api@"}],
                         slots={"enabled": True, "ss": "true"})
    if lock is not None:
        Path(config.slots.lock_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.slots.lock_dir) / "main-api.lock").write_text(json.dumps(lock))
    monkeypatch.setattr(fh.services, "parse_listeners", lambda _output: listeners)
    return keys(fh.check_slots(config, fh.run_command))


MOVE = {"deploy_id": "main-api-1", "mode": "deploy", "from_port": 8010, "to_port": 9010, "from_release": "1.0.0",
        "to_release": "1.1.0", "phase": "started", "started": "2026-11-30T10:00:00Z"}


def live_lock(pid: int) -> dict[str, Any]:
    return {"deploy_id": "main-api-1", "owner": "ops@ctl", "pid": pid, "expires_epoch": time.time() + 600}


def test_slots_as_the_state_says_are_ok(tmp_path, monkeypatch):
    assert judge(tmp_path, monkeypatch, {8010: {"main-api@8010.service"}}) == {"slots:main-api": "ok"}


def test_a_stranger_on_the_live_port_is_critical_and_on_the_idle_port_a_warning(tmp_path, monkeypatch):
    found = judge(tmp_path, monkeypatch, {8010: {"main-api@8010.service", "pid 4242 (python3 -m http.server 8010)"},
                             9010: {"legacy.service"}})
    assert found == {"slot_port:main-api@8010": "critical", "slot_port:main-api@9010": "warn"}


def test_a_listener_whose_owner_cannot_be_seen_is_not_called_a_stranger(tmp_path, monkeypatch):
    assert judge(tmp_path, monkeypatch, {8010: {"main-api@8010.service", fh.NOT_VISIBLE}}) == {"slots:main-api": "ok"}


def test_an_idle_slot_running_outside_a_deploy_warns(tmp_path, monkeypatch):
    running = {8010: {"main-api@8010.service"}, 9010: {"main-api@9010.service"}}
    assert judge(tmp_path, monkeypatch, running) == {"idle_slot:main-api@9010": "warn"}
    # During a deploy the idle slot is the new release starting: expected.
    assert judge(tmp_path, monkeypatch, running, pending=MOVE, lock=live_lock(os.getpid())) == {"slots:main-api": "ok"}


def test_a_pending_move_nobody_finishes_warns_naming_the_move(tmp_path, monkeypatch):
    found = judge(tmp_path, monkeypatch, {8010: {"main-api@8010.service"}}, pending=MOVE)
    assert found == {"pending_move:main-api": "warn"}
    orphan = live_lock(999999999)  # its deploy died
    assert judge(tmp_path, monkeypatch, {8010: {"main-api@8010.service"}}, pending=MOVE, lock=orphan) == found
    expired = {**live_lock(os.getpid()), "expires_epoch": time.time() - 1}
    assert judge(tmp_path, monkeypatch, {8010: {"main-api@8010.service"}}, pending=MOVE, lock=expired) == found


def test_the_pending_move_message_says_what_happens_next(tmp_path):
    state_dir = tmp_path / "deploy-state"
    state_dir.mkdir()
    (state_dir / "main-api.json").write_text(json.dumps({
        "service": "main-api", "live_port": 8010, "slots": {"8010": {"release": "1.0.0"}},
        "last_good_release": "1.0.0", "bad_releases": [], "pending": MOVE}))
    config = make_config(tmp_path, [{"name": "main-api", "slots": [8010, 9010]}],
                         slots={"enabled": True, "ss": "true"})
    (message,) = [f.message for f in fh.check_slots(config, fh.run_command) if f.check == "pending_move"]
    assert message.startswith("a deploy move from slot 8010 (1.0.0) to 9010 (1.1.0), deploy main-api-1, "
                              "stopped after phase started")
    assert "the next deploy, rollback or site.yml run finishes or reverts it" in message


def test_ss_failing_is_unknown_not_silent(tmp_path):
    config = make_config(tmp_path, [{"name": "main-api"}], slots={"enabled": True, "ss": "false"})
    assert keys(fh.check_slots(config, fh.run_command)) == {"slots:listeners": "unknown"}


# --------------------------------------------------------------------------- TLS expiry

@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """<dir>/main-api/fullchain.pem valid 60 days, and <dir>/broken/fullchain.pem that is not one."""
    root = tmp_path_factory.mktemp("live")
    (root / "main-api").mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "60", "-subj", "/CN=main-api.fleet.test",
                    "-keyout", str(root / "main-api" / "privkey.pem"),
                    "-out", str(root / "main-api" / "fullchain.pem")],
                   check=True, capture_output=True)
    (root / "broken").mkdir()
    (root / "broken" / "fullchain.pem").write_text("not a certificate\n")
    return root


@pytest.mark.parametrize(("days_later", "severity"), [(0, "ok"), (45, "warn"), (55, "critical"), (61, "critical")])
def test_certificates_warn_then_go_critical_as_they_near_expiry(certificates, days_later, severity):
    tls = fh.TlsSettings(certificate_dirs=[str(certificates)], warn_days=20, critical_days=7)
    now = fh.utcnow() + dt.timedelta(days=days_later)
    metrics = fh.Metrics()
    found = {f.key: f for f in fh.check_certificates(tls, metrics, fh.run_command, now)}
    assert found["tls:main-api"].severity == severity
    assert found["tls:broken"].severity == "critical" and "cannot read the expiry" in found["tls:broken"].message
    if days_later == 61:
        assert "expired" in found["tls:main-api"].message
    assert 'fleet_health_tls_certificate_expiry_timestamp_seconds{certificate="main-api"}' in metrics.render()


def test_tls_thresholds_are_checked_in_the_config(tmp_path):
    with pytest.raises(fh.ConfigError, match=r"tls\.warn_days must be at least tls\.critical_days"):
        make_config(tmp_path, [], tls={"warn_days": 5.0, "critical_days": 7.0})
