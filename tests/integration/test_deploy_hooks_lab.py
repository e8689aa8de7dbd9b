"""The deploy's hooks on the lab fleet (the catalog's deploy.pre_deploy, deploy.smoke and
deploy.notify) and the release archive's checksum: each test gives the hooks to one service through
a catalog override (-e @catalog.json), deploys one host, and reads what it assumes from the state.

The webhook receiver runs here, on the controller's loopback: the deploy posts from the controller.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.webhook_receiver import Webhook

from .conftest import ROOT, Lab
from .helpers import HOST1, HOST2, audit, flat, served, state, summary_of

SERVICE = "infrastructure"
SECRET = "hook-key-not-to-be-printed"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    receiver = Webhook(refuse_first=(500,), path=f"/hook/{SECRET}")
    yield receiver
    receiver.close()


def refusing_url() -> str:
    """A loopback URL nothing listens on: the post is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook/{SECRET}"


def override(tmp_path: Path, deploy: dict[str, Any], release: dict[str, Any] | None = None,
             service: str = SERVICE) -> str:
    """The lab catalog with `deploy` (and `release`) merged into the service's entry, as an extra-vars file."""
    catalog = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/fleet_services.yml").read_text())
    entry = catalog["fleet_services"][service]
    entry.setdefault("deploy", {}).update(deploy)
    entry["release"].update(release or {})
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    return f"@{path}"


def live_release(lab: Lab, host: str, service: str = SERVICE) -> tuple[int, str]:
    now = state(lab, host, service)
    return now["live_port"], now["slots"][str(now["live_port"])]["release"]


def next_release(current: str) -> str:
    return "2.0.0" if current != "2.0.0" else "1.1.0"


def archive_sha256(release: str) -> str:
    return hashlib.sha256((ROOT / f"build/releases/demo-service-{release}.tar.gz").read_bytes()).hexdigest()


def test_pre_deploy_and_smoke_run_before_the_switch_and_the_webhook_hears_every_step(
        lab: Lab, tmp_path: Path, webhook: Webhook) -> None:
    """A deploy with a pre-deploy command and backup, two smoke checks and a webhook that refuses
    the first event: the deploy goes through, with a warning, and the webhook hears the rest."""
    host = HOST1
    live, current = live_release(lab, host)
    target = next_release(current)
    staged_before = lab.ssh(host, f"test -e /opt/fleet/{SERVICE}/releases/{target}/.fleet-release",
                            check=False).returncode == 0
    lab.ssh(host, "rm -f /tmp/fleet-test-pre-deploy")
    backup_before = lab.ssh(host, "cat /var/lib/fleet/backup/last-run.json", check=False).stdout
    catalog = override(tmp_path, {
        "pre_deploy": {"command": 'printf "%s %s %s %s" "$(id -un)" "$(pwd)" "$DEMO_SERVICE_NAME" "$FLEET_RELEASE"'
                                  " > /tmp/fleet-test-pre-deploy; echo migrated", "backup": True, "timeout": 60},
        "smoke": [{"path": "/api/ping?x=1", "body": "/api/ping"},
                  {"method": "POST", "path": "/api/echo", "body": "body_length"}],
        "notify": {"webhook": webhook.url}})
    result = lab.playbook("hot_deploy.yml", "-e", f"service={SERVICE}", "-e", f"version={target}",
                          "-e", catalog, "-e", "retry_bad_release=true", "--limit", host)
    output = flat(result.stdout)
    assert f"pre_deploy runs the backup job (role backup) on {host}" in output
    warnings = flat(result.stderr)  # where Ansible prints warnings
    assert "the started notification was not delivered" in warnings and "answered HTTP 500" in warnings
    assert SECRET not in result.stdout + result.stderr
    assert live_release(lab, host) == (9080 if live == 8080 else 8080, target)
    assert "deployed" in summary_of(result.stdout)

    # The command ran once, in the new release, as the service's user, with its environment.
    assert lab.ssh(host, "cat /tmp/fleet-test-pre-deploy").stdout == (
        f"fleet /opt/fleet/{SERVICE}/releases/{target} {SERVICE} {target}")
    backup_after = json.loads(lab.ssh(host, "cat /var/lib/fleet/backup/last-run.json").stdout)
    assert backup_after["status"] == "ok" and json.dumps(backup_after) != backup_before.strip()

    line = [r for r in audit(lab, host) if r["service"] == SERVICE][-1]
    assert (line["to_release"], line["result"]) == (target, "ok")
    assert {"smoke", "smoke_nginx"} <= set(line["durations"])
    if not staged_before:  # unpacked by this run: the local archive's sha256 is in the audit line
        assert line["release_sha256"] == archive_sha256(target)

    assert [e["event"] for e in webhook.events] == ["started", "host", "finished"]
    for event in webhook.events:
        assert (event["service"], event["mode"], event["release"]) == (SERVICE, "deploy", target)
        assert event["deploy_id"] == line["deploy_id"] and event["who"] == line["who"]
    _, moved, finished = webhook.events
    assert (moved["host"], moved["result"], moved["from_release"]) == (host, "ok", current)
    assert [(h["host"], h["result"]) for h in finished["hosts"]] == [(host, "ok")]
    assert finished["result"] == "ok" and finished["text"].startswith(f"fleet: deploy of {SERVICE} {target} finished")


def test_a_failing_smoke_check_leaves_traffic_where_it_was_and_names_the_check(
        lab: Lab, tmp_path: Path) -> None:
    host = HOST1
    live, current = live_release(lab, host)
    target, idle = next_release(current), 9080 if live == 8080 else 8080
    receiver = Webhook(path=f"/hook/{SECRET}")
    try:
        result = lab.playbook("hot_deploy.yml", "-e", f"service={SERVICE}", "-e", f"version={target}",
                              "-e", override(tmp_path, {"smoke": [{"path": "/status/418", "status": 200}],
                                                        "notify": {"webhook": receiver.url}}),
                              "-e", "retry_bad_release=true", "--limit", host, check=False)
    finally:
        receiver.close()
    message = flat(result.stdout)
    assert result.returncode != 0
    assert (f"FAILED on {host} in the smoke step: smoke check 1 of 1 failed against the new slot {idle}: "
            f"GET http://127.0.0.1:{idle}/status/418 wanted status 200; saw status 418") in message, message[-3000:]
    assert f"Traffic stays on {current} (slot {live}), release marked bad on this host." in message
    after = state(lab, host, SERVICE)
    assert after["live_port"] == live and target in after["bad_releases"] and str(idle) not in after["slots"]
    assert served(lab, host, SERVICE)["version"] == current
    assert [e["event"] for e in receiver.events] == ["started", "host", "failed"]
    assert receiver.events[1]["result"] == "failed" and "smoke check 1 of 1 failed" in receiver.events[2]["message"]


def test_a_failing_pre_deploy_command_stops_before_any_host_moves_and_a_refused_webhook_hides_nothing(
        lab: Lab, tmp_path: Path) -> None:
    host = HOST1
    before = state(lab, host, SERVICE)
    lines_before = [r for r in audit(lab, host) if r["service"] == SERVICE]
    target = next_release(live_release(lab, host)[1])
    result = lab.playbook(
        "hot_deploy.yml", "-e", f"service={SERVICE}", "-e", f"version={target}", "-e", "retry_bad_release=true",
        "-e", override(tmp_path, {"pre_deploy": {"command": "echo checking schema; echo 'migration 42 failed: "
                                                            "column exists' >&2; exit 3"},
                                  "notify": {"webhook": refusing_url()}}),
        "--limit", host, check=False)
    message = flat(result.stdout)
    assert result.returncode != 0
    assert (f"pre_deploy hook of {SERVICE} {target} FAILED on {host}: the command `echo checking schema; "
            "echo 'migration 42 failed: column exists' >&2; exit 3` exited 3") in message, message[-3000:]
    assert "its output ends: checking schema | migration 42 failed: column exists" in message
    assert "No host was switched" in message
    warnings = flat(result.stderr)  # where Ansible prints warnings
    assert "the failed notification was not delivered" in warnings and "ConnectionRefusedError" in warnings
    assert SECRET not in result.stdout + result.stderr
    assert state(lab, host, SERVICE) == before
    assert [r for r in audit(lab, host) if r["service"] == SERVICE] == lines_before


def test_bad_hook_input_fails_before_anything_changes_naming_the_field(lab: Lab, tmp_path: Path) -> None:
    before = {h: state(lab, h, SERVICE) for h in lab.hosts}
    bad = lab.playbook("hot_deploy.yml", "-e", f"service={SERVICE}", "-e", "version=1.1.0",
                       "-e", override(tmp_path, {"smoke": [{"path": "api/ping", "status": "200"}],
                                                 "pre_deploy": {"backup": "yes"}}), check=False)
    output = flat(bad.stdout)
    assert bad.returncode != 0
    assert f"fleet_services.{SERVICE}.deploy.smoke[0].path: 'api/ping' must start with '/'" in output
    assert f"fleet_services.{SERVICE}.deploy.smoke[0].status: must be a whole number between 100 and 599" in output
    assert f"fleet_services.{SERVICE}.deploy.pre_deploy.backup: must be true or false" in output
    webhook = lab.playbook("hot_deploy.yml", "-e", f"service={SERVICE}", "-e", "version=1.1.0",
                           "-e", f"notify_webhook=ftp://hooks.example.com/{SECRET}", check=False)
    assert webhook.returncode != 0
    assert "notify_webhook must be an http:// or https:// URL" in flat(webhook.stdout)
    assert {h: state(lab, h, SERVICE) for h in lab.hosts} == before


def test_a_release_archive_whose_sha256_differs_is_refused_naming_both_sums(lab: Lab, tmp_path: Path) -> None:
    """The catalog's release.sha256 is checked on the controller before any host changes."""
    host, service = HOST2, "personas-api"
    unpacked = set(lab.ssh(host, f"ls /opt/fleet/{service}/releases").stdout.split())
    release = next(p.name.removeprefix("demo-service-").removesuffix(".tar.gz")
                   for p in sorted((ROOT / "build/releases").glob("demo-service-*.tar.gz"))
                   if p.name.removeprefix("demo-service-").removesuffix(".tar.gz") not in unpacked)
    wrong = "0" * 64
    before = state(lab, host, service)
    result = lab.playbook("hot_deploy.yml", "-e", f"service={service}", "-e", "retry_bad_release=true",
                          "-e", override(tmp_path, {}, {"version": release, "sha256": wrong}, service=service),
                          "--limit", host, check=False)
    message = flat(result.stdout)
    assert result.returncode != 0
    assert (f"demo-service-{release}.tar.gz: sha256 is {archive_sha256(release)}, but "
            f"fleet_services.{service}.release.sha256 is {wrong}; nothing was changed on the host") in message, \
        message[-3000:]
    assert lab.ssh(host, f"test -e /opt/fleet/{service}/releases/{release}", check=False).returncode != 0
    assert state(lab, host, service) == before
