"""The checker's configuration: settings per section, loaded from the JSON the role renders and
checked key by key (ConfigError names the key at fault), and the severities and exit codes."""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

# XIDs that mean hardware or driver trouble (NVIDIA's XID catalogue); every other XID is a warning
# (most are application faults: 13 graphics exception, 31 page fault, 43 stopped, 45 cleanup).
DEFAULT_XID_CRITICAL = (48, 61, 62, 64, 74, 79, 94, 95, 119, 120, 140)


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


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TYPE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (is_int, "a whole number"),
    "float": (is_number, "a number"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v), "a list of strings"),
    "list[int]": (lambda v: isinstance(v, list) and all(is_int(i) for i in v), "a list of whole numbers"),
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


