"""Filters that read the deploy states of a service across its hosts (fleet-wide decisions).

Each host's state is the slot engine's (role slot_engine, fleet_slots/state.py), seen through the
local fact `ansible_local.fleet[<service>]` or the deploy's plan step. These filters only read it:
which release the fleet runs (a new host joins on it), and what "undo the last move" means for a
rollback run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError


def _live_release(state: Any) -> str | None:
    """The live release of a state dict, None when it is missing or broken."""
    if not isinstance(state, Mapping) or "live_port" not in state:
        return None
    slot = (state.get("slots") or {}).get(str(state["live_port"]))
    return str(slot["release"]) if isinstance(slot, Mapping) and slot.get("release") else None


def fleet_service_states(hostvars: Any, hosts: Any, service: str) -> dict[str, Any]:
    """{host: state} of `service` from each host's local fact (ansible_local.fleet), for the hosts
    whose facts were gathered and hold a state of it."""
    if not isinstance(hostvars, Mapping) or not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError("fleet_service_states: use as hostvars | fleet_service_states(<hosts>, <service>)")
    states = {}
    for host in hosts:
        facts = hostvars.get(host) or {}
        state = ((facts.get("ansible_local") or {}).get("fleet") or {}).get(service)
        if isinstance(state, Mapping) and "live_port" in state:
            states[host] = state
    return states


def fleet_live_releases(states: Any) -> dict[str, str]:
    """{host: live release} for the hosts whose state is readable; `states` is {host: state}."""
    if not isinstance(states, Mapping):
        raise AnsibleFilterError(f"fleet_live_releases: expects {{host: state}}, got {type(states).__name__}")
    releases = {host: _live_release(state) for host, state in states.items()}
    return {host: release for host, release in sorted(releases.items()) if release}


def fleet_joining_release(states: Any, catalog_version: str) -> dict[str, Any]:
    """The release a host without state starts: the one most of the service's hosts are live on
    (ties go to the catalog's version if it is one of them, else to the highest name); the
    catalog's version when no host runs the service yet. `skew` lists which hosts run what when
    they disagree."""
    live = fleet_live_releases(states)
    by_release: dict[str, list[str]] = {}
    for host, release in live.items():
        by_release.setdefault(release, []).append(host)
    if not by_release:
        return {"release": catalog_version, "by_release": {}, "skew": False, "described": ""}
    most = max(len(hosts) for hosts in by_release.values())
    leaders = sorted(r for r, hosts in by_release.items() if len(hosts) == most)
    chosen = catalog_version if catalog_version in leaders else leaders[-1]
    described = "; ".join(f"{release} on {', '.join(hosts)}" for release, hosts in sorted(by_release.items()))
    return {"release": chosen, "by_release": by_release, "skew": len(by_release) > 1, "described": described}


def fleet_host_releases(services: Any, hostvars: Any, host: str) -> dict[str, str]:
    """{service: release} for `host`: the live release of each service it holds a state of, else
    the release the service's hosts run (fleet_joining_release); `services` are catalog entries."""
    if not isinstance(services, (list, tuple)) or not isinstance(hostvars, Mapping):
        raise AnsibleFilterError("fleet_host_releases: use as <services> | fleet_host_releases(hostvars, <host>)")
    releases = {}
    for service in services:
        states = fleet_service_states(hostvars, [host, *service["hosts"]], service["name"])
        releases[service["name"]] = (_live_release(states.get(host))
                                     or fleet_joining_release(states, service["release"]["version"])["release"])
    return releases


def fleet_rollback_plan(states: Any, version: str = "") -> dict[str, Any]:
    """What "undo the last move" means for these hosts ({host: state}), computed once per run.

    Without `version`: the fleet rolls back from the release of the most recent move (the host
    whose live release went live last, among hosts with an earlier release) to the release that was
    live before it there. Hosts live on that release go back; the others are left alone, with the
    reason. With `version`: every host not already on it goes to it.
    Returns {"from": ..., "to": ..., "hosts": {host: {"action": "rollback" | "none", "note": ...}}}.
    """
    if not isinstance(states, Mapping):
        raise AnsibleFilterError(f"fleet_rollback_plan: expects {{host: state}}, got {type(states).__name__}")
    live = fleet_live_releases(states)
    hosts: dict[str, dict[str, str]] = {}
    if version:
        for host in sorted(states):
            on = live.get(host)
            hosts[host] = ({"action": "none", "note": f"already on {version}"} if on == version
                           else {"action": "rollback", "note": ""})
        return {"from": "", "to": version, "hosts": hosts}
    movers = [h for h in states if h in live and len(states[h].get("history") or []) > 1]
    if not movers:
        raise AnsibleFilterError("nothing to roll back: no host has a release that was live before its current one "
                                 f"({', '.join(f'{h}: {r}' for h, r in live.items()) or 'no state'}); "
                                 "pass -e version=<release> to go to a given release")
    last = max(movers, key=lambda h: (_since(states[h]), h))
    source, target = live[last], str(states[last]["history"][-2])
    for host in sorted(states):
        history = [str(r) for r in states[host].get("history") or []]
        if live.get(host) != source:
            hosts[host] = {"action": "none", "note": f"unchanged: on {live.get(host, 'no readable state')}, "
                                                     f"not on {source}"}
        elif target not in history[:-1]:
            hosts[host] = {"action": "none", "note": f"unchanged: {target} was never live here before {source}"}
        else:
            hosts[host] = {"action": "rollback", "note": ""}
    return {"from": source, "to": target, "hosts": hosts}


def _since(state: Mapping[str, Any]) -> str:
    slot = (state.get("slots") or {}).get(str(state.get("live_port")))
    return str(slot.get("released") or slot.get("since") or "") if isinstance(slot, Mapping) else ""


class FilterModule:
    """Fleet-wide deploy state filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "fleet_service_states": fleet_service_states,
            "fleet_live_releases": fleet_live_releases,
            "fleet_host_releases": fleet_host_releases,
            "fleet_joining_release": fleet_joining_release,
            "fleet_rollback_plan": fleet_rollback_plan,
        }
