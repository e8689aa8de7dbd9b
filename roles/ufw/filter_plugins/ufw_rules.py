"""Filters of the ufw role: validate the layered rule lists, and find the rules to remove.

The role owns the host's ufw rule set. Every rule it adds carries the comment
``fleet:<id> <name>``, where ``<id>`` hashes what the rule does (not its name), so a rule whose
meaning changes is a new rule and the old one is found by its id and removed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: ufw_declared_rules
short_description: Validate and combine the ufw role's layered rule lists
description:
  - Takes an ordered mapping of list name to rules (SSH rules, C(ufw_rules), C(ufw_group_rules),
    C(ufw_host_rules)), checks every rule, and returns them in order with defaults filled in, an
    C(id) and the C(comment) the role writes into ufw.
  - A rule whose C(from) is a list stands for one rule per source address, all with its name.
  - >-
    Returned in the order ufw must hold them, as it applies the first rule that matches - every
    deny and reject rule first, then the allow and limit rules (the SSH ones first); each kind keeps
    the declared order.
  - Fails with one line per problem, naming the list, the index and the rule's name; an allowed
    rule that would open one of the C(protected_ports) (the catalog's slot ports) is a problem,
    because slot ports stay reachable on loopback only.
positional: rule_lists, protected_ports, ssh_port
options:
  rule_lists:
    description: Mapping of list name to a list of rules.
    type: dict
    required: true
  protected_ports:
    description: Ports no incoming allow or limit rule may open (except on C(lo)).
    type: list
    elements: int
    default: []
  ssh_port:
    description:
      - The SSH port; a deny or reject rule that covers it for every source is a problem, as
        denials come before the SSH rule and it would lock SSH out. Unset, nothing is checked.
    type: int
"""

EXAMPLES = r"""
__ufw_declared: >-
  {{ {'ufw_rules': ufw_rules, 'ufw_host_rules': ufw_host_rules}
     | ufw_declared_rules(fleet_catalog.values() | map(attribute='slots') | flatten) }}
__ufw_delete: "{{ __ufw_show_added.stdout | ufw_undeclared_rules(__ufw_declared) }}"
"""

RETURN = r"""
_value:
  description:
    - ufw_declared_rules, a list of rules with the keys name, rule, port (a string or null),
      proto, from, to, interface (or null), direction, id and comment.
    - ufw_undeclared_rules, the argument vectors of the C(ufw delete) commands that remove every
      rule ufw holds that is not declared.
    - ufw_misplaced_denials, the argument vectors of the C(ufw delete) commands that take out the
      declared deny and reject rules, when ufw does not hold them all, in order, before its allows.
    - ufw_rule_argv, the argument vector of the C(ufw) command that adds a declared rule.
  type: list
"""

RULE_KEYS = ("name", "rule", "port", "proto", "from", "to", "interface", "direction")
ACTIONS = ("allow", "deny", "reject", "limit")
PROTOCOLS = ("tcp", "udp", "any")
DIRECTIONS = ("in", "out")
ID_LENGTH = 10
COMMENT_RE = re.compile(rf"^fleet:([0-9a-f]{{{ID_LENGTH}}})(?: |$)")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:/-]{0,63}$")
PORT_RE = re.compile(r"^(\d{1,5})(?::(\d{1,5}))?$")
ADDRESS_RE = re.compile(r"^(any|[0-9A-Fa-f.:]+(/\d{1,3})?)$")
INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")
DENIALS = ("deny", "reject")
STATUS_COMMENT_RE = re.compile(rf"# fleet:([0-9a-f]{{{ID_LENGTH}}})(?: |$)")
IPV6_RE = re.compile(r"[0-9A-Fa-f]*:[0-9A-Fa-f]*:")


def _port_range(where: str, value: Any, problems: list[str]) -> tuple[int, int] | None:
    if value is None:
        return None
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    match = PORT_RE.match(text) if isinstance(text, str) else None
    if not match:
        problems.append(f"{where}: port {value!r} must be a port (443) or a range ('8000:8100')")
        return None
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 1 <= low <= high <= 65535:
        problems.append(f"{where}: port {value!r} must lie within 1-65535, lowest first")
        return None
    return low, high


def _choice(where: str, key: str, value: Any, choices: tuple[str, ...], problems: list[str]) -> str:
    if value not in choices:
        problems.append(f"{where}: {key} {value!r} must be one of {', '.join(choices)}")
    return str(value)


def _address(where: str, key: str, value: Any, problems: list[str]) -> str:
    if not isinstance(value, str) or not ADDRESS_RE.match(value):
        problems.append(f"{where}: {key} {value!r} must be 'any' or an IPv4/IPv6 address or network")
    return str(value)


def _rule(where: str, raw: Any, source: Any, protected: set[int], problems: list[str]) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping with at least a name, e.g. {{name: http, port: 80}}")
        return None
    before = len(problems)
    unknown = sorted(str(key) for key in raw if key not in RULE_KEYS)
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(RULE_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(f"{where}: name {name!r} is required: letters, digits, space, . _ : / - "
                        "(at most 64), it becomes the rule's ufw comment")
    ports = _port_range(where, raw.get("port"), problems)
    rule = {
        "name": name,
        "rule": _choice(where, "rule", raw.get("rule", "allow"), ACTIONS, problems),
        "port": None if ports is None else (str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}:{ports[1]}"),
        "proto": _choice(where, "proto", raw.get("proto", "tcp" if ports else "any"), PROTOCOLS, problems),
        "from": _address(where, "from", source, problems),
        "to": _address(where, "to", raw.get("to", "any"), problems),
        "interface": raw.get("interface"),
        "direction": _choice(where, "direction", raw.get("direction", "in"), DIRECTIONS, problems),
    }
    if rule["interface"] is not None and not (
        isinstance(rule["interface"], str) and INTERFACE_RE.match(rule["interface"])
    ):
        problems.append(f"{where}: interface {rule['interface']!r} is not an interface name (e.g. eth0)")
    if ports and ports[0] != ports[1] and rule["proto"] == "any":
        problems.append(f"{where}: a port range needs proto tcp or udp (ufw refuses 'any' with a range)")
    if len(problems) > before:
        return None
    opens = rule["rule"] in ("allow", "limit") and rule["direction"] == "in" and rule["interface"] != "lo"
    if opens and rule["proto"] != "udp":
        exposed = sorted(p for p in protected if ports is None or ports[0] <= p <= ports[1])
        if exposed:
            what = f"port {rule['port']}" if ports else "every port"
            problems.append(
                f"{where}: opens {what}, which includes the slot port(s) {', '.join(map(str, exposed[:5]))}"
                f"{' ...' if len(exposed) > 5 else ''}; slot ports stay reachable on loopback only "
                "(nginx proxies to them): give the rule a port outside the slots"
            )
            return None
    spec = {key: rule[key] for key in RULE_KEYS if key != "name"}
    rule["id"] = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:ID_LENGTH]
    rule["comment"] = f"fleet:{rule['id']} {name}"
    return rule


def ufw_declared_rules(rule_lists: Any, protected_ports: Any = (), ssh_port: Any = None) -> list[dict[str, Any]]:
    """Every declared rule, in order, validated, with its id and ufw comment."""
    if not isinstance(rule_lists, Mapping):
        raise AnsibleFilterError("ufw_declared_rules: expects a mapping of list name to rules, "
                                 f"got {type(rule_lists).__name__}")
    try:
        protected = {int(port) for port in protected_ports or ()}
    except (TypeError, ValueError) as err:
        raise AnsibleFilterError(f"ufw_declared_rules: protected_ports must be port numbers: {err}") from err
    problems: list[str] = []
    rules: list[dict[str, Any]] = []
    for list_name, items in rule_lists.items():
        if items is None:
            continue
        if isinstance(items, (str, bytes, Mapping)) or not hasattr(items, "__iter__"):
            problems.append(f"{list_name}: must be a list of rules, got {type(items).__name__}")
            continue
        for index, raw in enumerate(items):
            label = raw.get("name") if isinstance(raw, Mapping) else None
            where = f"{list_name}[{index}]" + (f" ({label})" if isinstance(label, str) else "")
            sources = raw.get("from", "any") if isinstance(raw, Mapping) else None
            for source in sources if isinstance(sources, list) and sources else [sources]:
                rule = _rule(where, raw, source, protected, problems)
                if rule is not None:
                    rule["source"] = where
                    rules.append(rule)
    seen: dict[str, str] = {}
    for rule in rules:
        if rule["id"] in seen:
            problems.append(f"{rule['source']}: does the same as {seen[rule['id']]}; declare each rule once")
        seen.setdefault(rule["id"], rule["source"])
        named = seen.setdefault("name:" + rule["name"], rule["source"])
        if named != rule["source"]:
            problems.append(f"{rule['source']}: has the same name as {named}; names must be unique")
    if ssh_port is not None:
        problems += _ssh_shut_out(rules, int(ssh_port))
    if problems:
        raise AnsibleFilterError("invalid ufw rules:\n" + "\n".join(f"  - {p}" for p in problems))
    return sorted(rules, key=lambda rule: rule["rule"] not in DENIALS)  # ufw applies the first match


def _covers(rule: Mapping[str, Any], port: int) -> bool:
    low, _, high = (rule["port"] or "1:65535").partition(":")
    return int(low) <= port <= int(high or low)


def _ssh_shut_out(rules: list[dict[str, Any]], port: int) -> list[str]:
    """Denials go before every allow, SSH's included: one that refuses the SSH port to every source
    would lock every SSH client out, the next converge's included."""
    verbs = {"deny": "denies", "reject": "rejects"}
    return [f"{r['source']}: {verbs[r['rule']]} the SSH port {port} to every source, and deny and reject rules "
            "come before the SSH rule: it would lock SSH out; give it a `from` or a port range without "
            f"{port}" for r in rules
            if r["rule"] in DENIALS and r["direction"] == "in" and r["from"] == "any" and not r["interface"]
            and r["proto"] != "udp" and _covers(r, port)]


def ufw_rule_argv(rule: Mapping[str, Any], verb: str = "") -> list[str]:
    """The `ufw [verb] <rule> ...` argument vector that adds a declared rule (verb: prepend, insert N)."""
    argv = ["ufw", *verb.split(), rule["rule"], rule["direction"]]
    if rule.get("interface"):
        argv += ["on", rule["interface"]]
    argv += ["from", rule["from"], "to", rule["to"]]
    if rule["port"]:
        argv += ["port", rule["port"]]
    if rule["proto"] != "any":
        argv += ["proto", rule["proto"]]
    return [*argv, "comment", rule["comment"]]


def _added_rules(show_added: str) -> list[tuple[list[str], str | None]]:
    """Each rule of `ufw show added` output: its words, and the id of its `fleet:<id>` comment."""
    rules = []
    for line in show_added.splitlines():
        if not line.startswith("ufw "):
            continue
        try:
            words = shlex.split(line)
        except ValueError as err:
            raise AnsibleFilterError(f"cannot parse the ufw rule {line!r}: {err}") from err
        comment = words[words.index("comment") + 1] if "comment" in words[:-1] else ""
        found = COMMENT_RE.match(comment)
        rules.append((words, found.group(1) if found else None))
    return rules


def _delete_argv(words: list[str]) -> list[str]:
    return ["ufw", "route", "delete", *words[2:]] if words[1] == "route" else ["ufw", "delete", *words[1:]]


def ufw_undeclared_rules(show_added: Any, declared: Any) -> list[list[str]]:
    """`ufw delete` argument vectors for each rule in `ufw show added` output that is not declared.

    A rule counts as declared only when its comment carries the id of a declared rule; rules
    added by hand (no such comment) are removed too: the role owns the rule set.
    """
    if not isinstance(show_added, str):
        raise AnsibleFilterError("ufw_undeclared_rules: expects the stdout of `ufw show added`")
    ids = {rule["id"] for rule in declared or ()}
    deletes = []
    for words, rule_id in _added_rules(show_added):
        if rule_id not in ids:
            deletes.append(_delete_argv(words))
    return deletes


def _held_order(status: str) -> dict[bool, list[str]]:
    """The fleet rule ids in the order ufw applies them, for IPv4 (False) and IPv6 (True) apart:
    `ufw status verbose` lists one family's rules, then the other's."""
    order: dict[bool, list[str]] = {False: [], True: []}
    for line in status.splitlines():
        found = STATUS_COMMENT_RE.search(line)
        if found:
            table = line[:found.start()]
            order["(v6)" in table or bool(IPV6_RE.search(table))].append(found.group(1))
    return order


def ufw_misplaced_denials(status: Any, show_added: Any, declared: Any) -> list[list[str]]:
    """`ufw delete` argument vectors for every declared deny and reject rule ufw holds, when ufw does
    not hold them all before its allow rules and in the declared order; empty when it does.

    They are then all added back with `ufw prepend`, last first, which puts each at the top of
    ufw's IPv4 and IPv6 lists alike (`ufw insert` would leave a rule's IPv6 half at the end).
    Meanwhile no allow rule is touched: traffic that is allowed keeps flowing.
    """
    if not isinstance(status, str) or not isinstance(show_added, str):
        raise AnsibleFilterError("ufw_misplaced_denials: expects the stdout of `ufw status verbose` and "
                                 "`ufw show added`")
    denials = [rule["id"] for rule in declared or () if rule["rule"] in DENIALS]
    held = _added_rules(show_added)
    held_denials = [(words, rule_id) for words, rule_id in held if rule_id in denials]
    if not held_denials:
        return []  # nothing to move: the missing ones are prepended anyway
    declared_ids = {rule["id"] for rule in declared or ()}
    in_place = len(held_denials) == len(denials)  # one missing: all go back, so the order is exact
    for order in _held_order(status).values():
        order = [rule_id for rule_id in order if rule_id in declared_ids]
        first = [rule_id for rule_id in denials if rule_id in order]
        in_place = in_place and order[:len(first)] == first
    return [] if in_place else [_delete_argv(words) for words, _ in held_denials]


def ufw_drift(status: Any, show_added: Any, declared: Any, want: Any) -> list[str]:
    """What differs between ufw and the role's settings, one line each; empty when nothing does.

    status: stdout of `ufw status verbose`; show_added: stdout of `ufw show added`; want: the
    default policies (incoming, outgoing, routed), the logging level and remove_undeclared. A
    declared rule counts as there when a rule carries its `fleet:<id>` comment (the id hashes
    what the rule does).
    """
    if not isinstance(status, str) or not isinstance(show_added, str):
        raise AnsibleFilterError("ufw_drift: expects the stdout of `ufw status verbose` and `ufw show added`")
    fields = dict(line.split(": ", 1) for line in status.splitlines() if ": " in line and not line.startswith(" "))
    drift = []
    if fields.get("Status") != "active":
        drift.append(f"ufw is {fields.get('Status', 'not reporting a status')}")
    level = str(want["logging"])
    logging = {"off": "off", "on": "on (low)"}.get(level, f"on ({level})")
    if fields.get("Logging") != logging:
        drift.append(f"logging is {fields.get('Logging')!r}, want {logging!r}")
    policies = {direction: policy for policy, direction in re.findall(r"(\w+) \((\w+)\)", fields.get("Default", ""))}
    for direction in ("incoming", "outgoing", "routed"):
        policy = policies.get(direction)
        if policy != want[direction]:
            drift.append(f"default {direction} policy is {policy}, want {want[direction]}")
    present = {rule_id for _, rule_id in _added_rules(show_added)}
    drift += [f"rule {rule['comment']!r} is missing" for rule in declared or () if rule["id"] not in present]
    drift += [f"rule out of place (deny and reject rules come first): {' '.join(argv[2:])}"
              for argv in ufw_misplaced_denials(status, show_added, declared)]
    if want["remove_undeclared"]:
        drift += [f"rule to remove: {' '.join(argv[1:])}" for argv in ufw_undeclared_rules(show_added, declared)]
    return drift


class FilterModule:
    """ufw role filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "ufw_declared_rules": ufw_declared_rules,
            "ufw_undeclared_rules": ufw_undeclared_rules,
            "ufw_misplaced_denials": ufw_misplaced_denials,
            "ufw_rule_argv": ufw_rule_argv,
            "ufw_drift": ufw_drift,
        }
