"""Unit tests for roles/ufw/filter_plugins/ufw_rules.py: layered rules, slot-port guard, pruning."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError

PLUGIN = Path(__file__).resolve().parents[2] / "roles/ufw/filter_plugins/ufw_rules.py"
_spec = importlib.util.spec_from_file_location("ufw_rules", PLUGIN)
assert _spec and _spec.loader
ufw_rules = importlib.util.module_from_spec(_spec)
sys.modules["ufw_rules"] = ufw_rules
_spec.loader.exec_module(ufw_rules)

SLOTS = [8000, 9000, 8010, 9010, 8080, 9080, 8090, 9090]
SSH = [{"name": "ssh", "rule": "limit", "port": 22, "proto": "tcp"}]
WEB = [{"name": "http", "port": 80}, {"name": "https", "port": 443}]


def declared(**lists: Any) -> list[dict[str, Any]]:
    return ufw_rules.ufw_declared_rules(lists, SLOTS)


def problems(**lists: Any) -> str:
    with pytest.raises(AnsibleFilterError) as err:
        declared(**lists)
    return str(err.value)


def test_denials_come_first_and_each_kind_keeps_the_layers_order():
    rules = declared(ssh=SSH, ufw_rules=WEB, ufw_group_rules=[{"name": "dns", "port": 53, "proto": "udp"},
                                                              {"name": "no smtp", "rule": "reject", "port": 25}],
                     ufw_host_rules=[{"name": "blocked", "rule": "deny", "from": "203.0.113.0/24"}])
    # ufw applies the first rule that matches: a host's deny must sit before the group's allow 80.
    assert [r["name"] for r in rules] == ["no smtp", "blocked", "ssh", "http", "https", "dns"]
    http = rules[3]
    assert {k: http[k] for k in ("rule", "port", "proto", "from", "to", "interface", "direction")} == {
        "rule": "allow", "port": "80", "proto": "tcp", "from": "any", "to": "any", "interface": None,
        "direction": "in"}
    assert rules[2]["rule"] == "limit"
    # A rule without a port covers every protocol unless it says otherwise.
    assert rules[1]["proto"] == "any" and rules[1]["port"] is None


def test_comment_carries_an_id_of_what_the_rule_does():
    (http,) = declared(ufw_rules=[{"name": "http", "port": 80}])
    assert http["comment"] == f"fleet:{http['id']} http"
    assert len(http["id"]) == 10
    (renamed,) = declared(ufw_rules=[{"name": "web", "port": "80", "proto": "tcp"}])
    assert renamed["id"] == http["id"]  # same meaning, same id: a rename only updates the comment
    (moved,) = declared(ufw_rules=[{"name": "http", "port": 8081}])
    assert moved["id"] != http["id"]  # new meaning: a new rule; the old one gets removed


def test_a_list_of_sources_makes_one_rule_per_source():
    rules = declared(ssh=[{"name": "ssh trusted", "port": 22, "from": ["10.0.0.0/8", "192.0.2.7"]}])
    assert [(r["name"], r["from"]) for r in rules] == [("ssh trusted", "10.0.0.0/8"), ("ssh trusted", "192.0.2.7")]
    assert rules[0]["id"] != rules[1]["id"]


def test_port_ranges_are_normalised():
    (rule,) = declared(ufw_rules=[{"name": "passive ftp", "port": "60000:60100", "proto": "tcp"}])
    assert rule["port"] == "60000:60100"


@pytest.mark.parametrize(
    "rule,message",
    [
        ({"port": 80}, "name None is required"),
        ({"name": "x", "port": 80, "action": "allow"}, "unknown key(s) action"),
        ({"name": "x", "port": 70000}, "must lie within 1-65535"),
        ({"name": "x", "port": "90:80"}, "lowest first"),
        ({"name": "x", "port": "http"}, "must be a port (443) or a range"),
        ({"name": "x", "port": 80, "rule": "permit"}, "rule 'permit' must be one of allow, deny, reject, limit"),
        ({"name": "x", "port": 80, "proto": "sctp"}, "proto 'sctp' must be one of tcp, udp, any"),
        ({"name": "x", "port": "100:200", "proto": "any"}, "a port range needs proto tcp or udp"),
        ({"name": "x", "port": 80, "from": "example.com"}, "from 'example.com' must be 'any' or an IPv4/IPv6"),
        ({"name": "x", "port": 80, "direction": "both"}, "direction 'both' must be one of in, out"),
        ({"name": "x", "port": 80, "interface": "eth0; rm -rf /"}, "is not an interface name"),
        ({"name": "it's", "port": 80}, "name \"it's\" is required"),
    ],
)
def test_bad_rules_are_named_in_the_message(rule, message):
    text = problems(ufw_host_rules=[rule])
    assert "ufw_host_rules[0]" in text
    assert message in text


def test_every_problem_is_reported_at_once():
    text = problems(ufw_rules=[{"name": "a", "port": 0}], ufw_group_rules=[{"name": "b", "proto": "icmp"}])
    assert "ufw_rules[0] (a)" in text and "ufw_group_rules[0] (b)" in text


@pytest.mark.parametrize(
    "rule",
    [
        {"name": "oops", "port": 8010},
        {"name": "range", "port": "8000:8100", "proto": "tcp"},
        {"name": "monitoring host", "from": "10.1.2.3"},
        {"name": "limited", "rule": "limit", "port": 9090},
    ],
)
def test_rules_that_would_open_a_slot_port_are_refused(rule):
    text = problems(ufw_group_rules=[rule])
    assert "slot ports stay reachable on loopback only" in text
    assert "ufw_group_rules[0]" in text


@pytest.mark.parametrize(
    "rule",
    [
        {"name": "deny slot", "rule": "deny", "port": 8010},
        {"name": "loopback", "port": 8010, "interface": "lo"},
        {"name": "outgoing", "port": 8010, "direction": "out"},
        {"name": "udp", "port": 8010, "proto": "udp"},
        {"name": "metrics", "port": 9100},
    ],
)
def test_rules_that_leave_slot_ports_closed_are_accepted(rule):
    assert declared(ufw_group_rules=[rule])


def test_duplicate_rules_and_names_are_refused():
    assert "does the same as ufw_rules[0] (http)" in problems(ufw_rules=WEB, ufw_host_rules=[{"name": "h", "port": 80}])
    assert "has the same name as ufw_rules[0] (http)" in problems(ufw_rules=WEB,
                                                                ufw_host_rules=[{"name": "http", "port": 8443}])


def test_lists_must_be_lists():
    assert "ufw_host_rules: must be a list of rules" in problems(ufw_host_rules={"name": "x"})
    assert declared(ufw_rules=WEB, ufw_host_rules=None)
    with pytest.raises(AnsibleFilterError, match="expects a mapping"):
        ufw_rules.ufw_declared_rules([], SLOTS)


SHOW_ADDED = """Added user rules (see 'ufw status' for running firewall):
ufw limit 22/tcp comment 'fleet:{ssh} ssh'
ufw allow 80/tcp comment 'fleet:{http} http'
ufw allow 8443/tcp comment 'fleet:0123456789 old https'
ufw allow 8010
ufw allow from 10.0.0.0/8 to any port 9100 proto tcp comment 'added by hand'
ufw route allow in on eth1 out on eth2
"""


def test_undeclared_rules_are_deleted_declared_ones_kept():
    rules = declared(ssh=SSH, ufw_rules=[WEB[0]])
    out = SHOW_ADDED.format(ssh=rules[0]["id"], http=rules[1]["id"])
    assert ufw_rules.ufw_undeclared_rules(out, rules) == [
        ["ufw", "delete", "allow", "8443/tcp", "comment", "fleet:0123456789 old https"],
        ["ufw", "delete", "allow", "8010"],
        ["ufw", "delete", "allow", "from", "10.0.0.0/8", "to", "any", "port", "9100", "proto", "tcp",
         "comment", "added by hand"],
        ["ufw", "route", "delete", "allow", "in", "on", "eth1", "out", "on", "eth2"],
    ]


def test_nothing_to_delete_on_an_empty_rule_set():
    out = "Added user rules (see 'ufw status' for running firewall):\n(None)\n"
    assert ufw_rules.ufw_undeclared_rules(out, declared(ssh=SSH)) == []


# `ufw status verbose` as ufw 0.36 prints it (Debian 12).
ACTIVE = """Status: active
Logging: on (low)
Default: deny (incoming), allow (outgoing), deny (routed)
New profiles: skip

To                         Action      From
--                         ------      ----
22/tcp                     LIMIT IN    Anywhere                   # fleet:647a8f6c99 ssh
"""
WANT = {"incoming": "deny", "outgoing": "allow", "routed": "deny", "logging": "low", "remove_undeclared": True}


def added(rules: list[dict[str, Any]], *extra: str) -> str:
    lines = [f"ufw {r['rule']} {r['port']}/{r['proto']} comment '{r['comment']}'" for r in rules]
    return "\n".join(["Added user rules (see 'ufw status' for running firewall):", *lines, *extra]) + "\n"


def test_no_drift_when_status_policies_logging_and_rules_match():
    rules = declared(ssh=SSH, ufw_rules=WEB)
    assert ufw_rules.ufw_drift(ACTIVE, added(rules), rules, WANT) == []


def test_drift_names_each_difference():
    rules = declared(ssh=SSH, ufw_rules=WEB)
    status = ACTIVE.replace("on (low)", "on (medium)").replace("deny (routed)", "allow (routed)")
    assert ufw_rules.ufw_drift(status, added(rules[:2], "ufw allow 8080/tcp"), rules, WANT) == [
        "logging is 'on (medium)', want 'on (low)'",
        "default routed policy is allow, want deny",
        f"rule {rules[2]['comment']!r} is missing",
        "rule to remove: delete allow 8080/tcp",
    ]


def test_an_inactive_ufw_and_a_fresh_install_drift():
    rules = declared(ssh=SSH)
    assert ufw_rules.ufw_drift("Status: inactive\n", added([]), rules, WANT) == [
        "ufw is inactive",
        "logging is None, want 'on (low)'",
        "default incoming policy is None, want deny",
        "default outgoing policy is None, want allow",
        "default routed policy is None, want deny",
        f"rule {rules[0]['comment']!r} is missing",
    ]


def test_logging_off_and_undeclared_rules_kept_when_asked():
    rules = declared(ssh=SSH)
    status = ACTIVE.replace("Logging: on (low)", "Logging: off")
    want = {**WANT, "logging": "off", "remove_undeclared": False}
    assert ufw_rules.ufw_drift(status, added(rules, "ufw allow 8080/tcp"), rules, want) == []


# --------------------------------------------------------------------------- denials first

BLOCKED = [{"name": "blocked", "rule": "deny", "port": 80, "from": "203.0.113.7"},
           {"name": "blocked6", "rule": "deny", "port": 80, "from": "2001:db8::7"},
           {"name": "no smtp", "rule": "reject", "port": 25}]


def status_of(*lines: str) -> str:
    return ACTIVE.split("22/tcp")[0] + "".join(f"{line}\n" for line in lines)


def test_a_deny_ufw_holds_after_an_allow_is_taken_out_to_be_prepended():
    rules = declared(ssh=SSH, ufw_rules=WEB, ufw_host_rules=BLOCKED)
    ids = {r["name"]: r["id"] for r in rules}
    show = "\n".join(["Added user rules (see 'ufw status' for running firewall):",
                      f"ufw limit 22/tcp comment 'fleet:{ids['ssh']} ssh'",
                      f"ufw allow 80/tcp comment 'fleet:{ids['http']} http'",
                      f"ufw deny from 203.0.113.7 to any port 80 proto tcp comment 'fleet:{ids['blocked']} blocked'",
                      f"ufw reject 25/tcp comment 'fleet:{ids['no smtp']} no smtp'",
                      f"ufw deny from 2001:db8::7 to any port 80 proto tcp comment 'fleet:{ids['blocked6']} b6'"])
    late = status_of(f"22/tcp LIMIT IN Anywhere # fleet:{ids['ssh']} ssh",
                     f"80/tcp ALLOW IN Anywhere # fleet:{ids['http']} http",
                     f"80/tcp DENY IN 203.0.113.7 # fleet:{ids['blocked']} blocked",
                     f"25/tcp REJECT IN Anywhere # fleet:{ids['no smtp']} no smtp",
                     f"22/tcp (v6) LIMIT IN Anywhere (v6) # fleet:{ids['ssh']} ssh",
                     f"80/tcp DENY IN 2001:db8::7 # fleet:{ids['blocked6']} b6",
                     f"80/tcp (v6) ALLOW IN Anywhere (v6) # fleet:{ids['http']} http")
    deletes = ufw_rules.ufw_misplaced_denials(late, show, rules)
    assert deletes == [["ufw", "delete", "deny", "from", "203.0.113.7", "to", "any", "port", "80", "proto", "tcp",
                        "comment", f"fleet:{ids['blocked']} blocked"],
                       ["ufw", "delete", "reject", "25/tcp", "comment", f"fleet:{ids['no smtp']} no smtp"],
                       ["ufw", "delete", "deny", "from", "2001:db8::7", "to", "any", "port", "80", "proto", "tcp",
                        "comment", f"fleet:{ids['blocked6']} b6"]]
    assert "rule out of place (deny and reject rules come first): deny from 203.0.113.7" in " ".join(
        ufw_rules.ufw_drift(late, show, rules, {**WANT, "remove_undeclared": False}))
    # Where ufw prepend puts them: first in the IPv4 list and first in the IPv6 list.
    first = status_of(f"80/tcp DENY IN 203.0.113.7 # fleet:{ids['blocked']} blocked",
                      f"25/tcp REJECT IN Anywhere # fleet:{ids['no smtp']} no smtp",
                      f"22/tcp LIMIT IN Anywhere # fleet:{ids['ssh']} ssh",
                      f"80/tcp ALLOW IN Anywhere # fleet:{ids['http']} http",
                      f"80/tcp DENY IN 2001:db8::7 # fleet:{ids['blocked6']} b6",
                      f"25/tcp (v6) REJECT IN Anywhere (v6) # fleet:{ids['no smtp']} no smtp",
                      f"22/tcp (v6) LIMIT IN Anywhere (v6) # fleet:{ids['ssh']} ssh",
                      f"80/tcp (v6) ALLOW IN Anywhere (v6) # fleet:{ids['http']} http")
    assert ufw_rules.ufw_misplaced_denials(first, show, rules) == []
    # One denial missing: all go back, so that the new one lands in its declared place.
    assert len(ufw_rules.ufw_misplaced_denials(first, show, declared(
        ssh=SSH, ufw_rules=WEB, ufw_group_rules=[{"name": "ftp", "rule": "deny", "port": 21}],
        ufw_host_rules=BLOCKED))) == 3


def test_without_declared_denials_nothing_moves():
    rules = declared(ssh=SSH, ufw_rules=WEB)
    assert ufw_rules.ufw_misplaced_denials(ACTIVE, added(rules), rules) == []


def test_a_rule_becomes_the_ufw_command_that_adds_it():
    blocked, = declared(ufw_host_rules=[{"name": "blocked", "rule": "deny", "port": "6000:6010", "proto": "udp",
                                         "from": "203.0.113.0/24", "interface": "eth0"}])
    assert ufw_rules.ufw_rule_argv(blocked, "prepend") == [
        "ufw", "prepend", "deny", "in", "on", "eth0", "from", "203.0.113.0/24", "to", "any", "port", "6000:6010",
        "proto", "udp", "comment", blocked["comment"]]
    everything, = declared(ufw_host_rules=[{"name": "out", "rule": "reject", "direction": "out"}])
    assert ufw_rules.ufw_rule_argv(everything) == [
        "ufw", "reject", "out", "from", "any", "to", "any", "comment", everything["comment"]]


def test_filters_are_registered():
    assert set(ufw_rules.FilterModule().filters()) == {
        "ufw_declared_rules", "ufw_undeclared_rules", "ufw_drift", "ufw_misplaced_denials", "ufw_rule_argv"}


@pytest.mark.parametrize("rule", [
    {"name": "block all", "rule": "deny"},
    {"name": "no low ports", "rule": "reject", "port": "1:1024"},
    {"name": "no ssh", "rule": "deny", "port": 22, "proto": "tcp"},
])
def test_a_denial_of_the_ssh_port_to_every_source_is_refused(rule):
    """Denials come before the SSH rule: this one would lock every SSH client out."""
    with pytest.raises(AnsibleFilterError) as err:
        ufw_rules.ufw_declared_rules({"ssh": SSH, "ufw_host_rules": [rule]}, SLOTS, 22)
    verb = {"deny": "denies", "reject": "rejects"}[rule["rule"]]
    assert f"ufw_host_rules[0] ({rule['name']}): {verb} the SSH port 22 to every source" in str(err.value)


@pytest.mark.parametrize("rule", [
    {"name": "one source", "rule": "deny", "from": "203.0.113.7"},
    {"name": "other ports", "rule": "deny", "port": "23:1024"},
    {"name": "udp", "rule": "deny", "port": 22, "proto": "udp"},
    {"name": "outgoing", "rule": "deny", "port": 22, "direction": "out"},
])
def test_denials_that_leave_ssh_open_are_accepted(rule):
    rules = ufw_rules.ufw_declared_rules({"ssh": SSH, "ufw_host_rules": [rule]}, SLOTS, 22)
    assert rule["name"] in [r["name"] for r in rules]
