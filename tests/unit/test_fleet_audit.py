"""Unit tests for filter_plugins/fleet_audit.py: audit.yml's input checks, the since forms, and the
merge of several hosts' raw audit lines (as engine.write_audit writes them)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from filter_plugins import fleet_audit
from filter_plugins.fleet_audit import (
    FilterModule,
    fleet_audit_input_problems,
    fleet_audit_lines,
    fleet_audit_merge,
    fleet_audit_since,
)

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC).timestamp()
CATALOG: dict[str, dict[str, Any]] = {"main-api": {}, "zapier-mcp": {}}


def line(service: str, finished: str, mode: str = "deploy", result: str = "ok", **extra: Any) -> str:
    """An audit line with the fields and key order engine.write_audit gives it."""
    record = {"time": finished, "finished": finished, "who": "alice@laptop", "deploy_id": f"{service}-x",
              "host": "logged", "service": service, "mode": mode, "from_release": "1.0.0", "to_release": "1.1.0",
              "from_slot": 8010, "to_slot": 9010, "result": result, "phase": "drain", "message": "",
              "seconds": 4.2, "durations": {}, "broke_lock": {}, "reconciled": "", **extra}
    return json.dumps(record, sort_keys=True)


# --------------------------------------------------------------------------- inputs

@pytest.mark.parametrize(("since", "expected"), [
    ("", 0.0),
    (None, 0.0),
    ("90s", NOW - 90),
    ("30m", NOW - 1800),
    ("2h", NOW - 7200),
    ("3d", NOW - 3 * 86400),
    ("1w", NOW - 604800),
    ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC).timestamp()),
    ("2026-11-30T09:00", datetime(2026, 11, 30, 9, tzinfo=UTC).timestamp()),
    ("2026-11-30 09:00:00Z", datetime(2026, 11, 30, 9, tzinfo=UTC).timestamp()),
    ("2026-11-30T11:00:00+02:00", datetime(2026, 11, 30, 9, tzinfo=UTC).timestamp()),
])
def test_since_takes_an_iso_time_or_an_age(since: Any, expected: float):
    assert fleet_audit_since(since, NOW) == expected


@pytest.mark.parametrize(("since", "fragment"), [
    ("yesterday", "since must be an ISO 8601 time"),
    ("2h ago", "since must be"),
    ("-2h", "since must be"),
    ("2y", "since must be"),
    ("2026-13-01", "since must be"),
    ("2026-12-01", "since is in the future"),
])
def test_a_bad_since_is_named_with_the_forms_it_takes(since: str, fragment: str):
    with pytest.raises(AnsibleFilterError, match=fragment) as raised:
        fleet_audit_since(since, NOW)
    assert "90m, 2h, 3d, 1w" in str(raised.value)
    assert fleet_audit_input_problems({"since": since}, CATALOG, NOW) == [str(raised.value)]


def test_good_inputs_have_no_problems():
    assert fleet_audit_input_problems({"service": "main-api", "limit": "5", "since": "3d"}, CATALOG, NOW) == []
    assert fleet_audit_input_problems({"service": "", "limit": 20, "since": ""}, CATALOG, NOW) == []
    assert fleet_audit_input_problems({}, None, NOW) == []


@pytest.mark.parametrize("limit", ["0", 0, "-1", "ten", "2.5", fleet_audit.MAX_LIMIT + 1, True])
def test_a_bad_limit_is_named(limit: Any):
    problems = fleet_audit_input_problems({"limit": limit}, CATALOG, NOW)
    assert len(problems) == 1 and problems[0].startswith("limit must be a whole number of lines from 1 to")


def test_an_unknown_service_is_named_with_the_catalogs_services():
    problems = fleet_audit_input_problems({"service": "nope", "limit": "x"}, CATALOG, NOW)
    assert problems[0] == ("service must be one of the catalog's services: main-api, zapier-mcp "
                           "(or left out for all of them); got 'nope'.")
    assert problems[1].startswith("limit must be")


def test_the_input_check_needs_a_mapping_and_a_catalog_for_a_service():
    with pytest.raises(AnsibleFilterError, match="use as"):
        fleet_audit_input_problems(["limit"], CATALOG)
    with pytest.raises(AnsibleFilterError, match="pass the catalog"):
        fleet_audit_input_problems({"service": "main-api"})


# --------------------------------------------------------------------------- the merge

def test_lines_of_all_hosts_are_merged_newest_first_and_labelled_with_their_host():
    merged = fleet_audit_merge({
        "web-2": [line("main-api", "2026-11-30T10:00:00Z"), line("main-api", "2026-11-30T08:00:00Z")],
        "web-1": [line("zapier-mcp", "2026-11-30T11:00:00Z"), line("main-api", "2026-11-30T09:00:00Z")],
    })
    assert [(r["when"], r["host"], r["service"]) for r in merged["records"]] == [
        ("2026-11-30T11:00:00Z", "web-1", "zapier-mcp"),
        ("2026-11-30T10:00:00Z", "web-2", "main-api"),
        ("2026-11-30T09:00:00Z", "web-1", "main-api"),
        ("2026-11-30T08:00:00Z", "web-2", "main-api"),
    ]
    assert merged["records"][0]["logged_host"] == "logged" and merged["matched"] == 4
    assert "when_epoch" not in merged["records"][0]


def test_the_same_second_orders_by_host_and_keeps_each_hosts_order():
    same = "2026-11-30T10:00:00Z"
    merged = fleet_audit_merge({"b": [line("main-api", same, "restart"), line("main-api", same, "deploy")],
                                "a": [line("zapier-mcp", same)]})
    assert [(r["host"], r["mode"]) for r in merged["records"]] == [("a", "deploy"), ("b", "restart"),
                                                                    ("b", "deploy")]


def test_limit_service_and_since_select_the_newest_matching_lines():
    lines = {"web-1": [line("main-api", f"2026-11-30T{hour:02d}:00:00Z") for hour in range(10, 0, -1)],
             "web-2": [line("zapier-mcp", "2026-11-30T10:30:00Z")]}
    since = datetime(2026, 11, 30, 5, tzinfo=UTC).timestamp()
    merged = fleet_audit_merge(lines, since, 3, "main-api")
    assert [r["when"][11:13] for r in merged["records"]] == ["10", "09", "08"]
    assert merged["matched"] == 6  # 05:00 to 10:00: since is inclusive
    assert [r["when"][11:13] for r in fleet_audit_merge(lines, since, 100, "main-api")["records"]][-1] == "05"
    assert len(fleet_audit_merge(lines, 0, 100)["records"]) == 11


def test_a_record_without_finished_is_timed_by_its_start():
    record = json.loads(line("main-api", "2026-11-30T10:00:00Z"))
    del record["finished"]
    merged = fleet_audit_merge({"web-1": [json.dumps(record)]})
    assert merged["records"][0]["when"] == "2026-11-30T10:00:00Z"


def test_lines_that_are_not_records_and_hosts_that_did_not_answer_are_reported():
    merged = fleet_audit_merge({
        "web-1": {"lines": [line("main-api", "2026-11-30T10:00:00Z"), "{half a li", '{"service": "x"}', "[]"]},
        "web-2": {"unreachable": True, "msg": "ssh: connect to host web-2: Connection refused\nmore"},
        "web-3": {"failed": True, "msg": "boom"},
        "web-4": {"skipped": True},
        "web-5": None,
    })
    assert len(merged["records"]) == 1
    assert [bad["line"] for bad in merged["unreadable"]] == ["{half a li", '{"service": "x"}', "[]"]
    assert merged["missing"] == [{"host": "web-2", "error": "unreachable: ssh: connect to host web-2: "
                                                            "Connection refused\nmore"},
                                 {"host": "web-3", "error": "failed: boom"}]
    text = fleet_audit_lines(merged)
    assert "web-1: not an audit line: {half a li" in text
    assert "web-2: lines not read (unreachable: ssh: connect to host web-2: Connection refused)" in text


@pytest.mark.parametrize(("args", "fragment"), [
    ((["a"],), "expects {host: \\[raw audit line"),
    (({"web-1": "one line"},), "must be a list of strings"),
    (({}, "soon"), "must be numbers"),
    (({}, 0, 0), "limit must be at least 1"),
])
def test_bad_merge_input_raises_a_message_a_person_can_act_on(args: tuple[Any, ...], fragment: str):
    with pytest.raises(AnsibleFilterError, match=fragment):
        fleet_audit_merge(*args)


# --------------------------------------------------------------------------- the lines printed

def test_the_printed_lines_are_aligned_and_say_what_was_left_out():
    failed = line("main-api", "2026-11-30T09:00:00Z", result="failed", message="health gate: 503")
    install = line("zapier-mcp", "2026-11-30T10:00:00Z", mode="install", from_release="", from_slot=0)
    merged = fleet_audit_merge({"web-1": [install, failed], "web-2": [line("main-api", "2026-11-30T08:00:00Z")]},
                               0, 2)
    text = fleet_audit_lines(merged)
    assert text[0].split() == ["WHEN", "HOST", "SERVICE", "MODE", "FROM", "TO", "RESULT", "WHO", "TOOK"]
    assert text[1].split() == ["2026-11-30T10:00:00Z", "web-1", "zapier-mcp", "install", "-", "1.1.0", ":9010",
                               "ok", "alice@laptop", "4.2s"]
    assert text[2].split()[:7] == ["2026-11-30T09:00:00Z", "web-1", "main-api", "deploy", "1.0.0", ":8010", "1.1.0"]
    assert len({row.index("SERVICE" if i == 0 else row.split()[2]) for i, row in enumerate(text[:3])}) == 1
    assert "(the 2 newest; more lines match: -e limit=N shows more)" in text
    assert text[-2:] == ["failed runs:", "  2026-11-30T09:00:00Z web-1 main-api: health gate: 503"]
    assert all(row == row.rstrip() for row in text)


def test_nothing_matching_says_so():
    assert fleet_audit_lines(fleet_audit_merge({"web-1": []})) == ["no audit lines match"]
    with pytest.raises(AnsibleFilterError, match="expects the result of fleet_audit_merge"):
        fleet_audit_lines([])


# --------------------------------------------------------------------------- plugin shape

def test_the_filters_are_registered():
    assert set(FilterModule().filters()) == {"fleet_audit_input_problems", "fleet_audit_since",
                                             "fleet_audit_merge", "fleet_audit_lines"}


@pytest.mark.parametrize("name", sorted(FilterModule().filters()))
def test_each_filter_is_documented(name: str):
    prefix = name.upper()
    doc = yaml.safe_load(getattr(fleet_audit, f"{prefix}_DOCUMENTATION"))
    assert doc["name"] == name and "_input" in doc["options"]
    assert isinstance(yaml.safe_load(getattr(fleet_audit, f"{prefix}_EXAMPLES")), list)
    assert "_value" in yaml.safe_load(getattr(fleet_audit, f"{prefix}_RETURN"))


def test_maintenance_switches_show_their_reasons_after_the_table():
    def line(mode: str, finished: str, reason: str) -> str:
        return json.dumps({"time": finished, "finished": finished, "service": "main-api", "mode": mode,
                           "result": "ok", "who": "alice@laptop", "from_release": "1.0.0", "to_release": "1.0.0",
                           "from_slot": 8010, "to_slot": 8010, "seconds": 0.02, "reason": reason})

    merged = fleet_audit_merge({"web-1": [line("maintenance-off", "2026-11-30T10:05:00Z", ""),
                                          line("maintenance-on", "2026-11-30T10:00:00Z", "db migration")]})
    lines = fleet_audit_lines(merged)
    assert lines[1].split()[3] == "maintenance-off" and lines[2].split()[3] == "maintenance-on"
    assert lines[3:] == ["maintenance reasons:", "  2026-11-30T10:00:00Z web-1 main-api maintenance-on: db migration"]
