"""filter_plugins/fleet_inputs.py: a deploy's extra vars are checked before any host changes."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from filter_plugins import fleet_inputs
from filter_plugins.fleet_inputs import FilterModule, fleet_batch_ramp, fleet_deploy_input_problems


@pytest.mark.parametrize(("given", "steps"), [
    (1, [1]), ("3", [3]), ("25%", ["25%"]), ("1,25%,100%", [1, "25%", "100%"]), ("1, 2", [1, 2]),
])
def test_a_batch_size_is_a_number_a_share_or_a_ramp(given: Any, steps: list) -> None:
    assert fleet_batch_ramp(given) == steps
    assert fleet_deploy_input_problems({"batch_size": given}) == []


@pytest.mark.parametrize("given", ["0", "-1", "two", "101%", "1,,2", "1;2", "0%", "1.5", "1,25%,"])
def test_a_bad_batch_size_is_named_with_the_forms_it_may_take(given: str) -> None:
    [problem] = fleet_deploy_input_problems({"batch_size": given})
    assert problem.startswith("batch_size must be a number of hosts (2), a share of them (25%), or a ramp")
    assert f"in '{given}'" in problem
    with pytest.raises(AnsibleFilterError, match="batch_size"):
        fleet_batch_ramp(given)


@pytest.mark.parametrize(("name", "value"), [
    ("health_timeout", "2m"), ("health_timeout", "0"), ("health_interval", "-1"), ("health_interval", "0.0"),
    ("health_start_grace", "soon"), ("drain_timeout", "30s"), ("drain_timeout", "1e3"), ("health_timeout", True),
    ("watch", "-1"), ("watch", "2s"), ("watch", "601"), ("watch", "off"),
])
def test_a_bad_duration_names_the_extra_var(name: str, value: Any) -> None:
    [problem] = fleet_deploy_input_problems({name: value})
    assert problem.startswith(f"{name} must be")
    assert f"got '{value}'" in problem


@pytest.mark.parametrize(("name", "value"), [
    ("health_timeout", "120"), ("health_timeout", 0.5), ("health_interval", "0.05"), ("health_start_grace", "0"),
    ("drain_timeout", 30), ("drain_timeout", ""), ("health_timeout", None),
    ("watch", "0"), ("watch", 0), ("watch", "2.5"), ("watch", "600"), ("watch", ""),
])
def test_good_or_missing_durations_pass(name: str, value: Any) -> None:
    assert fleet_deploy_input_problems({name: value}) == []


def test_a_watch_out_of_range_says_the_range() -> None:
    assert fleet_deploy_input_problems({"watch": "900"}) == ["watch must be at most 600 seconds; got '900'."]
    assert fleet_deploy_input_problems({"watch": "-1"}) == [
        "watch must be a number of seconds, e.g. watch=120 for two minutes; got '-1'."]


def test_every_problem_is_reported_at_once() -> None:
    problems = fleet_deploy_input_problems({"batch_size": "x", "health_timeout": "2m", "drain_timeout": "0"})
    assert [p.split()[0] for p in problems] == ["batch_size", "health_timeout", "drain_timeout"]


@pytest.mark.parametrize("name", sorted(FilterModule().filters()))
def test_documentation_parses(name: str) -> None:
    prefix = name.upper()
    doc = yaml.safe_load(getattr(fleet_inputs, f"{prefix}_DOCUMENTATION"))
    assert doc["name"] == name
    assert "_input" in doc["options"]
    assert isinstance(yaml.safe_load(getattr(fleet_inputs, f"{prefix}_EXAMPLES")), list)
    assert "_value" in yaml.safe_load(getattr(fleet_inputs, f"{prefix}_RETURN"))


# --------------------------------------------------------------------------- maintenance.yml

CATALOG: dict[str, dict[str, Any]] = {"main-api": {}, "zapier-mcp": {}}
GOOD_MAINTENANCE = {"service": "main-api", "state": "on", "retry_after": "600", "reason": ""}


@pytest.mark.parametrize("change", [
    {}, {"state": "off"}, {"state": "ON"}, {"state": True}, {"state": False}, {"retry_after": 1},
    {"retry_after": fleet_inputs.RETRY_AFTER_MAX}, {"reason": "db migration, ticket #42"}, {"reason": None},
])
def test_good_maintenance_inputs_pass(change: dict[str, Any]) -> None:
    assert fleet_inputs.fleet_maintenance_input_problems({**GOOD_MAINTENANCE, **change}, CATALOG) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"service": "nope"}, "service must be one of the catalog's services: main-api, zapier-mcp; got 'nope'."),
    ({"service": ""}, "service must be one of the catalog's services: main-api, zapier-mcp; got ''."),
    ({"state": "maybe"}, "state must be on (503 and the maintenance page) or off (serve again); got 'maybe'."),
    ({"state": ""}, "state must be on"),
    ({"retry_after": "0"}, "retry_after must be a whole number of seconds from 1 to 604800"),
    ({"retry_after": "10m"}, "retry_after must be a whole number of seconds from 1 to 604800 (the Retry-After "
                             "nginx sends), e.g. retry_after=600; got '10m'."),
    ({"retry_after": 604801}, "retry_after must be"),
    ({"retry_after": True}, "retry_after must be"),
    ({"reason": "two\nlines"}, "reason must be text on one line of at most 200 characters"),
    ({"reason": "x" * 201}, "reason must be text on one line"),
    ({"reason": ["a"]}, "reason must be text"),
])
def test_a_bad_maintenance_input_is_named_before_any_host_is_touched(change: dict[str, Any], expected: str) -> None:
    [problem] = fleet_inputs.fleet_maintenance_input_problems({**GOOD_MAINTENANCE, **change}, CATALOG)
    assert problem.startswith(expected.split(" ")[0]) and expected in problem


def test_every_maintenance_problem_is_reported_at_once() -> None:
    problems = fleet_inputs.fleet_maintenance_input_problems({"service": "x", "state": "x", "retry_after": "x"},
                                                             CATALOG)
    assert [p.split()[0] for p in problems] == ["service", "state", "retry_after"]


def test_the_state_becomes_a_boolean() -> None:
    assert [fleet_inputs.fleet_maintenance_on(v) for v in ("on", "Off", True, "false")] == [True, False, True, False]
    with pytest.raises(AnsibleFilterError, match="state must be on or off; got 'maybe'"):
        fleet_inputs.fleet_maintenance_on("maybe")


def test_maintenance_inputs_need_the_catalog() -> None:
    with pytest.raises(AnsibleFilterError, match="fleet_maintenance_input_problems"):
        fleet_inputs.fleet_maintenance_input_problems(GOOD_MAINTENANCE, None)


@pytest.mark.parametrize("given", ["halt", "revert_all", "", None])
def test_on_failure_is_halt_or_revert_all(given: Any) -> None:
    assert fleet_deploy_input_problems({"on_failure": given}) == []


def test_a_bad_on_failure_is_named_with_its_choices() -> None:
    [problem] = fleet_deploy_input_problems({"on_failure": "rollback"})
    assert problem.startswith("on_failure must be one of halt, revert_all") and "got 'rollback'" in problem


# --------------------------------------------------------------------------- canary

@pytest.mark.parametrize(("given", "weights"), [
    ("5,25,100", [5, 25, 100]), (" 5, 25 ,100", [5, 25, 100]), ("100", [100]), (100, [100]), ([1, 100], [1, 100]),
    ("", []), (None, []),
])
def test_a_canary_is_increasing_percents_ending_with_100(given: Any, weights: list[int]) -> None:
    assert fleet_inputs.fleet_canary_steps(given) == weights
    assert fleet_deploy_input_problems({"canary": given, "watch": "5"}) == []


@pytest.mark.parametrize(("given", "message"), [
    ("5,25", "canary must end with 100, the step that finishes the switch, e.g. canary=5,25,100; got '5,25'."),
    ("25,5,100", "canary steps must go up, each above the one before, e.g. canary=5,25,100; got '25,5,100'."),
    ("5,5,100", "canary steps must go up"),
    ("0,100", "canary must be whole percents of the requests from 1 to 100, comma separated, e.g. canary=5,25,100; "
              "'0' in '0,100' is not one."),
    ("5%,100", "'5%' in '5%,100' is not one."), ("5,,100", "'' in '5,,100' is not one."),
    ("101", "'101' in '101' is not one."), ("2.5,100", "'2.5' in '2.5,100' is not one."),
    (True, "canary must be the share of requests at each step"),
])
def test_a_bad_canary_names_the_extra_var_and_the_fix(given: Any, message: str) -> None:
    [problem] = fleet_deploy_input_problems({"canary": given, "watch": "5"})
    assert problem.startswith("canary ") and message in problem
    with pytest.raises(AnsibleFilterError, match="canary"):
        fleet_inputs.fleet_canary_steps(given)


def test_a_canary_goes_with_a_deploy_and_a_watch() -> None:
    [restart] = fleet_deploy_input_problems({"canary": "5,100", "mode": "restart", "watch": "5"})
    assert restart.startswith("canary goes with a deploy of a new release, not with restart=true")
    [rollback] = fleet_deploy_input_problems({"canary": "5,100", "mode": "rollback", "watch": "5"})
    assert "not with rollback" in rollback and "drop -e canary" in rollback
    [unwatched] = fleet_deploy_input_problems({"canary": "5,100", "watch": "0", "catalog_watch": 30})
    assert unwatched.startswith("canary needs a watch") and "-e watch=30" in unwatched
    assert fleet_deploy_input_problems({"canary": "5,100", "catalog_watch": 0})[0].startswith("canary needs a watch")
    assert fleet_deploy_input_problems({"canary": "5,100", "catalog_watch": 30}) == []
    assert fleet_deploy_input_problems({"canary": "", "mode": "restart", "watch": "0"}) == []
