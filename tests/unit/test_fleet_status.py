"""Unit tests for filter_plugins/fleet_status.py: status.yml's input checks, and the hosts' answers
(fleet_slot action=status, as fleet_slots/status.py gives them) shaped into rows and a table."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from filter_plugins import fleet_status
from filter_plugins.fleet_status import (
    FilterModule,
    fleet_status_input_problems,
    fleet_status_report,
    fleet_status_table,
)

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC).timestamp()
CATALOG = {
    "main-api": {"name": "main-api", "blue_port": 8010, "hosts": ["web-1", "web-2"]},
    "zapier-mcp": {"name": "zapier-mcp", "blue_port": 8090, "hosts": ["web-2"]},
}
AUDIT = json.dumps({"time": "2026-11-30T09:48:00Z", "finished": "2026-11-30T09:48:20Z", "who": "alice@laptop",
                    "deploy_id": "main-api-1", "service": "main-api", "mode": "deploy", "from_release": "1.0.0",
                    "to_release": "1.1.0", "result": "ok"}, sort_keys=True)


def answer(live: int = 9010, release: str = "1.1.0", **changes: Any) -> dict[str, Any]:
    """One service's part of a host's status answer: healthy, idle slot stopped, nothing held."""
    idle = 8010 if live == 9010 else 9010
    base: dict[str, Any] = {
        "in_catalog": True,
        "state": {"service": "main-api", "live_port": live, "slots": {str(live): {"release": release}},
                  "history": ["1.0.0", release], "pending": None},
        "state_error": "", "live_port": live, "idle_port": idle, "routed": live, "lock": None,
        "units": {str(live): "active", str(idle): "inactive"},
        "health": {"port": live, "status": 200, "ms": 3.4, "ok": True, "error": ""},
        "last_audit": AUDIT,
    }
    base.update(changes)
    return base


def result(**services: dict[str, Any]) -> dict[str, Any]:
    return {"changed": False, "services": {k.replace("_", "-"): v for k, v in services.items()}, "routes": {},
            "routes_error": ""}


def table_row(table: list[str], host: str, service: str) -> list[str]:
    return next(line.split("  ") for line in table if line.startswith(service) and f" {host} " in line)


def cells(table: list[str], host: str, service: str) -> list[str]:
    """The row's cells (they are separated by two spaces or more)."""
    return [cell.strip() for cell in table_row(table, host, service) if cell.strip()]


# --------------------------------------------------------------------------- inputs

def test_good_inputs_have_no_problems():
    assert fleet_status_input_problems({"service": "", "format": "table"}, CATALOG) == []
    assert fleet_status_input_problems({"service": "main-api", "format": "json"}, CATALOG) == []
    assert fleet_status_input_problems({}, CATALOG) == []


def test_bad_inputs_name_the_field_and_its_valid_values():
    assert fleet_status_input_problems({"service": "nope", "format": "xml"}, CATALOG) == [
        "service must be one of the catalog's services: main-api, zapier-mcp (or left out for all of them); "
        "got 'nope'.",
        "format must be one of table, json; got 'xml'.",
    ]


def test_the_input_check_needs_the_catalog():
    with pytest.raises(AnsibleFilterError, match="fleet_status_input_problems"):
        fleet_status_input_problems({"service": "main-api"}, None)


# --------------------------------------------------------------------------- the rows

def test_a_healthy_service_becomes_one_row_with_every_column():
    report = fleet_status_report({"web-1": result(main_api=answer())}, CATALOG, "", NOW)
    assert report["generated"] == "2026-11-30T12:00:00Z" and report["service"] is None
    assert report["hosts"] == {"web-1": {"reachable": True, "error": "", "routes_error": "", "metrics_error": ""}}
    (row,) = report["rows"]
    assert row["live"] == {"port": 9010, "release": "1.1.0", "unit": "active", "routed": 9010, "nginx_agrees": True}
    assert row["idle"] == {"port": 8010, "release": None, "unit": "inactive", "running": False}
    assert row["health"]["status"] == 200 and row["lock"] is None and row["pending"] is None
    assert row["last_deploy"] == {"when": "2026-11-30T09:48:20Z", "who": "alice@laptop", "mode": "deploy",
                                  "result": "ok", "from_release": "1.0.0", "to_release": "1.1.0",
                                  "deploy_id": "main-api-1"}
    assert row["canary_weight"] is None
    assert json.loads(json.dumps(report)) == report  # what -e format=json prints
    assert cells(fleet_status_table(report), "web-1", "main-api") == [
        "main-api", "web-1", "9010 1.1.0", "8010 stopped", "200 3ms", "2026-11-30 09:48Z deploy ok alice@laptop",
        "-", "-", "-", "?", "?", "?", "?"]  # no request figures in this answer: see the tests at the end


def test_rows_are_sorted_by_service_then_host_and_one_service_can_be_asked_for():
    results = {"web-2": result(main_api=answer(), zapier_mcp=answer(live=8090)),
               "web-1": result(main_api=answer())}
    rows = fleet_status_report(results, CATALOG, "", NOW)["rows"]
    assert [(r["service"], r["host"]) for r in rows] == [("main-api", "web-1"), ("main-api", "web-2"),
                                                          ("zapier-mcp", "web-2")]
    only = fleet_status_report(results, CATALOG, "zapier-mcp", NOW)
    assert [(r["service"], r["host"]) for r in only["rows"]] == [("zapier-mcp", "web-2")]
    assert only["service"] == "zapier-mcp"


def test_a_held_lock_a_pending_move_and_a_running_idle_slot_show():
    pending = {"deploy_id": "main-api-2", "mode": "deploy", "from_port": 9010, "to_port": 8010,
               "from_release": "1.1.0", "to_release": "1.2.0", "phase": "switched", "owner": "bob@ci",
               "started": "2026-11-30T11:58:00Z"}
    state = {**answer()["state"], "pending": pending, "slots": {"9010": {"release": "1.1.0"},
                                                                  "8010": {"release": "1.2.0"}}}
    lock = {"deploy_id": "main-api-2", "owner": "bob@ci", "started": "2026-11-30T11:58:00Z",
            "expires": "2026-11-30T12:28:00Z", "orphaned": False, "stale": False}
    one = answer(state=state, lock=lock, units={"9010": "active", "8010": "active"}, routed=8010)
    report = fleet_status_report({"web-1": result(main_api=one)}, CATALOG, "", NOW)
    row = report["rows"][0]
    assert row["pending"]["phase"] == "switched" and row["lock"]["owner"] == "bob@ci"
    assert row["idle"] == {"port": 8010, "release": "1.2.0", "unit": "active", "running": True}
    table = fleet_status_table(report)
    assert cells(table, "web-1", "main-api")[2:8] == [
        "9010 1.1.0 (nginx: 8010)", "8010 running 1.2.0", "200 3ms", "2026-11-30 09:48Z deploy ok alice@laptop",
        "bob@ci since 2026-11-30 11:58Z", "deploy 1.1.0->1.2.0 9010->8010 after switched"]
    assert "web-1 main-api: nginx routes to 8010, the state says 9010" in table
    assert "web-1 main-api: locked by deploy main-api-2 (expires 2026-11-30T12:28:00Z)" in table
    assert "web-1 main-api: deploy main-api-2 by bob@ci in progress" in table  # its deploy holds the lock


@pytest.mark.parametrize(("lock", "note"), [
    (None, "web-1 main-api: interrupted deploy main-api-2 by bob@ci: the next deploy or site.yml reconciles it"),
    ({"deploy_id": "main-api-3", "owner": "eve@ci"}, "web-1 main-api: interrupted deploy main-api-2 by bob@ci"),
    ({"deploy_id": "main-api-2", "owner": "bob@ci", "orphaned": True},
     "web-1 main-api: interrupted deploy main-api-2 by bob@ci"),
])
def test_a_pending_move_whose_deploy_holds_no_live_lock_is_called_interrupted(lock: Any, note: str):
    move = {"deploy_id": "main-api-2", "mode": "deploy", "from_port": 9010, "to_port": 8010,
            "from_release": "1.1.0", "to_release": "1.2.0", "phase": "started", "owner": "bob@ci"}
    one = answer(lock=lock)
    one["state"] = {**one["state"], "pending": move}
    table = fleet_status_table(fleet_status_report({"web-1": result(main_api=one)}, CATALOG, "", NOW))
    assert any(line.startswith(note) for line in table), table
    if lock and lock.get("orphaned"):
        assert "web-1 main-api: lock left by deploy main-api-2, whose process is gone: the next run takes it over" \
            in table


@pytest.mark.parametrize(("lock", "shown"), [
    ({"owner": "carol@ci", "started": "2026-01-01T00:00:00Z", "stale": True, "orphaned": False},
     "carol@ci since 2026-01-01 00:00Z (stale)"),
    ({"owner": "carol@ci", "started": "2026-01-01T00:00:00Z", "stale": True, "orphaned": True},
     "carol@ci since 2026-01-01 00:00Z (dead)"),
])
def test_a_stale_or_dead_lock_says_so(lock: dict[str, Any], shown: str):
    report = fleet_status_report({"web-1": result(main_api=answer(lock=lock))}, CATALOG, "", NOW)
    assert cells(fleet_status_table(report), "web-1", "main-api")[6] == shown


@pytest.mark.parametrize(("health", "shown"), [
    ({"port": 9010, "status": 503, "ms": 12.0, "ok": False, "error": ""}, "503 12ms FAIL"),
    ({"port": 9010, "status": 0, "ms": 2000.0, "ok": False, "error": "TimeoutError: timed out"}, "timeout"),
    ({"port": 9010, "status": 0, "ms": 1.0, "ok": False, "error": "ConnectionRefusedError: [Errno 111] Connection "
                                                                  "refused"}, "refused"),
    ({"port": 9010, "status": 0, "ms": 1.0, "ok": False, "error": "RemoteDisconnected: closed"}, "no answer"),
])
def test_health_shows_the_status_and_latency_or_why_there_is_none(health: dict[str, Any], shown: str):
    report = fleet_status_report({"web-1": result(main_api=answer(health=health))}, CATALOG, "", NOW)
    assert cells(fleet_status_table(report), "web-1", "main-api")[4] == shown


def test_a_down_live_slot_and_a_canary_weight_show():
    one = answer(units={"9010": "failed", "8010": "inactive"})
    one["state"] = {**one["state"], "weight": 10}
    report = fleet_status_report({"web-1": result(main_api=one)}, CATALOG, "", NOW)
    row = cells(fleet_status_table(report), "web-1", "main-api")
    assert row[2] == "9010 1.1.0 (failed)" and row[8] == "10%"


def test_a_service_without_state_a_broken_state_and_one_outside_the_catalog():
    results = {"web-1": result(
        main_api=answer(state=None, state_error="", live_port=None, idle_port=None, health=None, last_audit="",
                        units={"8010": "inactive", "9010": "inactive"}),
        zapier_mcp=answer(state=None, state_error="/var/lib/fleet/state/zapier-mcp.json: not a JSON object",
                          live_port=None, idle_port=None, health=None, last_audit="{broken"),
        old_api=answer(in_catalog=False, health=None),
    )}
    report = fleet_status_report(results, CATALOG, "", NOW)
    table = fleet_status_table(report)
    assert cells(table, "web-1", "main-api")[2:6] == ["no state", "-", "-", "-"]
    assert cells(table, "web-1", "zapier-mcp")[2:6] == ["state error", "-", "-", "unreadable"]
    assert "web-1 zapier-mcp: /var/lib/fleet/state/zapier-mcp.json: not a JSON object" in table
    assert "web-1 old-api: has a deploy state here but the catalog does not give it this host" in table
    rows = {r["service"]: r for r in report["rows"]}
    assert rows["main-api"]["last_deploy"] is None and rows["main-api"]["idle"] is None
    assert rows["zapier-mcp"]["last_deploy"] == {"error": "not an audit line: {broken"}
    assert rows["old-api"]["in_catalog"] is False and rows["old-api"]["live"]["port"] == 9010


def test_unreachable_and_failed_hosts_get_a_marked_row_per_service_and_the_table_goes_on():
    results = {
        "web-1": {"unreachable": True, "changed": False, "msg": "Failed to connect to the host via ssh: refused"},
        "web-2": {"failed": True, "msg": "MODULE FAILURE\nTraceback ..."},
    }
    report = fleet_status_report(results, CATALOG, "", NOW)
    assert [(r["service"], r["host"], r["reachable"], r["answered"]) for r in report["rows"]] == [
        ("main-api", "web-1", False, False), ("main-api", "web-2", True, False), ("zapier-mcp", "web-2", True, False)]
    table = fleet_status_table(report)
    assert cells(table, "web-1", "main-api")[2:] == ["UNREACHABLE", *["?"] * 10]
    assert cells(table, "web-2", "zapier-mcp")[2] == "FAILED"
    assert "web-1: unreachable: Failed to connect to the host via ssh: refused" in table
    assert "web-2: failed: MODULE FAILURE" in table


def test_a_skipped_host_runs_none_of_the_services_and_has_no_row():
    report = fleet_status_report({"web-1": {"skipped": True, "changed": False}, "web-2": result()}, CATALOG,
                                 "zapier-mcp", NOW)
    assert report["rows"] == [] and "web-1" not in report["hosts"]
    assert fleet_status_table(report) == ["no service runs on the hosts asked about (as of 2026-11-30T12:00:00Z)"]


def test_nginx_not_answering_is_a_note_not_a_failure():
    answered = result(main_api=answer(routed=None))
    answered["routes_error"] = "nginx control socket /run/fleet-nginx/control.sock: [Errno 2] No such file"
    report = fleet_status_report({"web-1": answered}, CATALOG, "", NOW)
    assert report["rows"][0]["live"]["nginx_agrees"] is None
    assert "web-1: nginx's slot table unreadable: nginx control socket" in " ".join(fleet_status_table(report))


def test_the_table_is_aligned():
    results = {"web-1": result(main_api=answer()), "web-2": result(zapier_mcp=answer(live=8090, release="10.20.30"))}
    table = fleet_status_table(fleet_status_report(results, CATALOG, "", NOW))
    header, *rows = table[:3]
    starts = [header.index(column) for column in fleet_status.COLUMNS]
    for row in rows:
        assert all(row[start - 2:start] == "  " and row[start] != " " for start in starts[1:]), row
    assert all(line == line.rstrip() for line in table)


def test_the_report_does_not_change_the_answers_it_reads():
    results = {"web-1": result(main_api=answer())}
    before = copy.deepcopy(results)
    fleet_status_table(fleet_status_report(results, CATALOG, "", NOW))
    assert results == before


@pytest.mark.parametrize(("call", "fragment"), [
    (lambda: fleet_status_report([], CATALOG), "fleet_status_report: use as"),
    (lambda: fleet_status_table({"hosts": {}}), "expects the result of fleet_status_report"),
])
def test_bad_input_raises_a_message_a_person_can_act_on(call: Any, fragment: str):
    with pytest.raises(AnsibleFilterError, match=fragment):
        call()


# --------------------------------------------------------------------------- plugin shape

def test_the_filters_are_registered():
    assert set(FilterModule().filters()) == {"fleet_status_input_problems", "fleet_status_report",
                                             "fleet_status_table"}


@pytest.mark.parametrize("name", sorted(FilterModule().filters()))
def test_each_filter_is_documented(name: str):
    prefix = name.upper()
    doc = yaml.safe_load(getattr(fleet_status, f"{prefix}_DOCUMENTATION"))
    assert doc["name"] == name and "_input" in doc["options"]
    assert isinstance(yaml.safe_load(getattr(fleet_status, f"{prefix}_EXAMPLES")), list)
    assert "_value" in yaml.safe_load(getattr(fleet_status, f"{prefix}_RETURN"))


# --------------------------------------------------------------------------- maintenance (maintenance.yml)

MAINTENANCE = {"since": "2026-11-30T11:30:00Z", "by": "alice@laptop", "reason": "db migration", "retry_after": 600}


def in_maintenance(routed: Any = 600, known: bool = True, record: Any = MAINTENANCE) -> dict[str, Any]:
    one = answer(maintenance_routed=routed, maintenance_known=known)
    one["state"] = {**one["state"], "maintenance": record}
    return one


def test_a_service_in_maintenance_is_marked_with_since_and_by():
    report = fleet_status_report({"web-1": result(main_api=in_maintenance())}, CATALOG, "", NOW)
    row = report["rows"][0]
    assert row["maintenance"] == {**MAINTENANCE, "on": True, "nginx_agrees": True, "routed": 600}
    table = fleet_status_table(report)
    assert cells(table, "web-1", "main-api")[2] == "9010 1.1.0 MAINT 2026-11-30 11:30Z alice@laptop"
    assert ("web-1 main-api: in maintenance since 2026-11-30T11:30:00Z by alice@laptop (Retry-After 600s): "
            "db migration") in table


def test_a_service_out_of_maintenance_has_no_mark():
    report = fleet_status_report({"web-1": result(main_api=in_maintenance(routed=None, record=None))}, CATALOG, "",
                                 NOW)
    assert report["rows"][0]["maintenance"] is None
    assert "MAINT" not in " ".join(fleet_status_table(report))
    old = fleet_status_report({"web-1": result(main_api=answer())}, CATALOG, "", NOW)  # an engine before maintenance
    assert old["rows"][0]["maintenance"] is None


@pytest.mark.parametrize(("routed", "record", "note"), [
    (None, MAINTENANCE, "web-1 main-api: the state records maintenance but nginx serves the service"),
    (30, None, "web-1 main-api: nginx answers it with the maintenance page, but its state records no maintenance"),
])
def test_nginx_and_the_state_disagreeing_is_a_note(routed: Any, record: Any, note: str):
    report = fleet_status_report({"web-1": result(main_api=in_maintenance(routed=routed, record=record))}, CATALOG,
                                 "", NOW)
    assert report["rows"][0]["maintenance"]["nginx_agrees"] is False
    assert any(line.startswith(note) for line in fleet_status_table(report))


def test_an_nginx_whose_maintenance_table_is_unknown_is_no_disagreement():
    report = fleet_status_report({"web-1": result(main_api=in_maintenance(routed=None, known=False))}, CATALOG, "",
                                 NOW)
    assert report["rows"][0]["maintenance"]["nginx_agrees"] is None
    assert not any("nginx serves the service" in line for line in fleet_status_table(report))


def test_an_unreachable_host_has_no_maintenance_to_show():
    report = fleet_status_report({"web-1": {"unreachable": True, "msg": "ssh: timeout"}}, CATALOG, "", NOW)
    assert report["rows"][0]["maintenance"] is None


# --------------------------------------------------------------------------- request figures (nginx)

def figures(**changes: Any) -> dict[str, Any]:
    """A service's request figures as fleet_slots.metrics.summary derives them on the host."""
    base = {"window_s": 300, "requests": 6000, "errors": 3, "rate": 20.0, "error_share": 0.0005, "p99_ms": 42.5,
            "p99_above_max": False, "day_s": 86400, "day_requests": 100_000, "day_errors": 7,
            "availability_24h": 0.99993}
    return {**base, **changes}


def request_cells(report: dict[str, Any], host: str = "web-1", service: str = "main-api") -> list[str]:
    return cells(fleet_status_table(report), host, service)[-4:]


def test_the_request_figures_are_the_last_four_columns_and_part_of_the_row():
    report = fleet_status_report({"web-1": result(main_api=answer(requests=figures()))}, CATALOG, "", NOW)
    table = fleet_status_table(report)
    assert table[0].split()[-5:] == ["REQ/S", "5XX", "P99", "AVAIL", "24H"]
    assert request_cells(report) == ["20.0", "0.05%", "42ms", "99.99%"]
    assert report["rows"][0]["requests"] == figures()
    assert json.loads(json.dumps(report)) == report


@pytest.mark.parametrize(("changes", "shown"), [
    ({"rate": 0.0, "requests": 0, "errors": 0, "error_share": None, "p99_ms": None, "day_requests": 0,
      "day_errors": 0, "availability_24h": None}, ["0", "-", "-", "no traffic"]),
    ({"rate": 0.25, "errors": 0, "error_share": 0.0, "p99_ms": 1.234, "day_errors": 0, "availability_24h": 1.0},
     ["0.25", "0%", "1.2ms", "100%"]),
    ({"rate": 0.004}, ["<0.01", "0.05%", "42ms", "99.99%"]),
    # Rounded away from the target: one 5xx in a million is not "0.00%", nor its day "100.00%".
    ({"rate": 3333.3, "errors": 1, "error_share": 1e-6, "day_requests": 10**6, "day_errors": 1,
      "availability_24h": 1 - 1e-6}, ["3333", "0.01%", "42ms", "99.99%"]),
    ({"p99_ms": 10_000.0, "p99_above_max": True, "day_errors": 5000, "availability_24h": 0.95},
     ["20.0", "0.05%", ">10.0s", "95.00%"]),
])
def test_the_request_cells_read_without_traffic_and_round_away_from_the_target(changes: dict[str, Any],
                                                                                shown: list[str]):
    report = fleet_status_report({"web-1": result(main_api=answer(requests=figures(**changes)))}, CATALOG, "", NOW)
    assert request_cells(report) == shown


def test_unreadable_request_figures_are_question_marks_and_a_note():
    unread = {**result(main_api=answer()), "metrics_error": "nginx control GET /metrics: 404"}
    report = fleet_status_report({"web-1": unread}, CATALOG, "", NOW)
    assert report["hosts"]["web-1"]["metrics_error"].endswith("404") and report["rows"][0]["requests"] is None
    table = fleet_status_table(report)
    assert request_cells(report) == ["?", "?", "?", "?"]
    assert "web-1: request figures unreadable: nginx control GET /metrics: 404" in table
