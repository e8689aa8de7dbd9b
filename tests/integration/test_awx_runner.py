"""The playbooks run unchanged under ansible-runner, laid out as AWX lays out a job.

On the suite's lab (the session fixture `lab`), each test builds a fresh private data dir with
awx/private_data_dir.py (env/extravars = survey answers, env/envvars, env/ssh_key = the machine
credential, inventory/ = hosts + group_vars, project/ = this repository) and runs a playbook
through ansible-runner's Python API, as AWX's task worker does:

1. site.yml on the converged lab changes nothing (the second run of site.yml on these hosts, and
   the suite's check of its idempotence on real hosts);
2. a hot deploy, with the answers the generated survey allows, reports its status, events and
   artifacts (the deploy summary from set_stats, the changed hosts);
3. a service the survey still offers after it left the catalog (a stale survey: AWX checks answers
   only against the survey it stored) fails with the playbook's own message, changing nothing;
4. awx/backup.yml ("back up now") reports each host's backup record, failing where it is not ok
   (a stand-in backup job, the real one put back afterwards: the backup role's own tests run it).

Nothing here assumes what an earlier test left: the deploy reads each host's release first.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible_runner
import pytest
import yaml

from filter_plugins.fleet_awx import fleet_awx_survey

from .conftest import Lab
from .helpers import state

ROOT = Path(__file__).resolve().parents[2]
CATALOG = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/fleet_services.yml").read_text())["fleet_services"]
# What AWX adds to every job's extra vars (a few of them), so the playbooks see what they see there.
AWX_JOB_VARS = {"awx_job_id": 42, "awx_job_template_name": "fleet: hot deploy", "awx_user_name": "runner-test"}

sys.path.insert(0, str(ROOT / "awx"))
import private_data_dir  # noqa: E402  (awx/ is a directory of tools, not a package)


@dataclass
class AwxLab:
    """The suite's lab, and a way to run a playbook on it the way AWX runs a job."""

    lab: Lab
    workdir: Path
    inventory: Path
    ssh_key: Path
    runs: int = 0

    @property
    def hosts(self) -> dict[str, str]:
        return self.lab.hosts

    def run(self, playbook: str, extravars: dict[str, Any], limit: str = "") -> ansible_runner.Runner:
        self.runs += 1
        ident = f"job-{self.runs}"
        data_dir = private_data_dir.make_private_data_dir(
            self.workdir / ident, [self.inventory], {**AWX_JOB_VARS, **extravars},
            envvars={"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"},
            settings={"job_timeout": 1200}, ssh_key=self.ssh_key,
        )
        return ansible_runner.run(private_data_dir=str(data_dir), playbook=playbook, ident=ident, quiet=True,
                                  limit=limit or None)

    def ssh(self, host: str, command: str) -> str:
        return self.lab.ssh(host, command).stdout

    def health(self, address: str, service: str) -> dict[str, Any]:
        request = urllib.request.Request(f"http://{address}/health", headers={"Host": f"{service}.fleet.test"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return dict(json.load(response))


@pytest.fixture(scope="module")
def awx_lab(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwxLab]:
    """The suite lab's inventory as AWX would import it (hosts and group_vars), without the key:
    the key is the job's machine credential (env/ssh_key, loaded into an ssh-agent by runner)."""
    generated = yaml.safe_load(lab.inventory.read_text())
    workdir = tmp_path_factory.mktemp("awx-runner")
    source = workdir / "inventory-source"
    source.mkdir()
    ssh_key = Path(generated["all"]["vars"].pop("ansible_ssh_private_key_file"))
    (source / "hosts.yml").write_text(yaml.safe_dump(generated))
    private_data_dir.copy_inventory([lab.inventory.parent / "group_vars"], source / "group_vars")
    yield AwxLab(lab, workdir, source / "hosts.yml", ssh_key)


def events(runner: ansible_runner.Runner, kind: str) -> list[dict[str, Any]]:
    return [event for event in runner.events if event.get("event") == kind]


def artifact_data(runner: ansible_runner.Runner) -> dict[str, Any]:
    """What AWX stores as the job's artifacts: set_stats data, carried by the stats event."""
    (stats,) = events(runner, "playbook_on_stats")
    return dict(stats["event_data"].get("artifact_data", {}))


def test_private_data_dir_has_awx_layout(awx_lab: AwxLab):
    data_dir = private_data_dir.make_private_data_dir(awx_lab.workdir / "layout", [awx_lab.inventory],
                                                      {"service": "main-api"}, ssh_key=awx_lab.ssh_key)
    for path in ("env/extravars", "env/envvars", "env/settings", "env/ssh_key", "inventory/hosts.yml",
                 "inventory/group_vars/all/fleet_services.yml", "project/site.yml", "project/ansible.cfg",
                 "project/hot_deploy.yml", "project/roles", "project/filter_plugins/fleet_awx.py"):
        assert (data_dir / path).exists(), path
    assert json.loads((data_dir / "env/extravars").read_text()) == {"service": "main-api"}
    assert (data_dir / "env/ssh_key").stat().st_mode & 0o777 == 0o600
    assert not (data_dir / "project/.venv").exists() and not (data_dir / "project/.git").exists()


def changed_tasks(runner: ansible_runner.Runner) -> list[tuple[str, str]]:
    """(host, task) of every result that reported a change."""
    return [(e["event_data"]["host"], e["event_data"].get("task", "")) for e in events(runner, "runner_on_ok")
            if e["event_data"].get("res", {}).get("changed")]


def test_site_runs_unchanged_under_ansible_runner_and_changes_nothing_on_a_converged_fleet(awx_lab: AwxLab):
    runner = awx_lab.run("site.yml", {})
    assert (runner.status, runner.rc) == ("successful", 0), runner.stdout.read()[-4000:]
    assert runner.stats is not None
    assert set(runner.stats["processed"]) == set(awx_lab.hosts)
    assert not runner.stats["failures"] and not runner.stats["dark"]
    # Idempotence: the lab was converged by the same site.yml (the session fixture).
    assert not runner.stats["changed"], changed_tasks(runner)
    artifacts = Path(runner.config.artifact_dir)
    assert (artifacts / "status").read_text() == "successful"
    assert (artifacts / "rc").read_text() == "0"
    assert any((artifacts / "job_events").iterdir())
    for host, address in awx_lab.hosts.items():
        for service in CATALOG:
            health = awx_lab.health(address, service)
            live = state(awx_lab.lab, host, service)["live_port"]
            assert (health["status"], health["service"], health["port"]) == ("ok", service, live), host


def live_release(awx_lab: AwxLab, host: str, service: str) -> str:
    current = state(awx_lab.lab, host, service)
    return str(current["slots"][str(current["live_port"])]["release"])


def test_hot_deploy_under_ansible_runner_reports_status_events_and_artifacts(awx_lab: AwxLab):
    before = {host: live_release(awx_lab, host, "main-api") for host in awx_lab.hosts}
    target = next(r for r in ("1.1.0", "1.2.0", "2.0.0") if r not in before.values())
    answers = {"service": "main-api", "version": target, "batch_size": 1, "break_lock": "no"}
    survey = fleet_awx_survey(CATALOG, "hot_deploy")
    assert answers["service"] in survey["spec"][0]["choices"]

    runner = awx_lab.run("hot_deploy.yml", answers)
    assert (runner.status, runner.rc) == ("successful", 0), runner.stdout.read()[-4000:]

    # Events: the job's stream AWX shows; one host at a time (batch_size 1), none failed.
    assert not events(runner, "runner_on_failed") and not events(runner, "runner_on_unreachable")
    changed_hosts = {e["event_data"]["host"] for e in events(runner, "runner_on_ok")
                     if e["event_data"].get("res", {}).get("changed")}
    assert changed_hosts == set(awx_lab.hosts)
    assert runner.stats is not None and set(runner.stats["changed"]) == set(awx_lab.hosts)

    # Artifacts: the summary hot_deploy.yml recorded with set_stats, per host.
    summary = artifact_data(runner)["fleet_deploy_summary"]
    assert set(summary) == set(awx_lab.hosts)
    for host, entry in summary.items():
        assert entry["result"] == "ok", (host, entry)
        assert (entry["from_release"], entry["to_release"]) == (before[host], target), (host, entry)
    stats_files = [json.loads(p.read_text()) for p in (Path(runner.config.artifact_dir) / "job_events").iterdir()]
    (stats_on_disk,) = [e for e in stats_files if e.get("event") == "playbook_on_stats"]
    assert stats_on_disk["event_data"]["artifact_data"]["fleet_deploy_summary"] == summary

    for host, address in awx_lab.hosts.items():
        assert awx_lab.health(address, "main-api")["version"] == target, host


def test_an_unknown_service_from_a_stale_survey_fails_with_the_playbooks_message(awx_lab: AwxLab):
    before = {host: live_release(awx_lab, host, "main-api") for host in awx_lab.hosts}
    # The survey as it was generated while the catalog still had legacy-api: AWX accepts the answer.
    stale_survey = fleet_awx_survey({**CATALOG, "legacy-api": {}}, "hot_deploy")
    assert "legacy-api" in stale_survey["spec"][0]["choices"]

    runner = awx_lab.run("hot_deploy.yml", {"service": "legacy-api", "version": "", "batch_size": 1,
                                            "break_lock": "no"})
    assert runner.status == "failed" and runner.rc != 0
    messages = [str(e["event_data"]["res"].get("msg", "")) for e in events(runner, "runner_on_failed")]
    assert any("unknown service 'legacy-api'" in m for m in messages), messages
    assert runner.stats is not None and not runner.stats["changed"], runner.stats
    assert {host: live_release(awx_lab, host, "main-api") for host in awx_lab.hosts} == before


# A stand-in for the backup role's job: it records its outcome as the real one does
# (/var/lib/fleet/backup/last-run.json) and fails when /etc/fleet/backup/fail-with holds a reason.
STUB_BACKUP_JOB = r"""#!/bin/sh
mkdir -p /var/lib/fleet/backup
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if [ -s /etc/fleet/backup/fail-with ]; then
  printf '{"status": "failed", "started": "%s", "finished": "%s", "message": "%s"}\n' \
    "$now" "$now" "$(cat /etc/fleet/backup/fail-with)" > /var/lib/fleet/backup/last-run.json
  exit 1
fi
printf '{"status": "ok", "started": "%s", "finished": "%s", "message": "3 paths"}\n' "$now" "$now" \
  > /var/lib/fleet/backup/last-run.json
"""


def test_back_up_now_reports_each_hosts_backup_record(awx_lab: AwxLab):
    good, bad = sorted(awx_lab.hosts)[:2]
    job, record = "/usr/local/sbin/fleet-backup", "/var/lib/fleet/backup/last-run.json"
    for host in (good, bad):  # the real job and its record are put back below
        awx_lab.ssh(host, f"cp -a {job} {job}.real && {{ ! test -e {record} || cp -a {record} {record}.real; }} && "
                          f"mkdir -p /etc/fleet/backup && cat > {job} <<'EOF'\n{STUB_BACKUP_JOB}EOF\n"
                          f"chmod 0755 {job} && rm -f /etc/fleet/backup/fail-with")
    try:
        awx_lab.ssh(bad, "echo 'restic: repository unreachable' > /etc/fleet/backup/fail-with")
        runner = awx_lab.run("awx/backup.yml", {}, limit=f"{good},{bad}")  # a job template's limit
        assert runner.status == "failed" and runner.rc != 0
        summary = artifact_data(runner)["fleet_backup_summary"]
        assert (summary[good]["status"], summary[bad]["status"]) == ("ok", "failed")
        failed = {e["event_data"]["host"]: str(e["event_data"]["res"].get("msg", ""))
                  for e in events(runner, "runner_on_failed")}
        assert set(failed) == {bad}
        assert "restic: repository unreachable" in failed[bad]
    finally:
        for host in (good, bad):
            awx_lab.ssh(host, f"mv {job}.real {job} && rm -f /etc/fleet/backup/fail-with {record} && "
                              f"{{ ! test -e {record}.real || mv {record}.real {record}; }}")
