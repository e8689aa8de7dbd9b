"""filter_plugins/fleet_systemd.py, and roles/service/templates/service.env.j2 which uses it.

What systemd itself makes of the quoted values is proven on a real systemd in
tests/integration/test_env_file_systemd.py; here, the quoting, the refusals and the template.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleError, AnsibleFilterError
from ansible.plugins.loader import add_all_plugin_dirs
from ansible.template import Templar, trust_as_template

from filter_plugins import fleet_systemd
from filter_plugins.fleet_systemd import FilterModule, fleet_systemd_env_value

ROOT = Path(__file__).resolve().parents[2]
add_all_plugin_dirs(str(ROOT))  # filter_plugins/, as ansible.cfg gives it to the playbooks
TEMPLATE = ROOT / "roles" / "service" / "templates" / "service.env.j2"

# The values the integration test sends through systemd, with the line this filter writes for each.
QUOTED = {
    "back\\slash": '"back\\\\slash"',
    '"double"': '"\\"double\\""',
    "'single'": '"\'single\'"',
    "$HOME": '"\\$HOME"',
    "${X}": '"\\${X}"',
    "`id`": '"\\`id\\`"',
    "%i %%": '"%i %%"',
    "é ü 漢字": '"é ü 漢字"',
    "trailing  ": '"trailing  "',
    "#leading": '"#leading"',
    "a=b": '"a=b"',
    "tab\there": '"tab\there"',
    "": '""',
}


@pytest.mark.parametrize("value", sorted(QUOTED))
def test_values_are_double_quoted_with_systemds_four_escapes(value: str):
    assert fleet_systemd_env_value(value, "X") == QUOTED[value]


@pytest.mark.parametrize("value,text", [(8080, '"8080"'), (0.5, '"0.5"')])
def test_numbers_are_written_as_text(value: Any, text: str):
    assert fleet_systemd_env_value(value, "PORT") == text


@pytest.mark.parametrize("value,what", [
    ("a\0b", "a NUL character at position 1"),
    ("line\nbreak", "a line break at position 4"),
    ("dos\r", "a carriage return at position 3"),
    ("\x1b[31m", "the control character '\\x1b' at position 0"),
])
def test_values_systemd_cannot_carry_are_refused_naming_the_variable(value: str, what: str):
    with pytest.raises(AnsibleFilterError, match=rf"^environment variable API_TOKEN: contains {re.escape(what)},"):
        fleet_systemd_env_value(value, "API_TOKEN")


@pytest.mark.parametrize("value", [None, True, ["a"], {"a": 1}])
def test_values_that_are_not_text_or_numbers_are_refused(value: Any):
    with pytest.raises(AnsibleFilterError, match="environment variable FLAG: must be a string or a number"):
        fleet_systemd_env_value(value, "FLAG")


def render_env(environment: dict[str, Any]) -> str:
    templar = Templar(variables={"ansible_managed": "Ansible managed", "__service": {"name": "api"},
                                 "fleet_services": {"api": {"environment": environment}}})
    return str(templar.template(trust_as_template(TEMPLATE.read_text())))


def test_the_service_env_template_quotes_every_value_with_the_filter():
    environment = {f"V{n:02}": value for n, value in enumerate(sorted(QUOTED))}
    lines = [line for line in render_env(environment).splitlines() if not line.startswith("#")]
    assert lines == [f"{key}={QUOTED[value]}" for key, value in sorted(environment.items())]


def test_the_service_env_template_refuses_a_line_break():
    with pytest.raises(AnsibleError, match="environment variable MOTD: contains a line break"):
        render_env({"MOTD": "two\nlines"})


def test_filter_module_mapping_and_documentation():
    assert FilterModule().filters() == {"fleet_systemd_env_value": fleet_systemd_env_value}
    doc = yaml.safe_load(fleet_systemd.FLEET_SYSTEMD_ENV_VALUE_DOCUMENTATION)
    assert doc["name"] == "fleet_systemd_env_value" and "_input" in doc["options"]
    assert isinstance(yaml.safe_load(fleet_systemd.FLEET_SYSTEMD_ENV_VALUE_EXAMPLES), list)
    assert "_value" in yaml.safe_load(fleet_systemd.FLEET_SYSTEMD_ENV_VALUE_RETURN)
