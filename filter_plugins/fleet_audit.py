"""Filters that read the deploy audit log: audit.yml's inputs, and the hosts' lines merged.

Each host appends one JSON object a line to its deploy audit log (the slot engine's
engine.write_audit: deploys, rollbacks, restarts, site.yml's installs, reconfigures and
reconciles, retirements, maintenance.yml's maintenance-on and maintenance-off). `fleet_slot
action=audit` hands back a host's newest raw lines; these filters parse them, label each with its
host, merge all hosts' lines newest first and print them.

`since` is either a time, ISO 8601 (2026-11-30, 2026-11-30T09:00, 2026-11-30 09:00:00+02:00;
without an offset it is UTC), or an age: a whole number and a unit, s m h d or w (90m, 2h, 3d,
1w). A line's time is when its run finished on the host (`finished`, else `time`).

This file holds several filters, so the per-filter DOCUMENTATION / EXAMPLES / RETURN strings live
here and the unit tests parse them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ansible.errors import AnsibleFilterError

DEFAULT_LIMIT = 20
# More would be a dump of the log, which `cat` does better.
MAX_LIMIT = 10000
_AGE_RE = re.compile(r"([0-9]+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LIMIT_RE = re.compile(r"[0-9]+")
SINCE_HELP = ("an ISO 8601 time (2026-11-30, 2026-11-30T09:00, 2026-11-30T09:00:00+02:00; UTC without an "
              "offset) or an age: a whole number and s, m, h, d or w (90m, 2h, 3d, 1w)")

FLEET_AUDIT_INPUT_PROBLEMS_DOCUMENTATION = r"""
name: fleet_audit_input_problems
short_description: What is wrong with audit.yml's extra vars
description:
  - Checks C(service) (one of O(catalog)'s services), C(limit) (a whole number from 1 to 10000) and
    C(since) (an ISO 8601 time or an age such as C(2h), see P(fleet_audit_since#filter)); empty or
    missing values are fine.
  - Returns one line per problem, naming the extra var and what it accepts; an empty list when all is well.
positional: catalog, now
options:
  _input:
    description: Extra var name to the value given.
    type: dict
    required: true
  catalog:
    description: The validated catalog (fleet_catalog), or fleet_services; needed to check C(service).
    type: dict
  now:
    description: The current time (epoch seconds), for tests; the clock by default.
    type: float
"""

FLEET_AUDIT_INPUT_PROBLEMS_EXAMPLES = r"""
- name: Check the limit and since given
  ansible.builtin.assert:
    that: __problems | length == 0
    fail_msg: "{{ __problems | join(' ') }}"
  vars:
    __problems: >-
      {{ {'service': service | default(''), 'limit': limit | default(20), 'since': since | default('')}
         | fleet_audit_input_problems(fleet_catalog) }}
"""

FLEET_AUDIT_INPUT_PROBLEMS_RETURN = r"""
_value:
  description: One message per bad input.
  type: list
  elements: str
"""

FLEET_AUDIT_SINCE_DOCUMENTATION = r"""
name: fleet_audit_since
short_description: audit.yml's since as epoch seconds
description:
  - An ISO 8601 time (UTC when it has no offset) or an age (C(90m), C(2h), C(3d), C(1w)) counted back
    from now; empty gives 0 (everything).
  - A time in the future, or anything else, raises an error naming C(since) and the forms it takes.
options:
  _input:
    description: The since extra var.
    type: raw
    required: true
  now:
    description: The current time (epoch seconds); the clock by default.
    type: float
"""

FLEET_AUDIT_SINCE_EXAMPLES = r"""
- name: Read the lines of the last two hours
  fleet_slot:
    action: audit
    since_epoch: "{{ '2h' | fleet_audit_since }}"
"""

FLEET_AUDIT_SINCE_RETURN = r"""
_value:
  description: Epoch seconds; 0 when since is empty.
  type: float
"""

FLEET_AUDIT_MERGE_DOCUMENTATION = r"""
name: fleet_audit_merge
short_description: Merge hosts' raw audit lines, newest first
description:
  - Parses each host's raw lines (from C(fleet_slot action=audit), the registered result or its
    C(lines)), labels each record with the host
    it came from (C(host)) and its time (C(when), from C(finished) or else C(time)), keeps those of
    O(service) (all when empty) since O(since_epoch), and returns the newest O(limit) of all hosts.
  - A line that is not an audit record is not dropped silently but listed under C(unreadable); a
    host that did not answer (unreachable, failed) is listed under C(missing).
positional: since_epoch, limit, service
options:
  _input:
    description: Host name to its list of raw lines (any order), or to its registered C(fleet_slot) result.
    type: dict
    required: true
  since_epoch:
    description: Keep records from this time on (epoch seconds); 0 keeps all.
    type: float
    default: 0
  limit:
    description: The most records returned.
    type: int
    default: 20
  service:
    description: Keep only this service's records; empty keeps all.
    type: str
    default: ""
"""

FLEET_AUDIT_MERGE_EXAMPLES = r"""
- name: Merge the hosts' audit lines
  ansible.builtin.set_fact:
    __merged: "{{ {'web-1': ['{\"service\": \"main-api\", ...}']} | fleet_audit_merge(0, 20, 'main-api') }}"
"""

FLEET_AUDIT_MERGE_RETURN = r"""
_value:
  description: The merged records and what was left out.
  type: dict
  contains:
    records:
      description: Audit records, newest first, each with C(host) and C(when) (ISO 8601, UTC).
      type: list
      elements: dict
    matched:
      description: How many of the lines given matched, before the limit.
      type: int
    unreadable:
      description: Lines that are not audit records, as C({host, line}).
      type: list
      elements: dict
    missing:
      description: Hosts whose lines could not be read, as C({host, error}).
      type: list
      elements: dict
"""

FLEET_AUDIT_LINES_DOCUMENTATION = r"""
name: fleet_audit_lines
short_description: Merged audit records as aligned text lines
description:
  - One line per record of P(fleet_audit_merge#filter) - time, host, service, mode, from and to
    release (and slot), result, who, seconds - and, for a failed run, its message; then the
    reasons given for maintenance switches (mode C(maintenance-on) or C(maintenance-off)).
options:
  _input:
    description: The result of P(fleet_audit_merge#filter).
    type: dict
    required: true
"""

FLEET_AUDIT_LINES_EXAMPLES = r"""
- name: Print the merged lines
  ansible.builtin.debug:
    msg: "{{ __merged | fleet_audit_lines | join('\n') }}"
"""

FLEET_AUDIT_LINES_RETURN = r"""
_value:
  description: Text lines, a header first.
  type: list
  elements: str
"""


def _now(now: Any) -> float:
    return datetime.now(UTC).timestamp() if now is None else float(now)


def _since_epoch(value: Any, now: float) -> float | str:
    """The epoch of `since`, or a message saying what is wrong with it."""
    text = "" if value is None else str(value).strip()
    if not text:
        return 0.0
    age = _AGE_RE.fullmatch(text)
    if age:
        return now - int(age.group(1)) * _UNIT_SECONDS[age.group(2)]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return f"since must be {SINCE_HELP}; got '{value}'."
    epoch = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if epoch > now:
        return f"since is in the future ('{value}'): give {SINCE_HELP}."
    return epoch


def fleet_audit_since(value: Any, now: Any = None) -> float:
    epoch = _since_epoch(value, _now(now))
    if isinstance(epoch, str):
        raise AnsibleFilterError(epoch)
    return epoch


def fleet_audit_input_problems(inputs: Any, catalog: Any = None, now: Any = None) -> list[str]:
    if not isinstance(inputs, Mapping) or not isinstance(catalog, (Mapping, type(None))):
        raise AnsibleFilterError("fleet_audit_input_problems: use as {'service': ..., 'limit': ..., 'since': ...} "
                                 "| fleet_audit_input_problems(fleet_catalog)")
    problems = []
    service = inputs.get("service")
    if service not in (None, ""):
        if catalog is None:
            raise AnsibleFilterError("fleet_audit_input_problems: pass the catalog to check a service")
        if service not in catalog:
            problems.append(f"service must be one of the catalog's services: {', '.join(sorted(catalog))} "
                            f"(or left out for all of them); got '{service}'.")
    limit = inputs.get("limit")
    if limit not in (None, ""):
        text = str(limit).strip()
        if isinstance(limit, bool) or not _LIMIT_RE.fullmatch(text) or not 1 <= int(text) <= MAX_LIMIT:
            problems.append(f"limit must be a whole number of lines from 1 to {MAX_LIMIT} "
                            f"(default {DEFAULT_LIMIT}); got '{limit}'.")
    since = _since_epoch(inputs.get("since"), _now(now))
    if isinstance(since, str):
        problems.append(since)
    return problems


def _epoch(stamp: Any) -> float | None:
    """Epoch seconds of an audit time (2026-11-30T09:48:20Z); None if it is not one."""
    if not isinstance(stamp, str):
        return None
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def parse_line(line: str) -> dict[str, Any] | None:
    """An audit record with its time as `when_epoch`; None when the line is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("service"), str):
        return None
    stamp = record.get("finished") or record.get("time")
    epoch = _epoch(stamp)
    if epoch is None:
        return None
    return {**record, "when": stamp, "when_epoch": epoch}


def fleet_audit_merge(lines_by_host: Any, since_epoch: Any = 0, limit: Any = DEFAULT_LIMIT,
                      service: Any = "") -> dict[str, Any]:
    if not isinstance(lines_by_host, Mapping):
        raise AnsibleFilterError("fleet_audit_merge: expects {host: [raw audit line, ...]}, "
                                 f"got {type(lines_by_host).__name__}")
    try:
        since, most = float(since_epoch or 0), int(limit)
    except (TypeError, ValueError) as err:
        raise AnsibleFilterError(f"fleet_audit_merge: since_epoch and limit must be numbers: {err}") from err
    if most < 1:
        raise AnsibleFilterError(f"fleet_audit_merge: limit must be at least 1, got {most}")
    records: list[dict[str, Any]] = []
    unreadable: list[dict[str, str]] = []
    missing: list[dict[str, str]] = []
    for host in sorted(lines_by_host, key=str):
        lines = lines_by_host[host] if lines_by_host[host] is not None else []
        if isinstance(lines, Mapping):  # a registered result
            if lines.get("skipped") and not lines.get("unreachable"):
                continue
            if lines.get("unreachable") or lines.get("failed") or "lines" not in lines:
                error = "unreachable" if lines.get("unreachable") else "failed"
                missing.append({"host": str(host), "error": f"{error}: {str(lines.get('msg') or '').strip()}"})
                continue
            lines = lines["lines"]
        if isinstance(lines, str) or not isinstance(lines, (list, tuple)):
            raise AnsibleFilterError(f"fleet_audit_merge: the lines of {host} must be a list of strings")
        for line in lines:
            record = parse_line(str(line))
            if record is None:
                unreadable.append({"host": str(host), "line": str(line)})
            elif (not service or record["service"] == service) and record["when_epoch"] >= since:
                record["logged_host"] = record.get("host", "")
                record["host"] = str(host)
                records.append(record)
    # Newest first; the same second is ordered by host, then by start time, for a stable listing.
    records.sort(key=lambda r: (-r["when_epoch"], r["host"], str(r.get("time", ""))))
    for record in records:
        del record["when_epoch"]
    return {"records": records[:most], "matched": len(records), "unreadable": unreadable, "missing": missing}


def _release(record: Mapping[str, Any], side: str) -> str:
    release, slot = record.get(f"{side}_release") or "-", record.get(f"{side}_slot")
    return f"{release} :{slot}" if slot else str(release)


def _maintenance_reasons(records: list[Mapping[str, Any]]) -> list[str]:
    """The reasons given for maintenance switches (maintenance.yml -e reason=...), one line each."""
    reasons = [f"  {r['when']} {r['host']} {r['service']} {r.get('mode')}: {r['reason']}" for r in records
               if str(r.get("mode") or "").startswith("maintenance") and r.get("reason")]
    return ["maintenance reasons:", *reasons] if reasons else []


def fleet_audit_lines(merged: Any) -> list[str]:
    if not isinstance(merged, Mapping) or "records" not in merged:
        raise AnsibleFilterError("fleet_audit_lines: expects the result of fleet_audit_merge")
    header = ("WHEN", "HOST", "SERVICE", "MODE", "FROM", "TO", "RESULT", "WHO", "TOOK")
    rows = [header]
    notes = []
    for record in merged["records"]:
        seconds = record.get("seconds")
        rows.append((
            str(record["when"]), str(record["host"]), str(record["service"]), str(record.get("mode") or "?"),
            _release(record, "from"), _release(record, "to"), str(record.get("result") or "?"),
            str(record.get("who") or "?"),
            f"{seconds:.1f}s" if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else "-",
        ))
        if record.get("result") == "failed" and record.get("message"):
            notes.append(f"  {record['when']} {record['host']} {record['service']}: {record['message']}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    if len(rows) == 1:
        lines = ["no audit lines match"]
    if int(merged.get("matched", 0)) > len(merged["records"]):
        lines.append(f"(the {len(merged['records'])} newest; more lines match: -e limit=N shows more)")
    if notes:
        lines += ["failed runs:", *notes]
    lines += _maintenance_reasons(merged["records"])
    for bad in merged.get("unreadable") or []:
        lines.append(f"{bad['host']}: not an audit line: {bad['line'][:200]}")
    for gone in merged.get("missing") or []:
        lines.append(f"{gone['host']}: lines not read ({gone['error'].splitlines()[0][:300]})")
    return lines


class FilterModule:
    """Deploy audit log filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "fleet_audit_input_problems": fleet_audit_input_problems,
            "fleet_audit_since": fleet_audit_since,
            "fleet_audit_merge": fleet_audit_merge,
            "fleet_audit_lines": fleet_audit_lines,
        }
