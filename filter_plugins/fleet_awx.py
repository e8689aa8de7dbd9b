"""Filters that turn the fleet service catalog into AWX / Automation Platform survey specs.

The hot-deploy, rollback and maintenance job templates ask for a service, the status and audit
ones may (left unanswered, they cover every service); the choices come from the catalog
(`fleet_services`), so a service is never typed twice. awx/configure.yml applies the specs with
`awx.awx.job_template`; re-apply it after the catalog changes, or the survey offers stale choices.

A survey spec is the JSON AWX stores on a job template (`/api/v2/job_templates/<id>/survey_spec/`):
`{"name", "description", "spec": [question, ...]}`, each question with `question_name`,
`question_description`, `variable`, `type`, `required` and, by type, `default`, `min`, `max`,
`choices`. AWX checks a spec's shape when it is saved and each answer against its question at
launch (a multiple-choice answer must be one of the choices), but it cannot know whether a
service still exists: the playbooks' own input checks remain the real guard.

As in fleet_catalog.py, this file holds several filters, so the per-filter DOCUMENTATION /
EXAMPLES / RETURN strings live here and the unit tests parse them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

_SERVICE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")

# The longest version a survey accepts; fleet_release_archive checks the characters.
VERSION_MAX_LENGTH = 128

# The surveys fleet defines, by job template kind: (survey name, description, questions).
SURVEY_KINDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "hot_deploy": (
        "fleet hot deploy",
        "Zero-downtime deploy of one catalog service, a batch of hosts at a time.",
        ("service", "version", "canary", "batch_size", "on_failure", "break_lock"),
    ),
    "rollback": (
        "fleet rollback",
        "Undo the last move of one catalog service (hosts on the release it moved to go back), "
        "a batch of hosts at a time.",
        ("service", "batch_size", "break_lock"),
    ),
    "status": (
        "fleet status",
        "What runs where: live slot and release, idle slot, health, last deploy, lock and pending move "
        "of every service on every host (read-only).",
        ("service", "format"),
    ),
    "audit": (
        "fleet audit",
        "The hosts' deploy audit lines merged, newest first (read-only).",
        ("service", "limit", "since"),
    ),
    "maintenance": (
        "fleet maintenance",
        "Turn the maintenance mode of one catalog service on (nginx answers it with 503, Retry-After and its "
        "maintenance page, without a reload) or off, on every host that runs it (or the job's limit).",
        ("service", "state", "retry_after", "reason"),
    ),
}
# Kinds that read rather than change: their service question may be left unanswered (all services).
READ_ONLY_KINDS = ("status", "audit")
# audit.yml's limit: its default and the most it takes (filter_plugins/fleet_audit.py checks the same).
AUDIT_LIMIT_DEFAULT, AUDIT_LIMIT_MAX = 20, 10000
SINCE_MAX_LENGTH = 64
# hot_deploy.yml's canary (filter_plugins/fleet_inputs.py checks its form): room for 1,2,...,100.
CANARY_MAX_LENGTH = 64
# maintenance.yml's inputs (filter_plugins/fleet_inputs.py checks the same).
RETRY_AFTER_DEFAULT, RETRY_AFTER_MAX = 600, 604800
REASON_MAX_LENGTH = 200

FLEET_AWX_SERVICE_CHOICES_DOCUMENTATION = r"""
name: fleet_awx_service_choices
short_description: The catalog's service names, as survey choices
description:
  - Returns the service names of O(_input), sorted, for an AWX C(multiplechoice) question.
  - Reads only the names, so it works on the raw C(fleet_services) of an inventory whose
    secrets (vault variables) are not available where the job templates are applied.
options:
  _input:
    description: C(fleet_services) from the inventory, or the validated C(fleet_catalog).
    type: dict
    required: true
"""

FLEET_AWX_SERVICE_CHOICES_EXAMPLES = r"""
- name: Show the services the deploy survey offers
  ansible.builtin.debug:
    msg: "{{ fleet_services | fleet_awx_service_choices }}"
"""

FLEET_AWX_SERVICE_CHOICES_RETURN = r"""
_value:
  description: Service names, sorted.
  type: list
  elements: str
"""

FLEET_AWX_SURVEY_DOCUMENTATION = r"""
name: fleet_awx_survey
short_description: An AWX survey spec for a fleet job template, its choices from the catalog
description:
  - Builds the survey spec of the C(hot_deploy) job template (questions C(service), C(version),
    C(batch_size), C(on_failure), C(break_lock)), of the C(rollback) one (C(service), C(batch_size),
    C(break_lock)), of the C(status) one (C(service), C(format)) or of the C(audit) one
    (C(service), C(limit), C(since)) or of the C(maintenance) one (C(service), C(state),
    C(retry_after), C(reason)).
  - C(service) is a C(multiplechoice) question whose choices are the catalog's services, required
    for hot_deploy and rollback, optional for status and audit (unanswered means every service);
    C(format) is C(table) or C(json); C(limit) an integer from 1 to 10000 (default 20); C(since)
    optional text (an ISO 8601 time or an age such as C(2h), which audit.yml checks);
    C(state) is C(on) or C(off); C(retry_after) an integer from 1 to 604800 (default 600);
    C(reason) optional text of at most 200 characters;
    C(version) is optional text (empty deploys the catalog's C(release.version));
    C(batch_size) is a required integer of at least 1; C(on_failure) is C(halt) (the default) or
    C(revert_all); C(break_lock) is C(no) or C(yes), which
    the playbooks read with the C(bool) filter.
positional: kind, batch_size
options:
  _input:
    description: C(fleet_services) from the inventory, or the validated C(fleet_catalog).
    type: dict
    required: true
  kind:
    description: Which job template the survey is for.
    type: str
    choices: [hot_deploy, rollback, status, audit, maintenance]
    required: true
  batch_size:
    description: Default answer of the C(batch_size) question.
    type: int
    default: 1
"""

FLEET_AWX_SURVEY_EXAMPLES = r"""
- name: Declare the hot-deploy job template with its survey
  awx.awx.job_template:
    name: "fleet: hot deploy"
    playbook: hot_deploy.yml
    project: fleet
    inventory: fleet production
    survey_enabled: true
    survey_spec: "{{ fleet_services | fleet_awx_survey('hot_deploy') }}"
"""

FLEET_AWX_SURVEY_RETURN = r"""
_value:
  description: The survey spec, as AWX's C(survey_spec) endpoint takes it.
  type: dict
  contains:
    name:
      description: Survey name.
      type: str
    description:
      description: Survey description.
      type: str
    spec:
      description: The questions, in the order AWX shows them.
      type: list
      elements: dict
"""


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, (int, float, str)):
        return f"{type(value).__name__} {value!r}"
    return "a mapping" if isinstance(value, Mapping) else type(value).__name__


def fleet_awx_service_choices(services: Any) -> list[str]:
    """The catalog's service names, sorted; raises on anything a survey choice cannot be."""
    if not isinstance(services, Mapping):
        raise AnsibleFilterError("fleet_awx_service_choices: expects fleet_services (service name -> "
                                 f"settings) or fleet_catalog, got {_kind(services)}")
    if not services:
        raise AnsibleFilterError("fleet_awx_service_choices: the catalog is empty, so a survey would offer "
                                 "no service; define fleet_services in the inventory first")
    names = []
    for name in services:
        if not isinstance(name, str) or not _SERVICE_NAME_RE.match(name):
            raise AnsibleFilterError(f"fleet_awx_service_choices: service name {name!r} must match "
                                     "^[a-z0-9][a-z0-9-]*$ (the catalog validation says how to fix it)")
        names.append(name)
    return sorted(names)


# maintenance.yml's own questions (the service question is the shared one).
MAINTENANCE_QUESTIONS: dict[str, dict[str, Any]] = {
    "state": {
        "question_name": "Maintenance",
        "question_description": "on: nginx answers the service with 503, a Retry-After header and its "
                                "maintenance page; off: it serves again. No nginx reload either way.",
        "variable": "state",
        "type": "multiplechoice",
        "choices": ["on", "off"],
        "required": True,
        "default": "on",
    },
    "retry_after": {
        "question_name": "Retry-After (seconds)",
        "question_description": "When clients are told to try again, in seconds (the Retry-After header).",
        "variable": "retry_after",
        "type": "integer",
        "required": True,
        "default": RETRY_AFTER_DEFAULT,
        "min": 1,
        "max": RETRY_AFTER_MAX,
    },
    "reason": {
        "question_name": "Reason",
        "question_description": "Why, for the audit log and the status table (optional, one line).",
        "variable": "reason",
        "type": "text",
        "required": False,
        "default": "",
        "min": 0,
        "max": REASON_MAX_LENGTH,
    },
}


def _question(variable: str, choices: list[str], batch_size: int, kind: str) -> dict[str, Any]:
    if variable == "service":
        every = kind in READ_ONLY_KINDS
        return {
            "question_name": "Service",
            "question_description": "Catalog service (inventory fleet_services); the choices are "
                                    "regenerated from the catalog by awx/configure.yml."
                                    + (" Leave it empty for every service." if every else ""),
            "variable": "service",
            "type": "multiplechoice",
            "choices": list(choices),
            "required": not every,
        }
    if variable == "format":
        return {
            "question_name": "Format",
            "question_description": "table for people; json for the job's output and artifact "
                                    "(fleet_status) to be read by a program.",
            "variable": "format",
            "type": "multiplechoice",
            "choices": ["table", "json"],
            "required": True,
            "default": "table",
        }
    if variable == "limit":
        return {
            "question_name": "Lines",
            "question_description": "The newest lines shown, of all hosts together.",
            "variable": "limit",
            "type": "integer",
            "required": True,
            "default": AUDIT_LIMIT_DEFAULT,
            "min": 1,
            "max": AUDIT_LIMIT_MAX,
        }
    if variable == "since":
        return {
            "question_name": "Since",
            "question_description": "Only lines from then on: an ISO 8601 time in UTC (2026-11-30T09:00) or "
                                    "an age (90m, 2h, 3d, 1w); empty for all.",
            "variable": "since",
            "type": "text",
            "required": False,
            "default": "",
            "min": 0,
            "max": SINCE_MAX_LENGTH,
        }
    if variable in MAINTENANCE_QUESTIONS:
        return dict(MAINTENANCE_QUESTIONS[variable])
    if variable == "version":
        return {
            "question_name": "Version",
            "question_description": "Release to deploy, e.g. 1.4.3; leave empty for the catalog's "
                                    "release.version of the service.",
            "variable": "version",
            "type": "text",
            "required": False,
            "default": "",
            "min": 0,
            "max": VERSION_MAX_LENGTH,
        }
    if variable == "canary":
        return {
            "question_name": "Canary",
            "question_description": "Share of requests the new release gets at each step on every host at once, "
                                    "comma separated, increasing, 100 last (e.g. 5,25,100); each step is "
                                    "watched, a breach anywhere takes it back everywhere. Empty: no canary.",
            "variable": "canary",
            "type": "text",
            "required": False,
            "default": "",
            "min": 0,
            "max": CANARY_MAX_LENGTH,
        }
    if variable == "on_failure":
        return {
            "question_name": "On a failed host",
            "question_description": "halt: stop the rollout, hosts already moved stay on the new release; "
                                    "revert_all: also move them back to the release they ran.",
            "variable": "on_failure",
            "type": "multiplechoice",
            "choices": ["halt", "revert_all"],
            "required": True,
            "default": "halt",
        }
    if variable == "break_lock":
        return {
            "question_name": "Break a stale deploy lock",
            "question_description": "yes only after checking that no other deploy of the service is "
                                    "running: a lock left by a crashed run is broken on purpose, and "
                                    "the audit line records it.",
            "variable": "break_lock",
            "type": "multiplechoice",
            "choices": ["no", "yes"],
            "required": True,
            "default": "no",
        }
    return {
        "question_name": "Batch size",
        "question_description": "Hosts changed at a time; the rollout stops at the first failed batch "
                                "and leaves the remaining hosts untouched.",
        "variable": "batch_size",
        "type": "integer",
        "required": True,
        "default": batch_size,
        "min": 1,
        "max": None,
    }


def fleet_awx_survey(services: Any, kind: Any, batch_size: Any = 1) -> dict[str, Any]:
    """The survey spec of the `kind` job template, its service choices taken from `services`."""
    if kind not in SURVEY_KINDS:
        raise AnsibleFilterError(f"fleet_awx_survey: unknown survey {kind!r}; fleet defines "
                                 f"{', '.join(sorted(SURVEY_KINDS))}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise AnsibleFilterError(f"fleet_awx_survey: batch_size must be a whole number of at least 1, "
                                 f"got {_kind(batch_size)}")
    choices = fleet_awx_service_choices(services)
    name, description, variables = SURVEY_KINDS[kind]
    return {
        "name": name,
        "description": description,
        "spec": [_question(variable, choices, batch_size, kind) for variable in variables],
    }


class FilterModule:
    """Fleet AWX filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "fleet_awx_service_choices": fleet_awx_service_choices,
            "fleet_awx_survey": fleet_awx_survey,
        }
