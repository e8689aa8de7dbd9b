#!/usr/bin/python3
"""fleet-backup: back this host up into its encrypted restic repository, prune, verify, report.

    fleet-backup run [--time 'YYYY-MM-DD HH:MM:SS']   the cron job: back up, forget/prune, check
    fleet-backup restic ARGS...                        restic on this host's repository (restore, snapshots, ...)

Installed by the fleet `backup` role, configured by /etc/fleet/backup/config.json. `run`:

1. opens the repository (a wrong password or an unreachable repository stops here) and removes
   stale locks (safe: a file lock keeps two runs on this host apart);
2. backs up the configured paths as one snapshot tagged `fleet-files`;
3. pipes `pg_dump --format=custom` of each configured database into `restic backup --stdin`
   (tags `fleet-postgresql` and `db:<name>`); a dump that fails has its partial snapshot forgotten;
4. forgets snapshots beyond the keep-daily/weekly/monthly policy (per host and tag set) and
   prunes when something was forgotten;
5. runs `restic check` (optionally reading a subset of the data);
6. writes the outcome to the status file ({"status": "ok"|"failed", "started", "finished",
   "message"}) and one line to the log, and exits 0 (ok) or 1 (failed).

A run that finds another run holding the lock logs one line and exits 0, leaving the status file
to the run that owns it. What the job logs, records or passes on never holds the repository's
credentials or the backup password (see Redactor). Every external command runs under a timeout.
Standard library only (Python 3.11, Debian 12).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

DEFAULT_CONFIG = "/etc/fleet/backup/config.json"
# Used when the configuration itself cannot be read, so that the failure is still reported.
DEFAULT_STATUS_FILE = "/var/lib/fleet/backup/last-run.json"
DEFAULT_LOG_FILE = "/var/log/fleet/backup.log"
# cron runs jobs with PATH=/usr/bin:/bin; runuser lives in /usr/sbin.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FILES_TAG = "fleet-files"
POSTGRESQL_TAG = "fleet-postgresql"
EXIT_OK, EXIT_FAILED = 0, 1
# Credentials in a URL: scheme://user:password@ (restic's rest:https://..., s3:https://...). The
# password runs to the last "@" before a space or quote: an unencoded "@" or "/" in it (an S3
# secret) must not leave its tail behind. `sftp:user@host:/path` holds no secret: left alone.
URL_CREDENTIALS = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^\s\"'<>]*@")
# Repository environment variables whose values are secrets (AWS_SECRET_ACCESS_KEY, B2_ACCOUNT_KEY,
# RESTIC_PASSWORD, AZURE_ACCOUNT_KEY, GOOGLE_APPLICATION_CREDENTIALS, ...).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)
# What pg_dump (through runuser) gets from the job's environment: never restic's credentials.
DUMP_ENVIRONMENT = re.compile(r"HOME|LANG|LANGUAGE|TZ|LC_[A-Z_]+|PG[A-Z_]+")


class BackupError(Exception):
    """A failure that ends the run (or one of its parts) with a message a person can act on."""


@dataclass(frozen=True)
class Config:
    repository: str
    password_file: str
    host: str
    paths: list[str]
    environment_file: str = ""
    exclude: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    dump_command: list[str] = field(
        default_factory=lambda: ["runuser", "-u", "postgres", "--", "pg_dump", "--format=custom", "{database}"]
    )
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6
    check_read_data_subset: str = ""
    status_file: str = DEFAULT_STATUS_FILE
    log_file: str = DEFAULT_LOG_FILE
    lock_file: str = "/run/lock/fleet-backup.lock"
    cache_dir: str = "/var/cache/fleet-backup"
    restic: str = "restic"
    timeout: int = 21600

    @classmethod
    def load(cls, path: str) -> Config:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise BackupError(f"cannot read configuration {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise BackupError(f"configuration {path}: expected a JSON object")
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in raw.items() if not k.startswith("_")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BackupError(f"configuration {path}: unknown keys {', '.join(unknown)}")
        try:
            config = cls(**values)
        except TypeError as exc:
            raise BackupError(f"configuration {path}: {exc}") from exc
        if not any((config.keep_daily, config.keep_weekly, config.keep_monthly)):
            raise BackupError(f"configuration {path}: keep_daily, keep_weekly and keep_monthly are all 0")
        return config


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def one_line(text: str, limit: int = 400) -> str:
    """restic's and pg_dump's stderr as one readable line: the 'Fatal:' part if there is one.

    Redact `text` first: a URL cut short here no longer looks like one.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fatal = next((i for i, line in enumerate(lines) if line.startswith("Fatal:")), None)
    if fatal is not None:
        lines = lines[fatal:]
    joined = " ".join(lines) or "(no error output)"
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def read_environment_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines (as systemd's EnvironmentFile): repository credentials such as AWS_*."""
    if not path or not os.path.exists(path):
        return {}
    env: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise BackupError(f"{path}:{number}: expected KEY=VALUE")
        env[key.strip()] = value.strip().strip('"')
    return env


class Redactor:
    """Takes URL credentials and known secrets out of text before it is logged, recorded or passed on."""

    # Shorter "secrets" (a region, a flag) would blank out ordinary words of the messages.
    MIN_SECRET_LENGTH = 4

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = sorted({s for s in secrets if len(s) >= self.MIN_SECRET_LENGTH}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = URL_CREDENTIALS.sub(r"\g<prefix>:***@", text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class Log:
    """Appends timestamped lines to the backup log (and echoes them when run from a terminal)."""

    def __init__(self, path: str, echo: bool, redact: Redactor | None = None) -> None:
        self.path = path
        self.echo = echo
        self.redact = redact or Redactor()

    def __call__(self, message: str) -> None:
        line = f"{now()} fleet-backup[{os.getpid()}] {self.redact(message)}"
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError as exc:
            print(f"{line}\n(cannot write {self.path}: {exc})", file=sys.stderr)
            return
        if self.echo:
            print(line)


def write_status(path: str, status: str, started: str, message: str) -> None:
    """Replace the status file atomically: a reader never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = {"status": status, "started": started, "finished": now(), "message": message}
    fd, tmp = tempfile.mkstemp(prefix=".last-run.", dir=target.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(body, handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)


@contextmanager
def exclusive_lock(path: str) -> Iterator[bool]:
    """Holds the lock for the block; yields False (and holds nothing) when another run has it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def dump_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment pg_dump runs with: locale and libpq settings, none of restic's credentials."""
    return {**{k: v for k, v in environ.items() if DUMP_ENVIRONMENT.fullmatch(k)}, "PATH": SAFE_PATH}


class Restic:
    """restic with this host's repository, password file, cache and credentials, under a timeout."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.env = {**os.environ, "PATH": SAFE_PATH, **read_environment_file(config.environment_file)}
        secrets = [value for key, value in self.env.items() if SECRET_NAME.search(key)]
        with suppress(OSError):  # restic reports an unreadable file, without the password in it
            secrets.append(Path(config.password_file).read_text().strip())
        self.redact = Redactor(secrets)

    def argv(self, *args: str) -> list[str]:
        c = self.config
        return [c.restic, "--repo", c.repository, "--password-file", c.password_file, "--cache-dir", c.cache_dir,
                *args]

    def run(self, *args: str, what: str, stdin: IO[bytes] | None = None) -> str:
        try:
            result = subprocess.run(self.argv(*args), stdin=stdin, capture_output=True, env=self.env,
                                    timeout=self.config.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BackupError(f"{what}: restic {args[0]} timed out after {self.config.timeout} s") from exc
        except OSError as exc:
            raise BackupError(f"{what}: cannot run {self.config.restic}: {exc}") from exc
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace")
            raise BackupError(f"{what}: restic {args[0]} exited {result.returncode}: {one_line(self.redact(stderr))}")
        return result.stdout.decode(errors="replace")


def backup_summary(output: str) -> dict[str, Any]:
    """The summary message of `restic backup --json` (the last line of that type)."""
    summary: dict[str, Any] = {}
    for line in output.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("message_type") == "summary":
            summary = message
    if not summary.get("snapshot_id"):
        raise BackupError("restic backup reported no snapshot")
    return summary


def describe(summary: dict[str, Any]) -> str:
    return (f"snapshot {summary['snapshot_id']} ({summary.get('files_new', 0)} new, "
            f"{summary.get('files_changed', 0)} changed, {human_bytes(summary.get('data_added', 0))} added)")


@dataclass
class Run:
    config: Config
    log: Log
    time: str | None = None
    done: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.restic = Restic(self.config)

    def backup_args(self, *tags: str) -> list[str]:
        args = ["backup", "--json", "--host", self.config.host]
        for tag in tags:
            args += ["--tag", tag]
        if self.time:
            args += ["--time", self.time]
        return args

    def open_repository(self) -> None:
        self.restic.run("cat", "config", what=f"cannot open repository {self.config.repository}")
        self.restic.run("unlock", what="cannot remove stale locks")

    def back_up_files(self) -> None:
        paths = self.config.paths
        missing = [p for p in paths if not os.path.lexists(p)]
        present = [p for p in paths if p not in missing]
        if missing:
            self.problems.append(f"files: missing paths {', '.join(missing)}")
        if not present:
            if paths:
                self.problems.append("files: nothing to back up")
            return
        excludes = [arg for pattern in self.config.exclude for arg in ("--exclude", pattern)]
        try:
            output = self.restic.run(*self.backup_args(FILES_TAG), *excludes, "--", *present, what="files")
            self.done.append(f"files: {describe(backup_summary(output))}")
        except BackupError as exc:
            self.problems.append(str(exc))

    def back_up_database(self, database: str) -> None:
        what = f"postgresql {database}"
        dump_argv = [arg.replace("{database}", database) for arg in self.config.dump_command]
        restic_argv = self.restic.argv(*self.backup_args(POSTGRESQL_TAG, f"db:{database}"),
                                       "--stdin", "--stdin-filename", f"postgresql/{database}.dump")
        with tempfile.TemporaryFile() as dump_err:
            try:
                dump = subprocess.Popen(dump_argv, stdout=subprocess.PIPE, stderr=dump_err,
                                        env=dump_environment(os.environ))
            except OSError as exc:
                self.problems.append(f"{what}: cannot run {dump_argv[0]}: {exc}")
                return
            assert dump.stdout is not None
            try:
                store = subprocess.Popen(restic_argv, stdin=dump.stdout, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=self.restic.env)
            except OSError as exc:
                dump.kill()
                dump.wait()
                self.problems.append(f"{what}: cannot run {self.config.restic}: {exc}")
                return
            dump.stdout.close()  # restic owns the pipe now; pg_dump sees SIGPIPE if restic dies
            try:
                out, err = store.communicate(timeout=self.config.timeout)
                dump_rc = dump.wait(timeout=60)
            except subprocess.TimeoutExpired:
                for process in (dump, store):
                    process.kill()
                    process.wait()
                self.problems.append(f"{what}: timed out after {self.config.timeout} s")
                return
            dump_err.seek(0)
            dump_stderr = dump_err.read().decode(errors="replace")
        # restic may have saved a snapshot even when it or pg_dump failed (exit 3: incomplete input).
        try:
            snapshot = str(backup_summary(out.decode(errors="replace"))["snapshot_id"])
        except BackupError:
            snapshot = ""
        if dump_rc != 0:
            # restic stored whatever pg_dump wrote before it failed: never keep a truncated dump.
            problem = f"{what}: pg_dump exited {dump_rc}: {one_line(self.restic.redact(dump_stderr))}"
            if snapshot:
                try:
                    self.restic.run("forget", snapshot, what=f"{what}: forgetting partial snapshot {snapshot}")
                    problem += f" (partial snapshot {snapshot} forgotten)"
                except BackupError as exc:
                    problem += f"; {exc}"
            self.problems.append(problem)
        elif store.returncode != 0:
            self.problems.append(f"{what}: restic backup exited {store.returncode}: "
                                 f"{one_line(self.restic.redact(err.decode(errors='replace')))}"
                                 f"{f' (incomplete snapshot {snapshot})' if snapshot else ''}")
        elif not snapshot:
            self.problems.append(f"{what}: restic backup reported no snapshot")
        else:
            summary = backup_summary(out.decode(errors="replace"))
            self.done.append(f"{what}: snapshot {snapshot} ({human_bytes(summary.get('total_bytes_processed', 0))} "
                             f"dumped, {human_bytes(summary.get('data_added', 0))} added)")

    def forget_and_prune(self) -> None:
        c = self.config
        output = self.restic.run(
            "forget", "--json", "--host", c.host, "--tag", FILES_TAG, "--tag", POSTGRESQL_TAG,
            "--group-by", "host,tags", "--keep-daily", str(c.keep_daily), "--keep-weekly", str(c.keep_weekly),
            "--keep-monthly", str(c.keep_monthly), what="forget")
        try:
            groups = json.loads(output or "[]")
        except ValueError as exc:
            raise BackupError(f"forget: unreadable restic output: {exc}") from exc
        removed = sum(len(group.get("remove") or []) for group in groups)
        kept = sum(len(group.get("keep") or []) for group in groups)
        if removed:
            self.restic.run("prune", what="prune")
        self.done.append(f"retention: {kept} kept, {removed} forgotten"
                         f"{' and pruned' if removed else ''} (daily {c.keep_daily}, weekly {c.keep_weekly}, "
                         f"monthly {c.keep_monthly})")

    def check(self) -> None:
        subset = self.config.check_read_data_subset
        args = ["check", *(["--read-data-subset", subset] if subset else [])]
        self.restic.run(*args, what="check")
        self.done.append(f"check: no errors{f' (read {subset} of the data)' if subset else ''}")

    def execute(self) -> None:
        self.open_repository()
        self.back_up_files()
        for database in self.config.databases:
            self.back_up_database(database)
        # Forgetting after a failed backup is safe: the policy counts days that have snapshots.
        for step in (self.forget_and_prune, self.check):
            try:
                step()
            except BackupError as exc:
                self.problems.append(str(exc))


def command_run(config_path: str, time: str | None, echo: bool) -> int:
    started = now()
    try:
        config = Config.load(config_path)
    except BackupError as exc:
        redact = Redactor()
        Log(DEFAULT_LOG_FILE, echo, redact)(f"backup FAILED: {exc}")
        write_status(DEFAULT_STATUS_FILE, "failed", started, redact(str(exc)))
        return EXIT_FAILED
    log = Log(config.log_file, echo)
    done: list[str] = []
    problems: list[str] = []
    try:
        with exclusive_lock(config.lock_file) as locked:
            if not locked:
                # The run that holds the lock owns the status file and reports its own outcome.
                log("another backup run holds the lock; nothing to do")
                return EXIT_OK
            run = Run(config, log, time, done, problems)
            log.redact = run.restic.redact
            log(f"backup started: repository {config.repository}, {len(config.paths)} paths, "
                f"{len(config.databases)} databases")
            run.execute()
    except BackupError as exc:
        problems.append(str(exc))
    except Exception as exc:  # report anything unexpected the same way, then fail
        problems.append(f"unexpected error: {type(exc).__name__}: {exc}")
    if problems:
        status, message = "failed", "; ".join(problems) + (f" (done: {'; '.join(done)})" if done else "")
    else:
        status, message = "ok", "; ".join(done)
    message = log.redact(message)
    log(f"backup {'ok' if status == 'ok' else 'FAILED'}: {message}")
    write_status(config.status_file, status, started, message)
    return EXIT_OK if status == "ok" else EXIT_FAILED


def command_restic(config_path: str, args: Sequence[str]) -> int:
    """Run restic with this host's repository settings (for restores and inspection)."""
    try:
        restic = Restic(Config.load(config_path))
    except BackupError as exc:
        print(f"fleet-backup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        if sys.stderr.isatty():  # a person at the terminal: restic's prompts and progress as it shows them
            return subprocess.run(restic.argv(*args), env=restic.env, check=False).returncode
        # Captured (Ansible, AWX, cron): restic's messages pass on without the repository's credentials.
        with subprocess.Popen(restic.argv(*args), env=restic.env, stderr=subprocess.PIPE, text=True,
                              errors="replace") as process:
            assert process.stderr is not None
            for line in process.stderr:
                sys.stderr.write(restic.redact(line))
        return process.returncode
    except OSError as exc:
        print(f"fleet-backup: {restic.redact(f'cannot run {restic.config.restic}: {exc}')}", file=sys.stderr)
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet-backup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="back up, apply the retention policy, verify, report")
    run.add_argument("--time", help="record the snapshots at this time ('YYYY-MM-DD HH:MM:SS', restic --time)")
    restic = commands.add_parser("restic", help="run restic on this host's repository")
    restic.add_argument("args", nargs=argparse.REMAINDER, help="restic arguments")
    args = parser.parse_args(argv)
    if args.command == "run":
        return command_run(args.config, args.time, echo=sys.stdout.isatty())
    return command_restic(args.config, args.args)


if __name__ == "__main__":
    sys.exit(main())
