"""The ufw role's lockout guarantee is an ordering of tasks: SSH is allowed before the default
policies change and before ufw is enabled, and undeclared rules go only after that."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles/ufw"


def tasks(name: str) -> list[dict[str, Any]]:
    return yaml.safe_load((ROLE / "tasks" / name).read_text())


def position(task_list: list[dict[str, Any]], predicate) -> int:
    matches = [i for i, task in enumerate(task_list) if predicate(task)]
    assert len(matches) == 1, matches
    return matches[0]


def ufw_args(task: dict[str, Any]) -> dict[str, Any]:
    return task.get("community.general.ufw") or {}


def test_ssh_is_allowed_before_policies_and_enable():
    enable = tasks("enable.yml")
    ssh = position(enable, lambda t: "ufw_ssh_port" in str(t.get("loop", "")) and "selectattr" in str(t["loop"]))
    policies = position(enable, lambda t: "default" in ufw_args(t))
    enabled = position(enable, lambda t: ufw_args(t).get("state") == "enabled")
    assert ssh == 0, "the SSH rules must be the first thing the role changes in ufw"
    assert ssh < policies < enabled


def test_pruning_comes_after_enabling():
    imports = [task["ansible.builtin.import_tasks"] for task in tasks("main.yml")]
    assert imports.index("declare.yml") < imports.index("enable.yml") < imports.index("prune.yml")


def test_rules_are_validated_before_any_change():
    imports = [task["ansible.builtin.import_tasks"] for task in tasks("main.yml")]
    assert imports.index("declare.yml") == imports.index("install.yml") + 1
    declare = tasks("declare.yml")
    assert "ufw_declared_rules" in str(declare[0]["ansible.builtin.set_fact"])
    assert "ansible.builtin.assert" in declare[1]


def test_prune_only_reads_in_check_mode():
    listing, delete = tasks("prune.yml")
    assert listing["check_mode"] is False and listing["changed_when"] is False
    assert "ufw_undeclared_rules" in delete["loop"]
