"""Filters behind status.yml: its inputs, and the hosts' reports shaped into one table or document.

Each host answers `fleet_slot action=status` in one call (fleet_slots/status.py): per service its
deploy state, nginx's route, both slots' units, the live slot's health, the deploy lock and the
newest audit line. `fleet_status_report` turns those answers (and the hosts that did not answer)
into one row per service per host; `fleet_status_table` prints the rows for a person.

The CANARY column is the state's `weight`: the share of requests (percent) a deploy's canary
sends to the new slot while it holds a step (hot_deploy.yml -e canary=5,25,100); "-" otherwise.

This file holds several filters, so the per-filter DOCUMENTATION / EXAMPLES / RETURN strings live
here and the unit tests parse them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ansible.errors import AnsibleFilterError

FORMATS = ("table", "json")
COLUMNS = ("SERVICE", "HOST", "LIVE", "IDLE", "HEALTH", "LAST DEPLOY", "LOCK", "PENDING", "CANARY")
# nginx's request figures of the service on the host (fleet_slots.metrics): the last 5 minutes'
# request rate, 5xx share and p99 latency, and the last 24 hours' availability.
REQUEST_COLUMNS = ("REQ/S", "5XX", "P99", "AVAIL 24H")
REQUEST_FIELDS = ("window_s", "requests", "errors", "rate", "error_share", "p99_ms", "p99_above_max", "day_s",
                  "day_requests", "day_errors", "availability_24h")

FLEET_STATUS_INPUT_PROBLEMS_DOCUMENTATION = r"""
name: fleet_status_input_problems
short_description: What is wrong with status.yml's extra vars
description:
  - Checks C(service) (empty, or one of the catalog's services) and C(format) (C(table) or C(json)).
  - Returns one line per problem, naming the extra var and its valid values; an empty list when all is well.
positional: catalog
options:
  _input:
    description: Extra var name to the value given.
    type: dict
    required: true
  catalog:
    description: The validated catalog (fleet_catalog), or fleet_services.
    type: dict
    required: true
"""

FLEET_STATUS_INPUT_PROBLEMS_EXAMPLES = r"""
- name: Check the service and format given
  ansible.builtin.assert:
    that: __problems | length == 0
    fail_msg: "{{ __problems | join(' ') }}"
  vars:
    __problems: "{{ {'service': service | default(''), 'format': format | default('table')}
                    | fleet_status_input_problems(fleet_catalog) }}"
"""

FLEET_STATUS_INPUT_PROBLEMS_RETURN = r"""
_value:
  description: One message per bad input.
  type: list
  elements: str
"""

FLEET_STATUS_REPORT_DOCUMENTATION = r"""
name: fleet_status_report
short_description: The hosts' status answers as one row per service per host
description:
  - O(_input) maps each host to its registered C(fleet_slot action=status) result; an unreachable or
    failed host gets a row per catalog service it runs, marked, instead of being left out.
  - A host skipped because it runs none of the services asked about has no rows.
positional: catalog, service, now
options:
  _input:
    description: Host name to its registered result.
    type: dict
    required: true
  catalog:
    description: The validated catalog (fleet_catalog).
    type: dict
    required: true
  service:
    description: Only this service; empty for all.
    type: str
    default: ""
  now:
    description: The report's time (epoch seconds); the clock by default.
    type: float
"""

FLEET_STATUS_REPORT_EXAMPLES = r"""
- name: Shape the hosts' answers
  ansible.builtin.set_fact:
    __report: "{{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars, '__status')))
                  | fleet_status_report(fleet_catalog, service | default('')) }}"
"""

FLEET_STATUS_REPORT_RETURN = r"""
_value:
  description: The status document (what -e format=json prints).
  type: dict
  contains:
    generated:
      description: When it was made, ISO 8601 UTC.
      type: str
    service:
      description: The service asked about, or null for all.
      type: str
    hosts:
      description: Per host, C(reachable), C(error), nginx's C(routes_error) and C(metrics_error) (why
        the request figures could not be read).
      type: dict
    rows:
      description: >-
        One per service per host, sorted: C(service), C(host), C(reachable), C(answered) (false for an
        unreachable or failed host), C(error), C(in_catalog),
        C(live) (port, release, unit, routed, nginx_agrees), C(idle) (port, release, unit, running),
        C(health) (port, status, ms, ok, error), C(last_deploy) (when, who, mode, result, from_release,
        to_release, deploy_id), C(lock) (owner, deploy_id, since, expires, stale, dead), C(pending)
        (the interrupted move's journal), C(canary_weight) and C(maintenance) (on, since, by, reason,
        retry_after as the state records them, and nginx_agrees), C(requests) (nginx's request figures:
        over the last C(window_s) seconds C(requests), C(errors) (5xx), C(rate) per second, C(error_share)
        and C(p99_ms) (with C(p99_above_max) when above the highest latency bucket); over the last
        C(day_s) seconds C(day_requests), C(day_errors) and C(availability_24h); shares null without
        traffic); null where there is nothing.
      type: list
      elements: dict
"""

FLEET_STATUS_TABLE_DOCUMENTATION = r"""
name: fleet_status_table
short_description: A status document as an aligned text table
description:
  - One line per row of P(fleet_status_report#filter) under a header, then notes for what does not
    fit a cell (unreachable hosts, broken states, nginx disagreeing with a state).
options:
  _input:
    description: The result of P(fleet_status_report#filter).
    type: dict
    required: true
"""

FLEET_STATUS_TABLE_EXAMPLES = r"""
- name: Print the status table
  ansible.builtin.debug:
    msg: "{{ __report | fleet_status_table }}"
"""

FLEET_STATUS_TABLE_RETURN = r"""
_value:
  description: The table's lines, the header first, then notes and the report's time.
  type: list
  elements: str
"""


def fleet_status_input_problems(inputs: Any, catalog: Any) -> list[str]:
    if not isinstance(inputs, Mapping) or not isinstance(catalog, Mapping):
        raise AnsibleFilterError("fleet_status_input_problems: use as {'service': ..., 'format': ...} "
                                 "| fleet_status_input_problems(fleet_catalog)")
    problems = []
    service = inputs.get("service")
    if service not in (None, "") and service not in catalog:
        problems.append(f"service must be one of the catalog's services: {', '.join(sorted(catalog))} "
                        f"(or left out for all of them); got '{service}'.")
    fmt = inputs.get("format")
    if fmt not in (None, "") and fmt not in FORMATS:
        problems.append(f"format must be one of {', '.join(FORMATS)}; got '{fmt}'.")
    return problems


def _last_deploy(line: Any) -> dict[str, Any] | None:
    if not line:
        return None
    try:
        record = json.loads(line)
    except (TypeError, ValueError):
        record = None
    if not isinstance(record, dict):
        return {"error": f"not an audit line: {str(line)[:200]}"}
    return {"when": record.get("finished") or record.get("time"), "who": record.get("who"),
            "mode": record.get("mode"), "result": record.get("result"),
            "from_release": record.get("from_release"), "to_release": record.get("to_release"),
            "deploy_id": record.get("deploy_id")}


def _lock(held: Any) -> dict[str, Any] | None:
    if not isinstance(held, Mapping):
        return None
    return {"owner": held.get("owner"), "deploy_id": held.get("deploy_id"), "since": held.get("started"),
            "expires": held.get("expires"), "stale": bool(held.get("stale")), "dead": bool(held.get("orphaned")),
            "error": held.get("error", "")}


def _pending(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    move = (state or {}).get("pending")
    if not isinstance(move, Mapping):
        return None
    keys = ("mode", "deploy_id", "owner", "phase", "from_port", "to_port", "from_release", "to_release", "started")
    return {k: move.get(k) for k in keys}


def _maintenance(state: Mapping[str, Any] | None, answer: Mapping[str, Any]) -> dict[str, Any] | None:
    """The maintenance the state records (None: off), and whether nginx applies the same
    (None when nginx's maintenance table could not be read)."""
    record = (state or {}).get("maintenance")
    routed = answer.get("maintenance_routed")
    known = bool(answer.get("maintenance_known"))
    if not isinstance(record, Mapping):
        if known and routed is not None:
            return {"on": False, "since": None, "by": None, "reason": "", "retry_after": None,
                    "nginx_agrees": False, "routed": routed}
        return None
    retry = record.get("retry_after")
    return {"on": True, "since": record.get("since"), "by": record.get("by"), "reason": record.get("reason") or "",
            "retry_after": retry, "nginx_agrees": (routed == retry) if known else None, "routed": routed}


def _maintenance_mark(row: Mapping[str, Any]) -> str:
    """What the LIVE cell adds for a service in maintenance: MAINT since when and by whom."""
    held = row.get("maintenance")
    if not held or not held["on"]:
        return ""
    return f" MAINT {_short_time(held['since'])} {held['by'] or '?'}"


def _maintenance_notes(where: str, row: Mapping[str, Any]) -> list[str]:
    held = row.get("maintenance")
    if not held:
        return []
    if not held["on"]:
        return [f"{where}: nginx answers it with the maintenance page, but its state records no maintenance: "
                "run maintenance.yml with state=off (or on) to set both"]
    notes = [f"{where}: in maintenance since {held['since']} by {held['by'] or '?'} (Retry-After "
             f"{held['retry_after']}s)" + (f": {held['reason']}" if held["reason"] else "")]
    if held["nginx_agrees"] is False:
        notes.append(f"{where}: the state records maintenance but nginx serves the service: run maintenance.yml "
                     "with state=on again")
    return notes


def _requests(figures: Any) -> dict[str, Any] | None:
    """The request figures the host derived from nginx's counters (fleet_slots.metrics.summary)."""
    if not isinstance(figures, Mapping):
        return None
    return {field: figures.get(field) for field in REQUEST_FIELDS}


def _row(host: str, name: str, answer: Mapping[str, Any], catalog: Mapping[str, Any]) -> dict[str, Any]:
    state = answer.get("state") if isinstance(answer.get("state"), Mapping) else None
    units = answer.get("units") or {}
    live_port, idle_port, routed = answer.get("live_port"), answer.get("idle_port"), answer.get("routed")
    slots = (state or {}).get("slots") or {}
    idle_unit = units.get(str(idle_port)) if idle_port is not None else None
    return {
        "service": name, "host": host, "reachable": True, "answered": True, "error": answer.get("state_error") or "",
        "in_catalog": bool(answer.get("in_catalog", name in catalog)),
        "live": None if state is None else {
            "port": live_port, "release": (slots.get(str(live_port)) or {}).get("release"),
            "unit": units.get(str(live_port)), "routed": routed,
            "nginx_agrees": None if routed is None else routed == live_port,
        },
        "idle": None if idle_port is None else {
            "port": idle_port, "release": (slots.get(str(idle_port)) or {}).get("release"),
            "unit": idle_unit, "running": idle_unit == "active",
        },
        "health": answer.get("health"),
        "last_deploy": _last_deploy(answer.get("last_audit")),
        "lock": _lock(answer.get("lock")),
        "pending": _pending(state),
        "canary_weight": (state or {}).get("weight"),
        "maintenance": _maintenance(state, answer),
        "requests": _requests(answer.get("requests")),
    }


def _unanswered(host: str, name: str, reachable: bool, error: str, catalog: Mapping[str, Any]) -> dict[str, Any]:
    return {"service": name, "host": host, "reachable": reachable, "answered": False, "error": error,
            "in_catalog": name in catalog,
            "live": None, "idle": None, "health": None, "last_deploy": None, "lock": None, "pending": None,
            "canary_weight": None, "maintenance": None, "requests": None}


def _services_of(host: str, catalog: Mapping[str, Any], service: str) -> list[str]:
    return sorted(name for name, svc in catalog.items()
                  if (not service or name == service) and host in ((svc or {}).get("hosts") or []))


def fleet_status_report(results: Any, catalog: Any, service: Any = "", now: Any = None) -> dict[str, Any]:
    if not isinstance(results, Mapping) or not isinstance(catalog, Mapping):
        raise AnsibleFilterError("fleet_status_report: use as {host: registered status result} "
                                 "| fleet_status_report(fleet_catalog, service)")
    service = str(service or "")
    moment = datetime.now(UTC) if now is None else datetime.fromtimestamp(float(now), UTC)
    rows: list[dict[str, Any]] = []
    hosts: dict[str, dict[str, Any]] = {}
    for host in sorted(results, key=str):
        result = results[host] if isinstance(results[host], Mapping) else {}
        name = str(host)
        if result.get("unreachable") or result.get("failed") or "services" not in result:
            if result.get("skipped") and not result.get("unreachable"):
                continue  # runs none of the services asked about
            reachable = not result.get("unreachable")
            error = str(result.get("msg") or ("unreachable" if not reachable else "no status answer")).strip()
            hosts[name] = {"reachable": reachable, "error": error, "routes_error": ""}
            rows += [_unanswered(name, s, reachable, error, catalog) for s in _services_of(name, catalog, service)]
            continue
        hosts[name] = {"reachable": True, "error": "", "routes_error": result.get("routes_error") or "",
                       "metrics_error": result.get("metrics_error") or ""}
        rows += [_row(name, s, answer, catalog) for s, answer in sorted((result.get("services") or {}).items())
                 if not service or s == service]
    rows.sort(key=lambda r: (r["service"], r["host"]))
    return {"generated": moment.strftime("%Y-%m-%dT%H:%M:%SZ"), "service": service or None, "hosts": hosts,
            "rows": rows}


# --------------------------------------------------------------------------- the table

def _short_time(stamp: Any) -> str:
    """2026-11-30T09:48:20Z -> 2026-11-30 09:48Z (the table's width matters more than seconds)."""
    text = str(stamp or "?")
    return f"{text[:10]} {text[11:16]}Z" if len(text) >= 16 and text[10] == "T" else text


def _cells(row: Mapping[str, Any]) -> tuple[str, ...]:
    if not row["answered"]:
        return (row["service"], row["host"], "UNREACHABLE" if not row["reachable"] else "FAILED",
                "?", "?", "?", "?", "?", "?")
    live, idle, health = row["live"], row["idle"], row["health"]
    if live is None:
        live_cell = "state error" if row["error"] else "no state"
    else:
        live_cell = f"{live['port']} {live['release']}"
        if live["nginx_agrees"] is False:
            live_cell += f" (nginx: {live['routed']})"
        if live["unit"] not in (None, "active"):
            live_cell += f" ({live['unit']})"
        live_cell += _maintenance_mark(row)
    idle_cell = "-"
    if idle is not None:
        word = {"active": "running", "inactive": "stopped"}.get(idle["unit"] or "", idle["unit"] or "?")
        idle_cell = f"{idle['port']} {word}" + (f" {idle['release']}" if idle["release"] and idle["running"] else "")
    health_cell = "-"
    if health:
        if health.get("status"):
            health_cell = f"{health['status']} {health['ms']:.0f}ms" + ("" if health.get("ok") else " FAIL")
        else:
            error = str(health.get("error") or "")
            health_cell = "timeout" if "timed out" in error else "refused" if "Refused" in error else "no answer"
    last = row["last_deploy"]
    last_cell = "-"
    if last:
        last_cell = "unreadable" if "error" in last else (
            f"{_short_time(last['when'])} {last['mode']} {last['result']} {last['who'] or '?'}")
    held = row["lock"]
    lock_cell = "-"
    if held:
        lock_cell = f"{held['owner'] or '?'} since {_short_time(held['since'])}" + (
            " (dead)" if held["dead"] else " (stale)" if held["stale"] else "")
    move = row["pending"]
    pending_cell = "-" if not move else (
        f"{move['mode']} {move['from_release'] or '?'}->{move['to_release'] or '?'} "
        f"{move['from_port']}->{move['to_port']} after {move['phase']}")
    weight = row["canary_weight"]
    return (row["service"], row["host"], live_cell, idle_cell, health_cell, last_cell, lock_cell, pending_cell,
            "-" if weight is None else f"{weight}%")


def _request_cells(row: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """REQ/S, 5XX, P99, AVAIL 24H. A share is rounded away from the target: a 5xx share up (never
    "0.00%" with errors), an availability down (never "100.00%" with errors)."""
    figures = row.get("requests")
    if not row["answered"] or not figures:
        return ("?", "?", "?", "?")
    rate = float(figures.get("rate") or 0)
    rate_cell = "0" if rate == 0 else "<0.01" if rate < 0.01 else f"{rate:.2f}" if rate < 10 else (
        f"{rate:.1f}" if rate < 100 else f"{rate:.0f}")
    share = figures.get("error_share")
    share_cell = "-" if share is None else "0%" if not figures.get("errors") else (
        f"{math.ceil(float(share) * 10000) / 100:.2f}%")
    p99 = figures.get("p99_ms")
    p99_cell = "-"
    if p99 is not None:
        p99 = float(p99)
        p99_cell = (">" if figures.get("p99_above_max") else "") + (
            f"{p99 / 1000:.1f}s" if p99 >= 1000 else f"{p99:.0f}ms" if p99 >= 10 else f"{p99:.1f}ms")
    available = figures.get("availability_24h")
    avail_cell = "no traffic" if available is None else "100%" if not figures.get("day_errors") else (
        f"{math.floor(float(available) * 10000) / 100:.2f}%")
    return (rate_cell, share_cell, p99_cell, avail_cell)


def _request_notes(report: Mapping[str, Any]) -> list[str]:
    return [f"{host}: request figures unreadable: {info['metrics_error']}"
            for host, info in sorted(report.get("hosts", {}).items())
            if info.get("metrics_error") and not info.get("routes_error")]


def _notes(report: Mapping[str, Any]) -> list[str]:
    notes = []
    for host, info in sorted(report.get("hosts", {}).items()):
        if info.get("error"):
            first = str(info["error"]).splitlines()[0] if str(info["error"]).strip() else ""
            notes.append(f"{host}: {'unreachable' if not info.get('reachable') else 'failed'}: {first[:300]}")
        if info.get("routes_error"):
            notes.append(f"{host}: nginx's slot table unreadable: {info['routes_error']}")
    for row in report.get("rows", []):
        where = f"{row['host']} {row['service']}"
        if not row["answered"]:
            continue  # said once per host above
        if row["error"]:
            notes.append(f"{where}: {row['error']}")
        if not row["in_catalog"]:
            notes.append(f"{where}: has a deploy state here but the catalog does not give it this host")
        notes += _maintenance_notes(where, row)
        if row["live"] and row["live"]["nginx_agrees"] is False:
            notes.append(f"{where}: nginx routes to {row['live']['routed']}, the state says {row['live']['port']}")
        held, move = row["lock"], row["pending"]
        if held and held["dead"]:
            notes.append(f"{where}: lock left by deploy {held['deploy_id']}, whose process is gone: the next run "
                         "takes it over")
        elif held:
            notes.append(f"{where}: locked by deploy {held['deploy_id']} (expires {held['expires']})")
        if move and held and not held["dead"] and held["deploy_id"] == move["deploy_id"]:
            notes.append(f"{where}: {move['mode']} {move['deploy_id']} by {move['owner'] or '?'} in progress")
        elif move:
            notes.append(f"{where}: interrupted {move['mode']} {move['deploy_id']} by {move['owner'] or '?'}: "
                         "the next deploy or site.yml reconciles it")
        if row["health"] and row["health"].get("error"):
            notes.append(f"{where}: health: {row['health']['error']}")
    return notes


def fleet_status_table(report: Any) -> list[str]:
    if not isinstance(report, Mapping) or "rows" not in report:
        raise AnsibleFilterError("fleet_status_table: expects the result of fleet_status_report")
    if not report["rows"]:
        return [f"no service runs on the hosts asked about (as of {report.get('generated', '?')})"]
    rows = [(*COLUMNS, *REQUEST_COLUMNS), *((*_cells(row), *_request_cells(row)) for row in report["rows"])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    notes = _notes(report) + _request_notes(report)
    return [*lines, *(["", *notes] if notes else []), f"(as of {report.get('generated', '?')})"]


class FilterModule:
    """Fleet status filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "fleet_status_input_problems": fleet_status_input_problems,
            "fleet_status_report": fleet_status_report,
            "fleet_status_table": fleet_status_table,
        }
