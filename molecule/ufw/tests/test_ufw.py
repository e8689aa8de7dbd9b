"""ufw on two lab hosts reached over real SSH: default deny, SSH rate limited, 80/443 open, layered
rules in order, undeclared rules removed, and slot ports reachable on loopback only: from the
other lab host a slot port is refused while port 80 answers."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from testinfra.utils.ansible_runner import AnsibleRunner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
SCENARIO = Path(__file__).resolve().parents[1]
CATALOG = PROJECT / "inventories/lab/group_vars/all/fleet_services.yml"
SERVICES = {name: spec["port"] for name, spec in yaml.safe_load(CATALOG.read_text())["fleet_services"].items()}
SLOT_PORTS = sorted(p for port in SERVICES.values() for p in (port, port + 1000))
# The rule names (ufw comments) each host must hold, in order: denials, then SSH, ufw_rules, group, host.
EXPECTED = {
    "mol-ufw-1": ["ssh", "http", "https", "node exporter", "dcgm exporter", "dcgm exporter"],
    "mol-ufw-2": ["no https from mol-ufw-1", "ssh", "http", "https", "node exporter", "syslog"],
}
HOST_RULES = {"mol-ufw-2": ["syslog", "no https from mol-ufw-1"]}


def me(host) -> str:
    return host.backend.get_hostname()


def peer_of(host):
    """The other lab host, reached over SSH like this one."""
    others = sorted(set(AnsibleRunner(INVENTORY).get_hosts("fleet")) - {me(host)})
    return host.get_host(f"ansible://{others[0]}?ansible_inventory={INVENTORY}")


def address(host) -> str:
    return host.check_output("hostname -I").split()[0]


def rule_names(host) -> list[str]:
    """The names of the rules ufw holds, from their `fleet:<id> <name>` comments, in order."""
    names = []
    for line in host.check_output("ufw show added").splitlines():
        if " comment 'fleet:" in line:
            names.append(line.split(" comment 'fleet:", 1)[1].rstrip("'").split(" ", 1)[1])
        elif line.startswith("ufw "):
            names.append(f"UNDECLARED: {line}")
    return names


def test_ufw_is_active_with_default_deny_incoming(host):
    status = host.check_output("ufw status verbose")
    assert "Status: active" in status
    assert "Default: deny (incoming), allow (outgoing), deny (routed)" in status
    assert host.service("ufw").is_enabled


def has_rule(status: str, to: str, action: str, source: str = "Anywhere") -> bool:
    """Whether `ufw status` lists the rule `to  action  source` (any column widths)."""
    return re.search(rf"^{re.escape(to)}\s+{action}\s+{re.escape(source)}(\s|$)", status, re.MULTILINE) is not None


def test_ssh_is_rate_limited_and_web_ports_open(host):
    status = host.check_output("ufw status")
    assert has_rule(status, "22/tcp", "LIMIT"), status
    assert has_rule(status, "80/tcp", "ALLOW") and has_rule(status, "443/tcp", "ALLOW"), status


def test_layered_rules_in_order_and_nothing_undeclared(host):
    # prepare.yml left an allow for slot port 8010 and a retired fleet rule on 2222: both gone.
    assert rule_names(host) == EXPECTED[me(host)]
    status = host.check_output("ufw status")
    assert "8010" not in status and "2222" not in status


def test_group_rules_keep_their_sources(host):
    status = host.check_output("ufw status")
    assert has_rule(status, "9100/tcp", "ALLOW", "172.16.0.0/12"), status
    if me(host) == "mol-ufw-1":
        assert has_rule(status, "9400/tcp", "ALLOW", "172.16.0.0/12"), status
        assert has_rule(status, "9400/tcp", "ALLOW", "10.0.0.0/8"), status
        assert "514" not in status
    else:
        assert has_rule(status, "514/udp", "ALLOW"), status
        assert "9400" not in status


def test_from_another_host_slot_ports_are_refused_and_80_answers(host):
    peer, target = peer_of(host), address(host)
    for service, port in SERVICES.items():
        health = json.loads(peer.check_output(
            f"curl -fsS --max-time 5 -H 'Host: {service}.fleet.test' http://{target}/health"))
        assert (health["service"], health["port"]) == (service, port)
    for port in SLOT_PORTS:
        probe = peer.run(f"curl -sS --max-time 2 -o /dev/null http://{target}:{port}/health")
        assert probe.rc != 0, f"{target}:{port} answered from {me(peer)}"


def test_a_host_deny_beats_the_fleets_allow(host):
    """mol-ufw-2 denies 443 to mol-ufw-1 although ufw_rules allow 443 to all: ufw applies the first
    match, so the deny must sit first. Dropped: curl times out (28); the other way it gets through
    ufw (nginx answers, or refuses if it has no certificate: 7)."""
    if me(host) != "mol-ufw-2":
        pytest.skip("runs once, on the host with the deny rule")
    peer = peer_of(host)
    denied = peer.run(f"curl -sS --max-time 3 -o /dev/null -k https://{address(host)}/")
    assert denied.rc == 28, (denied.rc, denied.stderr)
    allowed = host.run(f"curl -sS --max-time 3 -o /dev/null -k https://{address(peer)}/")
    assert allowed.rc != 28, (allowed.rc, allowed.stderr)


def test_firewall_itself_keeps_a_slot_port_on_loopback(host):
    """Even a slot listener bound to every address (a misconfigured release) is reachable only
    on loopback: ufw, not only the bind address, keeps it in."""
    port = SERVICES["main-api"] + 1000  # the idle green slot
    unit = "mol-ufw-open-slot"
    host.check_output(f"systemd-run --unit {unit} --collect python3 -m http.server {port} --bind 0.0.0.0 "
                      "--directory /usr/share/doc")
    try:
        wait = f"until curl -fs -o /dev/null http://127.0.0.1:{port}/; do sleep 0.2; done"
        host.check_output(f"timeout 10 sh -c '{wait}'")
        assert any(s.endswith(f":{port}") and s.startswith("tcp://0.0.0.0") for s in
                   host.socket.get_listening_sockets())
        probe = peer_of(host).run(f"curl -sS --max-time 2 -o /dev/null http://{address(host)}:{port}/")
        assert probe.rc == 28, (probe.rc, probe.stderr)  # timed out: dropped by ufw, not refused by a closed port
    finally:
        host.run(f"systemctl stop {unit}")


def test_ssh_from_another_host_is_rate_limited(host):
    """ufw `limit`: a source opening its 6th new connection to port 22 within 30 seconds is dropped."""
    target = address(host)
    script = (f"for i in $(seq 10); do if timeout 2 bash -c '</dev/tcp/{target}/22' 2>/dev/null; "
              "then echo ok; else echo dropped; fi; done")
    results = peer_of(host).check_output("bash -c %s", script).split()
    assert results[:5] == ["ok"] * 5, results
    assert "dropped" in results[5:], results


def run_converge(*extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_ROLES_PATH": str(PROJECT / "roles"),
           "ANSIBLE_FILTER_PLUGINS": str(PROJECT / "filter_plugins")}
    return subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, str(SCENARIO / "converge.yml"), "--tags", "ufw", *extra],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def test_rule_dropped_from_inventory_is_removed(host):
    target = "mol-ufw-2"
    if me(host) != target:
        pytest.skip("runs once, on the host that has a host rule")
    dropped = run_converge("--limit", target, "-e", '{"ufw_host_rules": []}')
    try:
        assert dropped.returncode == 0, dropped.stdout[-4000:]
        assert rule_names(host) == [name for name in EXPECTED[target] if name not in HOST_RULES[target]]
        assert "514" not in host.check_output("ufw status")
    finally:
        restored = run_converge("--limit", target)
    assert restored.returncode == 0, restored.stdout[-4000:]
    assert rule_names(host) == EXPECTED[target]
