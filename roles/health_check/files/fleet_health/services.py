"""Each service on this host: its live slot's /health directly and through nginx, its slots (a
pending move, an idle slot left running, strangers on slot ports), and self-healing."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet_slots import engine as slot_engine
from fleet_slots import lock as deploy_lock
from fleet_slots import nginx as slot_nginx
from fleet_slots import state as deploy_state

from .common import Finding, Metrics, Runner, utcnow
from .config import CRITICAL, OK, UNKNOWN, VERSION, WARN, Config, HttpSettings, ServiceSpec, is_int

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
    if expect_port is not None and is_int(served) and served != expect_port:
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


def maintenance_of(state_dir: str, name: str) -> dict[str, Any] | None:
    """The maintenance the service's deploy state records (maintenance.yml), None when it is off."""
    try:
        current = deploy_state.load(name, state_dir)
    except deploy_state.StateError:
        return None  # the service check reports it
    return current.maintenance if current is not None else None


def check_maintenance(service: ServiceSpec, config: Config, metrics: Metrics) -> ServiceOutcome | None:
    """A service in maintenance is reported as such (ok: it is on purpose), and neither checked nor
    healed: nginx answers it with its maintenance page, and its slots may be down for the work."""
    held = maintenance_of(config.deploy_state_dir, service.name)
    metrics.add("service_maintenance", "1 while the service is in maintenance (maintenance.yml): not checked.",
                1 if held else 0, {"service": service.name})
    if held is None:
        return None
    reason = f": {held['reason']}" if held.get("reason") else ""
    return ServiceOutcome([Finding("maintenance", service.name, OK, (
        f"{service.name} is in maintenance since {held.get('since') or '?'} by {held.get('by') or '?'}{reason}; "
        f"nginx answers it with 503 (Retry-After {held.get('retry_after')}s): not checked, no alert, no "
        "self-healing until maintenance.yml turns it off"))], None, False)


def check_service(service: ServiceSpec, config: Config, metrics: Metrics, runner: Runner) -> ServiceOutcome:
    in_maintenance = check_maintenance(service, config, metrics)
    if in_maintenance is not None:
        return in_maintenance
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
        if current is None or current.maintenance is not None:
            continue  # none to judge, or in maintenance: the service check says so
        deploying = deploy_lock.in_progress(deploy_lock.read(service.name, config.slots.lock_dir))
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


def unit_state(config: Config, unit: str, runner: Runner) -> str:
    """systemd's word for the unit (active, inactive, failed, ...); is-active exits 3 when not active."""
    result = runner([config.self_heal.systemctl, "is-active", unit], 5.0)
    return result.stdout.strip() or f"in an unknown state ({result.describe()})"


# --------------------------------------------------------------------------- disk, memory, backup

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
    if deploy_lock.in_progress(deploy_lock.read(service.name, config.slots.lock_dir)):
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


