"""What the ufw role does to a host's ufw, task by task: it never shuts out the SSH connection a
converge runs over, it validates every rule before it changes anything, it adds the layers in
order and removes what it does not declare, and check mode changes nothing.

The role's own files run here: tasks/main.yml and the task files it imports, in order, with
their `when`, `loop`, `register`, `changed_when` and `check_mode`, every template rendered by
Ansible's Templar with the role's defaults, vars and filter plugin. Only the modules are fakes:
apt, `sshd -T`, and a ufw that answers `ufw status verbose` and `ufw show added` as ufw 0.36 does
and records, after every change, whether a new SSH connection from the controller would still get
in. The filters themselves are tested in test_ufw_rules.py.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleError
from ansible.plugins.loader import add_all_plugin_dirs, init_plugin_loader
from ansible.template import Templar, trust_as_template

ROLE = Path(__file__).resolve().parents[2] / "roles/ufw"
CONTROLLER = ipaddress.IPv4Address("192.0.2.10")  # where Ansible connects from
CATALOG = {"main-api": {"slots": [8000, 9000]}, "legacy-api": {"slots": [8010, 9010]}}
TASK_KEYWORDS = {"name", "loop", "loop_control", "when", "register", "changed_when", "failed_when", "check_mode",
                 "tags", "vars"}
HEADER = "Added user rules (see 'ufw status' for running firewall):"

init_plugin_loader()
add_all_plugin_dirs(str(ROLE))  # the role's filter_plugins, as when Ansible loads the role


class RoleFailed(Exception):
    pass


@dataclass
class Ufw:
    """A host's ufw: installed or not, enabled or not, its default policies, logging and rules.

    A rule is kept as the words after `ufw` in `ufw show added`: ACTION DIRECTION [on IFACE]
    from SRC to DST [port PORT] proto PROTO [comment TEXT].
    """

    installed: bool = True
    enabled: bool = False
    incoming: str = "deny"
    outgoing: str = "allow"
    routed: str = "deny"
    logging: str = "low"
    rules: list[list[str]] = field(default_factory=list)
    ssh_port: int = 22
    sshd_ports: list[int] | None = None  # what `sshd -T` says; None: the port the controller uses
    sshd: bool = True  # installed
    changes: list[str] = field(default_factory=list)
    lockouts: list[str] = field(default_factory=list)  # changes after which SSH was shut out

    def module(self, args: dict[str, Any], check: bool) -> bool:
        """community.general.ufw with these arguments; True when it changes (in check mode: would)."""
        assert self.installed, f"ufw module run on a host without ufw: {args}"
        if "rule" in args:
            words = rule_words(args)
            if words in self.rules:
                return False
            if not check:
                self.rules.append(words)
                self.changed(f"add {shlex.join(words)}")
            return True
        if set(args) == {"default", "direction"}:
            setting, value = args["direction"], args["default"]
        elif set(args) == {"logging"}:
            setting, value = "logging", args["logging"]
        elif args == {"state": "enabled"}:
            setting, value = "enabled", True
        else:
            raise AssertionError(f"ufw arguments this fake does not know: {args}")
        assert hasattr(self, setting), f"no such ufw setting: {setting}"
        if getattr(self, setting) == value:
            return False
        if not check:
            setattr(self, setting, value)
            self.changed(f"{setting} {value}")
        return True

    def command(self, argv: list[str]) -> dict[str, Any]:
        if argv == ["sshd", "-T"]:
            if not self.sshd:
                return {"rc": 2, "msg": "[Errno 2] No such file or directory: b'sshd'", "stdout_lines": []}
            ports = [self.ssh_port] if self.sshd_ports is None else self.sshd_ports
            lines = ["addressfamily any", *(f"port {port}" for port in ports), "permitrootlogin prohibit-password"]
            return {"rc": 0, "stdout": "\n".join(lines), "stdout_lines": lines}
        assert self.installed, f"{argv} run on a host without ufw"
        if argv == ["ufw", "status", "verbose"]:
            return {"changed": True, "stdout": self.status()}
        if argv == ["ufw", "show", "added"]:
            lines = [shlex.join(["ufw", *words]) for words in self.rules] or ["(None)"]
            return {"changed": True, "stdout": "\n".join([HEADER, *lines])}  # a command reports a change
        if argv[:2] == ["ufw", "prepend"]:
            words = argv[2:] if "proto" in argv else [*argv[2:-2], "proto", "any", *argv[-2:]]
            if words in self.rules:
                return {"stdout": "Skipping inserting existing rule"}
            self.rules.insert(0, words)
            self.changed(f"prepend {shlex.join(words)}")
            return {"stdout": "Rule inserted"}
        if argv[:2] == ["ufw", "delete"] and argv[2:] in self.rules:
            self.rules.remove(argv[2:])
            self.changed(f"delete {shlex.join(argv[2:])}")
            return {"changed": True, "stdout": ""}
        raise AssertionError(f"command this fake does not know: {argv}")

    def status(self) -> str:
        """`ufw status verbose` as ufw 0.36 (Debian 12) prints it; the rule table in ufw's order."""
        if not self.enabled:
            return "Status: inactive"
        logging = "off" if self.logging == "off" else f"on ({'low' if self.logging == 'on' else self.logging})"
        table = []
        for action, direction, *rest in self.rules:
            opts = dict(zip(rest[::2], rest[1::2], strict=True))
            source = "Anywhere" if opts["from"] == "any" else opts["from"]
            comment = f"  # {opts['comment']}" if "comment" in opts else ""
            table.append(f"{opts.get('port', 'Anywhere'):27}{action.upper()} {direction.upper():7}{source}{comment}")
        return "\n".join([
            "Status: active",
            f"Logging: {logging}",
            f"Default: {self.incoming} (incoming), {self.outgoing} (outgoing), {self.routed} (routed)",
            "New profiles: skip",
            "",
            "To                         Action      From",
            "--                         ------      ----",
            *table,
        ])

    def changed(self, what: str) -> None:
        self.changes.append(what)
        if self.enabled and self.incoming != "allow" and not any(map(self.admits_ssh, self.rules)):
            self.lockouts.append(what)

    def admits_ssh(self, words: list[str]) -> bool:
        """Whether this rule lets a new TCP connection from the controller to the SSH port in."""
        action, direction, *rest = words
        opts = dict(zip(rest[::2], rest[1::2], strict=True))
        if action not in ("allow", "limit") or direction != "in" or "on" in opts:
            return False
        if opts["from"] != "any" and CONTROLLER not in ipaddress.ip_network(opts["from"], strict=False):
            return False
        low, _, high = opts.get("port", "1:65535").partition(":")
        return opts["proto"] in ("tcp", "any") and int(low) <= self.ssh_port <= int(high or low)


def rule_words(args: dict[str, Any]) -> list[str]:
    words = [args["rule"], args["direction"]]
    if args.get("interface"):
        words += ["on", args["interface"]]
    words += ["from", args["from_ip"], "to", args["to_ip"]]
    if args.get("to_port"):
        words += ["port", str(args["to_port"])]
    return [*words, "proto", args["proto"], "comment", args["comment"]]


def names(ufw: Ufw) -> list[str]:
    """The rules ufw holds, in order, by the name in their comment (the role's) or "(by hand)"."""
    return [w[-1].split(" ", 1)[1] if "comment" in w else "(by hand)" for w in ufw.rules]


@dataclass
class Outcome:
    """What one task (one loop item) did: its module, its arguments or argv, as Ansible reports it."""

    module: str
    args: Any
    changed: bool
    skipped: bool


def trusted(value: Any) -> Any:
    """Role files as Ansible loads them: every string may be a template."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [trusted(v) for v in value]
    if isinstance(value, dict):
        return {k: trusted(v) for k, v in value.items()}
    return value


def role_file(*parts: str) -> Any:
    return trusted(yaml.safe_load(ROLE.joinpath(*parts).read_text()))


def imported_tasks() -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """Every task of tasks/main.yml's imports and includes, in order, with the conditions it runs
    under (an include's condition is read once, before its tasks: none of them changes what it
    reads); an import_role of another role's entry point (fleet's packages) is expanded with its
    vars."""
    for imp in role_file("tasks", "main.yml"):
        keys = {"name", "ansible.builtin.import_tasks", "ansible.builtin.include_tasks", "when", "tags"}
        assert set(imp) <= keys, imp
        tasks_file = imp.get("ansible.builtin.import_tasks") or imp["ansible.builtin.include_tasks"]
        for task in role_file("tasks", tasks_file):
            if "ansible.builtin.import_role" in task:
                role = task["ansible.builtin.import_role"]
                entry = ROLE.parent / role["name"] / "tasks" / f"{role['tasks_from']}.yml"
                for inner in trusted(yaml.safe_load(entry.read_text())):
                    yield ({**inner, "vars": {**task.get("vars", {}), **inner.get("vars", {})}},
                           [imp.get("when"), task.get("when"), inner.get("when")])
                continue
            yield task, [imp.get("when"), task.get("when")]


def converge(ufw: Ufw, inventory: dict[str, Any] | None = None, check_mode: bool = False) -> list[Outcome]:
    """Run the role against this fake host: role defaults < inventory < role vars, as in Ansible."""
    hostvars: dict[str, Any] = {
        **role_file("defaults", "main.yml"),
        "fleet_catalog": CATALOG,
        "inventory_hostname": "web-1",
        "ansible_check_mode": check_mode,
        **(inventory or {}),
        **role_file("vars", "main.yml"),
    }
    outcomes = []
    for task, conditions in imported_tasks():
        modules = set(task) - TASK_KEYWORDS
        assert len(modules) == 1, f"{task.get('name')}: keywords this runner does not know: {sorted(modules)}"
        (module,) = modules
        register = task.get("register")
        scope = {**hostvars, **task.get("vars", {})}
        templar = Templar(variables=scope)
        whens = [w for c in conditions if c is not None for w in (c if isinstance(c, list) else [c])]
        if not all(templar.evaluate_conditional(w) for w in whens):
            if register:
                hostvars[register] = {"changed": False, "skipped": True}
            continue
        check = check_mode and task.get("check_mode", True) is not False
        results = []
        for item in list(templar.template(task["loop"])) if "loop" in task else [None]:
            item_templar = Templar(variables={**scope, "item": item})
            args, result = run_module(module, task[module], item_templar, ufw, check, hostvars)
            if "changed_when" in task and not result.get("skipped"):
                when = task["changed_when"]  # it sees the item's result under the register name
                if not isinstance(when, bool):
                    when = Templar(variables={**scope, "item": item, register or "": result}).evaluate_conditional(when)
                result["changed"] = when
            outcomes.append(Outcome(module, args, bool(result.get("changed")), bool(result.get("skipped"))))
            results.append({**result, "item": item} if "loop" in task else result)
        if register:  # a loop registers every item's result, as Ansible does
            changed = any(r.get("changed") for r in results)
            hostvars[register] = {"results": results, "changed": changed} if "loop" in task else results[0]
    return outcomes


def run_module(
    module: str, raw: Any, templar: Templar, ufw: Ufw, check: bool, hostvars: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """What the module does on the fake host: its rendered arguments and its result."""
    if module == "ansible.builtin.assert":  # `that` holds conditionals, not templates
        that = raw["that"] if isinstance(raw["that"], list) else [raw["that"]]
        if not all(templar.evaluate_conditional(t) for t in that):
            raise RoleFailed(templar.template(raw["fail_msg"]))
        return raw, {"changed": False}
    args = templar.template(raw)
    if module == "ansible.builtin.package_facts":
        hostvars["ansible_facts"] = {"packages": {"ufw": [{"version": "0.36.2"}]} if ufw.installed else {}}
        return args, {"changed": False}
    if module == "ansible.builtin.apt":
        assert args["name"] == ["ufw"]
        changed = not ufw.installed
        ufw.installed = ufw.installed or not check
        return args, {"changed": changed}
    if module == "ansible.builtin.set_fact":
        hostvars.update(args)
        return args, {"changed": False}
    if module == "community.general.ufw":
        return args, {"changed": ufw.module(args, check)}
    if module == "ansible.builtin.command":
        argv = [str(a) for a in (args["argv"] if isinstance(args, dict) else shlex.split(args))]
        return argv, {"skipped": True} if check else ufw.command(argv)
    raise AssertionError(f"a module this test does not fake: {module}")


def deletions(outcomes: list[Outcome]) -> list[list[str]]:
    """The `ufw delete` commands the role ran, or in check mode would have run."""
    return [o.args for o in outcomes if o.module == "ansible.builtin.command" and o.args[:2] == ["ufw", "delete"]]


# --- SSH stays reachable ---------------------------------------------------------------------------------


def enabled_by_hand_allowing_incoming() -> Ufw:
    return Ufw(enabled=True, incoming="allow")


def enabled_by_hand_with_ssh() -> Ufw:
    """ufw enabled by hand, denying incoming, with SSH allowed by a rule the role does not declare."""
    return Ufw(enabled=True, rules=[shlex.split("allow in from any to any port 22 proto tcp")])


@pytest.mark.parametrize(
    "host",
    [Ufw, enabled_by_hand_allowing_incoming, enabled_by_hand_with_ssh, lambda: Ufw(installed=False)],
    ids=["fresh ufw", "enabled, allowing incoming", "enabled, SSH allowed by hand", "no ufw yet"],
)
@pytest.mark.parametrize(
    "inventory",
    [
        {},
        {"ufw_ssh_trusted_sources": ["192.0.2.0/24"]},
        {"ufw_ssh_rate_limit": False},
        {"ufw_ssh_port": 2222, "ansible_port": 2222},
    ],
    ids=["defaults", "trusted controller", "no rate limit", "port 2222"],
)
def test_the_ssh_connection_is_never_shut_out(host: Callable[[], Ufw], inventory: dict[str, Any]) -> None:
    ufw = host()
    ufw.ssh_port = inventory.get("ansible_port", 22)
    converge(ufw, inventory)
    assert ufw.changes and ufw.lockouts == []
    assert ufw.enabled and ufw.incoming == "deny"
    assert any(map(ufw.admits_ssh, ufw.rules))


@pytest.mark.parametrize(
    "inventory,ssh",
    [
        ({}, [["limit", "any"]]),
        ({"ufw_ssh_rate_limit": False}, [["allow", "any"]]),
        (
            {"ufw_ssh_trusted_sources": ["192.0.2.0/24", "198.51.100.7"]},
            [["allow", "192.0.2.0/24"], ["allow", "198.51.100.7"], ["limit", "any"]],
        ),
    ],
    ids=["rate limited", "no rate limit", "trusted sources without the limit"],
)
def test_ssh_rules(inventory: dict[str, Any], ssh: list[list[str]]) -> None:
    ufw = Ufw()
    converge(ufw, inventory)
    assert [[words[0], words[words.index("from") + 1]] for words in ufw.rules if "22" in words] == ssh


# --- nothing changes before every rule is valid ------------------------------------------------------------


@pytest.mark.parametrize(
    "inventory,message",
    [
        ({"ufw_host_rules": [{"name": "api", "port": 9010}]}, "ufw_host_rules[0] (api): opens port 9010"),
        ({"ufw_group_rules": [{"name": "x", "port": "http"}]}, "ufw_group_rules[0] (x): port 'http'"),
        ({"ansible_port": 2222}, "Ansible reaches web-1 over SSH on port 2222, but ufw_ssh_port is 22"),
        ({"ufw_host_rules": [{"name": "block all", "rule": "deny"}]},
         "ufw_host_rules[0] (block all): denies the SSH port 22 to every source"),
    ],
)
def test_a_problem_fails_the_role_before_ufw_changes(inventory: dict[str, Any], message: str) -> None:
    ufw = Ufw(installed=False)
    with pytest.raises((RoleFailed, AnsibleError)) as err:
        converge(ufw, inventory)
    assert message in str(err.value)
    assert ufw.installed and ufw.changes == []


@pytest.mark.parametrize(
    ("ufw", "message"),
    [
        (Ufw(sshd_ports=[2200]), "sshd on web-1 listens on port 2200 (sshd -T), but ufw would allow SSH on "
                                 "ufw_ssh_port=22: enabling ufw would lock SSH out"),
        (Ufw(enabled=True, incoming="allow", sshd_ports=[2200, 2201]), "listens on port 2200, 2201 (sshd -T)"),
    ],
    ids=["fresh ufw", "ufw allowing everything"],
)
def test_ufw_is_not_enabled_when_sshd_does_not_listen_on_the_port_it_allows(ufw: Ufw, message: str) -> None:
    """Ansible may reach the host on the port ufw allows (a forwarded port, a jump host) while sshd
    itself listens on another: enabling ufw would shut SSH out for good."""
    with pytest.raises(RoleFailed) as err:
        converge(ufw)
    assert message in str(err.value)
    assert ufw.changes == []


def test_a_host_without_sshd_has_no_ssh_to_lock_out() -> None:
    ufw = Ufw(sshd=False)
    converge(ufw, {"ansible_connection": "community.docker.docker"})
    assert ufw.enabled


def test_the_ssh_port_check_only_applies_to_ssh_connections() -> None:
    ufw = Ufw()
    converge(ufw, {"ansible_port": 2222, "ansible_connection": "local"})
    assert ufw.enabled


# --- the role owns the rule set ------------------------------------------------------------------------------


def test_rules_land_in_layer_order_and_a_second_converge_changes_nothing() -> None:
    ufw = Ufw()
    inventory = {
        "ufw_group_rules": [{"name": "node exporter", "port": 9100, "from": "10.20.0.0/24"}],
        "ufw_host_rules": [{"name": "syslog", "port": 514, "proto": "udp", "from": ["10.20.0.5", "10.20.0.6"]}],
    }
    converge(ufw, inventory)
    assert names(ufw) == ["ssh", "http", "https", "node exporter", "syslog", "syslog"]
    before = [list(words) for words in ufw.rules]
    ufw.changes.clear()
    outcomes = converge(ufw, inventory)
    assert ufw.changes == [] and ufw.rules == before
    assert [o for o in outcomes if o.changed] == []


BLOCKED = {"ufw_group_rules": [{"name": "node exporter", "port": 9100}],
           "ufw_host_rules": [{"name": "blocked", "rule": "deny", "port": 80, "from": "203.0.113.7"},
                              {"name": "no smtp", "rule": "reject", "port": 25}]}


def test_deny_and_reject_rules_sit_before_every_allow() -> None:
    """ufw applies the first rule that matches: a host's deny after the fleet's `allow 80` denies nothing."""
    ufw = Ufw()
    converge(ufw, BLOCKED)
    assert names(ufw) == ["blocked", "no smtp", "ssh", "http", "https", "node exporter"]
    before = [list(words) for words in ufw.rules]
    ufw.changes.clear()
    outcomes = converge(ufw, BLOCKED)
    assert ufw.changes == [] and ufw.rules == before
    assert [o for o in outcomes if o.changed] == []


def test_denials_held_after_an_allow_move_first_and_no_allow_is_touched() -> None:
    ufw = Ufw()
    converge(ufw, BLOCKED)
    ufw.rules = ufw.rules[2:] + ufw.rules[:2]  # as an older converge appended them
    ufw.changes.clear()
    converge(ufw, BLOCKED)
    assert names(ufw) == ["blocked", "no smtp", "ssh", "http", "https", "node exporter"]
    assert [change.split()[0] for change in ufw.changes] == ["delete", "delete", "prepend", "prepend"]
    assert all(" deny " in f" {c} " or " reject " in f" {c} " for c in ufw.changes)
    # A new denial declared between the two: it lands in its place, not on top.
    between = {**BLOCKED, "ufw_group_rules": [{"name": "no ftp", "rule": "deny", "port": 21}]}
    converge(ufw, between)
    assert names(ufw)[:3] == ["no ftp", "blocked", "no smtp"]


def test_undeclared_rules_are_removed_after_the_declared_ones_are_in_place() -> None:
    ufw = enabled_by_hand_with_ssh()
    converge(ufw, {"ufw_host_rules": [{"name": "old", "port": 8443}]})
    assert names(ufw) == ["ssh", "http", "https", "old"]  # the rule added by hand is gone
    kinds = [change.split()[0] for change in ufw.changes]
    assert kinds.index("delete") > max(i for i, kind in enumerate(kinds) if kind in ("add", "enable"))
    converge(ufw)  # `old` dropped from the inventory
    assert names(ufw) == ["ssh", "http", "https"]


def test_rules_added_by_other_means_stay_when_the_role_is_told_so() -> None:
    ufw = enabled_by_hand_with_ssh()
    outcomes = converge(ufw, {"ufw_remove_undeclared": False})
    assert names(ufw) == ["(by hand)", "ssh", "http", "https"]
    assert deletions(outcomes) == []


# --- check mode ----------------------------------------------------------------------------------------------


def test_check_mode_reports_the_changes_and_makes_none() -> None:
    ufw = enabled_by_hand_with_ssh()
    converge(ufw)
    ufw.rules.append(shlex.split("allow in from any to any port 3306 proto tcp"))
    state = (ufw.enabled, ufw.incoming, [list(w) for w in ufw.rules])
    ufw.changes.clear()
    outcomes = converge(ufw, {"ufw_host_rules": [{"name": "new", "port": 8443}]}, check_mode=True)
    assert ufw.changes == [] and (ufw.enabled, ufw.incoming, ufw.rules) == state
    assert deletions(outcomes) == [["ufw", "delete", *shlex.split("allow in from any to any port 3306 proto tcp")]]
    assert [o.args["comment"].split(" ", 1)[1] for o in outcomes if o.module == "community.general.ufw" and o.changed
            ] == ["new"]


def test_check_mode_on_a_host_without_ufw_does_not_touch_ufw() -> None:
    ufw = Ufw(installed=False)
    outcomes = converge(ufw, check_mode=True)
    assert not ufw.installed and ufw.changes == []
    assert [o.module for o in outcomes if o.changed] == ["ansible.builtin.apt"]
