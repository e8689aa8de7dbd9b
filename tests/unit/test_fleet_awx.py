"""Unit tests for filter_plugins/fleet_awx.py: the generated surveys hold to AWX's survey format,
checked by the rules in awx_survey_rules.py (written apart from the filter)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from awx_survey_rules import awx_answer_errors, awx_spec_errors

from filter_plugins import fleet_audit, fleet_awx, fleet_inputs, fleet_status
from filter_plugins.fleet_awx import FilterModule, fleet_awx_service_choices, fleet_awx_survey

ROOT = Path(__file__).resolve().parents[2]
CATALOGS = {
    name: yaml.safe_load((ROOT / "inventories" / name / "group_vars/all/fleet_services.yml").read_text())[
        "fleet_services"]
    for name in ("lab", "production")
}


def question(survey: dict[str, Any], variable: str) -> dict[str, Any]:
    return next(item for item in survey["spec"] if item["variable"] == variable)


# --------------------------------------------------------------------------- the rules themselves

GOOD = {"name": "s", "description": "d", "spec": [
    {"question_name": "q", "variable": "v", "type": "multiplechoice", "required": True,
     "choices": ["a", "b"], "default": "a"},
]}


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda s: s.pop("description"), "'description' is missing"),
    (lambda s: s.update(spec=[]), "doesn't contain any items"),
    (lambda s: s["spec"][0].update(required="true"), "'required' in survey question 0 expected to be bool"),
    (lambda s: s["spec"][0].pop("variable"), "'variable' missing"),
    (lambda s: s["spec"].append(copy.deepcopy(s["spec"][0])), "duplicated"),
    (lambda s: s["spec"][0].update(type="boolean"), "not an allowed question type"),
    (lambda s: s["spec"][0].update(default="c"), "Default choice must be answered from the choices"),
    (lambda s: s["spec"][0].update(default="a\nb"), "only have one default"),
    (lambda s: s["spec"][0].pop("choices"), "must specify choices"),
    (lambda s: s["spec"][0].update(type="integer", default="1"), "wrong type"),
    (lambda s: s["spec"][0].update(min=""), "min limit in survey question 0 expected to be integer"),
])
def test_the_awx_rules_reject_what_awx_rejects(change: Any, fragment: str):
    survey = copy.deepcopy(GOOD)
    assert awx_spec_errors(survey) == []
    change(survey)
    errors = awx_spec_errors(survey)
    assert errors and fragment in errors[0], errors


# --------------------------------------------------------------------------- generated surveys

@pytest.mark.parametrize("catalog", sorted(CATALOGS))
@pytest.mark.parametrize("kind", ["hot_deploy", "rollback", "status", "audit", "maintenance"])
def test_generated_surveys_are_valid_awx_survey_specs(catalog: str, kind: str):
    survey = fleet_awx_survey(CATALOGS[catalog], kind)
    assert awx_spec_errors(survey) == []


@pytest.mark.parametrize("catalog", sorted(CATALOGS))
def test_the_service_choices_are_the_catalogs_services(catalog: str):
    survey = fleet_awx_survey(CATALOGS[catalog], "hot_deploy")
    service = question(survey, "service")
    assert service["type"] == "multiplechoice" and service["required"] is True
    assert service["choices"] == sorted(CATALOGS[catalog])
    assert "default" not in service, "an operator must pick the service; none is preselected"


def test_the_hot_deploy_survey_asks_what_hot_deploy_yml_takes():
    survey = fleet_awx_survey(CATALOGS["lab"], "hot_deploy")
    assert [item["variable"] for item in survey["spec"]] == [
        "service", "version", "canary", "batch_size", "on_failure", "break_lock"]
    version, batch, policy, lock = (question(survey, v) for v in ("version", "batch_size", "on_failure", "break_lock"))
    assert (version["type"], version["required"], version["default"]) == ("text", False, "")
    canary = question(survey, "canary")
    assert (canary["type"], canary["required"], canary["default"]) == ("text", False, "")
    assert (batch["type"], batch["required"], batch["default"], batch["min"]) == ("integer", True, 1, 1)
    assert (policy["choices"], policy["default"]) == (["halt", "revert_all"], "halt")
    assert (lock["choices"], lock["default"]) == (["no", "yes"], "no")


def test_the_rollback_survey_has_no_version():
    survey = fleet_awx_survey(CATALOGS["lab"], "rollback")
    assert [item["variable"] for item in survey["spec"]] == ["service", "batch_size", "break_lock"]


@pytest.mark.parametrize(("kind", "variables"), [("status", ["service", "format"]),
                                                 ("audit", ["service", "limit", "since"])])
def test_the_read_only_surveys_ask_what_their_playbooks_take(kind: str, variables: list[str]):
    survey = fleet_awx_survey(CATALOGS["production"], kind)
    assert [item["variable"] for item in survey["spec"]] == variables
    service = question(survey, "service")
    assert service["choices"] == sorted(CATALOGS["production"]) and service["required"] is False
    assert "default" not in service
    # Unanswered, the service is left out of the extra vars: the playbook then covers every service.
    assert awx_answer_errors(survey, {}) == []


def test_the_status_survey_offers_the_formats_status_yml_takes():
    survey = fleet_awx_survey(CATALOGS["lab"], "status")
    fmt = question(survey, "format")
    assert (fmt["choices"], fmt["default"]) == (list(fleet_status.FORMATS), "table")
    assert awx_answer_errors(survey, {"service": "main-api", "format": "json"}) == []
    assert awx_answer_errors(survey, {"format": "xml"}) != []


def test_the_audit_survey_limits_agree_with_audit_yml():
    survey = fleet_awx_survey(CATALOGS["lab"], "audit")
    limit, since = question(survey, "limit"), question(survey, "since")
    assert (limit["default"], limit["min"], limit["max"]) == (fleet_audit.DEFAULT_LIMIT, 1, fleet_audit.MAX_LIMIT)
    assert (since["type"], since["required"], since["default"]) == ("text", False, "")
    assert awx_answer_errors(survey, {"limit": 5, "since": "2h"}) == []
    assert awx_answer_errors(survey, {"limit": 0})[0].endswith("too small (must be at least 1).")
    assert awx_answer_errors(survey, {"limit": fleet_audit.MAX_LIMIT + 1}) != []


def test_the_maintenance_survey_asks_what_maintenance_yml_takes():
    survey = fleet_awx_survey(CATALOGS["lab"], "maintenance")
    assert [item["variable"] for item in survey["spec"]] == ["service", "state", "retry_after", "reason"]
    service, state = question(survey, "service"), question(survey, "state")
    assert service["choices"] == sorted(CATALOGS["lab"]) and service["required"] is True
    assert state["choices"] == ["on", "off"]
    assert all(fleet_inputs.fleet_maintenance_on(choice) is (choice == "on") for choice in state["choices"])
    retry, reason = question(survey, "retry_after"), question(survey, "reason")
    assert (retry["default"], retry["min"], retry["max"]) == (600, 1, fleet_inputs.RETRY_AFTER_MAX)
    assert reason["max"] == fleet_inputs.REASON_MAX_LENGTH and reason["required"] is False


def test_the_maintenance_surveys_answers_pass_maintenance_yml_checks():
    survey = fleet_awx_survey(CATALOGS["lab"], "maintenance")
    answers = {"service": "main-api", "state": "off", "retry_after": 1, "reason": "x" * fleet_inputs.REASON_MAX_LENGTH}
    assert awx_answer_errors(survey, answers) == []
    assert fleet_inputs.fleet_maintenance_input_problems(answers, CATALOGS["lab"]) == []
    assert awx_answer_errors(survey, {"service": "main-api"}) == []  # state and retry_after have defaults
    assert awx_answer_errors(survey, {"service": "main-api", "state": "maybe"}) != []
    assert awx_answer_errors(survey, {"service": "main-api", "retry_after": 0}) != []
    assert awx_answer_errors(survey, {}) != []  # the service is required


def test_awx_accepts_the_answers_an_operator_gives():
    survey = fleet_awx_survey(CATALOGS["lab"], "hot_deploy")
    assert awx_answer_errors(survey, {"service": "main-api"}) == []  # defaults fill in the rest
    assert awx_answer_errors(survey, {"service": "main-api", "version": "", "batch_size": 1}) == []
    assert awx_answer_errors(survey, {"service": "zapier-mcp", "version": "1.4.3", "batch_size": 2,
                                      "break_lock": "yes"}) == []


@pytest.mark.parametrize(("answers", "fragment"), [
    ({}, "'service' value missing"),
    ({"service": "no-such-service"}, "expected to be one of"),
    ({"service": "main-api", "batch_size": 0}, "too small"),
    ({"service": "main-api", "batch_size": "2"}, "expected to be an integer"),
    ({"service": "main-api", "version": "x" * (fleet_awx.VERSION_MAX_LENGTH + 1)}, "too large"),
    ({"service": "main-api", "break_lock": "maybe"}, "expected to be one of"),
])
def test_awx_refuses_answers_outside_the_survey(answers: dict[str, Any], fragment: str):
    errors = awx_answer_errors(fleet_awx_survey(CATALOGS["lab"], "hot_deploy"), answers)
    assert errors and fragment in errors[0], errors


def test_a_survey_made_before_a_catalog_change_still_offers_the_removed_service():
    """Why the playbook must check the service itself: AWX checks answers against the survey it
    stored, which only changes when awx/configure.yml runs again."""
    before = {**CATALOGS["lab"], "legacy-api": {"port": 8020}}
    stale = fleet_awx_survey(before, "hot_deploy")
    assert awx_answer_errors(stale, {"service": "legacy-api"}) == []
    assert "legacy-api" not in CATALOGS["lab"]


def test_the_batch_size_default_can_be_set():
    survey = fleet_awx_survey(CATALOGS["lab"], "rollback", 3)
    assert question(survey, "batch_size")["default"] == 3
    assert awx_spec_errors(survey) == []


def test_the_filter_reads_only_the_service_names():
    """The production catalog refers to vault variables; the survey must not need them."""
    assert fleet_awx_service_choices({"b": object(), "a": None}) == ["a", "b"]


@pytest.mark.parametrize(("services", "kind", "batch", "fragment"), [
    ({}, "hot_deploy", 1, "the catalog is empty"),
    (["main-api"], "hot_deploy", 1, "expects fleet_services"),
    ({"Main_API": {}}, "hot_deploy", 1, "service name 'Main_API' must match"),
    ({"main-api": {}}, "deploy", 1,
     "unknown survey 'deploy'; fleet defines audit, hot_deploy, maintenance, rollback, status"),
    ({"main-api": {}}, "rollback", 0, "batch_size must be a whole number of at least 1"),
    ({"main-api": {}}, "rollback", True, "batch_size must be a whole number of at least 1"),
])
def test_bad_input_raises_a_message_a_person_can_act_on(services: Any, kind: str, batch: Any, fragment: str):
    with pytest.raises(AnsibleFilterError, match=fragment):
        fleet_awx_survey(services, kind, batch)


def test_the_filters_are_registered():
    assert set(FilterModule().filters()) == {"fleet_awx_service_choices", "fleet_awx_survey"}


@pytest.mark.parametrize("prefix", ["FLEET_AWX_SERVICE_CHOICES", "FLEET_AWX_SURVEY"])
def test_each_filter_is_documented(prefix: str):
    doc = yaml.safe_load(getattr(fleet_awx, f"{prefix}_DOCUMENTATION"))
    assert doc["name"] == prefix.lower()
    assert "_input" in doc["options"]
    assert isinstance(yaml.safe_load(getattr(fleet_awx, f"{prefix}_EXAMPLES")), list)
    assert "_value" in yaml.safe_load(getattr(fleet_awx, f"{prefix}_RETURN"))
