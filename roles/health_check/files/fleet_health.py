#!/usr/bin/python3
"""fleet health checker: one run checks a host, logs a JSON line, writes metrics, alerts on change.

Installed by the `health_check` role and run by cron; standard library only (Debian 12's Python
3.11), so the same file also runs by hand on any machine:

    fleet-health --config /etc/fleet/health.json --once          # what cron runs
    python3 fleet_health.py --once --no-webhook --gpu --log-file -  # a look at a GPU box, no config

What one run checks:

- every service in the config: GET <health path> on its live slot (the port comes from the deploy
  state file /var/lib/fleet/state/<service>.json, never guessed) and through nginx with the
  service's server name as Host; HTTP status, the body's `status` field, latency thresholds;
- GPUs through `nvidia-smi --query-gpu` / `--query-remapped-rows`: count against the expected
  count, temperature, uncorrected ECC errors, retired pages pending, remapped rows pending or
  failed; XID errors in the kernel log since the last run (serious ones critical, others warnings);
  nvidia-smi missing, failing or hanging is itself critical;
- each service's slots: a move an interrupted deploy left pending, an idle slot still running
  outside a deploy, a slot port listened on by anything but that slot's unit (`ss -ltnp`);
- TLS certificates (certbot's and the copies of the other hosts): days until they expire;
- disk and inode headroom, memory headroom, the last backup (status and age).

Every external command runs under a timeout in its own process group, killed on expiry; checks
run in parallel threads, so a hung nvidia-smi costs its timeout and no more.

What it produces: one JSON line per run appended to the log, exit code 0 OK / 1 WARN /
2 CRITICAL / 3 UNKNOWN, Prometheus text metrics written atomically into a node_exporter textfile
directory, and Slack-compatible webhook messages ({"text": ...}) only when something changes: a
new or worse problem (ALERT) or a cleared one (RECOVERY), de-duplicated across runs through a
small state file, with retries inside a bounded total time. A problem is declared recovered only
after M clean runs in a row (webhook.recover_after), so a value hovering at a threshold does not
alert and recover every run. Optional self-healing restarts a live slot whose health check failed
hard (refused, timed out, 5xx; not slow, not a wrong body) N runs in a row while systemd still
reports it active (a hang systemd cannot see), one slot per run, at most max_per_hour restarts of a
service in any hour; past that it gives up with a critical alert until the service recovers.

`--no-webhook` makes a run read-only: nothing is sent, the state file is neither written nor
locked, and nothing is restarted, so a look by hand never eats an alert that cron should send.
The webhook URL is a secret: it is read from the (0600) config and never logged, printed, kept in
the state file or sent in an alert (see redact), nor is the password of any URL a message quotes
(a backup repository's rest:https://user:password@...).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import functools
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The deploy state has one owner, the slot engine's state module, which the slot_engine role
# installs on every host that runs services (the unit tests put it on the path themselves).
sys.path.insert(1, os.environ.get("FLEET_SLOTS_LIB", "/usr/local/lib/fleet"))
from fleet_slots import engine as slot_engine
from fleet_slots import lock as deploy_lock
from fleet_slots import nginx as slot_nginx
from fleet_slots import state as deploy_state

VERSION = "1.0"
OK, WARN, CRITICAL, UNKNOWN = "ok", "warn", "critical", "unknown"
EXIT_CODES = {OK: 0, WARN: 1, CRITICAL: 2, UNKNOWN: 3}
# Order of gravity: a run's status is its worst finding; not knowing is worse than a warning.
RANK = {OK: 0, WARN: 1, UNKNOWN: 2, CRITICAL: 3}
METRIC_VALUE = {OK: 0, WARN: 1, CRITICAL: 2, UNKNOWN: 3}
STATE_VERSION = 1
METRICS_FILE = "fleet_health.prom"
# cron's PATH is /usr/bin:/bin; the tools we call may live elsewhere.
EXTRA_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

GPU_FIELDS = (
    "index", "uuid", "name", "pci.bus_id", "temperature.gpu",
    "ecc.errors.uncorrected.volatile.total", "ecc.errors.uncorrected.aggregate.total",
    "retired_pages.pending",
)
REMAP_FIELDS = (
    "gpu_bus_id", "remapped_rows.correctable", "remapped_rows.uncorrectable",
    "remapped_rows.pending", "remapped_rows.failure",
)
# XIDs that mean hardware or driver trouble (NVIDIA's XID catalogue); every other XID is a warning
# (most are application faults: 13 graphics exception, 31 page fault, 43 stopped, 45 cleanup).
DEFAULT_XID_CRITICAL = (48, 61, 62, 64, 74, 79, 94, 95, 119, 120, 140)
NOT_AVAILABLE = {"[n/a]", "n/a", "[not supported]", "not supported", ""}

# Credentials in any URL: scheme://user:password@, the password running to the last "@" before a
# space or quote. The same rule as the backup job's (roles/backup/files/fleet_backup.py); each
# script is installed on its own, so each carries it.
_URL_CREDENTIALS = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^\s\"'<>]*@")
_XID_RE = re.compile(r"NVRM: Xid \((?P<pci>[^)]*)\): (?P<xid>\d+)(?:, ?(?P<rest>.*))?")
_KTIME_RE = re.compile(r"^\s*\[\s*(?P<ts>\d+\.\d+)\]")


class ConfigError(Exception):
    """A config file that cannot be used; the message names the key."""


# --------------------------------------------------------------------------- configuration

@dataclass
class HttpSettings:
    timeout_s: float = 5.0
    latency_warn_ms: float = 500.0
    latency_critical_ms: float = 2000.0
    status_field: str = "status"  # "" skips the body check
    status_ok: list[str] = field(default_factory=lambda: ["ok"])


@dataclass
class NginxSettings:
    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = 80


@dataclass
class GpuSettings:
    enabled: bool = False
    nvidia_smi: str = "nvidia-smi"
    timeout_s: float = 10.0
    expected_count: int = 0  # 0: at least one GPU
    temperature_warn_c: float = 85.0
    temperature_critical_c: float = 92.0
    kernel_log_command: list[str] = field(default_factory=lambda: ["dmesg"])
    kernel_log_timeout_s: float = 10.0
    xid_critical: list[int] = field(default_factory=lambda: list(DEFAULT_XID_CRITICAL))
    xid_ignore: list[int] = field(default_factory=list)


@dataclass
class DiskSettings:
    paths: list[str] = field(default_factory=lambda: ["/"])
    warn_free_pct: float = 10.0
    critical_free_pct: float = 5.0


@dataclass
class MemorySettings:
    warn_available_pct: float = 10.0
    critical_available_pct: float = 5.0


@dataclass
class BackupSettings:
    enabled: bool = False
    status_file: str = "/var/lib/fleet/backup/last-run.json"
    missing: str = WARN  # severity when no backup has ever run: ok, warn or critical
    warn_age_h: float = 26.0
    critical_age_h: float = 50.0


@dataclass
class WebhookSettings:
    url: str = field(default="", repr=False)  # a secret: never printed
    timeout_s: float = 5.0
    retries: int = 3
    total_timeout_s: float = 20.0
    recover_after: int = 2  # clean runs in a row before a problem counts as recovered


@dataclass
class SlotSettings:
    enabled: bool = True
    lock_dir: str = "/var/lib/fleet/locks"  # a live deploy lock: an idle slot or a pending move is expected
    ss: str = "ss"
    timeout_s: float = 10.0


@dataclass
class TlsSettings:
    certificate_dirs: list[str] = field(default_factory=list)  # <dir>/<name>/fullchain.pem; empty: no check
    warn_days: float = 20.0
    critical_days: float = 7.0
    openssl: str = "openssl"
    timeout_s: float = 10.0


@dataclass
class SelfHealSettings:
    enabled: bool = False
    after_failures: int = 3
    max_per_hour: int = 3  # restarts of one service in any hour; then give up and alert
    # switch: start the release again on the idle slot and move traffic there (the slot engine's
    # restart, no request lost); restart: systemctl restart of the live slot in place.
    method: str = "switch"
    restart_timeout_s: float = 60.0  # the new slot's health gate (switch), or the restart
    systemctl: str = "systemctl"
    # The slot engine's layout, for a switch; "" for the control socket: the engine's default.
    service_root: str = "/opt/fleet"
    config_dir: str = "/etc/fleet"
    control_socket: str = ""
    audit_log: str = ""  # the deploy audit log the switch appends its line to; "": none


@dataclass
class ServiceSpec:
    name: str
    path: str = "/health"
    status: int = 200
    body: str = ""
    slots: list[int] = field(default_factory=list)  # valid live ports; empty: any
    unit: str = ""  # template unit prefix, default "<name>@"
    nginx_host: str = ""  # Host header through nginx; "" uses nginx's default server
    nginx_path: str = ""  # path through nginx; "" skips the check through nginx
    drain_timeout: float = 30.0  # a self-healing switch drains the old slot this long at most
    keep: int = 5  # releases the slot engine keeps after a switch


@dataclass
class Config:
    host: str = ""
    deploy_state_dir: str = "/var/lib/fleet/state"
    state_file: str = "/var/lib/fleet/health/state.json"
    log_file: str = "/var/log/fleet/health.log"  # "-": stdout
    metrics_dir: str = ""  # "": no metrics file
    lock_wait_s: float = 30.0
    services: list[ServiceSpec] = field(default_factory=list)
    http: HttpSettings = field(default_factory=HttpSettings)
    nginx: NginxSettings = field(default_factory=NginxSettings)
    gpu: GpuSettings = field(default_factory=GpuSettings)
    disk: DiskSettings = field(default_factory=DiskSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    self_heal: SelfHealSettings = field(default_factory=SelfHealSettings)
    slots: SlotSettings = field(default_factory=SlotSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)


_SECTIONS: dict[str, type] = {
    "http": HttpSettings, "nginx": NginxSettings, "gpu": GpuSettings, "disk": DiskSettings,
    "memory": MemorySettings, "backup": BackupSettings, "webhook": WebhookSettings,
    "self_heal": SelfHealSettings, "slots": SlotSettings, "tls": TlsSettings,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TYPE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (_is_int, "a whole number"),
    "float": (_is_number, "a number"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v), "a list of strings"),
    "list[int]": (lambda v: isinstance(v, list) and all(_is_int(i) for i in v), "a list of whole numbers"),
}


def _load_fields(cls: type, raw: Any, where: str) -> dict[str, Any]:
    """Checked keyword arguments for dataclass `cls` from mapping `raw` (keys starting with _ skipped)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if str(f.type) in _TYPE_CHECKS}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("_"):
            continue
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key; known keys: {', '.join(sorted(known))}")
        check, kind = _TYPE_CHECKS[str(known[key].type)]
        if not check(value):
            raise ConfigError(f"{where}.{key}: must be {kind}, got {value!r}"
                              if key != "url" else f"{where}.{key}: must be {kind}")
        values[key] = float(value) if known[key].type == "float" else value
    return values


def load_config(raw: Any) -> Config:
    """A checked Config from parsed JSON; raises ConfigError naming the key at fault."""
    if not isinstance(raw, dict):
        raise ConfigError("config: must be a JSON object")
    sections = {name: cls(**_load_fields(cls, raw.get(name, {}), name)) for name, cls in _SECTIONS.items()}
    top = _load_fields(Config, {k: v for k, v in raw.items() if k not in _SECTIONS and k != "services"}, "config")
    services_raw = raw.get("services", [])
    if not isinstance(services_raw, list):
        raise ConfigError("services: must be a list")
    services = []
    for index, entry in enumerate(services_raw):
        where = f"services[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ConfigError(f"{where}: must be a mapping with a non-empty 'name'")
        services.append(ServiceSpec(**_load_fields(ServiceSpec, entry, f"services.{entry['name']}")))
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ConfigError(f"services: names must be unique, got {names}")
    config = Config(**top, services=services, **sections)
    _check_config(config)
    return config


def _check_config(config: Config) -> None:
    problems = []
    if config.http.latency_warn_ms > config.http.latency_critical_ms:
        problems.append("http.latency_warn_ms must not exceed http.latency_critical_ms")
    if config.gpu.temperature_warn_c > config.gpu.temperature_critical_c:
        problems.append("gpu.temperature_warn_c must not exceed gpu.temperature_critical_c")
    if config.disk.warn_free_pct < config.disk.critical_free_pct:
        problems.append("disk.warn_free_pct must be at least disk.critical_free_pct")
    if config.memory.warn_available_pct < config.memory.critical_available_pct:
        problems.append("memory.warn_available_pct must be at least memory.critical_available_pct")
    if config.backup.missing not in (OK, WARN, CRITICAL):
        problems.append(f"backup.missing must be ok, warn or critical, got {config.backup.missing!r}")
    if config.backup.warn_age_h > config.backup.critical_age_h:
        problems.append("backup.warn_age_h must not exceed backup.critical_age_h")
    if config.tls.warn_days < config.tls.critical_days:
        problems.append("tls.warn_days must be at least tls.critical_days")
    if not config.gpu.kernel_log_command:
        problems.append("gpu.kernel_log_command must name a command")
    for name in ("timeout_s", "total_timeout_s"):
        if getattr(config.webhook, name) <= 0:
            problems.append(f"webhook.{name} must be > 0")
    if config.webhook.retries < 0:
        problems.append("webhook.retries must be >= 0")
    if config.self_heal.after_failures < 1:
        problems.append("self_heal.after_failures must be >= 1")
    if config.self_heal.method not in ("switch", "restart"):
        problems.append(f"self_heal.method must be switch or restart, got {config.self_heal.method!r}")
    if config.self_heal.max_per_hour < 1:
        problems.append("self_heal.max_per_hour must be >= 1 (disable self_heal to never restart)")
    if config.webhook.recover_after < 1:
        problems.append("webhook.recover_after must be >= 1")
    if config.webhook.url and urllib.parse.urlsplit(config.webhook.url).scheme not in ("http", "https"):
        problems.append("webhook.url must be an http(s) URL")  # never echo it: it is a secret
    for service in config.services:
        if not service.path.startswith("/"):
            problems.append(f"services.{service.name}.path must start with '/'")
        if service.nginx_path and not service.nginx_path.startswith("/"):
            problems.append(f"services.{service.name}.nginx_path must start with '/'")
    if problems:
        raise ConfigError("; ".join(problems))


def read_config(path: str | None) -> Config:
    if path is None:
        return Config()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    return load_config(raw)


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


# --------------------------------------------------------------------------- services

@dataclass
class HttpResult:
    url: str
    status: int | None = None
    body: bytes = b""
    latency_ms: float = 0.0
    error: str = ""


def http_get(address: str, port: int, path: str, host_header: str, timeout: float) -> HttpResult:
    """One GET, no redirects, no proxies; the latency covers connect to the end of the body."""
    shown = f"http://{address}{'' if port == 80 else f':{port}'}{path}"
    if host_header:
        shown += f" (Host: {host_header})"
    result = HttpResult(shown)
    start = time.monotonic()
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        headers = {"User-Agent": f"fleet-health/{VERSION}", "Accept": "application/json", "Connection": "close"}
        if host_header:
            headers["Host"] = host_header
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        result.body = response.read(65536)
        result.status = response.status
    except TimeoutError:
        result.error = f"timed out after {timeout:g} s"
    except ConnectionRefusedError:
        result.error = "connection refused"
    except (OSError, http.client.HTTPException) as exc:
        result.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
    finally:
        conn.close()
    result.latency_ms = (time.monotonic() - start) * 1000
    return result


def judge_response(result: HttpResult, expect_status: int, expect_body: str, http: HttpSettings,
                   expect_port: int | None) -> tuple[str, str]:
    """Severity and message for one health response."""
    if result.error:
        return CRITICAL, f"GET {result.url} failed: {result.error}"
    if result.status != expect_status:
        return CRITICAL, f"GET {result.url} answered {result.status}, expected {expect_status}"
    text = result.body.decode("utf-8", "replace")
    if expect_body and expect_body not in text:
        return CRITICAL, f"GET {result.url}: body lacks {expect_body!r}"
    payload: Any = None
    with contextlib.suppress(ValueError):
        payload = json.loads(text)
    if http.status_field:
        value = payload.get(http.status_field) if isinstance(payload, dict) else None
        if value is None:
            return WARN, f"GET {result.url}: no '{http.status_field}' field in the body"
        if str(value) not in http.status_ok:
            wanted = " or ".join(http.status_ok)
            return CRITICAL, f"GET {result.url}: {http.status_field} is {value!r}, expected {wanted}"
    served = payload.get("port") if isinstance(payload, dict) else None
    if expect_port is not None and _is_int(served) and served != expect_port:
        return WARN, f"GET {result.url} was served by slot {served}, but the deploy state says {expect_port} is live"
    latency = f"{result.latency_ms:.0f} ms"
    if result.latency_ms > http.latency_critical_ms:
        return CRITICAL, f"GET {result.url} took {latency} (critical above {http.latency_critical_ms:g} ms)"
    if result.latency_ms > http.latency_warn_ms:
        return WARN, f"GET {result.url} took {latency} (warning above {http.latency_warn_ms:g} ms)"
    return OK, f"GET {result.url}: {result.status} in {latency}"


def read_live_port(state_dir: str, service: ServiceSpec) -> tuple[int | None, str]:
    """The live slot from the deploy state file, or None and why not."""
    try:
        current = deploy_state.load(service.name, state_dir)
    except deploy_state.StateError as exc:
        return None, f"unreadable deploy state: {exc}"
    path = deploy_state.path_of(service.name, state_dir)
    if current is None:
        return None, f"no deploy state at {path}: the live slot is unknown"
    if service.slots and current.live_port not in service.slots:
        return None, (f"deploy state {path} says live_port {current.live_port}, "
                      f"not a slot of {service.name} {service.slots}")
    return current.live_port, ""


@dataclass
class ServiceOutcome:
    findings: list[Finding]
    live_port: int | None
    hard_failure: bool  # the live slot refused, timed out or answered 5xx: what self-healing counts


def is_hard_failure(result: HttpResult) -> bool:
    """Refused, timed out or a 5xx: a slot that may be hung. Slow, or a wrong body, is not."""
    return bool(result.error) or (result.status is not None and result.status >= 500)


def check_service(service: ServiceSpec, config: Config, metrics: Metrics, runner: Runner) -> ServiceOutcome:
    findings = []
    live_port, why = read_live_port(config.deploy_state_dir, service)
    labels = {"service": service.name}
    hard_failure = False
    if live_port is None:
        findings.append(Finding("service", service.name, UNKNOWN, why))
    else:
        metrics.add("service_live_port", "Live slot port from the deploy state.", live_port, labels)
        result = http_get("127.0.0.1", live_port, service.path, "", config.http.timeout_s)
        severity, message = judge_response(result, service.status, service.body, config.http, live_port)
        hard_failure = is_hard_failure(result)
        if severity == CRITICAL:
            unit = f"{service.unit or service.name + '@'}{live_port}.service"
            state = unit_state(config, unit, runner)
            message += f"; {unit} is {state}"
        findings.append(Finding("service", service.name, severity, message))
        _http_metrics(metrics, result, service.name, "direct", severity)
    if config.nginx.enabled and service.nginx_path:
        result = http_get(config.nginx.address, config.nginx.port, service.nginx_path, service.nginx_host,
                          config.http.timeout_s)
        severity, message = judge_response(result, service.status, service.body, config.http, live_port)
        findings.append(Finding("nginx", service.name, severity, message))
        _http_metrics(metrics, result, service.name, "nginx", severity)
    return ServiceOutcome(findings, live_port, hard_failure)


def _http_metrics(metrics: Metrics, result: HttpResult, service: str, via: str, severity: str) -> None:
    labels = {"service": service, "via": via}
    metrics.add("service_up", "1 when the service's health check passed (warnings included).",
                1 if severity in (OK, WARN) else 0, labels)
    if result.status is not None:
        metrics.add("service_latency_seconds", "Health check latency.", round(result.latency_ms / 1000, 6), labels)
        metrics.add("service_http_status", "HTTP status of the health check.", result.status, labels)


# --------------------------------------------------------------------------- slots and listeners

_PID = re.compile(r"pid=(\d+)")
NOT_VISIBLE = "?"  # a listener whose process ss cannot show (no CAP_SYS_PTRACE)


def unit_of_pid(pid: str, proc: str = "/proc") -> str:
    """The systemd service whose cgroup holds the process, or "pid N (command)" outside any."""
    try:
        cgroup = Path(f"{proc}/{pid}/cgroup").read_text()
    except OSError:
        return f"pid {pid}"
    units = [line.rsplit("/", 1)[-1] for line in cgroup.splitlines() if line.endswith(".service")]
    if units:
        return units[0]
    with contextlib.suppress(OSError):
        command = Path(f"{proc}/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        return f"pid {pid} ({command[:80]})"
    return f"pid {pid}"


def parse_listeners(ss_output: str, owner: Callable[[str], str] = unit_of_pid) -> dict[int, set[str]]:
    """{port: owners} from `ss -Hltnp`: each listener's systemd unit, or NOT_VISIBLE."""
    ports: dict[int, set[str]] = {}
    for line in ss_output.splitlines():
        fields = line.split()
        port = fields[3].rpartition(":")[2] if len(fields) > 3 else ""
        if not port.isdigit():
            continue
        pids = sorted(set(_PID.findall(line)))
        ports.setdefault(int(port), set()).update([owner(pid) for pid in pids] or [NOT_VISIBLE])
    return ports


def check_slots(config: Config, runner: Runner) -> list[Finding]:
    """Per service: a pending move nobody finishes, an idle slot left running, strangers on slot ports."""
    result = runner([config.slots.ss, "-Hltnp"], config.slots.timeout_s)
    if not result.ok:
        return [Finding("slots", "listeners", UNKNOWN, f"cannot list listening sockets: {result.describe()}")]
    listeners = parse_listeners(result.stdout)
    findings = []
    for service in config.services:
        try:
            current = deploy_state.load(service.name, config.deploy_state_dir)
        except deploy_state.StateError:
            continue  # the service check reports it
        if current is None:
            continue
        lock = deploy_lock.read(service.name, config.slots.lock_dir)
        deploying = (lock is not None and not deploy_lock.orphaned(lock)
                     and float(lock.get("expires_epoch", 0)) >= time.time())
        findings.extend(_judge_slots(service, current, listeners, deploying))
    return findings


def _judge_slots(service: ServiceSpec, current: Any, listeners: dict[int, set[str]], deploying: bool
                 ) -> list[Finding]:
    live = current.live_port
    unit = f"{service.unit or service.name + '@'}{{}}.service".format
    findings = []
    move = current.pending
    if move is not None and not deploying:
        findings.append(Finding("pending_move", service.name, WARN, (
            f"a {move.mode} move from slot {move.from_port} ({move.from_release}) to {move.to_port} "
            f"({move.to_release}), deploy {move.deploy_id}, stopped after phase {move.phase} (started "
            f"{move.started}) and no deploy holds the lock: the next deploy, rollback or site.yml run "
            "finishes or reverts it")))
    for port in service.slots or [live]:
        role = "live" if port == live else "idle"
        owners = listeners.get(port, set())
        strangers = sorted(owners - {unit(port), NOT_VISIBLE})
        if strangers:
            findings.append(Finding("slot_port", f"{service.name}@{port}", CRITICAL if role == "live" else WARN, (
                f"port {port}, the {role} slot of {service.name}, is listened on by {', '.join(strangers)}, "
                f"not {unit(port)}" + (": nginx sends the service's traffic there" if role == "live" else
                                       ": the next deploy cannot start its slot"))))
        elif role == "idle" and unit(port) in owners and move is None and not deploying:
            findings.append(Finding("idle_slot", f"{service.name}@{port}", WARN, (
                f"the idle slot {unit(port)} is running outside a deploy (left by an interrupted run?); "
                f"nginx sends it nothing: stop it (systemctl stop {unit(port)})")))
    if not findings:
        findings.append(Finding("slots", service.name, OK, f"live slot {live}, nothing else on its ports, "
                                                           "no move pending"))
    return findings


# --------------------------------------------------------------------------- TLS certificates

def check_certificates(tls: TlsSettings, metrics: Metrics, runner: Runner, now: dt.datetime) -> list[Finding]:
    """Days left on each <dir>/<name>/fullchain.pem of the configured directories."""
    findings = []
    for directory in tls.certificate_dirs:
        for pem in sorted(Path(directory).glob("*/fullchain.pem")):
            name = pem.parent.name
            result = runner([tls.openssl, "x509", "-noout", "-enddate", "-in", str(pem)], tls.timeout_s)
            value = result.stdout.strip().partition("notAfter=")[2]
            try:
                expires = dt.datetime.strptime(value, "%b %d %H:%M:%S %Y GMT").replace(tzinfo=dt.UTC)
            except ValueError:
                findings.append(Finding("tls", name, CRITICAL, f"cannot read the expiry of {pem}: "
                                                               f"{result.describe() if not result.ok else value!r}"))
                continue
            days = (expires - now).total_seconds() / 86400
            metrics.add("tls_certificate_expiry_timestamp_seconds", "When each TLS certificate expires.",
                        expires.timestamp(), {"certificate": name})
            when = f"{pem} expires {iso(expires)}"
            if days < 0:
                findings.append(Finding("tls", name, CRITICAL, f"{when}: expired {-days:.0f} days ago"))
            elif days < tls.warn_days:
                findings.append(Finding("tls", name, CRITICAL if days < tls.critical_days else WARN, (
                    f"{when}, in {days:.0f} days: certbot renews 30 days ahead on the host that issues it, "
                    "and a copy reaches the other hosts at their next site.yml run")))
            else:
                findings.append(Finding("tls", name, OK, f"{when}, in {days:.0f} days"))
    return findings


def unit_state(config: Config, unit: str, runner: Runner) -> str:
    """systemd's word for the unit (active, inactive, failed, ...); is-active exits 3 when not active."""
    result = runner([config.self_heal.systemctl, "is-active", unit], 5.0)
    return result.stdout.strip() or f"in an unknown state ({result.describe()})"


# --------------------------------------------------------------------------- GPUs

def _value(raw: str) -> str | None:
    """A CSV cell; None when the GPU does not report it ([N/A], [Not Supported])."""
    text = raw.strip()
    return None if text.lower() in NOT_AVAILABLE else text


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _flag(raw: str | None) -> bool | None:
    """nvidia-smi writes Yes/No for some booleans and 0/1 (or counts) for others."""
    if raw is None:
        return None
    text = raw.strip().lower()
    if text in ("yes", "true", "enabled"):
        return True
    if text in ("no", "false", "disabled"):
        return False
    number = _number(text)
    return None if number is None else number > 0


def _is_error_cell(raw: str | None) -> bool:
    """Cells like [Unknown Error] or [GPU is lost] say the GPU itself is in trouble."""
    return raw is not None and raw.startswith("[") and raw.endswith("]")


@dataclass
class Gpu:
    index: str
    uuid: str
    name: str
    bus_id: str
    cells: dict[str, str | None]

    @property
    def label(self) -> str:
        return f"GPU {self.index} ({self.bus_id})"


def parse_gpu_rows(text: str) -> tuple[list[Gpu], list[str]]:
    """GPUs from `--query-gpu` CSV (noheader, nounits) and the lines that are not GPU rows."""
    gpus, other = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(GPU_FIELDS):
            other.append(line.strip())
            continue
        values = {name: _value(cell) for name, cell in zip(GPU_FIELDS, cells, strict=True)}
        gpus.append(Gpu(cells[0], cells[1], cells[2], cells[3], values))
    return gpus, other


def parse_remapped_rows(text: str) -> dict[str, dict[str, str | None]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == len(REMAP_FIELDS):
            rows[normalise_bus_id(cells[0])] = {n: _value(c) for n, c in zip(REMAP_FIELDS, cells, strict=True)}
    return rows


def normalise_bus_id(bus_id: str) -> str:
    """'00000000:3B:00.0' and XID's 'PCI:0000:3b:00' both become '3b:00' (bus:device)."""
    text = bus_id.strip().lower().removeprefix("pci:")
    parts = text.split(":")
    if len(parts) >= 2:
        return f"{parts[-2]}:{parts[-1].split('.')[0]}"
    return text


def check_gpus(config: Config, metrics: Metrics, runner: Runner) -> tuple[list[Gpu], list[Finding]]:
    gpu_cfg = config.gpu
    fmt = "--format=csv,noheader,nounits"
    query = runner([gpu_cfg.nvidia_smi, "--query-gpu=" + ",".join(GPU_FIELDS), fmt], gpu_cfg.timeout_s)
    metrics.add("nvidia_smi_duration_seconds", "Time nvidia-smi took to answer.", round(query.duration_s, 3))
    gpus, other = parse_gpu_rows(query.stdout) if not query.timed_out else ([], [])
    findings = []
    if query.missing:
        findings.append(Finding("nvidia_smi", "query", CRITICAL,
                                f"{gpu_cfg.nvidia_smi} not found: is the NVIDIA driver installed?"))
    elif other:  # its own words about a GPU it could not read come first
        name = Path(gpu_cfg.nvidia_smi).name
        said = f"failed (exit {query.rc})" if query.rc else "reported"
        findings.append(Finding("nvidia_smi", "query", CRITICAL, f"{name} {said}: {other[0][:200]}"))
    elif not query.ok:
        findings.append(Finding("nvidia_smi", "query", CRITICAL, query.describe()))
    else:
        findings.append(Finding("nvidia_smi", "query", OK, f"nvidia-smi answered in {query.duration_s:.2f} s"))
    metrics.add("nvidia_smi_up", "1 when nvidia-smi answered the query.", 1 if query.ok else 0)
    if query.timed_out or not (query.ok or gpus):
        return gpus, findings  # no second call into a wedged or absent driver

    expected = gpu_cfg.expected_count
    count = len(gpus)
    metrics.add("gpu_count", "GPUs nvidia-smi lists.", count)
    metrics.add("gpu_expected_count", "GPUs this host should have (0: at least one).", expected)
    if expected and count < expected:
        findings.append(Finding("gpu_count", "host", CRITICAL, f"{count} GPUs visible, expected {expected}"))
    elif expected and count > expected:
        findings.append(Finding("gpu_count", "host", WARN, f"{count} GPUs visible, expected only {expected}"))
    elif not expected and count == 0:
        findings.append(Finding("gpu_count", "host", CRITICAL, "no GPU visible"))
    else:
        findings.append(Finding("gpu_count", "host", OK, f"{count} GPUs visible"))

    remap: dict[str, dict[str, str | None]] = {}
    if gpus:
        remap_result = runner([gpu_cfg.nvidia_smi, "--query-remapped-rows=" + ",".join(REMAP_FIELDS), fmt],
                              gpu_cfg.timeout_s)
        if remap_result.timed_out:
            findings.append(Finding("nvidia_smi", "remapped_rows", CRITICAL, remap_result.describe()))
        elif remap_result.ok:
            remap = parse_remapped_rows(remap_result.stdout)
        # Otherwise the GPUs predate row remapping (pre-Ampere): retired pages cover them.
    for gpu in gpus:
        findings.extend(_judge_gpu(gpu, remap.get(normalise_bus_id(gpu.bus_id)), gpu_cfg, metrics))
    return gpus, findings


def _judge_gpu(gpu: Gpu, remap: dict[str, str | None] | None, gpu_cfg: GpuSettings,
               metrics: Metrics) -> list[Finding]:
    labels = {"gpu": gpu.index, "bus_id": gpu.bus_id, "uuid": gpu.uuid or ""}
    findings = []
    broken = [f"{name} {value}" for name, value in gpu.cells.items() if _is_error_cell(value)]
    if broken:
        findings.append(Finding("gpu_state", gpu.bus_id, CRITICAL, f"{gpu.label} reports {', '.join(broken)}"))

    temp = _number(gpu.cells["temperature.gpu"])
    if temp is not None:
        metrics.add("gpu_temperature_celsius", "GPU core temperature.", temp, labels)
        severity = (CRITICAL if temp >= gpu_cfg.temperature_critical_c
                    else WARN if temp >= gpu_cfg.temperature_warn_c else OK)
        limit = gpu_cfg.temperature_critical_c if severity == CRITICAL else gpu_cfg.temperature_warn_c
        findings.append(Finding("gpu_temperature", gpu.bus_id, severity,
                                f"{gpu.label} at {temp:g} C" + (f" (limit {limit:g} C)" if severity != OK else "")))

    volatile = _number(gpu.cells["ecc.errors.uncorrected.volatile.total"])
    aggregate = _number(gpu.cells["ecc.errors.uncorrected.aggregate.total"])
    if volatile is not None:
        metrics.add("gpu_ecc_uncorrected_volatile", "Uncorrected ECC errors since the driver loaded.", volatile, labels)
    if aggregate is not None:
        metrics.add("gpu_ecc_uncorrected_aggregate", "Uncorrected ECC errors over the GPU's life.", aggregate, labels)
    if volatile:
        findings.append(Finding("gpu_ecc", gpu.bus_id, CRITICAL,
                                f"{gpu.label}: {volatile:g} uncorrected ECC errors since the driver loaded"))
    elif aggregate:
        findings.append(Finding("gpu_ecc", gpu.bus_id, WARN,
                                f"{gpu.label}: {aggregate:g} uncorrected ECC errors over its life"))
    elif (volatile is not None or aggregate is not None) and not broken:
        findings.append(Finding("gpu_ecc", gpu.bus_id, OK, f"{gpu.label}: no uncorrected ECC errors"))

    retired = _flag(gpu.cells["retired_pages.pending"])
    if retired is not None:
        metrics.add("gpu_retired_pages_pending", "1 when retired pages wait for a GPU reset.", int(retired), labels)
        findings.append(Finding("gpu_retired_pages", gpu.bus_id, WARN if retired else OK,
                                f"{gpu.label}: retired pages pending, reset the GPU when drained" if retired
                                else f"{gpu.label}: no retired pages pending"))

    if remap is not None:
        pending = _flag(remap["remapped_rows.pending"])
        failed = _flag(remap["remapped_rows.failure"])
        for metric, key in (("pending", "remapped_rows.pending"), ("failure", "remapped_rows.failure")):
            flag = _flag(remap[key])
            if flag is not None:
                metrics.add(f"gpu_remapped_rows_{metric}", f"1 when a row remapping is {metric}.", int(flag), labels)
        for metric in ("correctable", "uncorrectable"):
            count = _number(remap[f"remapped_rows.{metric}"])
            if count is not None:
                metrics.add(f"gpu_remapped_rows_{metric}", f"Rows remapped for {metric} errors.", count, labels)
        if failed:
            findings.append(Finding("gpu_remapped_rows", gpu.bus_id, CRITICAL,
                                    f"{gpu.label}: row remapping failed, the GPU needs replacing"))
        elif pending:
            findings.append(Finding("gpu_remapped_rows", gpu.bus_id, WARN,
                                    f"{gpu.label}: remapped rows pending, reset the GPU when drained"))
        elif pending is not None or failed is not None:
            findings.append(Finding("gpu_remapped_rows", gpu.bus_id, OK, f"{gpu.label}: no row remapping pending"))
    return findings


# --------------------------------------------------------------------------- XID errors

@dataclass
class Xid:
    timestamp: float
    pci: str
    code: int
    text: str


def parse_kernel_log(text: str) -> tuple[list[Xid], float | None]:
    """XID lines of a kernel log (dmesg or `journalctl -k -o short-monotonic`) and its latest timestamp."""
    xids, latest = [], None
    for line in text.splitlines():
        stamp = _KTIME_RE.match(line)
        if not stamp:
            continue
        ts = float(stamp.group("ts"))
        latest = ts if latest is None else max(latest, ts)
        match = _XID_RE.search(line)
        if match:
            xids.append(Xid(ts, match.group("pci"), int(match.group("xid")), (match.group("rest") or "").strip()))
    return xids, latest


def boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def check_xids(config: Config, previous: dict[str, Any], metrics: Metrics, runner: Runner,
               current_boot: str) -> tuple[list[Finding], dict[str, Any]]:
    """New XID lines since the last run (or since boot on a first run); returns the new cursor."""
    gpu_cfg = config.gpu
    result = runner(list(gpu_cfg.kernel_log_command), gpu_cfg.kernel_log_timeout_s)
    if not result.ok:
        return ([Finding("kernel_log", "xid", WARN, f"cannot read the kernel log, XID errors unchecked: "
                                                    f"{result.describe()}")], previous)
    xids, latest = parse_kernel_log(result.stdout)
    same_boot = previous.get("boot_id") == current_boot and current_boot != ""
    since = previous.get("last_ts") if same_boot else None
    new = [x for x in xids if since is None or x.timestamp > since]
    cursor = {"boot_id": current_boot, "last_ts": latest if latest is not None else (since or 0.0)}
    if latest is not None and since is not None:
        cursor["last_ts"] = max(latest, since)

    grouped: dict[tuple[int, str], list[Xid]] = {}
    for xid in new:
        if xid.code not in gpu_cfg.xid_ignore:
            grouped.setdefault((xid.code, xid.pci), []).append(xid)
    findings = [Finding("kernel_log", "xid", OK, f"{len(new)} new XID lines")]
    for (code, pci), lines in sorted(grouped.items()):
        severity = CRITICAL if code in gpu_cfg.xid_critical else WARN
        times = f" x{len(lines)}" if len(lines) > 1 else ""
        findings.append(Finding("gpu_xid", f"{code}@{pci}", severity,
                                f"XID {code}{times} on {pci}: {lines[-1].text[:160]}", event=True))
        metrics.add("gpu_xid_new", "XID lines seen since the previous run.", len(lines), {"xid": str(code), "pci": pci})
    return findings, cursor


# --------------------------------------------------------------------------- disk, memory, backup

def check_disks(disk: DiskSettings, metrics: Metrics) -> list[Finding]:
    findings, seen = [], set()
    for path in disk.paths:
        try:
            st_dev = os.stat(path).st_dev
            vfs = os.statvfs(path)
        except FileNotFoundError:
            findings.append(Finding("disk", path, OK, f"{path} does not exist on this host: skipped"))
            continue
        except OSError as exc:
            findings.append(Finding("disk", path, WARN, f"cannot check {path}: {exc.strerror or exc}"))
            continue
        if st_dev in seen or vfs.f_blocks == 0:
            continue
        seen.add(st_dev)
        for check, free, total, what in (("disk", vfs.f_bavail, vfs.f_blocks, "space"),
                                         ("disk_inodes", vfs.f_favail, vfs.f_files, "inodes")):
            if not total:
                continue
            pct = 100.0 * free / total
            metrics.add(f"{check}_free_ratio", f"Free {what} on the filesystem holding the path.",
                        round(pct / 100, 4), {"path": path})
            severity = CRITICAL if pct < disk.critical_free_pct else WARN if pct < disk.warn_free_pct else OK
            findings.append(Finding(check, path, severity, f"{path}: {pct:.1f}% {what} free"))
    return findings


def check_memory(memory: MemorySettings, metrics: Metrics, meminfo: str = "/proc/meminfo") -> list[Finding]:
    values: dict[str, float] = {}
    try:
        for line in Path(meminfo).read_text().splitlines():
            name, _, rest = line.partition(":")
            if rest.split():
                values[name] = float(rest.split()[0])
    except OSError as exc:
        return [Finding("memory", "host", UNKNOWN, f"cannot read {meminfo}: {exc.strerror or exc}")]
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if not total or available is None:
        return [Finding("memory", "host", UNKNOWN, f"{meminfo} lacks MemTotal/MemAvailable")]
    pct = 100.0 * available / total
    metrics.add("memory_available_ratio", "MemAvailable / MemTotal.", round(pct / 100, 4))
    severity = (CRITICAL if pct < memory.critical_available_pct
                else WARN if pct < memory.warn_available_pct else OK)
    return [Finding("memory", "host", severity, f"{pct:.1f}% memory available")]


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def check_backup(backup: BackupSettings, metrics: Metrics, now: dt.datetime) -> list[Finding]:
    path = Path(backup.status_file)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        metrics.add("backup_status_present", "1 when the backup job has written its outcome.", 0)
        return [Finding("backup", "last_run", backup.missing, f"no backup has run yet ({path} is absent)")]
    except (OSError, ValueError) as exc:
        return [Finding("backup", "last_run", CRITICAL, f"unreadable backup status {path}: {exc}")]
    metrics.add("backup_status_present", "1 when the backup job has written its outcome.", 1)
    if not isinstance(record, dict):
        return [Finding("backup", "last_run", CRITICAL, f"{path} is not a JSON object")]
    # Redacted before it is cut short: a URL cut before its "@" no longer looks like one.
    status, message = record.get("status"), redact_credentials(str(record.get("message", "")))[:200]
    finished = _parse_time(record.get("finished"))
    if finished is not None:
        age_h = max(0.0, (now - finished).total_seconds() / 3600)
        metrics.add("backup_age_seconds", "Seconds since the last backup finished.", round(age_h * 3600))
    metrics.add("backup_last_ok", "1 when the last backup succeeded.", 1 if status == "ok" else 0)
    if status == "failed":
        return [Finding("backup", "last_run", CRITICAL,
                        f"last backup failed (finished {record.get('finished', '?')}): {message}")]
    if status != "ok":
        return [Finding("backup", "last_run", WARN, f"{path}: unknown status {status!r}")]
    if finished is None:
        return [Finding("backup", "last_run", WARN, f"{path}: no valid 'finished' time")]
    if age_h > backup.critical_age_h:
        return [Finding("backup", "last_run", CRITICAL, f"last good backup is {age_h:.0f} h old "
                                                         f"(critical above {backup.critical_age_h:g} h)")]
    if age_h > backup.warn_age_h:
        return [Finding("backup", "last_run", WARN, f"last good backup is {age_h:.0f} h old "
                                                     f"(warning above {backup.warn_age_h:g} h)")]
    return [Finding("backup", "last_run", OK, f"last backup ok, {age_h:.1f} h ago")]


# --------------------------------------------------------------------------- state, files

def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(stamp: dt.datetime) -> str:
    return stamp.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def load_state(path: str) -> dict[str, Any]:
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else {}


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Write via a temporary file in the same directory, fsync, rename: readers see old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.prom: node_exporter skips it
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def append_line(path: str, line: str) -> None:
    if path == "-":
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(state_file: str, wait_s: float) -> Iterator[bool]:
    """An exclusive lock beside the state file; yields False if another run holds it past `wait_s`."""
    path = Path(state_file).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.2)
        yield True
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- webhook

def redact_credentials(text: str) -> str:
    """Replace the password of every URL in `text` with ***."""
    return _URL_CREDENTIALS.sub(r"\g<prefix>:***@", text)


@functools.cache
def _webhook_secrets(url: str) -> tuple[str, ...]:
    """The parts of the webhook URL that grant access (all of it, its path, query and password),
    as written, percent-decoded (urllib's errors quote the decoded host) and JSON-escaped (the log
    and state are JSON), longest first so that no part is left half-replaced."""
    parts = urllib.parse.urlsplit(url)
    forms: set[str] = set()
    for part in (url, parts.path, parts.query, parts.password or ""):
        for form in (part, urllib.parse.unquote(part)):
            forms |= {form, json.dumps(form)[1:-1]}
    return tuple(sorted((f for f in forms if len(f) > 1), key=len, reverse=True))


def redact(text: str, url: str) -> str:
    """Remove the webhook URL `url` (its secret parts) and every URL's password from a message."""
    for secret in _webhook_secrets(url) if url else ():
        text = text.replace(secret, "<webhook>")
    return redact_credentials(text)


def post_webhook(settings: WebhookSettings, payload: dict[str, Any],
                 sleep: Callable[[float], None] = time.sleep) -> tuple[bool, str, int]:
    """POST `payload` as JSON; retry network errors, 5xx, 408 and 429 within the total time.

    Returns (delivered, last error with the URL scrubbed, attempts).
    """
    deadline = time.monotonic() + settings.total_timeout_s
    data = json.dumps(payload).encode("utf-8")
    opener = urllib.request.build_opener(_NoRedirect)
    attempts, error, backoff = 0, "", 1.0
    while attempts <= settings.retries:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            error = error or "no time left"
            break
        attempts += 1
        request = urllib.request.Request(settings.url, data=data, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": f"fleet-health/{VERSION}"})
        try:
            with opener.open(request, timeout=min(settings.timeout_s, remaining)) as response:
                response.read(4096)
                return True, "", attempts
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                break  # the receiver refuses this request: retrying will not help
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            error = str(reason) or type(reason).__name__
        pause = min(backoff, deadline - time.monotonic())
        if attempts > settings.retries or pause <= 0:
            break
        sleep(pause)
        backoff *= 2
    return False, redact(error, settings.url), attempts


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirected webhook is a misconfiguration: report the 3xx


def compose_messages(host: str, status: str, new: list[dict[str, Any]], events: list[dict[str, Any]],
                     recovered: list[dict[str, Any]], still_open: int) -> list[tuple[str, dict[str, Any]]]:
    """Slack-compatible payloads: one ALERT (new or worse problems, events), one RECOVERY."""
    messages = []
    if new or events:
        count = len(new) + len(events)
        lines = [f"ALERT {host}: {status.upper()} ({count} new problem{'s' if count != 1 else ''})"]
        lines += [f"- {p['severity'].upper()} {p['key']}: {p['message']}" for p in new + events]
        others = still_open - len(new)
        if others > 0:
            lines.append(f"{others} earlier problem{'s' if others != 1 else ''} still open.")
        messages.append(("alert", {"text": "\n".join(lines)}))
    if recovered:
        count = len(recovered)
        lines = [f"RECOVERY {host}: now {status.upper()} ({count} problem{'s' if count != 1 else ''} cleared)"]
        lines += [f"- {r['key']}: ok again (was {r['severity'].upper()} since {r.get('since', '?')}: "
                  f"{r['message']})" for r in recovered]
        messages.append(("recovery", {"text": "\n".join(lines)}))
    return messages


# --------------------------------------------------------------------------- one run

@dataclass
class Options:
    read_only: bool = False  # --no-webhook: send nothing, write no state, restart nothing
    pretty: bool = False


def _parallel(tasks: dict[str, Callable[[], Any]], budget_s: float) -> dict[str, Any]:
    """Run each task in a daemon thread; a task still running after `budget_s` yields its name."""
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def wrap(name: str, task: Callable[[], Any]) -> None:
        try:
            results[name] = task()
        except Exception as exc:  # a bug in one check must not hide the others
            errors[name] = exc

    threads = {name: threading.Thread(target=wrap, args=(name, task), daemon=True, name=name)
               for name, task in tasks.items()}
    for thread in threads.values():
        thread.start()
    deadline = time.monotonic() + budget_s
    for name, thread in threads.items():
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            results[name] = TimeoutError(f"check {name} did not finish within {budget_s:.0f} s")
        elif name in errors:
            results[name] = RuntimeError(f"check {name} crashed: {type(errors[name]).__name__}: {errors[name]}")
    return results


def run_checks(config: Config, state: dict[str, Any], options: Options, runner: Runner,
               metrics: Metrics, now: dt.datetime) -> tuple[list[Finding], dict[str, Any], list[str]]:
    """All checks and self-healing; returns findings, the state to keep, and actions taken."""
    tasks: dict[str, Callable[[], Any]] = {
        f"service {s.name}": functools.partial(check_service, s, config, metrics, runner) for s in config.services
    }
    if config.slots.enabled:
        tasks["slots"] = lambda: check_slots(config, runner)
    if config.tls.certificate_dirs:
        tasks["tls"] = lambda: check_certificates(config.tls, metrics, runner, now)
    if config.gpu.enabled:
        tasks["gpu"] = lambda: check_gpus(config, metrics, runner)
        current_boot = boot_id()
        tasks["xid"] = lambda: check_xids(config, state.get("kernel_log", {}), metrics, runner, current_boot)
    limits = [2 * config.http.timeout_s + 5.0,  # direct and nginx, then `systemctl is-active`
              config.slots.timeout_s + 2, 4 * config.tls.timeout_s]
    if config.gpu.enabled:
        limits += [2 * config.gpu.timeout_s + 2, config.gpu.kernel_log_timeout_s + 2]
    budget = max(limits) + 2
    results = _parallel(tasks, budget)

    findings: list[Finding] = []
    new_state: dict[str, Any] = {"kernel_log": state.get("kernel_log", {}),
                                 "restarts": dict(state.get("restarts", {}))}
    outcomes: dict[str, ServiceOutcome] = {}
    for name, result in results.items():
        if isinstance(result, Exception):
            findings.append(Finding("checker", name.replace(" ", "_"), UNKNOWN, str(result)))
        elif name in ("slots", "tls"):
            findings.extend(result)
        elif name == "gpu":
            findings.extend(result[1])
        elif name == "xid":
            xid_findings, cursor = result
            gpus = results["gpu"][0] if isinstance(results.get("gpu"), tuple) else []
            by_bus = {normalise_bus_id(g.bus_id): g.index for g in gpus}
            for finding in xid_findings:  # name the GPU, now that both threads are done
                pci = finding.target.partition("@")[2]
                index = by_bus.get(normalise_bus_id(pci)) if finding.event else None
                if index is not None:
                    finding.message = finding.message.replace(f"on {pci}:", f"on {pci} (GPU {index}):", 1)
            findings.extend(xid_findings)
            new_state["kernel_log"] = cursor
        else:
            outcomes[name.removeprefix("service ")] = result
            findings.extend(result.findings)

    findings.extend(check_disks(config.disk, metrics))
    findings.extend(check_memory(config.memory, metrics))
    if config.backup.enabled:
        findings.extend(check_backup(config.backup, metrics, now))

    # Consecutive runs with a hard failure per service. One restart per run at most, the
    # longest-failing slot first, so a host-wide fault (every slot hung at once) does not turn into
    # a restart storm; and at most max_per_hour per service, so a release that hangs again right
    # after each restart is left to the operators, with a critical alert, instead of restarted forever.
    previous = state.get("failures", {}) if isinstance(state.get("failures"), dict) else {}
    failures: dict[str, int] = {}
    for service in config.services:
        outcome = outcomes.get(service.name)
        failed = outcome is not None and outcome.hard_failure
        failures[service.name] = int(previous.get(service.name, 0)) + 1 if failed else 0
    new_state["failures"] = failures
    hour_ago = now - dt.timedelta(hours=1)
    recent = state.get("restart_times")
    recent = recent if isinstance(recent, dict) else {}
    restart_times: dict[str, list[str]] = {
        name: [t for t in times if (when := _parse_time(t)) is not None and when > hour_ago]
        for name, times in recent.items() if isinstance(times, list)}
    new_state["restart_times"] = {name: times for name, times in restart_times.items() if times}
    actions: list[str] = []
    if config.self_heal.enabled and not options.read_only:
        due = [s for s in config.services if failures[s.name] >= config.self_heal.after_failures]
        restarted = False
        for service in sorted(due, key=lambda s: -failures[s.name]):
            done = restart_times.get(service.name, [])
            if len(done) >= config.self_heal.max_per_hour:
                findings.append(Finding("self_heal", service.name, CRITICAL, (
                    f"gave up restarting {service.name}: {len(done)} restarts in the last hour "
                    f"(self_heal.max_per_hour) and its health check still fails hard, "
                    f"{failures[service.name]} runs in a row; it needs a look")))
                continue
            if restarted:
                continue
            port = outcomes[service.name].live_port
            finding = self_heal(service, port, failures[service.name], config, runner) if port else None
            if finding is not None:
                restarted = True
                findings.append(finding)
                actions.append(finding.message)
                failures[service.name] = 0
                new_state["restarts"][service.name] = new_state["restarts"].get(service.name, 0) + 1
                new_state["restart_times"][service.name] = [*done, iso(now)]
    for service, count in sorted(new_state["restarts"].items()):
        metrics.add("self_heal_restarts_total", "Restarts done by the health checker.", count,
                    {"service": service}, kind="counter")
    return findings, new_state, actions


def self_heal(service: ServiceSpec, port: int, failures: int, config: Config, runner: Runner) -> Finding | None:
    """Restart a live slot that systemd believes is fine (active) but that fails its health check:
    through the slot switch (method switch), or in place."""
    unit = f"{service.unit or service.name + '@'}{port}.service"
    if unit_state(config, unit, runner) != "active":
        return None  # stopped or failed: visible to systemd and the operators; not ours to fight
    if config.self_heal.method == "switch" and service.slots:
        return heal_by_switch(service, failures, config)
    result = runner([config.self_heal.systemctl, "restart", unit], config.self_heal.restart_timeout_s)
    if result.ok:
        return Finding("self_heal", service.name, WARN, f"restarted {unit} after {failures} failed health "
                                                        "checks in a row while systemd saw it active", event=True)
    return Finding("self_heal", service.name, CRITICAL, f"restart of {unit} after {failures} failed health "
                                                        f"checks failed: {result.describe()}", event=True)


def heal_by_switch(service: ServiceSpec, failures: int, config: Config) -> Finding | None:
    """The slot engine's restart: the live release started on the idle slot, health-gated, traffic
    switched to it without an nginx reload, the hung slot drained and stopped; audited like a deploy."""
    heal = config.self_heal
    nginx_port = "" if config.nginx.port == 80 else f":{config.nginx.port}"
    spec = slot_engine.Spec(
        service=service.name, blue_port=min(service.slots), health_path=service.path,
        health_status=service.status, health_body=service.body, health_timeout=heal.restart_timeout_s,
        drain_timeout=service.drain_timeout,
        verify_url=f"http://{config.nginx.address}{nginx_port}{service.nginx_path or service.path}",
        verify_host=service.nginx_host or None, keep=service.keep, service_root=heal.service_root,
        state_dir=config.deploy_state_dir, lock_dir=config.slots.lock_dir,
        control_socket=heal.control_socket or slot_nginx.CONTROL_SOCKET, config_dir=heal.config_dir)
    held = deploy_lock.read(service.name, config.slots.lock_dir)
    if held is not None and not deploy_lock.orphaned(held) and float(held.get("expires_epoch", 0)) >= time.time():
        return None  # a deploy is moving this service right now: not ours to interfere with
    try:
        outcome = slot_engine.run(
            spec, mode="restart", release=None, deploy_id=f"{service.name}-heal-{utcnow():%Y%m%dT%H%M%SZ}",
            owner="fleet-health", hostname=config.host or socket.gethostname(),
            lock_ttl=heal.restart_timeout_s + service.drain_timeout + 60, break_lock=False,
            audit_log=heal.audit_log or None)
    except (slot_engine.Failed, deploy_state.StateError, slot_nginx.NginxControlError) as err:
        outcome = slot_engine.Outcome("failed", str(err), getattr(err, "phase", ""))
    if outcome.result == "ok":
        return Finding("self_heal", service.name, WARN, (
            f"moved {service.name} {outcome.to_release} from slot {outcome.from_port} to {outcome.to_port} "
            f"(a restart through the slot switch) after {failures} failed health checks in a row while "
            "systemd saw it active"), event=True)
    return Finding("self_heal", service.name, CRITICAL, (
        f"self-healing switch of {service.name} failed at {outcome.phase or 'start'}: {outcome.message}; "
        "traffic stays where it was"), event=True)


def transitions(findings: list[Finding], notified: dict[str, Any], now: dt.datetime, clean_runs: dict[str, Any],
                recover_after: int
                ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Open problems now, those new or worse than what was notified, the notified ones clean for
    `recover_after` runs in a row (recovered), and the clean-run count of every notified one not open now."""
    current: dict[str, Any] = {}
    for f in findings:
        if f.event or f.severity == OK:
            continue
        known = notified.get(f.key, {})
        since = known.get("since", iso(now)) if known.get("severity") == f.severity else iso(now)
        current[f.key] = {"key": f.key, "severity": f.severity, "message": f.message, "since": since}
    new = [p for k, p in current.items()
           if k not in notified or RANK[p["severity"]] > RANK.get(notified[k].get("severity", OK), 0)]
    clean = {k: int(clean_runs.get(k, 0)) + 1 for k in notified if k not in current}
    recovered = [{**notified[k], "key": k} for k, runs in clean.items() if runs >= recover_after]
    return current, new, recovered, clean


def notify(config: Config, host: str, status: str, findings: list[Finding], state: dict[str, Any],
           now: dt.datetime, read_only: bool) -> tuple[dict[str, Any], dict[str, Any], list[str], list[str]]:
    """Send what changed; returns the webhook report, the state to keep, new keys and cleared keys.

    `notified` in the state is what the receiver was last told is open. Only a delivered message
    moves it, so a message that could not be delivered is sent again by the next run; events
    (XID lines, restarts) that could not be delivered wait in `pending_events`.
    """
    notified = state.get("notified") if isinstance(state.get("notified"), dict) else {}
    assert isinstance(notified, dict)
    clean_runs = state.get("clean_runs") if isinstance(state.get("clean_runs"), dict) else {}
    assert isinstance(clean_runs, dict)
    current, new, recovered, clean = transitions(findings, notified, now, clean_runs, config.webhook.recover_after)
    gone = {r["key"] for r in recovered}
    # Cleared, but not for enough runs yet: still open as far as anyone was told.
    holding = {k: p for k, p in notified.items() if k in clean and k not in gone}
    events = [f.as_dict() for f in findings if f.event and f.severity != OK]
    pending = [e for e in state.get("pending_events", []) if isinstance(e, dict)]
    report: dict[str, Any] = {"configured": bool(config.webhook.url), "sent": [], "failed": []}
    keep: dict[str, Any] = {"notified": notified, "pending_events": pending, "clean_runs": clean_runs}
    if read_only:
        report["skipped"] = "read-only run (--no-webhook)"
    elif not config.webhook.url:
        keep = {"notified": {**holding, **current}, "pending_events": []}  # nobody to tell: all counts as told
    else:
        told = dict(notified)
        waiting = (pending + events)[-50:]
        for kind, payload in compose_messages(host, status, new, waiting, recovered, len(current)):
            # Messages of a state written before redaction existed may still quote a secret.
            payload = {"text": redact(payload["text"], config.webhook.url)}
            delivered, error, attempts = post_webhook(config.webhook, payload)
            (report["sent"] if delivered else report["failed"]).append(
                {"kind": kind, "attempts": attempts, **({"error": error} if error else {})})
            if delivered and kind == "alert":
                told.update({p["key"]: p for p in new})
                waiting = []
            elif delivered:
                for r in recovered:
                    told.pop(r["key"], None)
        # A problem that eased (critical to warn) is recorded as told, so a relapse alerts again.
        for key, was in list(told.items()):
            now_open = current.get(key)
            if now_open is not None and RANK[now_open["severity"]] <= RANK[was["severity"]]:
                told[key] = now_open
        keep = {"notified": told, "pending_events": waiting}
    if not read_only:
        keep["clean_runs"] = {k: runs for k, runs in clean.items() if k in keep["notified"]}
    return report, keep, [p["key"] for p in new] + [e["key"] for e in events], [r["key"] for r in recovered]


def execute(config: Config, options: Options, runner: Runner = run_command) -> tuple[int, dict[str, Any]]:
    """One run under the lock (none for a read-only run); returns the exit code and the log record."""
    if options.read_only:
        return _execute(config, options, runner)
    with run_lock(config.state_file, config.lock_wait_s) as locked:
        if locked:
            return _execute(config, options, runner)
    record = {"time": iso(utcnow()), "host": config.host or socket.gethostname(), "status": UNKNOWN,
              "exit_code": 3, "message": f"another run held the lock for more than {config.lock_wait_s:g} s"}
    append_line(config.log_file, json.dumps(record))
    return 3, record


def _execute(config: Config, options: Options, runner: Runner) -> tuple[int, dict[str, Any]]:
    started = time.monotonic()
    now = utcnow()
    host = config.host or socket.gethostname()
    metrics = Metrics()
    state = load_state(config.state_file)
    findings, new_state, actions = run_checks(config, state, options, runner, metrics, now)
    for finding in findings:  # the messages go into the log, the state file and the alerts
        finding.message = redact(finding.message, config.webhook.url)
    status = worst(f.severity for f in findings)
    webhook, told, new, recovered = notify(config, host, status, findings, state, now, options.read_only)

    duration = time.monotonic() - started
    metrics.add("status", "Worst finding of the last run: 0 ok, 1 warn, 2 critical, 3 unknown.",
                METRIC_VALUE[status])
    metrics.add("last_run_timestamp_seconds", "When the last run finished.", round(time.time(), 3))
    metrics.add("run_duration_seconds", "How long the last run took.", round(duration, 3))
    metrics.add("open_problems", "Problems open after the last run.",
                sum(1 for f in findings if f.severity != OK and not f.event))
    for f in findings:
        if not f.event:
            metrics.add("check_status", "Each check: 0 ok, 1 warn, 2 critical, 3 unknown.",
                        METRIC_VALUE[f.severity], {"check": f.check, "target": f.target})
    if webhook["configured"] and not options.read_only:
        metrics.add("webhook_failures", "Webhook messages the last run could not deliver.", len(webhook["failed"]))

    record = {
        "time": iso(now), "host": host, "checker": f"fleet-health/{VERSION}", "status": status,
        "exit_code": EXIT_CODES[status], "duration_s": round(duration, 3),
        "summary": {s: sum(1 for f in findings if f.severity == s) for s in (OK, WARN, CRITICAL, UNKNOWN)},
        "problems": [f.as_dict() for f in findings if f.severity != OK],
        "new": new,
        "recovered": recovered,
        "actions": actions,
        "webhook": webhook,
        "checks": [f.as_dict() for f in findings],
    }
    if not options.read_only:
        new_state.update(version=STATE_VERSION, updated=iso(now), **told)
        write_atomic(Path(config.state_file), redact(json.dumps(new_state, indent=1), config.webhook.url) + "\n",
                     0o600)
    if config.metrics_dir:
        write_atomic(Path(config.metrics_dir) / METRICS_FILE, metrics.render(), 0o644)
    append_line(config.log_file, redact(json.dumps(record, indent=2 if options.pretty else None), config.webhook.url))
    return EXIT_CODES[status], record


# --------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fleet-health", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="JSON config rendered by the health_check role (default: built-in "
                                         "defaults: no services, no backup check)")
    parser.add_argument("--once", action="store_true", help="run one check and exit (the only mode; cron "
                                                            "provides the schedule)")
    parser.add_argument("--no-webhook", action="store_true",
                        help="read-only run: send nothing, write no state, restart nothing")
    parser.add_argument("--gpu", action="store_true", help="check GPUs even if the config does not")
    parser.add_argument("--expect-gpus", type=int, metavar="N", help="GPUs this host should have")
    parser.add_argument("--log-file", metavar="PATH", help="where the JSON line goes ('-': stdout)")
    parser.add_argument("--metrics-dir", metavar="DIR", help="node_exporter textfile directory ('' : none)")
    parser.add_argument("--state-file", metavar="PATH", help="de-duplication state file")
    parser.add_argument("--pretty", action="store_true", help="indent the JSON record")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = read_config(args.config)
    except ConfigError as exc:
        print(f"fleet-health: config error: {exc}", file=sys.stderr)
        if not args.check_config:
            record = {"time": iso(utcnow()), "host": socket.gethostname(), "status": UNKNOWN, "exit_code": 3,
                      "message": f"config error: {exc}"}
            with contextlib.suppress(OSError):
                append_line(args.log_file or Config().log_file, json.dumps(record))
        return 3
    if args.check_config:
        print(f"fleet-health: config ok ({len(config.services)} services, gpu "
              f"{'on' if config.gpu.enabled else 'off'}, webhook {'set' if config.webhook.url else 'unset'})")
        return 0
    if args.gpu:
        config.gpu.enabled = True
    if args.expect_gpus is not None:
        config.gpu.expected_count = args.expect_gpus
    if args.log_file is not None:
        config.log_file = args.log_file
    if args.metrics_dir is not None:
        config.metrics_dir = args.metrics_dir
    if args.state_file is not None:
        config.state_file = args.state_file
    options = Options(read_only=args.no_webhook, pretty=args.pretty)
    try:
        code, _ = execute(config, options)
    except Exception as exc:  # the last word of a cron job must reach its log
        message = redact(f"checker crashed: {type(exc).__name__}: {exc}", config.webhook.url)
        print(f"fleet-health: {message}", file=sys.stderr)
        with contextlib.suppress(OSError):
            append_line(config.log_file, json.dumps({"time": iso(utcnow()), "host": config.host or socket.gethostname(),
                                                     "status": UNKNOWN, "exit_code": 3, "message": message}))
        return 3
    return code


if __name__ == "__main__":
    sys.exit(main())
