"""What every check shares: findings and their severities, Prometheus metrics, external commands
under a timeout in their own process group, and UTC time stamps."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import EXTRA_PATH, OK, RANK

# --------------------------------------------------------------------------- findings and metrics

@dataclass
class Finding:
    """One check's verdict. Events (an XID line, a restart) are alerted once and never 'recover'."""

    check: str
    target: str
    severity: str
    message: str
    event: bool = False

    @property
    def key(self) -> str:
        return f"{self.check}:{self.target}"

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"key": self.key, "severity": self.severity, "message": self.message}
        if self.event:
            data["event"] = True
        return data


def worst(severities: Any) -> str:
    return max(severities, key=lambda s: RANK[s], default=OK)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Prometheus text exposition, grouped by metric family."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]] = {}

    def add(self, name: str, help_text: str, value: float, labels: dict[str, str] | None = None,
            kind: str = "gauge") -> None:
        with self._lock:
            family = self._families.setdefault(f"fleet_health_{name}", (help_text, kind, []))
            family[2].append((labels or {}, float(value)))

    def render(self) -> str:
        lines = []
        for name, (help_text, kind, samples) in sorted(self._families.items()):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
                number = repr(value) if value != int(value) else str(int(value))
                lines.append(f"{name}{{{text}}} {number}" if text else f"{name} {number}")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- external commands

@dataclass
class CommandResult:
    argv: list[str]
    timeout_s: float = 0.0
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    timed_out: bool = False
    missing: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def describe(self) -> str:
        """Why the command did not succeed, in words."""
        name = Path(self.argv[0]).name
        if self.missing:
            return f"{name} not found"
        if self.timed_out:
            return f"{name} hung: no answer within {self.timeout_s:g} s (killed)"
        if self.error:
            return f"{name} could not run: {self.error}"
        first = next((line.strip() for line in (self.stdout + "\n" + self.stderr).splitlines() if line.strip()), "")
        return f"{name} failed (exit {self.rc}){': ' + first[:200] if first else ''}"


def _search_path() -> str:
    parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return os.pathsep.join(parts + [p for p in EXTRA_PATH if p not in parts])


def run_command(argv: list[str], timeout: float) -> CommandResult:
    """Run `argv` (no shell) for at most `timeout` seconds; on expiry kill its whole process group.

    A process stuck in the kernel (a wedged GPU driver) may not die even from SIGKILL: then its
    pipes are abandoned after one more second rather than waited on forever.
    """
    result = CommandResult(list(argv), timeout)
    start = time.monotonic()
    executable = shutil.which(argv[0], path=_search_path()) if argv else None
    if executable is None:
        result.missing = True
        return result
    env = {**os.environ, "LC_ALL": "C", "PATH": _search_path()}
    try:
        proc = subprocess.Popen([executable, *argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, env=env)
    except OSError as exc:
        result.error = exc.strerror or str(exc)
        result.missing = exc.errno == errno.ENOENT
        return result
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        result.timed_out = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:
            out, err = b"", b""
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
    result.duration_s = time.monotonic() - start
    result.rc = proc.returncode
    result.stdout = (out or b"").decode("utf-8", "replace")
    result.stderr = (err or b"").decode("utf-8", "replace")
    return result


Runner = Callable[[list[str], float], CommandResult]


# --------------------------------------------------------------------------- time

def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(stamp: dt.datetime) -> str:
    return stamp.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
