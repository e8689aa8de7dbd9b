"""Filters that keep secrets out of what Ansible prints (task names, results, AWX job events).

The jobs on the hosts redact their own output (roles/backup/files/fleet_backup.py,
roles/health_check/files/fleet_health/alerts.py: each is installed on its own and carries the same rule).
"""

from __future__ import annotations

import re
from typing import Any

from ansible.errors import AnsibleFilterError

# scheme://user:password@ - the password runs to the last "@" before a space or a quote.
_URL_CREDENTIALS = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^\s\"'<>]*@")

FLEET_REDACT_URL_DOCUMENTATION = r"""
name: fleet_redact_url
short_description: Hide the password of every URL in a text
description:
  - Replaces C(scheme://user:password@) with C(scheme://user:***@), e.g. in a restic repository
    such as C(rest:https://backup:s3cret@backup.example.com/web-1/), so that it can be printed.
  - A text without such a URL comes back unchanged (compare the two to tell whether it held one).
options:
  _input:
    description: The text.
    type: str
    required: true
"""

FLEET_REDACT_URL_EXAMPLES = r"""
- name: Create the encrypted repository {{ backup_repository | fleet_redact_url }}
  ansible.builtin.command: restic init
"""

FLEET_REDACT_URL_RETURN = r"""
_value:
  description: The text with every URL password replaced by C(***).
  type: str
"""


def fleet_redact_url(text: Any) -> str:
    if not isinstance(text, str):
        raise AnsibleFilterError(f"fleet_redact_url: expects a string, got {type(text).__name__}")
    return _URL_CREDENTIALS.sub(r"\g<prefix>:***@", text)


class FilterModule:
    """Fleet filters that hide secrets."""

    def filters(self) -> dict[str, Any]:
        return {"fleet_redact_url": fleet_redact_url}
