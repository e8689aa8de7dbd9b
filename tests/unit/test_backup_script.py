"""The backup job (roles/backup/files/fleet_backup.py) against fake restic and pg_dump commands.

The fakes record every call and answer like restic 0.14 does; the molecule scenario `backup` runs
the same job against the real restic and PostgreSQL. Here: the commands it runs and in what order,
the status file and log line it writes, and that every failure ends in status "failed" and exit 1;
that nothing it logs, records or passes on holds a secret. At the end: the restore entry point's
input checks (roles/backup/tasks/restore_validate.yml), through ansible-playbook.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "backup" / "files" / "fleet_backup.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_backup", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fleet_backup = load_script()

# A stand-in for restic: logs its argv (one JSON list per line) and behaves as FAKE_RESTIC says.
FAKE_RESTIC = r'''#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as log:
    log.write(json.dumps(args) + "\n")
command = args[6]  # after --repo R --password-file P --cache-dir C
behaviour = json.loads(os.environ.get("FAKE_RESTIC", "{{}}"))
if command in behaviour.get("fail", {{}}):
    sys.stderr.write(behaviour["fail"][command])
    sys.exit(1)
if command == "backup":
    data = sys.stdin.buffer.read() if "--stdin" in args else b""
    count = len([l for l in open(os.environ["FAKE_CALLS"]) if '"backup"' in l])
    print(json.dumps({{"message_type": "status", "percent_done": 0}}))
    print(json.dumps({{"message_type": "summary", "files_new": 2, "files_changed": 1, "data_added": 2048,
                      "total_bytes_processed": len(data), "snapshot_id": "snap%04d" % count}}))
    sys.exit(3 if "--stdin" in args and not data else 0)
if command == "forget" and "--json" in args:
    print(json.dumps([{{"keep": [{{"id": "a"}}, {{"id": "b"}}], "remove": behaviour.get("remove")}}]))
'''

# A stand-in for pg_dump: writes a dump, or fails like pg_dump does for a missing database.
FAKE_DUMP = r'''#!{python}
import sys
database = sys.argv[-1]
if database == "missing":
    sys.stdout.write("PGDMP partial")
    sys.stderr.write('pg_dump: error: connection to server failed: FATAL:  database "missing" does not exist\n')
    sys.exit(1)
sys.stdout.write("PGDMP dump of " + database)
'''


class Host:
    """A scratch 'host': config, paths, fakes and the files the job writes, all under tmp_path."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = tmp_path
        self.calls = tmp_path / "calls.jsonl"
        self.status = tmp_path / "state" / "last-run.json"
        self.log = tmp_path / "log" / "backup.log"
        for name, body in (("restic", FAKE_RESTIC), ("pg_dump", FAKE_DUMP)):
            fake = tmp_path / name
            fake.write_text(body.format(python=sys.executable))
            fake.chmod(0o755)
        for name in ("etc-fleet", "etc-nginx"):
            (tmp_path / name).mkdir()
        (tmp_path / "password").write_text("pw")
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("FAKE_CALLS", str(self.calls))
        # A configuration that cannot be loaded is reported at the default paths: keep them here too.
        self.default_status = tmp_path / "default" / "last-run.json"
        monkeypatch.setattr(fleet_backup, "DEFAULT_STATUS_FILE", str(self.default_status))
        monkeypatch.setattr(fleet_backup, "DEFAULT_LOG_FILE", str(tmp_path / "default" / "backup.log"))
        self.config: dict[str, object] = {
            "_managed": "test",
            "repository": str(tmp_path / "repo"),
            "password_file": str(tmp_path / "password"),
            "host": "web-1",
            "paths": [str(tmp_path / "etc-fleet"), str(tmp_path / "etc-nginx")],
            "exclude": ["*.tmp"],
            "databases": [],
            "dump_command": [str(tmp_path / "pg_dump"), "--format=custom", "{database}"],
            "keep_daily": 3, "keep_weekly": 2, "keep_monthly": 1,
            "check_read_data_subset": "5%",
            "status_file": str(self.status),
            "log_file": str(self.log),
            "lock_file": str(tmp_path / "lock"),
            "cache_dir": str(tmp_path / "cache"),
            "restic": str(tmp_path / "restic"),
            "timeout": 30,
        }

    def restic_behaves(self, **behaviour: object) -> None:
        self.monkeypatch.setenv("FAKE_RESTIC", json.dumps(behaviour))

    def run(self, *extra: str, **changes: object) -> int:
        path = self.root / "config.json"
        path.write_text(json.dumps({**self.config, **changes}))
        return fleet_backup.main(["--config", str(path), "run", *extra])

    def restic_calls(self) -> list[list[str]]:
        if not self.calls.exists():
            return []
        return [json.loads(line)[6:] for line in self.calls.read_text().splitlines()]

    def commands(self) -> list[str]:
        return [call[0] for call in self.restic_calls()]

    def report(self) -> dict:
        return json.loads(self.status.read_text())

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    return Host(tmp_path, monkeypatch)


def test_a_good_run_backs_up_prunes_checks_and_reports_ok(fake_host: Host):
    fake_host.restic_behaves(remove=[{"id": "old"}])
    assert fake_host.run() == fleet_backup.EXIT_OK
    assert fake_host.commands() == ["cat", "unlock", "backup", "forget", "prune", "check"]
    backup = fake_host.restic_calls()[2]
    assert backup[:6] == ["backup", "--json", "--host", "web-1", "--tag", "fleet-files"]
    assert backup[6:] == ["--exclude", "*.tmp", "--", *fake_host.config["paths"]]  # type: ignore[misc]
    forget = fake_host.restic_calls()[3]
    assert forget == ["forget", "--json", "--host", "web-1", "--tag", "fleet-files", "--tag", "fleet-postgresql",
                      "--group-by", "host,tags", "--keep-daily", "3", "--keep-weekly", "2", "--keep-monthly", "1"]
    assert fake_host.restic_calls()[5] == ["check", "--read-data-subset", "5%"]
    report = fake_host.report()
    assert report["status"] == "ok"
    assert datetime.fromisoformat(report["started"]) <= datetime.fromisoformat(report["finished"])
    assert report["message"] == (
        "files: snapshot snap0001 (2 new, 1 changed, 2.0 KiB added); "
        "retention: 2 kept, 1 forgotten and pruned (daily 3, weekly 2, monthly 1); "
        "check: no errors (read 5% of the data)"
    )
    assert fake_host.log_lines()[-1].endswith(f"backup ok: {report['message']}")
    assert "backup started" in fake_host.log_lines()[0]


def test_nothing_forgotten_means_no_prune(fake_host: Host):
    assert fake_host.run() == fleet_backup.EXIT_OK
    assert "prune" not in fake_host.commands()
    assert "retention: 2 kept, 0 forgotten (daily" in fake_host.report()["message"]


def test_time_is_passed_to_every_backup(fake_host: Host):
    assert fake_host.run("--time", "2024-03-08 12:00:00", databases=["app"]) == fleet_backup.EXIT_OK
    backups = [call for call in fake_host.restic_calls() if call[0] == "backup"]
    assert len(backups) == 2
    assert all(call[call.index("--time") + 1] == "2024-03-08 12:00:00" for call in backups)


def test_wrong_password_stops_the_run_with_status_failed(fake_host: Host):
    fake_host.restic_behaves(fail={"cat": "Fatal: wrong password or no key found\n"})
    assert fake_host.run() == fleet_backup.EXIT_FAILED
    assert fake_host.commands() == ["cat"]
    report = fake_host.report()
    assert report["status"] == "failed"
    assert report["message"] == (
        f"cannot open repository {fake_host.config['repository']}: restic cat exited 1: "
        "Fatal: wrong password or no key found"
    )
    assert fake_host.log_lines()[-1].endswith(f"backup FAILED: {report['message']}")


def test_unreachable_repository_message_keeps_restics_explanation(fake_host: Host):
    fake_host.restic_behaves(fail={"cat": "Fatal: unable to open config file: stat /r/config: no such file or "
                                          "directory\nIs there a repository at the following location?\n/r\n"})
    assert fake_host.run() == fleet_backup.EXIT_FAILED
    assert "Is there a repository at the following location? /r" in fake_host.report()["message"]


def test_failed_files_backup_still_prunes_and_checks_but_fails(fake_host: Host):
    fake_host.restic_behaves(fail={"backup": "Fatal: unable to save snapshot: disk full\n"})
    assert fake_host.run() == fleet_backup.EXIT_FAILED
    assert fake_host.commands() == ["cat", "unlock", "backup", "forget", "check"]
    message = fake_host.report()["message"]
    assert message.startswith("files: restic backup exited 1: Fatal: unable to save snapshot: disk full")
    assert "(done: retention: 2 kept" in message


def test_missing_path_fails_after_backing_up_the_rest(fake_host: Host):
    missing = str(fake_host.root / "gone")
    paths = [*fake_host.config["paths"], missing]  # type: ignore[misc]
    assert fake_host.run(paths=paths) == fleet_backup.EXIT_FAILED
    backup = fake_host.restic_calls()[2]
    assert missing not in backup and backup[-1] == fake_host.config["paths"][-1]  # type: ignore[index]
    assert fake_host.report()["message"].startswith(f"files: missing paths {missing}")


def test_database_dump_is_piped_into_restic(fake_host: Host):
    assert fake_host.run(databases=["app"]) == fleet_backup.EXIT_OK
    dump = [call for call in fake_host.restic_calls() if call[0] == "backup"][1]
    assert dump == ["backup", "--json", "--host", "web-1", "--tag", "fleet-postgresql", "--tag", "db:app",
                    "--stdin", "--stdin-filename", "postgresql/app.dump"]
    # 17 bytes: "PGDMP dump of app" went through the pipe into restic
    assert "postgresql app: snapshot snap0002 (17 B dumped, 2.0 KiB added)" in fake_host.report()["message"]


def test_failed_dump_forgets_its_partial_snapshot_and_fails(fake_host: Host):
    assert fake_host.run(databases=["missing", "app"]) == fleet_backup.EXIT_FAILED
    calls = fake_host.restic_calls()
    assert ["forget", "snap0002"] in calls  # the partial snapshot of "missing"
    message = fake_host.report()["message"]
    assert message.startswith(
        'postgresql missing: pg_dump exited 1: pg_dump: error: connection to server failed: FATAL:  database '
        '"missing" does not exist (partial snapshot snap0002 forgotten)'
    )
    assert "postgresql app: snapshot snap0003" in message  # the other database was still backed up


def test_a_second_run_while_one_holds_the_lock_leaves_quietly(fake_host: Host):
    # The run holding the lock owns the status file: the second run must neither fail nor touch it.
    fake_host.status.parent.mkdir(parents=True)
    fake_host.status.write_text('{"status": "ok", "message": "the running one\'s"}\n')
    before = fake_host.status.read_bytes()
    with open(fake_host.config["lock_file"], "a") as held:  # type: ignore[call-overload]
        fcntl.flock(held, fcntl.LOCK_EX)
        assert fake_host.run() == fleet_backup.EXIT_OK
    assert fake_host.commands() == []
    assert fake_host.status.read_bytes() == before
    [line] = fake_host.log_lines()
    assert line.endswith("] another backup run holds the lock; nothing to do")


def test_restic_timeout_fails_the_run(fake_host: Host, monkeypatch: pytest.MonkeyPatch):
    slow = fake_host.root / "slow-restic"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    assert fake_host.run(restic=str(slow), timeout=1) == fleet_backup.EXIT_FAILED
    assert "restic cat timed out after 1 s" in fake_host.report()["message"]


def test_unreadable_configuration_still_reports_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    status, log = tmp_path / "last-run.json", tmp_path / "backup.log"
    monkeypatch.setattr(fleet_backup, "DEFAULT_STATUS_FILE", str(status))
    monkeypatch.setattr(fleet_backup, "DEFAULT_LOG_FILE", str(log))
    assert fleet_backup.main(["--config", str(tmp_path / "nope.json"), "run"]) == fleet_backup.EXIT_FAILED
    assert json.loads(status.read_text())["status"] == "failed"
    assert "backup FAILED: cannot read configuration" in log.read_text()


@pytest.mark.parametrize("change,error", [
    ({"surprise": 1}, "unknown keys surprise"),
    ({"keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}, "are all 0"),
])
def test_bad_configuration_is_rejected(fake_host: Host, change: dict, error: str):
    assert fake_host.run(**change) == fleet_backup.EXIT_FAILED
    report = json.loads(fake_host.default_status.read_text())
    assert report["status"] == "failed" and error in report["message"]
    assert fake_host.commands() == []


def test_restic_subcommand_passes_the_repository_settings(fake_host: Host):
    path = fake_host.root / "config.json"
    path.write_text(json.dumps(fake_host.config))
    assert fleet_backup.main(["--config", str(path), "restic", "snapshots", "--json"]) == 0
    raw = json.loads(fake_host.calls.read_text().splitlines()[0])
    assert raw == ["--repo", fake_host.config["repository"], "--password-file", fake_host.config["password_file"],
                   "--cache-dir", fake_host.config["cache_dir"], "snapshots", "--json"]


def test_environment_file_is_read_for_credentials(tmp_path: Path):
    env = tmp_path / "repository.env"
    env.write_text('# managed\n\nAWS_ACCESS_KEY_ID=abc\nAWS_SECRET_ACCESS_KEY="x=y"\n')
    assert fleet_backup.read_environment_file(str(env)) == {"AWS_ACCESS_KEY_ID": "abc", "AWS_SECRET_ACCESS_KEY": "x=y"}
    env.write_text("not an assignment\n")
    with pytest.raises(fleet_backup.BackupError, match="expected KEY=VALUE"):
        fleet_backup.read_environment_file(str(env))


@pytest.mark.parametrize("stderr,expected", [
    ("noise\nFatal: wrong password or no key found\n", "Fatal: wrong password or no key found"),
    ("", "(no error output)"),
    ("a\n\nb\n", "a b"),
])
def test_one_line_keeps_the_fatal_part(stderr: str, expected: str):
    assert fleet_backup.one_line(stderr) == expected


@pytest.mark.parametrize("count,text", [(0, "0 B"), (2048, "2.0 KiB"), (5 * 1024**3, "5.0 GiB")])
def test_human_bytes(count: int, text: str):
    assert fleet_backup.human_bytes(count) == text


def test_status_file_is_replaced_atomically(tmp_path: Path):
    target = tmp_path / "state" / "last-run.json"
    fleet_backup.write_status(str(target), "ok", "2024-01-01T00:00:00+00:00", "fine")
    fleet_backup.write_status(str(target), "failed", "2024-01-02T00:00:00+00:00", "broken")
    body = json.loads(target.read_text())
    assert set(body) == {"status", "started", "finished", "message"}
    assert (body["status"], body["message"]) == ("failed", "broken")
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["last-run.json"]


# --------------------------------------------------------------------------- secrets

CANARY = "CANARY-7f3a"
REPOSITORY = f"rest:https://svc:{CANARY}-url@backup.example:8000/web-1"


def with_secrets(fake_host: Host) -> None:
    """A repository URL with credentials, a password and an S3 secret, all carrying the canary."""
    (fake_host.root / "password").write_text(f"{CANARY}-password\n")
    env = fake_host.root / "repository.env"
    env.write_text(f"AWS_ACCESS_KEY_ID=AKIAEXAMPLE\nAWS_SECRET_ACCESS_KEY={CANARY}-aws\n")
    fake_host.config.update(repository=REPOSITORY, environment_file=str(env))


def leaky_stderr(url: str = REPOSITORY) -> str:
    """restic and libraries do echo URLs, and a broken tool might echo anything it was given."""
    return (f"Fatal: unable to open config file: Stat: {url}/config: 401 Unauthorized\n"
            f"Is there a repository at the following location?\n{url}\n"
            f"(password {CANARY}-password, secret {CANARY}-aws)\n")


def assert_no_secret(text: str) -> None:
    assert text.count(CANARY) == 0, text
    assert not re.search(r"svc:(?!\*\*\*@)", text), text  # not even the start of a cut-off password


@pytest.mark.parametrize("padding", [0, 330], ids=["whole", "cut-off"])
def test_credentials_and_password_never_reach_the_log_or_status(fake_host: Host, padding: int):
    with_secrets(fake_host)
    # With padding, the one-line message is cut inside the URL: redaction must come first.
    fake_host.restic_behaves(fail={"cat": "x" * padding + leaky_stderr()})
    assert fake_host.run() == fleet_backup.EXIT_FAILED
    message = fake_host.report()["message"]
    for text in (fake_host.log.read_text(), fake_host.status.read_text(), message):
        assert_no_secret(text)
    assert "repository rest:https://svc:***@backup.example:8000/web-1," in fake_host.log_lines()[0]
    if not padding:
        assert message.startswith("cannot open repository rest:https://svc:***@backup.example:8000/web-1: ")
        assert "(password ***, secret ***)" in message


def test_failed_dump_messages_are_redacted(fake_host: Host):
    with_secrets(fake_host)
    fake_host.restic_behaves(fail={"backup": leaky_stderr()})
    assert fake_host.run(databases=["app"]) == fleet_backup.EXIT_FAILED
    for text in (fake_host.log.read_text(), fake_host.status.read_text()):
        assert_no_secret(text)


@pytest.mark.parametrize("url,shown", [
    ("rest:https://user:pa$$@host:8000/repo", "rest:https://user:***@host:8000/repo"),
    ("s3:https://KEY:se/cret@s3.example/bucket", "s3:https://KEY:***@s3.example/bucket"),
    ("rest:http://:token@host/", "rest:http://:***@host/"),
    ("https://u:p@ss@host/x", "https://u:***@host/x"),
    ("sftp:backup@vault.internal:/srv/restic/web-1", "sftp:backup@vault.internal:/srv/restic/web-1"),
    ("rest:https://host:8000/repo", "rest:https://host:8000/repo"),
    ("/var/backups/fleet/restic", "/var/backups/fleet/restic"),
])
def test_url_credentials_are_redacted_and_users_kept(url: str, shown: str):
    assert fleet_backup.Redactor()(f"at {url}: fail") == f"at {shown}: fail"


def test_pg_dump_gets_only_the_environment_it_needs(fake_host: Host, monkeypatch: pytest.MonkeyPatch):
    with_secrets(fake_host)
    seen = fake_host.root / "dump-env.json"
    dump = fake_host.root / "env-dump"
    dump.write_text(f"#!{sys.executable}\nimport json, os\n"
                    f"open({str(seen)!r}, 'w').write(json.dumps(dict(os.environ)))\nprint('PGDMP')\n")
    dump.chmod(0o755)
    for name, value in (("RESTIC_PASSWORD", f"{CANARY}-env"), ("B2_ACCOUNT_KEY", "b2"), ("PGHOST", "/run/pg"),
                        ("LC_ALL", "C.UTF-8"), ("HOME", "/root")):
        monkeypatch.setenv(name, value)
    assert fake_host.run(databases=["app"], dump_command=[str(dump), "{database}"]) == fleet_backup.EXIT_OK
    env = json.loads(seen.read_text())
    assert {k: env[k] for k in ("PGHOST", "LC_ALL", "HOME")} == {"PGHOST": "/run/pg", "LC_ALL": "C.UTF-8",
                                                                 "HOME": "/root"}
    assert env["PATH"] == fleet_backup.SAFE_PATH
    assert not [k for k in env if k.startswith(("RESTIC_", "AWS_", "B2_", "FAKE_"))], sorted(env)
    assert CANARY not in seen.read_text()


def test_restic_subcommand_passes_restics_messages_on_redacted(fake_host: Host, capfd: pytest.CaptureFixture[str]):
    with_secrets(fake_host)
    fake_host.restic_behaves(fail={"snapshots": leaky_stderr()})
    path = fake_host.root / "config.json"
    path.write_text(json.dumps(fake_host.config))
    assert fleet_backup.main(["--config", str(path), "restic", "snapshots", "--json"]) == 1
    err = capfd.readouterr().err
    assert_no_secret(err)
    assert "Is there a repository at the following location?\nrest:https://svc:***@backup.example" in err


# --------------------------------------------------------------------------- restore inputs

# One inventory host per case, all local, in one ansible-playbook run: each runs the role's real
# restore entry point and must stop at the check named, with its message, before anything else.
RESTORE_CASES: dict[str, tuple[dict[str, object], str, str]] = {
    "valid": ({"backup_restore_snapshot": "1a2b3c4d", "backup_restore_databases": ["app", "app.v2", "_x"],
               "backup_restore_load_databases": True},
              "Check that this host has been set up for backups", "config.json is missing"),
    "snapshot_as_an_option": ({"backup_restore_snapshot": "--password-command=id"},
                              "Check the snapshot to restore", "backup_restore_snapshot: \"--password-command=id\""),
    "snapshot_too_short": ({"backup_restore_snapshot": "1a2b"},
                           "Check the snapshot to restore", "8 to 64 lowercase hex digits"),
    "dump_snapshot_bad": ({"backup_restore_database_snapshot": "latest;id"},
                          "Check the snapshot of the database dumps to restore",
                          "backup_restore_database_snapshot: \"latest;id\" must be latest"),
    "dump_id_for_two_databases": ({"backup_restore_database_snapshot": "0123456789abcdef",
                                   "backup_restore_databases": ["app", "main"]},
                                  "Check the snapshot of the database dumps to restore",
                                  "an ID needs backup_restore_databases to name that one database"),
    "database_sql": ({"backup_restore_databases": ["app", "x'; DROP DATABASE app; --"]},
                     "Check the databases to restore", "backup_restore_databases[1]: \"x'; DROP DATABASE app; --\""),
    "database_path": ({"backup_restore_databases": ["../../etc/passwd"]},
                      "Check the databases to restore", "backup_restore_databases[0]: \"../../etc/passwd\" is not"),
    "database_too_long": ({"backup_restore_databases": ["d" * 64]},
                          "Check the databases to restore", "at most 63 characters"),
    "suffix_sql": ({"backup_restore_databases": ["app"], "backup_restore_load_databases": True,
                    "backup_restore_database_suffix": "_r' OR '1"},
                   "Check the name of the databases the dumps are loaded into", "backup_restore_database_suffix:"),
    "restored_name_too_long": ({"backup_restore_databases": ["d" * 60], "backup_restore_load_databases": True},
                               "Check the name of the databases the dumps are loaded into", "at most 63 characters"),
    "relative_target": ({"backup_restore_target": "restore-here"},
                        "Check the restore target", "backup_restore_target: \"restore-here\" must be an absolute path"),
}


def first_failures(report: dict) -> dict[str, tuple[str, str]]:
    """Host -> (name of the first task that failed on it, its messages) from the json callback."""
    failures: dict[str, tuple[str, str]] = {}
    for task in report["plays"][0]["tasks"]:
        for host, result in task["hosts"].items():
            if result.get("failed") and host not in failures:
                items = [item["msg"] for item in result.get("results", []) if item.get("failed")]
                failures[host] = (task["task"]["name"].removeprefix("backup : "), " ".join(items) or result["msg"])
    return failures


def test_restore_inputs_are_checked_before_anything_else(tmp_path: Path):
    inventory = {"all": {"hosts": {name: dict(values) for name, (values, _, _) in RESTORE_CASES.items()},
                         "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                                  "backup_config_dir": str(tmp_path / "no-backup-here")}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "restore.yml").write_text(yaml.safe_dump([{
        "name": "Restore with the role's restore entry point", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Restore", "ansible.builtin.include_role": {"name": "backup", "tasks_from": "restore"}}],
    }]))
    # The roles and nothing else of ansible.cfg: no Mitogen, no timing callback in the JSON output.
    (tmp_path / "ansible.cfg").write_text(f"[defaults]\nroles_path = {ROOT / 'roles'}\n"
                                          "stdout_callback = ansible.builtin.json\nretry_files_enabled = false\n")
    playbook = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or "ansible-playbook"
    result = subprocess.run([playbook, "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "restore.yml")],
                            cwd=tmp_path, env={**os.environ, "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg")},
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stderr
    failures = first_failures(json.loads(result.stdout))
    for name, (_, task, message) in RESTORE_CASES.items():
        assert failures[name][0] == task, (name, failures[name])
        assert message in failures[name][1], (name, failures[name])
