"""The health checker on a converged GPU-group guest, run the way cron runs it.

The tests run in file order and share the guest: each leaves it healthy. Every run executes the
command line of the installed cron entry, in cron's environment (PATH=/usr/bin:/bin, no variables),
and the webhook receiver inside the guest counts what was sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

LOG = "/var/log/fleet/health.log"
RECEIVED = "/var/lib/fake-webhook/received.jsonl"
SCENARIO = "/usr/local/lib/fake-nvidia-smi/scenario"
KMSG = "/var/lib/fake-kmsg/kmsg"
BACKUP = "/var/lib/fleet/backup/last-run.json"
METRICS = "/var/lib/prometheus/node-exporter/fleet_health.prom"
TOKEN = "molecule-s3cr3t-t0ken"
SERVICES = {"zapier-mcp": 8090, "personas-api": 8000, "main-api": 8010, "infrastructure": 8080}
TIMINGS = "/var/lib/fake-webhook/timings.jsonl"


def cron_command(host: Any) -> str:
    lines = [line for line in host.file("/etc/cron.d/fleet-health").content_string.splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, lines
    return lines[0].split(None, 6)[6]  # minute hour day month weekday user COMMAND


def run_check(host: Any, label: str = "") -> tuple[int, dict[str, Any]]:
    """One run of the cron entry's command in cron's environment; (exit code, its log record)."""
    script = ('s=$(date +%s%N); env -i HOME=/root LOGNAME=root SHELL=/bin/sh PATH=/usr/bin:/bin /bin/sh -c "$0"; '
              'rc=$?; e=$(date +%s%N); echo "$rc $(( (e - s) / 1000000 ))"')
    result = host.run(f"sh -c {quote(script)} {quote(cron_command(host))}")
    rc, wall_ms = (int(x) for x in result.stdout.split())
    record = json.loads(host.file(LOG).content_string.splitlines()[-1])
    if label:
        timing = {"label": label, "exit_code": rc, "wall_s": wall_ms / 1000, "duration_s": record.get("duration_s")}
        host.run(f"echo {quote(json.dumps(timing))} >> {TIMINGS}")
    assert record["exit_code"] == rc
    return rc, record


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def messages(host: Any) -> list[dict[str, Any]]:
    content = host.run(f"cat {RECEIVED}").stdout
    return [json.loads(line) for line in content.splitlines() if line.strip()]


def kinds(host: Any) -> list[str]:
    return [m["body"]["text"].split(" ", 1)[0] for m in messages(host)]


def reset_receiver(host: Any) -> None:
    host.check_output(f"truncate -s 0 {RECEIVED}")


def message(record: dict[str, Any], key: str) -> str:
    return next(str(p["message"]) for p in record["problems"] if p["key"] == key)


def problems(record: dict[str, Any]) -> dict[str, str]:
    return {p["key"]: p["severity"] for p in record["problems"]}


def set_gpus(host: Any, scenario: str) -> None:
    host.check_output(f"echo {scenario} > {SCENARIO}")


def wait_healthy(host: Any, port: int) -> None:
    host.check_output(f"timeout 60 sh -c 'until curl -fs http://127.0.0.1:{port}/health; do sleep 0.5; done'")


def slots(host: Any, service: str) -> tuple[int, int]:
    """(live, idle) slot ports, from the deploy state."""
    live = json.loads(host.file(f"/var/lib/fleet/state/{service}.json").content_string)["live_port"]
    blue = SERVICES[service]
    return live, blue + 1000 if live == blue else blue


def write_backup(host: Any, status: str = "ok") -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = {"status": status, "started": now, "finished": now, "message": "molecule"}
    host.check_output(f"mkdir -p /var/lib/fleet/backup && echo {quote(json.dumps(record))} > {BACKUP}")


# --------------------------------------------------------------------------- installation

def test_checker_config_and_cron_entry_are_installed(host):
    checker = host.file("/usr/local/sbin/fleet-health")
    assert (checker.user, checker.mode) == ("root", 0o755)
    config = host.file("/etc/fleet/health.json")
    assert (config.user, config.group, config.mode) == ("root", "root", 0o600)
    settings = json.loads(config.content_string)
    assert [s["name"] for s in settings["services"]] == sorted(SERVICES)
    assert settings["gpu"]["enabled"] is True and settings["gpu"]["expected_count"] == 8
    cron = host.file("/etc/cron.d/fleet-health").content_string
    assert "0 0 31 2 * root /usr/local/sbin/fleet-health --config /etc/fleet/health.json --once" in cron
    assert host.service("cron").is_running
    assert host.run("/usr/local/sbin/fleet-health --check-config --config /etc/fleet/health.json").rc == 0


def test_absent_backup_warns_until_the_backup_job_reports(host):
    host.run(f"rm -f {BACKUP}")
    reset_receiver(host)
    rc, record = run_check(host)
    assert (rc, problems(record)) == (1, {"backup:last_run": "warn"})
    assert "no backup has run yet (/var/lib/fleet/backup/last-run.json is absent)" in record["problems"][0]["message"]
    write_backup(host)
    assert [run_check(host)[0] for _ in range(2)] == [0, 0]  # recovered after two clean runs
    assert kinds(host) == ["ALERT", "RECOVERY"]


def test_a_healthy_host_is_ok_and_quiet(host):
    reset_receiver(host)
    for _ in range(3):
        rc, record = run_check(host, "healthy")
    assert (rc, record["status"], record["problems"]) == (0, "ok", [])
    checks = {c["key"]: c for c in record["checks"]}
    for service, port in SERVICES.items():
        assert checks[f"service:{service}"]["message"].startswith(f"GET http://127.0.0.1:{port}/health: 200 in ")
        through_nginx = f"GET http://127.0.0.1/health (Host: {service}.fleet.test): 200 in "
        assert checks[f"nginx:{service}"]["message"].startswith(through_nginx)
    assert checks["gpu_count:host"]["message"] == "8 GPUs visible"
    assert messages(host) == []
    metrics = host.file(METRICS)
    assert metrics.mode == 0o644
    assert "fleet_health_status 0" in metrics.content_string
    assert 'fleet_health_service_up{service="main-api",via="nginx"} 1' in metrics.content_string
    # Its own file, no temporary left over (nginx's timer writes fleet_requests.prom beside it).
    names = host.run("ls -A /var/lib/prometheus/node-exporter").stdout.split()
    assert [name for name in names if "fleet_health" in name] == ["fleet_health.prom"]


# --------------------------------------------------------------------------- a service broken on purpose

def test_a_stopped_live_slot_alerts_once_and_recovers_once(host):
    reset_receiver(host)
    host.check_output("systemctl stop main-api@8010.service")
    try:
        rc, record = run_check(host)
        assert rc == 2
        assert problems(record) == {"service:main-api": "critical", "nginx:main-api": "critical"}
        assert "127.0.0.1:8010/health failed: connection refused; main-api@8010.service is inactive" in (
            message(record, "service:main-api"))
        assert kinds(host) == ["ALERT"]
        for _ in range(2):
            assert run_check(host)[0] == 2
        assert kinds(host) == ["ALERT"]  # de-duplicated
        assert record["actions"] == []  # systemd knows it is down: not the checker's to restart
    finally:
        host.check_output("systemctl start main-api@8010.service")
    wait_healthy(host, 8010)
    rc, record = run_check(host)
    assert (rc, record["recovered"]) == (0, [])  # one clean run is not a recovery yet (recover_after 2)
    assert kinds(host) == ["ALERT"]
    rc, record = run_check(host)
    assert (rc, sorted(record["recovered"])) == (0, ["nginx:main-api", "service:main-api"])
    sent = messages(host)
    assert kinds(host) == ["ALERT", "RECOVERY"]
    assert sent[0]["body"]["text"].startswith("ALERT fleet-mol-health-1: CRITICAL (2 new problems)")
    assert sent[1]["body"]["text"].startswith("RECOVERY fleet-mol-health-1: now OK (2 problems cleared)")
    assert all(m["path"] == f"/services/T0FLEET/B0HEALTH/{TOKEN}" for m in sent)


def test_a_hung_slot_is_moved_to_its_other_slot_by_self_healing(host):
    """The slot engine's restart: the release starts on the idle slot, nginx switches to it without
    a reload, the hung slot is drained and stopped, and the audit log says fleet-health did it."""
    reset_receiver(host)
    live, idle = slots(host, "main-api")
    pid = host.check_output(f"systemctl show -p MainPID --value main-api@{live}.service")
    nginx = host.file("/run/nginx.pid").content_string.strip()
    host.check_output(f"kill -STOP {pid}")  # a hang systemd cannot see: the unit stays active
    try:
        rc, record = run_check(host)
        assert (rc, record["actions"]) == (2, [])
        assert f"timed out after 2 s; main-api@{live}.service is active" in message(record, "service:main-api")
        rc, record = run_check(host)
        (action,) = record["actions"]
        assert action.startswith("moved main-api ") and action.endswith(
            f"from slot {live} to {idle} (a restart through the slot switch) after 2 failed health checks in a "
            "row while systemd saw it active")
    finally:
        host.run(f"kill -CONT {pid}")
    assert slots(host, "main-api") == (idle, live)
    assert host.service(f"main-api@{live}.service").is_running is False
    served = json.loads(host.check_output("curl -fsS -H 'Host: main-api.fleet.test' http://127.0.0.1/health"))
    assert served["port"] == idle
    assert host.file("/run/nginx.pid").content_string.strip() == nginx  # never restarted
    audit = json.loads(host.file("/var/log/fleet/deploy.log").content_string.splitlines()[-1])
    assert (audit["who"], audit["mode"], audit["result"], audit["to_slot"]) == ("fleet-health", "restart", "ok", idle)
    assert [run_check(host)[0] for _ in range(2)] == [0, 0]  # recovered after two clean runs
    assert kinds(host) == ["ALERT", "ALERT", "RECOVERY"]
    assert "WARN self_heal:main-api: moved main-api" in messages(host)[1]["body"]["text"]


def test_a_stray_process_on_the_idle_slot_port_is_reported_with_its_unit(host):
    reset_receiver(host)
    _, idle = slots(host, "main-api")
    host.check_output(f"systemd-run --unit stray-listener --collect python3 -m http.server {idle} "
                      "--bind 127.0.0.1")
    try:
        host.check_output(f"timeout 10 sh -c 'until ss -Hltn sport = :{idle} | grep -q .; do sleep 0.2; done'")
        rc, record = run_check(host)
        assert (rc, problems(record)) == (1, {f"slot_port:main-api@{idle}": "warn"})
        assert (f"port {idle}, the idle slot of main-api, is listened on by stray-listener.service, "
                f"not main-api@{idle}.service: the next deploy cannot start its slot") in (
            message(record, f"slot_port:main-api@{idle}"))
    finally:
        host.run("systemctl stop stray-listener")
    assert [run_check(host)[0] for _ in range(2)] == [0, 0]
    assert kinds(host) == ["ALERT", "RECOVERY"]


def test_a_certificate_near_its_expiry_is_critical(host):
    directory = "/etc/fleet/certificates/soon"
    host.check_output(f"mkdir -p {directory} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
                      f"-nodes -days 5 -subj /CN=soon.fleet.test -keyout {directory}/privkey.pem "
                      f"-out {directory}/fullchain.pem 2>/dev/null")
    try:
        rc, record = run_check(host)
        assert (rc, problems(record)) == (2, {"tls:soon": "critical"})
        assert f"{directory}/fullchain.pem expires " in message(record, "tls:soon")
        assert 'fleet_health_tls_certificate_expiry_timestamp_seconds{certificate="soon"}' in (
            host.file(METRICS).content_string)
    finally:
        host.run(f"rm -rf {directory}")
    assert [run_check(host)[0] for _ in range(2)] == [0, 0]


# --------------------------------------------------------------------------- GPUs

def test_a_hung_nvidia_smi_is_killed_alerted_and_recovers(host):
    reset_receiver(host)
    set_gpus(host, "hang")
    try:
        rc, record = run_check(host, "hung nvidia-smi")
        assert rc == 2
        assert problems(record) == {"nvidia_smi:query": "critical"}
        assert record["problems"][0]["message"] == "nvidia-smi hung: no answer within 10 s (killed)"
        assert 10 <= record["duration_s"] < 15
        assert host.run("pgrep -f '[n]vidia-smi --query'").rc == 1  # killed, not left behind
    finally:
        set_gpus(host, "normal")
    assert [run_check(host)[0] for _ in range(2)] == [0, 0]  # recovered after two clean runs
    assert kinds(host) == ["ALERT", "RECOVERY"]


def test_a_missing_gpu_alerts_and_recovers(host):
    reset_receiver(host)
    set_gpus(host, "missing-gpu")
    try:
        rc, record = run_check(host)
        assert (rc, problems(record)) == (2, {"gpu_count:host": "critical"})
    finally:
        set_gpus(host, "normal")
    assert [run_check(host)[0] for _ in range(2)] == [0, 0]  # recovered after two clean runs
    assert kinds(host) == ["ALERT", "RECOVERY"]


def test_an_xid_in_the_kernel_log_alerts_once(host):
    reset_receiver(host)
    line = "[ 9021.554433] NVRM: Xid (PCI:0000:ba:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
    host.check_output(f"echo {quote(line)} >> {KMSG}")
    rc, record = run_check(host)
    assert (rc, record["new"]) == (2, ["gpu_xid:79@PCI:0000:ba:00"])
    assert run_check(host)[0] == 0  # an event: seen once, nothing to recover from
    assert kinds(host) == ["ALERT"]
    assert "XID 79 on PCI:0000:ba:00 (GPU 6): pid='<unknown>'" in messages(host)[0]["body"]["text"]


# --------------------------------------------------------------------------- the secret

def test_the_webhook_url_is_in_the_private_config_only(host):
    found = host.run(f"grep -rl {TOKEN} /var/log /var/lib/fleet /var/lib/prometheus /etc --exclude=health.json")
    assert found.stdout == "", found.stdout
    assert host.run("journalctl --no-pager").stdout.count(TOKEN) == 0


def test_ansible_output_never_shows_the_webhook_url():
    """The role in check mode with --diff and -vvv against this guest: the URL stays hidden."""
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(project / "roles"), "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_FILTER_PLUGINS": str(project / "filter_plugins"),
           "ANSIBLE_CONFIG": str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.cfg")}
    playbook = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml"
    result = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook), "--tags", "health_check",
         "--check", "--diff", "-vvv", "-e", "health_check_http_timeout=3"],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Write the health checker configuration" in result.stdout  # the task ran and would change
    assert TOKEN not in result.stdout + result.stderr


@pytest.fixture(scope="module", autouse=True)
def report_timings(host):
    """Leave the healthy and hung run times in the guest for whoever reads them (make molecule prints none)."""
    host.run(f"rm -f {TIMINGS}")
    yield
    print(host.run(f"cat {TIMINGS}").stdout)
