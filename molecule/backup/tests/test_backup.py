"""Verify the backup role on a converged fleet host: the scheduled job backs up files and a
PostgreSQL database into an encrypted restic repository, the restore playbook gives back an
identical copy, retention keeps exactly what the policy says, and failures are reported.

The tests run in file order; each leaves the host's real job in a working state.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from datetime import datetime
from pathlib import Path

CONFIG = "/etc/fleet/backup/config.json"
STATUS = "/var/lib/fleet/backup/last-run.json"
LOG = "/var/log/fleet/backup.log"
CRON = "/etc/cron.d/fleet-backup"
PASSWORD = "molecule-only-backup-password"  # converge.yml
RESTORE_TARGET = "/var/tmp/mol-restore"
PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))


def config(host) -> dict:
    return json.loads(host.file(CONFIG).content_string)


def status(host, path: str = STATUS) -> dict:
    return json.loads(host.file(path).content_string)


def last_log_line(host, path: str = LOG) -> str:
    return host.check_output(f"tail -n 1 {path}")


def write_config(host, path: str, **changes: object) -> str:
    """A copy of the job's configuration with some keys changed, for one test."""
    body = {**config(host), **changes}
    host.check_output(f"install -m 0600 /dev/null {path} && printf %s {shlex.quote(json.dumps(body))} > {path}")
    return path


def snapshots(host, args: str = "", config_path: str = CONFIG) -> list[dict]:
    return json.loads(host.check_output(f"fleet-backup --config {config_path} restic snapshots --json {args}"))


def cron_job(host) -> str:
    """The command of the job's cron line (after the five time fields and the user)."""
    line = next(line for line in host.file(CRON).content_string.splitlines() if line and not line.startswith("#"))
    return line.split(None, 6)[6]


def run_job(host, config_path: str = CONFIG, extra: str = ""):
    return host.run(f"env -i PATH=/usr/bin:/bin /usr/local/sbin/fleet-backup --config {config_path} run {extra}")


def assert_run_times(report: dict) -> None:
    started = datetime.fromisoformat(report["started"])
    finished = datetime.fromisoformat(report["finished"])
    assert started.tzinfo is not None and started <= finished


def test_secrets_and_configuration_are_private(host):
    directory = host.file("/etc/fleet/backup")
    assert (directory.user, directory.mode) == ("root", 0o700)
    for name in ("password", "repository.env", "config.json"):
        secret = host.file(f"/etc/fleet/backup/{name}")
        assert (secret.user, secret.group, secret.mode) == ("root", "root", 0o600), name
    assert host.file("/etc/fleet/backup/password").content_string == PASSWORD


def test_configuration_carries_the_role_inputs(host):
    job = config(host)
    assert job["paths"] == ["/etc/fleet", "/etc/nginx", "/var/lib/fleet/state", "/srv/fleet-data"]
    assert job["databases"] == ["appdb"]
    assert (job["keep_daily"], job["keep_weekly"], job["keep_monthly"]) == (3, 2, 3)
    assert job["host"] == host.backend.get_hostname()


def test_cron_runs_the_job_daily(host):
    assert host.service("cron").is_running
    line = next(line for line in host.file(CRON).content_string.splitlines() if line and not line.startswith("#"))
    assert line.split(None, 6)[:6] == ["17", "3", "*", "*", "*", "root"]
    assert cron_job(host) == f"/usr/local/sbin/fleet-backup --config {CONFIG} run 2>>{LOG}"


def test_scheduled_job_backs_up_files_and_database(host):
    # Exactly the cron line, with cron's bare environment.
    result = host.run(f"env -i PATH=/usr/bin:/bin SHELL=/bin/sh /bin/sh -c {shlex.quote(cron_job(host))}")
    assert result.rc == 0, result.stderr + host.check_output(f"tail -n 3 {LOG}")
    report = status(host)
    assert report["status"] == "ok", report
    assert_run_times(report)
    assert "files: snapshot" in report["message"] and "postgresql appdb: snapshot" in report["message"]
    assert "check: no errors" in report["message"]
    assert "backup ok: " in last_log_line(host)
    files = snapshots(host, "--tag fleet-files --latest 1")
    assert files[0]["paths"] == sorted(config(host)["paths"])
    assert snapshots(host, "--tag db:appdb")[-1]["paths"] == ["/postgresql/appdb.dump"]


def test_repository_is_encrypted(host):
    repository = config(host)["repository"]
    # Neither a file's content nor the password appears anywhere in the repository.
    for text in ("naïve ✓", "item 4999 ✓", PASSWORD):
        assert host.run(f"grep -rqF {shlex.quote(text)} {repository}").rc == 1, text
    wrong = host.run(f"restic --repo {repository} --password-command 'echo wrong' cat config")
    assert wrong.rc != 0 and "wrong password" in wrong.stderr


def restore(*extra: str) -> subprocess.CompletedProcess[str]:
    """Run the restore playbook from the controller, as an operator types it."""
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(PROJECT / "roles"), "ANSIBLE_FORCE_COLOR": "0"}
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "restore.yml", *extra],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def tree_listing(host, root: str) -> str:
    """Every entry under root with its type, mode, owner, size, link target and mtime."""
    return host.check_output(f"cd {shlex.quote(root)} && find . -printf '%p %y %m %u %g %s %l %T@\\n' | sort")


def test_restore_playbook_gives_back_an_identical_copy(host):
    extra = {"backup_restore_target": RESTORE_TARGET, "backup_restore_databases": ["appdb"],
             "backup_restore_load_databases": True}
    result = restore("-e", json.dumps(extra))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    snapshot = snapshots(host, "--tag fleet-files --latest 1")[0]["short_id"]
    restored = f"{RESTORE_TARGET}/{snapshot}"
    assert host.file(restored).mode == 0o700
    for path in config(host)["paths"]:
        diff = host.run(f"diff -r --no-dereference {path} {restored}{path}")
        assert diff.rc == 0, f"{path}: {diff.stdout}{diff.stderr}"
        assert tree_listing(host, restored + path) == tree_listing(host, path), path
    dump = f"{restored}/postgresql/appdb.dump"
    assert "TABLE DATA public item" in host.check_output(f"pg_restore --list {dump}")
    query = "SELECT id, name, encode(blob, 'hex') FROM item ORDER BY id"
    live = host.check_output(f"runuser -u postgres -- psql -XAt -d appdb -c {shlex.quote(query)} | sha256sum")
    copy = host.check_output(f"runuser -u postgres -- psql -XAt -d appdb_restored -c {shlex.quote(query)} | sha256sum")
    assert live == copy


def test_restore_refuses_a_directory_that_holds_files(host):
    result = restore("-e", f"backup_restore_target={RESTORE_TARGET}")
    assert result.returncode != 0
    # The failure lands on stdout or stderr, depending on the callback settings.
    output = " ".join((result.stdout + result.stderr).split())
    assert "is not empty: restore into a fresh directory" in output


# Snapshots at chosen times (restic backup --time), then one run of the job at FINAL with the
# role's policy: keep-daily 3, keep-weekly 2, keep-monthly 3.
HISTORY = [
    "2024-01-10 12:00:00",  # January: older than January's newest          -> forgotten
    "2024-01-20 12:00:00",  # January's newest                              -> monthly
    "2024-02-05 12:00:00",  # February, not its newest                      -> forgotten
    "2024-02-14 12:00:00",  # February, not its newest                      -> forgotten
    "2024-02-26 12:00:00",  # ISO week 9's newest, February's newest         -> weekly, monthly
    "2024-03-04 12:00:00",  # week 10, whose newest is FINAL; 4th newest day -> forgotten
    "2024-03-06 09:00:00",  # same day as a newer snapshot                  -> forgotten
    "2024-03-06 18:00:00",  # 3rd newest day                                -> daily
    "2024-03-07 12:00:00",  # 2nd newest day                                -> daily
]
FINAL = "2024-03-08 12:00:00"  # newest day, week 10, March                 -> daily, weekly, monthly
KEPT = ["2024-01-20 12:00:00", "2024-02-26 12:00:00", "2024-03-06 18:00:00", "2024-03-07 12:00:00", FINAL]


def test_pruning_keeps_exactly_what_the_policy_says(host):
    repository = "/var/tmp/mol-prune-repo"
    alt = write_config(host, "/var/tmp/mol-prune.json", repository=repository, databases=[],
                       status_file="/var/tmp/mol-prune-status.json", log_file="/var/tmp/mol-prune.log")
    host.check_output(f"rm -rf {repository} && fleet-backup --config {alt} restic init")
    who = config(host)["host"]
    for when in HISTORY:
        host.check_output(f"fleet-backup --config {alt} restic backup --quiet --host {who} --tag fleet-files "
                          f"--time {shlex.quote(when)} /srv/fleet-data")
    assert len(snapshots(host, config_path=alt)) == len(HISTORY)
    result = run_job(host, alt, f"--time {shlex.quote(FINAL)}")
    assert result.rc == 0, host.check_output("cat /var/tmp/mol-prune.log")
    kept = sorted(s["time"][:19].replace("T", " ") for s in snapshots(host, config_path=alt))
    assert kept == KEPT
    assert "retention: 5 kept, 5 forgotten and pruned" in status(host, "/var/tmp/mol-prune-status.json")["message"]


def test_wrong_password_fails_clearly(host):
    host.check_output("install -m 0600 /dev/null /var/tmp/mol-wrong-password")
    # Not a word the messages use: the job redacts the password wherever it appears in them.
    host.check_output("echo not-the-password-4e2a > /var/tmp/mol-wrong-password")
    alt = write_config(host, "/var/tmp/mol-wrong-password.json", password_file="/var/tmp/mol-wrong-password")
    result = run_job(host, alt)
    assert result.rc == 1
    report = status(host)
    assert report["status"] == "failed"
    assert_run_times(report)
    assert "cannot open repository" in report["message"] and "wrong password" in report["message"]
    line = last_log_line(host)
    assert "backup FAILED: cannot open repository" in line and "wrong password or no key found" in line
    assert "not-the-password-4e2a" not in line + report["message"]


def test_unreachable_repository_fails_clearly(host):
    alt = write_config(host, "/var/tmp/mol-no-repo.json", repository="/var/tmp/mol-no-such-repository")
    result = run_job(host, alt)
    assert result.rc == 1
    assert status(host)["status"] == "failed"
    line = last_log_line(host)
    assert "backup FAILED: cannot open repository /var/tmp/mol-no-such-repository" in line
    assert "Is there a repository at the following location?" in line


def test_failed_dump_fails_the_run_and_leaves_no_partial_snapshot(host):
    alt = write_config(host, "/var/tmp/mol-bad-db.json", databases=["appdb", "nosuchdb"])
    result = run_job(host, alt)
    assert result.rc == 1
    report = status(host)
    assert report["status"] == "failed"
    assert "postgresql nosuchdb: pg_dump exited 1" in report["message"]
    assert "forgotten" in report["message"] and "postgresql appdb: snapshot" in report["message"]
    assert snapshots(host, "--tag db:nosuchdb") == []


def test_a_good_run_reports_ok_again(host):
    assert run_job(host).rc == 0
    assert status(host)["status"] == "ok"
    assert "backup ok: " in last_log_line(host)
