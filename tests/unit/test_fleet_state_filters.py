"""filter_plugins/fleet_state.py: the release a new host joins on, and what a rollback undoes."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from filter_plugins.fleet_state import (
    fleet_host_releases,
    fleet_joining_release,
    fleet_rollback_plan,
    fleet_service_states,
)


def st(release: str, history: list[str], released: str = "2026-11-01T00:00:00Z", port: int = 8090) -> dict:
    return {"live_port": port, "slots": {str(port): {"release": release, "released": released}}, "history": history}


def test_a_new_host_joins_on_the_release_the_others_run_not_the_catalogs():
    states = {"a": st("1.1.0", ["1.0.0", "1.1.0"]), "b": st("1.1.0", ["1.0.0", "1.1.0"])}
    assert fleet_joining_release(states, "1.0.0") == {
        "release": "1.1.0", "by_release": {"1.1.0": ["a", "b"]}, "skew": False, "described": "1.1.0 on a, b"}


def test_version_skew_is_reported_and_the_majority_wins():
    states = {"a": st("1.1.0", ["1.1.0"]), "b": st("1.0.0", ["1.0.0"]), "c": st("1.0.0", ["1.0.0"])}
    joined = fleet_joining_release(states, "1.2.0")
    assert joined["release"] == "1.0.0" and joined["skew"]
    assert joined["described"] == "1.0.0 on b, c; 1.1.0 on a"


def test_a_tie_goes_to_the_catalogs_version_and_no_state_to_the_catalog():
    states = {"a": st("1.1.0", ["1.1.0"]), "b": st("1.0.0", ["1.0.0"])}
    assert fleet_joining_release(states, "1.0.0")["release"] == "1.0.0"
    assert fleet_joining_release(states, "9.9.9")["release"] == "1.1.0"
    assert fleet_joining_release({}, "1.0.0")["release"] == "1.0.0"


def test_states_come_from_the_hosts_local_facts_and_skip_hosts_without():
    hostvars = {"a": {"ansible_local": {"fleet": {"svc": st("1.0.0", ["1.0.0"])}}}, "b": {}, "c": {"ansible_local": {}}}
    assert list(fleet_service_states(hostvars, ["a", "b", "c", "d"], "svc")) == ["a"]


def test_a_host_keeps_its_live_releases_and_joins_the_fleet_on_the_others():
    services = [{"name": "api", "hosts": ["a", "b", "c"], "release": {"version": "1.0.0"}},
                {"name": "web", "hosts": ["a", "b"], "release": {"version": "2.0.0"}}]
    hostvars = {"a": {"ansible_local": {"fleet": {"api": st("1.0.0", ["1.0.0"])}}},
                "b": {"ansible_local": {"fleet": {"api": st("1.1.0", ["1.1.0"]), "web": st("2.1.0", ["2.1.0"])}}},
                "c": {"ansible_local": {"fleet": {"api": st("1.1.0", ["1.1.0"])}}}}
    assert fleet_host_releases(services, hostvars, "a") == {"api": "1.0.0", "web": "2.1.0"}
    assert fleet_host_releases(services, {}, "a") == {"api": "1.0.0", "web": "2.0.0"}
    with pytest.raises(AnsibleFilterError, match="fleet_host_releases"):
        fleet_host_releases({"api": {}}, hostvars, "a")


def test_a_rollback_after_a_one_host_canary_moves_only_the_canary():
    states = {
        "lab-1": st("1.1.0", ["1.0.0", "1.1.0"], "2026-11-02T00:00:00Z"),
        "lab-2": st("1.0.0", ["1.0.0", "1.1.0", "1.0.0"], "2026-11-01T00:00:00Z"),
        "lab-3": st("1.0.0", ["1.0.0"], "2026-10-01T00:00:00Z"),
    }
    plan = fleet_rollback_plan(states)
    assert (plan["from"], plan["to"]) == ("1.1.0", "1.0.0")
    assert plan["hosts"]["lab-1"]["action"] == "rollback"
    assert plan["hosts"]["lab-2"] == {"action": "none", "note": "unchanged: on 1.0.0, not on 1.1.0"}
    assert plan["hosts"]["lab-3"]["action"] == "none"


def test_a_host_without_the_earlier_release_is_reported_not_fatal():
    states = {"lab-1": st("1.1.0", ["1.0.0", "1.1.0"], "2026-11-02T00:00:00Z"),
              "lab-4": st("1.1.0", ["1.1.0"], "2026-11-03T00:00:00Z")}
    plan = fleet_rollback_plan(states)
    assert plan["hosts"]["lab-1"]["action"] == "rollback"
    assert plan["hosts"]["lab-4"] == {"action": "none", "note": "unchanged: 1.0.0 was never live here before 1.1.0"}


def test_an_explicit_version_moves_every_host_not_on_it():
    states = {"a": st("1.1.0", ["1.1.0"]), "b": st("1.0.0", ["1.0.0"])}
    plan = fleet_rollback_plan(states, "1.0.0")
    assert plan["hosts"] == {"a": {"action": "rollback", "note": ""},
                             "b": {"action": "none", "note": "already on 1.0.0"}}


def test_nothing_to_roll_back_names_what_each_host_runs():
    with pytest.raises(AnsibleFilterError, match=r"nothing to roll back.*a: 1\.0\.0.*-e version="):
        fleet_rollback_plan({"a": st("1.0.0", ["1.0.0"])})
