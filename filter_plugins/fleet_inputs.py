"""Filters that check the inputs a person types for a deploy (-e batch_size=..., health_timeout=...).

Checked once, before any host changes: a bad value fails the run naming the extra var and the fix,
instead of failing later inside a host's health gate. `fleet_batch_ramp` turns the checked
`batch_size` into the list Ansible's `serial` keyword takes, `fleet_canary_steps` the checked
`canary` into its weights.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

# Extra var -> (smallest value allowed, whether the smallest itself is allowed).
SECONDS_INPUTS = {
    "health_timeout": (0.0, False),
    "health_interval": (0.0, False),
    "health_start_grace": (0.0, True),
    "drain_timeout": (0.0, False),
    "watch": (0.0, True),
}
# Upper bounds of those that have one (the catalog's deploy.watch has the same).
SECONDS_MAX = {"watch": 600.0}
_SECONDS_RE = re.compile(r"[0-9]+(\.[0-9]+)?")
# What a failed host does to the hosts the run already moved (deploy role, deploy_on_failure).
ON_FAILURE = ("halt", "revert_all")
_BATCH_RE = re.compile(r"([1-9][0-9]*)(%?)")
# A canary's steps: whole percents of the requests sent to the new slot, strictly increasing, 100 last.
_CANARY_STEP_RE = re.compile(r"[0-9]{1,3}")
CANARY_EXAMPLE = "canary=5,25,100"

FLEET_DEPLOY_INPUT_PROBLEMS_DOCUMENTATION = r"""
name: fleet_deploy_input_problems
short_description: What is wrong with a deploy's extra vars
description:
  - Checks C(batch_size) (see P(fleet_batch_ramp#filter)), C(on_failure) (C(halt) or C(revert_all)) and
    the durations in seconds (C(health_timeout), C(health_interval), C(drain_timeout) above 0;
    C(health_start_grace) 0 or more; C(watch) from 0, no watch, to 600).
  - C(canary) (see P(fleet_canary_steps#filter)) only with C(mode) C(deploy) (a restart or a rollback is not
    canaried) and with a watch above 0 (C(watch), or else C(catalog_watch), the service's C(deploy.watch)).
  - Empty or missing values are fine (the catalog's settings apply).
  - Returns one line per problem, naming the extra var and the fix; an empty list when all is well.
options:
  _input:
    description: Extra var name to the value given (a string or a number).
    type: dict
    required: true
"""

FLEET_DEPLOY_INPUT_PROBLEMS_EXAMPLES = r"""
- name: Check the deploy's inputs
  ansible.builtin.assert:
    that: __problems | length == 0
    fail_msg: "{{ __problems | join(' ') }}"
  vars:
    __problems: "{{ {'batch_size': batch_size, 'health_timeout': health_timeout} | fleet_deploy_input_problems }}"
"""

FLEET_DEPLOY_INPUT_PROBLEMS_RETURN = r"""
_value:
  description: One message per bad input.
  type: list
  elements: str
"""

FLEET_BATCH_RAMP_DOCUMENTATION = r"""
name: fleet_batch_ramp
short_description: A batch_size as the list Ansible's serial keyword takes
description:
  - >-
    C(batch_size) is a number of hosts (C(2)), a share of the hosts (C(25%)), or a ramp of them,
    comma separated (C(1,25%,100%)) - the first batch has 1 host, the next a quarter of the hosts,
    then all the rest. The last step repeats until every host is done, as with C(serial).
options:
  _input:
    description: The batch_size extra var.
    type: raw
    required: true
"""

FLEET_BATCH_RAMP_EXAMPLES = r"""
- name: Roll out, one batch of hosts at a time
  hosts: fleet_deploy_targets
  serial: "{{ batch_size | default(1) | fleet_batch_ramp }}"
"""

FLEET_BATCH_RAMP_RETURN = r"""
_value:
  description: Batch sizes, numbers of hosts (int) or shares (str ending in %).
  type: list
"""


FLEET_CANARY_STEPS_DOCUMENTATION = r"""
name: fleet_canary_steps
short_description: A canary extra var as its list of weights
description:
  - >-
    C(canary) is the share of requests (whole percents) the new slot gets at each step, comma separated and
    strictly increasing, from 1; the last is 100, which finishes the switch (C(5,25,100); C(100) alone is a
    plain deploy). Empty: no canary, V([]).
  - Raises naming C(canary) and the fix when the value is none of those.
options:
  _input:
    description: The canary extra var.
    type: raw
    required: true
"""

FLEET_CANARY_STEPS_EXAMPLES = r"""
- name: Send each step's share of the requests to the new slot
  ansible.builtin.debug:
    msg: "{{ item }}%"
  loop: "{{ canary | default('') | fleet_canary_steps }}"
"""

FLEET_CANARY_STEPS_RETURN = r"""
_value:
  description: The weights, ints from 1 to 100, strictly increasing, 100 last; empty without a canary.
  type: list
  elements: int
"""


FLEET_MAINTENANCE_INPUT_PROBLEMS_DOCUMENTATION = r"""
name: fleet_maintenance_input_problems
short_description: What is wrong with maintenance.yml's extra vars
description:
  - C(service) must be one of the catalog's services; C(state) C(on) or C(off) (a YAML boolean too);
    C(retry_after) a whole number of seconds from 1 to 604800 (a week), the Retry-After nginx
    sends; C(reason) optional text of at most 200 characters on one line (the audit line and
    the status table show it).
  - Returns one line per problem, naming the extra var and the fix; an empty list when all is well.
positional: catalog
options:
  _input:
    description: Extra var name to the value given.
    type: dict
    required: true
  catalog:
    description: The validated catalog (fleet_catalog).
    type: dict
    required: true
"""

FLEET_MAINTENANCE_INPUT_PROBLEMS_EXAMPLES = r"""
- name: Check the maintenance inputs before any host is touched
  ansible.builtin.assert:
    that: __problems | length == 0
    fail_msg: "{{ __problems | join(' ') }}"
  vars:
    __problems: "{{ {'service': service, 'state': state} | fleet_maintenance_input_problems(fleet_catalog) }}"
"""

FLEET_MAINTENANCE_INPUT_PROBLEMS_RETURN = r"""
_value:
  description: One message per bad input.
  type: list
  elements: str
"""

FLEET_MAINTENANCE_ON_DOCUMENTATION = r"""
name: fleet_maintenance_on
short_description: maintenance.yml's checked state as a boolean
description:
  - C(on) (or a YAML true) is V(true), C(off) (or a YAML false) V(false); anything else raises,
    naming the extra var.
options:
  _input:
    description: The state extra var.
    type: raw
    required: true
"""

FLEET_MAINTENANCE_ON_EXAMPLES = r"""
- name: Say what the run does
  ansible.builtin.debug:
    msg: "{{ 'on' if state | fleet_maintenance_on else 'off' }}"
"""

FLEET_MAINTENANCE_ON_RETURN = r"""
_value:
  description: Whether maintenance is to be turned on.
  type: bool
"""

# maintenance.yml's Retry-After, in seconds: at least 1, at most a week.
RETRY_AFTER_MAX = 604800
REASON_MAX_LENGTH = 200
_MAINTENANCE_STATES = {"on": True, "off": False, "true": True, "false": False}


def _maintenance_state(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    return _MAINTENANCE_STATES.get(str(value).strip().lower()) if isinstance(value, str) else None


def fleet_maintenance_input_problems(inputs: Any, catalog: Any) -> list[str]:
    if not isinstance(inputs, Mapping) or not isinstance(catalog, Mapping):
        raise AnsibleFilterError("fleet_maintenance_input_problems: use as {'service': ..., 'state': ..., "
                                 "'retry_after': ..., 'reason': ...} | fleet_maintenance_input_problems(fleet_catalog)")
    problems = []
    service = inputs.get("service")
    if service in (None, "") or service not in catalog:
        problems.append(f"service must be one of the catalog's services: {', '.join(sorted(catalog))}; "
                        f"got '{service or ''}'.")
    state = inputs.get("state")
    if _maintenance_state(state) is None:
        problems.append(f"state must be on (503 and the maintenance page) or off (serve again); got '{state or ''}'.")
    retry = inputs.get("retry_after")
    text = "" if retry is None or isinstance(retry, bool) else str(retry).strip()
    if not text.isdigit() or not 1 <= int(text) <= RETRY_AFTER_MAX:
        problems.append(f"retry_after must be a whole number of seconds from 1 to {RETRY_AFTER_MAX} (the Retry-After "
                        f"nginx sends), e.g. retry_after=600; got '{retry}'.")
    reason = inputs.get("reason")
    if reason not in (None, "") and (not isinstance(reason, str) or len(reason) > REASON_MAX_LENGTH
                                     or not reason.isprintable()):
        problems.append(f"reason must be text on one line of at most {REASON_MAX_LENGTH} characters, e.g. "
                        "reason='database migration'; got something else.")
    return problems


def fleet_maintenance_on(value: Any) -> bool:
    state = _maintenance_state(value)
    if state is None:
        raise AnsibleFilterError(f"state must be on or off; got '{value}'")
    return state


def _batch_steps(value: Any) -> list[int | str] | str:
    """The ramp's steps, or a message saying what is wrong."""
    text = str(value).replace(" ", "")
    steps: list[int | str] = []
    for step in text.split(","):
        match = _BATCH_RE.fullmatch(step)
        if not match or (match.group(2) and int(match.group(1)) > 100):
            return (f"batch_size must be a number of hosts (2), a share of them (25%), or a ramp of those, "
                    f"comma separated (1,25%,100%); '{step}' in '{value}' is none of those.")
        steps.append(step if match.group(2) else int(step))
    return steps


def _canary_steps(value: Any) -> list[int] | str:
    """The canary's weights, or a message saying what is wrong."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, bool):
        return f"canary must be the share of requests at each step, e.g. {CANARY_EXAMPLE}; got '{value}'."
    text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    steps = [step.strip() for step in text.split(",")]
    bad = [step for step in steps if not _CANARY_STEP_RE.fullmatch(step) or not 1 <= int(step) <= 100]
    if bad:
        return (f"canary must be whole percents of the requests from 1 to 100, comma separated, e.g. "
                f"{CANARY_EXAMPLE}; '{bad[0]}' in '{text}' is not one.")
    weights = [int(step) for step in steps]
    if any(b <= a for a, b in itertools.pairwise(weights)):
        return f"canary steps must go up, each above the one before, e.g. {CANARY_EXAMPLE}; got '{text}'."
    if weights[-1] != 100:
        return f"canary must end with 100, the step that finishes the switch, e.g. canary={text},100; got '{text}'."
    return weights


def _canary_problems(inputs: Mapping[str, Any]) -> list[str]:
    steps = _canary_steps(inputs.get("canary"))
    if isinstance(steps, str):
        return [steps]
    if not steps:
        return []
    mode = inputs.get("mode") or "deploy"
    if mode != "deploy":
        return [f"canary goes with a deploy of a new release, not with {'restart=true' if mode == 'restart' else mode}"
                f" (it moves the live release, or goes back to a known one, at once): drop -e canary."]
    watch = inputs.get("watch")
    watch = inputs.get("catalog_watch") if watch in (None, "") else watch
    try:
        watched = float(str(watch).strip()) > 0
    except ValueError:
        return []  # the watch's own message says what is wrong with it
    if not watched:
        return [f"canary needs a watch: each step holds for the watch period, and it is 0 here (-e watch, or else "
                f"the service's deploy.watch); add -e watch=30 (seconds), e.g. {CANARY_EXAMPLE} watch=30."]
    return []


def fleet_deploy_input_problems(inputs: Any) -> list[str]:
    if not isinstance(inputs, Mapping):
        raise AnsibleFilterError("fleet_deploy_input_problems: give it a dict of extra var name to value")
    problems = []
    batch = inputs.get("batch_size")
    if batch not in (None, ""):
        steps = _batch_steps(batch)
        if isinstance(steps, str):
            problems.append(steps)
    on_failure = inputs.get("on_failure")
    if on_failure not in (None, "", *ON_FAILURE):
        problems.append(f"on_failure must be one of {', '.join(ON_FAILURE)} (halt: the hosts already moved stay; "
                        f"revert_all: they are moved back), got '{on_failure}'.")
    for name, (least, least_allowed) in SECONDS_INPUTS.items():
        value = inputs.get(name)
        if value in (None, ""):
            continue
        text = str(value).strip()
        if not _SECONDS_RE.fullmatch(text):
            problems.append(f"{name} must be a number of seconds, e.g. {name}=120 for two minutes; got '{value}'.")
        elif float(text) < least or (float(text) == least and not least_allowed):
            problems.append(f"{name} must be {'at least' if least_allowed else 'more than'} {least:g} seconds; "
                            f"got '{value}'.")
        elif name in SECONDS_MAX and float(text) > SECONDS_MAX[name]:
            problems.append(f"{name} must be at most {SECONDS_MAX[name]:g} seconds; got '{value}'.")
    return problems + _canary_problems(inputs)


def fleet_batch_ramp(value: Any) -> list[int | str]:
    steps = _batch_steps(value)
    if isinstance(steps, str):
        raise AnsibleFilterError(steps)
    return steps


def fleet_canary_steps(value: Any) -> list[int]:
    steps = _canary_steps(value)
    if isinstance(steps, str):
        raise AnsibleFilterError(steps)
    return steps


class FilterModule:
    """Deploy input filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "fleet_deploy_input_problems": fleet_deploy_input_problems,
            "fleet_batch_ramp": fleet_batch_ramp,
            "fleet_canary_steps": fleet_canary_steps,
            "fleet_maintenance_input_problems": fleet_maintenance_input_problems,
            "fleet_maintenance_on": fleet_maintenance_on,
        }
