"""What the engine asks of the host: systemd units, listeners, HTTP probes, slot links."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path


def unit_of(service: str, port: int) -> str:
    return f"{service}@{port}.service"


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise RuntimeError(f"systemctl {' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")
    return result


def unit_active(unit: str) -> str:
    return systemctl("is-active", unit, check=False).stdout.strip() or "unknown"


def start(unit: str) -> None:
    # StartLimitBurst counts every start, manual ones too: clear the counter (and a failed state
    # left by an earlier try) so quick successive deploys are not refused by it.
    systemctl("reset-failed", unit, check=False)
    systemctl("start", unit)


def stop(unit: str, wait: bool = True) -> None:
    systemctl("stop", unit, *(() if wait else ("--no-block",)))


def wait_inactive(unit: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while unit_active(unit) in ("active", "deactivating", "activating", "reloading"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def enable_at_boot(enable: str, disable: str) -> None:
    """Start `enable` at boot instead of `disable` (links only: no daemon reload needed)."""
    systemctl("disable", "--no-reload", disable)
    systemctl("enable", "--no-reload", enable)


@dataclass(frozen=True)
class Listener:
    pid: int
    command: str
    unit: str | None  # the systemd unit whose cgroup the process is in


_PID = re.compile(r"pid=(\d+)")


def listeners(port: int) -> list[Listener]:
    """The processes listening on TCP `port`, on any address."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=10).stdout
    found = [Listener(0, "(owner not visible: reading other users' sockets needs CAP_SYS_PTRACE)", None)
             for line in out.splitlines() if line.strip() and "pid=" not in line]
    for pid in sorted({int(p) for p in _PID.findall(out)}):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        units = [line.rsplit("/", 1)[-1] for line in cgroup.splitlines() if line.endswith(".service")]
        found.append(Listener(pid, command, units[0] if units else None))
    return found


@dataclass(frozen=True)
class Probe:
    status: int
    body: str
    upstream: str
    error: str

    def describe(self) -> str:
        return f"status {self.status}; body: {self.body[:200]!r}" if self.status else f"no response ({self.error})"


def get(url: str, host_header: str | None = None, timeout: float = 5.0, method: str = "GET") -> Probe:
    """One request (GET unless `method` says otherwise), its status, the body's start and nginx's upstream."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, target, headers={"Host": host_header} if host_header else {})
        response = conn.getresponse()
        body = response.read(65536).decode("utf-8", "replace")
        return Probe(response.status, body, response.getheader("X-Fleet-Upstream", ""), "")
    except (OSError, http.client.HTTPException) as err:
        return Probe(0, "", "", f"{type(err).__name__}: {err}")
    finally:
        conn.close()


def point_slot(slot_link: Path, release: str) -> None:
    """Point a slot's symlink at a release, atomically (a new link renamed over the old one)."""
    tmp = slot_link.with_name(f".{slot_link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(f"../releases/{release}", tmp)
    os.replace(tmp, slot_link)


def write_private(path: Path, text: str) -> bool:
    """Write a root-only file (0600, its directory 0700) atomically; False when it already held `text`."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return True


def enabled(unit: str) -> bool:
    return systemctl("is-enabled", unit, check=False).stdout.strip() == "enabled"


def write_atomically(path: Path, text: str, prefix: str, suffix: str = "") -> None:
    """Replace `path` with `text`, mode 0644, through a temporary file in the same directory
    (write, fsync, rename): a reader or a crash sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
