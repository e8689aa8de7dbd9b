"""The backup job (roles/backup/files/fleet_backup.py) against fake restic and pg_dump commands.

The fakes record every call and answer like restic 0.14 does; the molecule scenario `backup` runs
the same job against the real restic and PostgreSQL. Here: the commands it runs and in what order,
the status file and log line it writes, and that every failure ends in status "failed" and exit 1.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import sys
from datetime import datetime
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "roles" / "backup" / "files" / "fleet_backup.py"


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


def test_a_second_run_while_one_holds_the_lock_fails(fake_host: Host):
    with open(fake_host.config["lock_file"], "a") as held:  # type: ignore[call-overload]
        fcntl.flock(held, fcntl.LOCK_EX)
        assert fake_host.run() == fleet_backup.EXIT_FAILED
    assert fake_host.commands() == []
    assert fake_host.report()["message"].startswith("another fleet-backup run holds")


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
