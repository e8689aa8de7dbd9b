"""Filters that write values for systemd to read back exactly.

systemd reads a unit's `EnvironmentFile=` with its own rules (src/basic/env-file.c), which are
neither JSON's nor the shell's:

- `KEY=value` unquoted: leading and trailing whitespace is dropped and a backslash escapes any
  character, so `a\\b` arrives as `ab`;
- `KEY="value"`: only `\\"`, `\\\\`, `` \\` `` and `\\$` are unescaped; any other backslash is kept
  with the character after it, so JSON's `\\u00e9` arrives as those six characters, not `é`; a
  backslash before a newline joins the lines;
- nothing is expanded: `$HOME`, `${X}`, `%i` and `%%` arrive as written; UTF-8 passes through;
- a value with control characters other than tab is dropped whole by older systemd versions.

As in fleet_catalog.py, the DOCUMENTATION / EXAMPLES / RETURN strings are prefixed with the filter's
name (the file is named for what it serves, not for its one filter); the unit tests parse them.
"""

from __future__ import annotations

import re
from typing import Any

from ansible.errors import AnsibleFilterError

# Inside double quotes, the characters systemd unescapes (its SHELL_NEED_ESCAPE).
_NEEDS_ESCAPE = re.compile(r'([\\"`$])')
# C0 controls and DEL, except tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

FLEET_SYSTEMD_ENV_VALUE_DOCUMENTATION = r"""
name: fleet_systemd_env_value
short_description: Quote a value for a systemd EnvironmentFile
description:
  - Returns O(_input) in double quotes with C(\), C("), C(`) and C($) escaped by a backslash, so
    that a unit reading the file through C(EnvironmentFile=) gets exactly the original string,
    quotes, backslashes, C($VAR), C(%) specifiers, leading C(#), C(=), surrounding spaces and
    non-ASCII text included (systemd expands none of them in an environment file).
  - Refuses a value with a NUL, a line break or another control character (tab excepted), naming
    the variable; systemd cannot pass a NUL, and older versions drop such a variable silently.
positional: name
options:
  _input:
    description: The value, a string or a number.
    type: raw
    required: true
  name:
    description: The variable's name, for error messages.
    type: str
    default: ""
"""

FLEET_SYSTEMD_ENV_VALUE_EXAMPLES = r"""
- name: Write the service's environment file
  ansible.builtin.copy:
    content: |
      {% for key, value in environment | dictsort %}
      {{ key }}={{ value | fleet_systemd_env_value(key) }}
      {% endfor %}
    dest: /etc/fleet/main-api/8010.env
    mode: "0600"
  no_log: true
"""

FLEET_SYSTEMD_ENV_VALUE_RETURN = r"""
_value:
  description: The double-quoted value, e.g. C("a \"b\" \$HOME") for C(a "b" $HOME).
  type: str
"""


def fleet_systemd_env_value(value: Any, name: str = "") -> str:
    """`value` quoted so that systemd's EnvironmentFile= parser gives back exactly `value`."""
    where = f"environment variable {name}" if name else "an environment value"
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise AnsibleFilterError(f"{where}: must be a string or a number, got {type(value).__name__}; "
                                 "quote it in the inventory")
    text = str(value)
    control = _CONTROL.search(text)
    if control:
        what = {"\0": "a NUL character", "\n": "a line break", "\r": "a carriage return"}.get(
            control.group(), f"the control character {control.group()!r}")
        raise AnsibleFilterError(f"{where}: contains {what} at position {control.start()}, which a systemd "
                                 "environment file cannot carry; put the value on one line without control "
                                 "characters (encode it, e.g. base64, if it must hold them)")
    return '"' + _NEEDS_ESCAPE.sub(r"\\\1", text) + '"'


class FilterModule:
    """Fleet systemd filters."""

    def filters(self) -> dict[str, Any]:
        return {"fleet_systemd_env_value": fleet_systemd_env_value}
