"""filter_plugins/fleet_secrets.py: a URL's password never reaches a task name or a result."""

from __future__ import annotations

import pytest
import yaml

from filter_plugins import fleet_secrets
from filter_plugins.fleet_secrets import fleet_redact_url


@pytest.mark.parametrize(("given", "shown"), [
    ("rest:https://backup:s3cr@t@store.example.net/web-1/", "rest:https://backup:***@store.example.net/web-1/"),
    ("s3:https://AKIA:wJalr/K7@s3.example.net/bucket", "s3:https://AKIA:***@s3.example.net/bucket"),
    ("https://:token@hooks.example.net/x", "https://:***@hooks.example.net/x"),
    ("sftp:backup@store.example.net:/srv/restic", "sftp:backup@store.example.net:/srv/restic"),
    ("/var/backups/fleet/restic", "/var/backups/fleet/restic"),
    ("https://user@example.net/", "https://user@example.net/"),
])
def test_only_the_password_of_a_url_is_hidden(given: str, shown: str) -> None:
    assert fleet_redact_url(given) == shown


def test_documentation_parses() -> None:
    doc = yaml.safe_load(fleet_secrets.FLEET_REDACT_URL_DOCUMENTATION)
    assert doc["name"] == "fleet_redact_url" and "_input" in doc["options"]
    assert isinstance(yaml.safe_load(fleet_secrets.FLEET_REDACT_URL_EXAMPLES), list)
    assert "_value" in yaml.safe_load(fleet_secrets.FLEET_REDACT_URL_RETURN)
