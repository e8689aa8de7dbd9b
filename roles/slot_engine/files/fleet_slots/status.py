"""What status.yml asks of one host, gathered in one call and changing nothing.

Per service: its deploy state (state.load_all), nginx's route (one read of the slot table), both
slots' units (one systemctl call for all of them), the live slot's health now (all services
probed at once, each with a short timeout), the deploy lock, its newest audit line (raw:
the controller parses it), and nginx's request figures (one read of the control socket).
Problems are reported, never raised: one broken service or an nginx that does not answer must not
hide the others.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import audit, host, lock, metrics, nginx, state
from .engine import Spec  # a catalog service: status reads its slots and its health check


def probe(check: Spec, port: int, timeout: float) -> dict[str, Any]:
    """GET the slot's health path on loopback: status, latency in ms, whether it passes."""
    started = time.monotonic()
    answer = host.get(f"http://127.0.0.1:{port}{check.health_path}", timeout=timeout)
    return {"port": port, "status": answer.status, "ms": round((time.monotonic() - started) * 1000, 1),
            "ok": answer.status == check.health_status and check.health_body in answer.body,
            "error": answer.error}


def units_active(units: list[str]) -> dict[str, str]:
    """systemctl is-active of every unit in one call (it prints one line per unit, in order)."""
    if not units:
        return {}
    lines = host.systemctl("is-active", *units, check=False).stdout.splitlines()
    return {unit: (lines[i].strip() if i < len(lines) else "unknown") for i, unit in enumerate(units)}


def lock_of(service: str, lock_dir: str) -> dict[str, Any] | None:
    held = lock.read(service, lock_dir)
    if held is None:
        return None
    return {**held, "orphaned": lock.orphaned(held), "stale": held.get("expires_epoch", 0) < time.time(),
            "describe": lock.describe(held)}


def _ports(current: state.State | None, check: Spec | None) -> tuple[int | None, int | None]:
    """(live, idle) slot ports; the idle one from the catalog, else from the state's other slot."""
    if current is None:
        return (None, None) if check is None else (check.blue_port, check.blue_port + 1000)
    if check is not None:
        return current.live_port, current.idle_port(check.blue_port)
    others = [int(p) for p in current.slots if int(p) != current.live_port]
    return current.live_port, (others[0] if others else None)


def _add_maintenance(services: dict[str, dict[str, Any]], control_socket: str, routes_error: str) -> None:
    """Each service's maintenance as nginx applies it (`maintenance_routed`: its Retry-After, None
    when nginx serves it); the state's record is in `state`. An nginx whose Lua predates
    maintenance answers 404: reported as unknown (None), like an unreadable slot table."""
    applied: dict[str, int] | None = None
    if not routes_error:
        try:
            applied = nginx.maintenance(control_socket)
        except nginx.NginxControlError:
            applied = None
    for name, service in services.items():
        service["maintenance_routed"] = applied.get(name) if applied is not None else None
        service["maintenance_known"] = applied is not None


def _add_requests(services: dict[str, dict[str, Any]], control_socket: str, routes_error: str) -> str:
    """Each service's request figures as nginx counts them (`requests`: the last 5 minutes' rate, 5xx
    share and p99, the last 24 hours' availability; fleet_slots.metrics), in one read of the control
    socket; None for a service nginx does not count. Returns why they could not be read ("" if they
    could): an nginx whose Lua predates the figures answers 404."""
    figures: dict[str, dict[str, Any]] = {}
    error = routes_error and "nginx's control socket does not answer"
    if not routes_error:
        try:
            figures = metrics.summaries(nginx.metrics(control_socket=control_socket))
        except (nginx.NginxControlError, metrics.MetricsError, KeyError, TypeError, ValueError) as err:
            error = str(err)
    for name, service in services.items():
        service["requests"] = figures.get(name)
    return error


def report(checks: list[Spec], *, include_unlisted: bool, state_dir: str = state.STATE_DIR,
           lock_dir: str = lock.LOCK_DIR, control_socket: str = nginx.CONTROL_SOCKET,
           audit_log: str = "", probe_timeout: float = 2.0) -> dict[str, Any]:
    """Every service of `checks` (the catalog's, for this host), and with `include_unlisted` every
    other service that has a state here (one the catalog dropped or moved away)."""
    by_name = {c.service: c for c in checks}
    states = state.load_all(state_dir)
    names = sorted(set(by_name) | (set(states) if include_unlisted else set()))
    try:
        routes, routes_error = nginx.routes(control_socket), ""
    except nginx.NginxControlError as err:
        routes, routes_error = {}, str(err)

    services: dict[str, dict[str, Any]] = {}
    ports: dict[str, tuple[int | None, int | None]] = {}
    for name in names:
        found = states.get(name)
        current = found if isinstance(found, state.State) else None
        ports[name] = _ports(current, by_name.get(name))
        services[name] = {
            "in_catalog": name in by_name,
            "state": current.to_dict() if current else None,
            "state_error": str(found) if isinstance(found, state.StateError) else "",
            "live_port": ports[name][0] if current else None,
            "idle_port": ports[name][1] if current else None,
            "routed": routes.get(name),
            "lock": lock_of(name, lock_dir),
        }

    units = [host.unit_of(name, port) for name in names for port in ports[name] if port is not None]
    active = units_active(units)
    for name in names:
        services[name]["units"] = {str(port): active[host.unit_of(name, port)]
                                   for port in ports[name] if port is not None}

    # Only a live slot the state names is probed: a service without state has nothing serving.
    probes = {name: (by_name[name], services[name]["live_port"]) for name in names
              if name in by_name and services[name]["live_port"] is not None}
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(probes)))) as pool:
        answers = {name: pool.submit(probe, check, port, probe_timeout) for name, (check, port) in probes.items()}
        for name in names:
            services[name]["health"] = answers[name].result() if name in answers else None

    last = audit.last_of_each(audit_log, names) if audit_log else {}
    for name in names:
        services[name]["last_audit"] = last.get(name, "")
    _add_maintenance(services, control_socket, routes_error)
    metrics_error = _add_requests(services, control_socket, routes_error)
    return {"services": services, "routes": routes, "routes_error": routes_error, "metrics_error": metrics_error}
