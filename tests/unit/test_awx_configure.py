"""awx/configure.yml declares fleet's AWX objects: checked against a small stand-in controller.

The stand-in speaks the part of AWX's REST API (/api/v2/) the awx.awx modules use here: list
with filters, create, read, patch, delete, survey_spec, and associations. It keeps what it is
told in memory, refuses survey specs that break AWX's rules (awx_survey_rules.py) as AWX does
(400), and listens on loopback only. The playbook runs unchanged against it, twice: the second
run must change nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from awx_survey_rules import awx_spec_errors

from filter_plugins.fleet_awx import fleet_awx_survey

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "production"
CATALOG = yaml.safe_load((INVENTORY / "group_vars/all/fleet_services.yml").read_text())["fleet_services"]
SCM_URL = "https://git.example.com/ops/fleet.git"
HOOK_URL = "http://127.0.0.1:9/fleet-hook"  # stored, never called: the stand-in sends nothing
# The venv's ansible-playbook, also when pytest runs without the venv on PATH.
ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or "ansible-playbook"
ASSOCIATIONS = ("credentials", "labels", "instance_groups", "notification_templates_started",
                "notification_templates_success", "notification_templates_error")


class FakeController:
    """In-memory AWX objects: resource -> id -> fields, plus survey specs and associations."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[int, dict[str, Any]]] = {}
        self.surveys: dict[int, dict[str, Any]] = {}
        self.links: dict[tuple[str, int, str], list[int]] = {}
        self.writes: list[str] = []
        self.next_id = 100
        for pk, (name, kind) in enumerate([("Machine", "ssh"), ("Source Control", "scm"), ("Vault", "vault")], 1):
            self.objects.setdefault("credential_types", {})[pk] = {
                "id": pk, "name": name, "kind": kind, "managed": True, "type": "credential_type",
                "url": f"/api/v2/credential_types/{pk}/",
            }

    def find(self, resource: str, name: str) -> dict[str, Any]:
        (found,) = [o for o in self.objects.get(resource, {}).values() if o.get("name") == name]
        return found

    def create(self, resource: str, data: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        pk, url = self.next_id, f"/api/v2/{resource}/{self.next_id}/"
        item = {**data, "id": pk, "url": url, "type": resource.rstrip("s"), "summary_fields": {},
                "related": {"survey_spec": f"{url}survey_spec/", "update": f"{url}update/"}}
        if resource == "projects":
            item.setdefault("scm_revision", "")
        self.objects.setdefault(resource, {})[pk] = item
        return item


def handler_for(controller: FakeController) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def reply(self, status: int, body: Any = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-API-Product-Name", "AWX")
            self.send_header("X-API-Product-Version", "24.6.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            return dict(json.loads(self.rfile.read(length) or b"{}"))

        def route(self) -> tuple[str, int | None, str | None, dict[str, str]]:
            url = urlsplit(self.path)
            match = re.fullmatch(r"/api/v2/([a-z_]+)/(?:(\d+)/)?(?:([a-z_]+)/)?", url.path)
            if not match:
                return "", None, None, {}
            resource, pk, sub = match.groups()
            return resource, int(pk) if pk else None, sub, dict(parse_qsl(url.query))

        def do_GET(self) -> None:
            resource, pk, sub, query = self.route()
            table = controller.objects.get(resource, {})
            if pk is None:
                found = [o for o in table.values()
                         if all(str(o[k]) == v for k, v in query.items() if k in o)]
                return self.reply(200, {"count": len(found), "next": None, "results": found})
            if pk not in table:
                return self.reply(404, {"detail": "Not found."})
            if sub == "survey_spec":
                return self.reply(200, controller.surveys.get(pk, {}))
            if sub in ASSOCIATIONS:
                linked = controller.links.get((resource, pk, sub), [])
                return self.reply(200, {"count": len(linked), "next": None, "results": [{"id": i} for i in linked]})
            return self.reply(200, table[pk])

        def do_POST(self) -> None:
            resource, pk, sub, _ = self.route()
            data = self.body()
            controller.writes.append(f"POST {self.path}")
            if pk is None:
                return self.reply(201, controller.create(resource, data))
            if sub == "survey_spec":
                errors = awx_spec_errors(data)
                if errors:
                    return self.reply(400, {"error": errors[0]})
                controller.surveys[pk] = data
                return self.reply(200, {})
            if sub in ASSOCIATIONS:
                linked = controller.links.setdefault((resource, pk, sub), [])
                if data.get("disassociate"):
                    linked.remove(data["id"])
                else:
                    linked.append(data["id"])
                return self.reply(204)
            return self.reply(405, {"detail": "not allowed"})

        def do_PATCH(self) -> None:
            resource, pk, _, _ = self.route()
            controller.writes.append(f"PATCH {self.path}")
            item = controller.objects[resource][pk or 0]
            item.update(self.body())
            return self.reply(200, item)

        def do_DELETE(self) -> None:
            _, pk, sub, _ = self.route()
            controller.writes.append(f"DELETE {self.path}")
            if sub == "survey_spec":
                controller.surveys.pop(pk or 0, None)
                return self.reply(200, {})
            return self.reply(405, {"detail": "not allowed"})

    return Handler


@pytest.fixture(scope="module")
def controller() -> Iterator[tuple[FakeController, str]]:
    state = FakeController()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def configure(*args: str, host: str = "http://127.0.0.1:9") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "CONTROLLER_HOST": host, "CONTROLLER_OAUTH_TOKEN": "test",
           "CONTROLLER_VERIFY_SSL": "false", "FLEET_AWX_WEBHOOK_SUCCESS_URL": HOOK_URL,
           "FLEET_AWX_WEBHOOK_FAILURE_URL": HOOK_URL, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
    return subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(INVENTORY), "awx/configure.yml", "-e", f"fleet_awx_scm_url={SCM_URL}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    line = re.search(r"^localhost\s*:(.*)$", result.stdout, re.MULTILINE)
    assert line, result.stdout[-3000:] + result.stderr
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.group(1))}


@pytest.fixture(scope="module")
def applied(controller: tuple[FakeController, str]) -> tuple[FakeController, dict[str, int], dict[str, int]]:
    """configure.yml applied twice to the stand-in; the recaps of both runs."""
    state, url = controller
    first = configure(host=url)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr
    writes = len(state.writes)
    second = configure(host=url)
    assert second.returncode == 0, second.stdout[-6000:] + second.stderr
    assert state.writes[writes:] == [], "the second run wrote to the controller"
    return state, recap(first), recap(second)


def test_configure_declares_every_object_then_changes_nothing(applied: Any):
    _, first, second = applied
    assert first["changed"] > 0 and first["failed"] == 0
    assert second["changed"] == 0 and second["failed"] == 0


def test_the_project_and_inventory_come_from_the_repository(applied: Any):
    state = applied[0]
    org = state.find("organizations", "fleet")
    project = state.find("projects", "fleet: repository")
    assert (project["scm_type"], project["scm_url"], project["scm_branch"]) == ("git", SCM_URL, "main")
    assert project["organization"] == org["id"] and project["scm_update_on_launch"] is True
    source = state.find("inventory_sources", "fleet production from the repository")
    assert (source["source"], source["source_project"], source["source_path"]) == (
        "scm", project["id"], "inventories/production/hosts.yml")
    assert source["inventory"] == state.find("inventories", "fleet production")["id"]


def test_credentials_are_placeholders_without_secrets(applied: Any):
    state = applied[0]
    ssh, vault = state.find("credentials", "fleet: SSH"), state.find("credentials", "fleet: vault")
    assert ssh["credential_type"] == state.find("credential_types", "Machine")["id"]
    assert ssh["inputs"] == {"username": "root"}
    assert vault["credential_type"] == state.find("credential_types", "Vault")["id"]
    assert vault["inputs"] == {"vault_password": "ASK"}


def test_each_job_template_runs_its_playbook_with_the_credentials(applied: Any):
    state = applied[0]
    templates = {t["name"]: t for t in state.objects["job_templates"].values()}
    assert {name: t["playbook"] for name, t in templates.items()} == {
        "fleet: set up hosts": "site.yml", "fleet: hot deploy": "hot_deploy.yml",
        "fleet: rollback": "rollback.yml", "fleet: back up now": "awx/backup.yml",
        "fleet: status": "status.yml", "fleet: audit": "audit.yml", "fleet: maintenance": "maintenance.yml",
    }
    creds = [state.find("credentials", n)["id"] for n in ("fleet: SSH", "fleet: vault")]
    for template in templates.values():
        assert sorted(state.links[("job_templates", template["id"], "credentials")]) == sorted(creds)
        assert template["ask_variables_on_launch"] is False and template["allow_simultaneous"] is False
    assert templates["fleet: set up hosts"]["ask_job_type_on_launch"] is True  # check mode: the dry run
    assert templates["fleet: hot deploy"]["job_slice_count"] == 1


def test_the_surveys_are_generated_from_the_catalog(applied: Any):
    state = applied[0]
    templates = {t["name"]: t for t in state.objects["job_templates"].values()}
    deploy, rollback = templates["fleet: hot deploy"], templates["fleet: rollback"]
    assert deploy["survey_enabled"] is True and rollback["survey_enabled"] is True
    assert state.surveys[deploy["id"]] == fleet_awx_survey(CATALOG, "hot_deploy")
    assert state.surveys[rollback["id"]] == fleet_awx_survey(CATALOG, "rollback")
    assert state.surveys[deploy["id"]]["spec"][0]["choices"] == sorted(CATALOG)
    assert templates["fleet: set up hosts"]["id"] not in state.surveys
    status, audit = templates["fleet: status"], templates["fleet: audit"]
    assert state.surveys[status["id"]] == fleet_awx_survey(CATALOG, "status")
    assert state.surveys[audit["id"]] == fleet_awx_survey(CATALOG, "audit")
    assert status["ask_limit_on_launch"] is True and status["ask_job_type_on_launch"] is False
    maintenance = templates["fleet: maintenance"]
    assert state.surveys[maintenance["id"]] == fleet_awx_survey(CATALOG, "maintenance")
    assert maintenance["ask_limit_on_launch"] is True and maintenance["ask_job_type_on_launch"] is True


def test_success_and_failure_webhooks_are_attached_to_every_template(applied: Any):
    state = applied[0]
    ok, failed = state.find("notification_templates", "fleet: job succeeded"), state.find(
        "notification_templates", "fleet: job failed")
    for hook in (ok, failed):
        assert hook["notification_type"] == "webhook"
        assert (hook["notification_configuration"]["url"], hook["notification_configuration"]["http_method"]) == (
            HOOK_URL, "POST")
    assert "{{ job.name }}" in ok["messages"]["success"]["body"], "AWX, not Ansible, fills the message in"
    for template in state.objects["job_templates"].values():
        assert state.links[("job_templates", template["id"], "notification_templates_success")] == [ok["id"]]
        assert state.links[("job_templates", template["id"], "notification_templates_error")] == [failed["id"]]


def test_check_only_run_exports_the_templates_without_a_controller(tmp_path: Path):
    result = configure("--skip-tags", "awx-apply", "-e", f"fleet_awx_export_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    exported = json.loads((tmp_path / "job_templates.json").read_text())
    surveys = {t["name"]: t["survey"] for t in exported}
    assert surveys["fleet: hot deploy"] == fleet_awx_survey(CATALOG, "hot_deploy")
    assert all(awx_spec_errors(s) == [] for s in surveys.values() if s)
    assert HOOK_URL not in (tmp_path / "job_templates.json").read_text()


def test_a_missing_repository_url_is_refused_before_any_request():
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(INVENTORY), "awx/configure.yml"], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env={**os.environ, "ANSIBLE_FORCE_COLOR": "0"},
    )
    assert result.returncode != 0
    assert "-e fleet_awx_scm_url=" in result.stdout
