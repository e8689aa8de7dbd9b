"""Running commands, the Docker CLI, and making sure a Docker daemon answers."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DOCKERD = "/usr/sbin/dockerd"
DOCKERD_LOG = Path("/var/log/fleet-lab-dockerd.log")
DOCKER_PIDFILE = Path("/var/run/docker.pid")
DOCKERD_WAIT_S = 60.0
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LabError(RuntimeError):
    """A failure to report as one clear message: the CLI prints it without a traceback; for the
    tests and benchmarks (lab/client.py) a lab or a run against it that failed."""


class Clock:
    """Prints steps with the seconds elapsed since the command started."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {msg}", flush=True)


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv (never through a shell), capturing text output."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise LabError(f"command not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        if check:
            raise LabError(f"timed out after {timeout} s: {' '.join(argv)}") from None
        return subprocess.CompletedProcess(list(argv), 124, "", f"timed out after {timeout} s")
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {detail}")
    return proc


def docker(
    *args: str, check: bool = True, input: str | None = None, timeout: float | None = 120
) -> subprocess.CompletedProcess[str]:
    return run(["docker", *args], check=check, input=input, timeout=timeout)


def docker_json(*args: str) -> list[dict[str, Any]]:
    """`docker <inspect-like> ...` output parsed; [] when the object does not exist."""
    proc = docker(*args, check=False)
    if proc.returncode != 0:
        return []
    data = json.loads(proc.stdout or "[]")
    return data if isinstance(data, list) else []


# --- the daemon ----------------------------------------------------------------------------------


def daemon_answers() -> bool:
    proc = run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout=15)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in text[-lines:])


def _forward_policy() -> str:
    proc = run(["iptables", "-S", "FORWARD"], check=False, timeout=10)
    for line in proc.stdout.splitlines():
        if line.startswith("-P FORWARD "):
            return line.split()[2]
    return ""


IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def _read_sysctl(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write_sysctl(path: Path, value: str) -> None:
    if value in {"0", "1"} and path.exists():
        path.write_text(value + "\n")


def docker_iptables_cleanup(rules: str) -> list[list[str]]:
    """From `iptables -t TABLE -S` output, the iptables arguments that remove dockerd's traces:
    delete every rule that jumps to or sits in a DOCKER* chain or names docker0, then flush and
    delete the DOCKER* chains. Rules anyone else added stay."""
    deletes: list[list[str]] = []
    chains: list[str] = []
    for line in rules.splitlines():
        words = shlex.split(line)
        if len(words) >= 2 and words[0] == "-N" and words[1].startswith("DOCKER"):
            chains.append(words[1])
        elif (
            len(words) >= 2
            and words[0] == "-A"
            and not words[1].startswith("DOCKER")
            and any(w.startswith("DOCKER") or w == "docker0" for w in words[2:])
        ):
            deletes.append(["-D", *words[1:]])
    return deletes + [["-F", c] for c in chains] + [["-X", c] for c in chains]


def ensure_dockerd(state_dir: Path, clock: Clock) -> None:
    """Make `docker info` answer: start /usr/sbin/dockerd in the background when it does not.

    Records in state_dir/dockerd.json that this tool started it (its pid, and the host's FORWARD
    policy, ip_forward, bridge-nf-call-iptables and whether docker0 existed before), so that
    `down --purge` can stop it and put those back.
    """
    if daemon_answers():
        return
    if not Path(DOCKERD).exists():
        raise LabError(f"{DOCKERD} not found: install Debian's docker.io (apt-get install docker.io)")
    pid = read_pid(DOCKER_PIDFILE)
    if pid is not None and pid_alive(pid) and _comm(pid) == "dockerd":
        clock.say(f"dockerd (pid {pid}) is running but not answering yet; waiting")
        _wait_for_daemon(pid, started_here=False)
        return
    if DOCKER_PIDFILE.exists():
        clock.say(f"removing stale {DOCKER_PIDFILE}")
        DOCKER_PIDFILE.unlink()
    before = {
        "forward_policy": _forward_policy(),
        "ip_forward": _read_sysctl(IP_FORWARD),
        "bridge_nf_call_iptables": _read_sysctl(BRIDGE_NF),
        "docker0_existed": Path("/sys/class/net/docker0").exists(),
    }
    clock.say(f"starting {DOCKERD} (log: {DOCKERD_LOG})")
    env = dict(os.environ)
    env["PATH"] = SYSTEM_PATH + ":" + env.get("PATH", "")
    with DOCKERD_LOG.open("ab") as log:
        proc = subprocess.Popen(
            [DOCKERD],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "dockerd.json").write_text(json.dumps({"pid": proc.pid, **before}) + "\n")
    _wait_for_daemon(proc.pid, started_here=True, popen=proc)
    clock.say(f"dockerd is up (pid {proc.pid})")


def _wait_for_daemon(pid: int, *, started_here: bool, popen: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + DOCKERD_WAIT_S
    while time.monotonic() < deadline:
        if daemon_answers():
            return
        exited = popen.poll() is not None if popen else not pid_alive(pid)
        if exited:
            raise LabError(f"dockerd exited while starting: see {DOCKERD_LOG}\n{_log_tail(DOCKERD_LOG)}")
        time.sleep(0.5)
    if started_here:
        stop_pid(pid)
    raise LabError(
        f"docker daemon did not start in {DOCKERD_WAIT_S:.0f} s: see {DOCKERD_LOG}\n{_log_tail(DOCKERD_LOG)}"
    )


def stop_pid(pid: int, wait_s: float = 30.0) -> bool:
    """SIGTERM pid, wait for it to go; SIGKILL after wait_s. True when it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    time.sleep(0.5)
    return not pid_alive(pid)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def stop_dockerd_if_ours(state_dir: Path, clock: Clock) -> None:
    """For `down --purge`: stop dockerd only when this tool started it, restore FORWARD/ip_forward."""
    record = state_dir / "dockerd.json"
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        clock.say("dockerd was not started by this tool: leaving it running")
        return
    pid = int(info.get("pid", 0))
    if pid and pid_alive(pid) and _comm(pid) == "dockerd":
        clock.say(f"stopping dockerd (pid {pid}), which this tool started")
        if not stop_pid(pid):
            print(f"warning: dockerd (pid {pid}) did not stop", file=sys.stderr)
    if (pid and pid_alive(pid) and _comm(pid) == "dockerd") or daemon_answers():
        print("warning: dockerd still runs: leaving its network setup alone", file=sys.stderr)
        return
    clock.say("removing dockerd's iptables chains and docker0; restoring FORWARD and sysctls")
    for table in ("filter", "nat"):
        listing = run(["iptables", "-t", table, "-S"], check=False, timeout=10).stdout
        for args in docker_iptables_cleanup(listing):
            run(["iptables", "-t", table, *args], check=False, timeout=10)
    policy = str(info.get("forward_policy", ""))
    if policy in {"ACCEPT", "DROP"}:
        run(["iptables", "-P", "FORWARD", policy], check=False, timeout=10)
    if not info.get("docker0_existed", True) and Path("/sys/class/net/docker0").exists():
        run(["ip", "link", "delete", "docker0"], check=False, timeout=10)
    _write_sysctl(IP_FORWARD, str(info.get("ip_forward", "")))
    _write_sysctl(BRIDGE_NF, str(info.get("bridge_nf_call_iptables", "")))
    record.unlink(missing_ok=True)
