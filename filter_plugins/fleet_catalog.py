"""Filters that validate the fleet service catalog and answer questions about its slots.

`fleet_services` (inventory) goes through `fleet_validated_catalog` once, early; every role and
playbook reads the normalised result and nothing else re-derives ports, units or upstream names.

This file holds several filters, so `ansible-doc -t filter` cannot read the per-filter
DOCUMENTATION / EXAMPLES / RETURN strings below (it wants adjacent `<filter>.yml` files for a
multi-filter file); they are kept here, next to the code, and the unit tests parse them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

from ansible.errors import AnsibleFilterError

GREEN_OFFSET = 1000
MAX_PORT = 65535 - GREEN_OFFSET  # the green slot must still be a valid port
DEFAULT_RESERVED_PORTS = (22, 80, 443)

SERVICE_KEYS = (
    "port", "group", "description", "health", "release", "command",
    "environment", "nginx", "drain_timeout", "user",
)
HEALTH_DEFAULTS: dict[str, Any] = {
    "path": "/health", "status": 200, "body": "", "timeout": 60, "interval": 0.1, "start_grace": 0,
}
RELEASE_KEYS = ("version", "archive", "keep")
NGINX_KEYS = ("server_names", "location")

_SERVICE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")


# --------------------------------------------------------------------------- documentation

FLEET_VALIDATED_CATALOG_DOCUMENTATION = r"""
name: fleet_validated_catalog
short_description: Validate and normalise the fleet service catalog
description:
  - Checks every service in O(fleet_services) and returns a new mapping with all defaults
    filled in and derived keys added (V(name), V(blue_port), V(green_port), V(slots), V(hosts),
    V(unit), V(upstream)).
  - Collects every problem and raises once; each line starts with
    C(fleet_services.<service>.<field>:) and says how to fix it.
  - Rejects ports colliding with O(reserved_ports) or with any slot (blue or green) of another
    service, ports whose green slot (port+1000) would exceed 65535, and unknown keys.
positional: groups, reserved_ports
options:
  _input:
    description: The O(fleet_services) inventory variable, service name to settings.
    type: dict
    required: true
  groups:
    description: Ansible's C(groups) magic variable (group name to list of hosts).
    type: dict
    required: true
  reserved_ports:
    description: Ports no slot may use (ssh, nginx).
    type: list
    elements: int
    default: [22, 80, 443]
"""

FLEET_VALIDATED_CATALOG_EXAMPLES = r"""
- name: Validate the service catalog before changing any host
  ansible.builtin.set_fact:
    fleet_catalog: "{{ fleet_services | fleet_validated_catalog(groups) }}"
  run_once: true
"""

FLEET_VALIDATED_CATALOG_RETURN = r"""
_value:
  description: Service name to normalised service (defaults filled in, derived keys added).
  type: dict
"""

FLEET_RELEASE_ARCHIVE_DOCUMENTATION = r"""
name: fleet_release_archive
short_description: The release archive of a service for a given version
description:
  - Replaces C({version}) in C(release.archive) with O(version), or with C(release.version)
    when O(version) is empty.
positional: version
options:
  _input:
    description: One normalised service from P(fleet_validated_catalog#filter).
    type: dict
    required: true
  version:
    description: Version to deploy; empty means the catalog's C(release.version).
    type: str
"""

FLEET_RELEASE_ARCHIVE_EXAMPLES = r"""
- name: Copy the release archive to the host
  ansible.builtin.copy:
    src: "{{ fleet_catalog[service] | fleet_release_archive(version | default('')) }}"
    dest: /var/tmp/release.tar.gz
    mode: "0644"
"""

FLEET_RELEASE_ARCHIVE_RETURN = r"""
_value:
  description: Controller path or http(s) URL of the archive.
  type: str
"""

FLEET_IDLE_SLOT_DOCUMENTATION = r"""
name: fleet_idle_slot
short_description: The slot port that is not live
description:
  - Returns the green port when O(live_port) is the blue one, and the blue port when it is green.
positional: live_port
options:
  _input:
    description: One normalised service from P(fleet_validated_catalog#filter).
    type: dict
    required: true
  live_port:
    description: The live slot's port (an int, or a string of digits as local facts may give).
    type: int
    required: true
"""

FLEET_IDLE_SLOT_EXAMPLES = r"""
- name: Pick the slot to start the new release on
  ansible.builtin.set_fact:
    __fleet_deploy_idle_port: "{{ fleet_catalog[service] | fleet_idle_slot(__fleet_deploy_live_port) }}"
"""

FLEET_IDLE_SLOT_RETURN = r"""
_value:
  description: The idle slot's port.
  type: int
"""

FLEET_SERVICES_ON_HOST_DOCUMENTATION = r"""
name: fleet_services_on_host
short_description: The services a host runs
description:
  - Returns the normalised services whose C(hosts) contain O(inventory_hostname), sorted by name.
positional: inventory_hostname
options:
  _input:
    description: The result of P(fleet_validated_catalog#filter).
    type: dict
    required: true
  inventory_hostname:
    description: The host to look up.
    type: str
    required: true
"""

FLEET_SERVICES_ON_HOST_EXAMPLES = r"""
- name: Install a unit for every service this host runs
  ansible.builtin.include_tasks: unit.yml
  loop: "{{ fleet_catalog | fleet_services_on_host(inventory_hostname) }}"
  loop_control:
    label: "{{ item.name }}"
"""

FLEET_SERVICES_ON_HOST_RETURN = r"""
_value:
  description: Normalised services, sorted by name.
  type: list
  elements: dict
"""


# --------------------------------------------------------------------------- helpers

class _Problems:
    """Every problem found in the catalog, one line each, raised together at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"fleet_services.{where}: {message}")


def _kind(value: Any) -> str:
    """A person's name for the type of `value` (tagged Ansible types read as their base type)."""
    if value is None:
        return "nothing (null)"
    for base, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                       (str, "a string"), (Mapping, "a mapping"), (list, "a list")):
        if isinstance(value, base):
            return f"{name} ({value!r})" if isinstance(value, (bool, int, float, str)) else name
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_keys(where: str, given: Mapping[Any, Any], allowed: Iterable[str], problems: _Problems) -> None:
    allowed = sorted(allowed)
    for key in given:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.add(f"{where}.{key}", f"unknown key '{key}'{hint}; allowed keys are: {', '.join(allowed)}")


def _mapping(where: str, value: Any, problems: _Problems, example: str) -> Mapping[Any, Any]:
    """`value` if it is a mapping; {} (after recording a problem unless it is absent) otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(where, f"must be a mapping, got {_kind(value)}; e.g. {example}")
        return {}
    return value


def _string(where: str, value: Any, problems: _Problems, example: str, default: str | None = None) -> str:
    """A non-empty string; `default` when absent, or a problem when there is no default."""
    if value is None and default is not None:
        return default
    if value is None:
        problems.add(where, f"is required; e.g. {example}")
    elif not isinstance(value, str):
        problems.add(where, f"must be a string, got {_kind(value)}; e.g. {example}")
    elif not value.strip():
        problems.add(where, f"must not be empty; e.g. {example}")
    else:
        return value
    return default or ""


def _integer(
    where: str, value: Any, problems: _Problems, default: int, low: int, high: int | None = None
) -> int:
    if value is None:
        return default
    bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
    if not _is_int(value):
        problems.add(where, f"must be a whole number {bounds}, got {_kind(value)}")
    elif value < low or (high is not None and value > high):
        problems.add(where, f"must be {bounds}, got {value}")
    else:
        return int(value)
    return default


def _seconds(where: str, value: Any, problems: _Problems, default: float, allow_zero: bool = False) -> Any:
    if value is None:
        return default
    bound = ">= 0" if allow_zero else "> 0"
    if not _is_number(value) or value < 0 or (value == 0 and not allow_zero):
        problems.add(where, f"must be a number of seconds {bound}, got {_kind(value)}; e.g. {default}")
        return default
    return value


# --------------------------------------------------------------------------- field groups

def _port(name: str, value: Any, problems: _Problems) -> int | None:
    """The blue slot, or None when it is unusable (the problem is recorded)."""
    where = f"{name}.port"
    if value is None:
        problems.add(where, "is required: the blue slot's port (the green slot is port+1000); "
                            "e.g. port: 8090")
    elif not _is_int(value):
        problems.add(where, f"must be a whole number, got {_kind(value)}; write it unquoted, e.g. port: 8090")
    elif value < 1:
        problems.add(where, f"{value} is not a port; pick one between 1 and {MAX_PORT}")
    elif value > MAX_PORT:
        problems.add(where, f"{value} leaves no room for the green slot (port+1000 = "
                            f"{value + GREEN_OFFSET} > 65535); the largest allowed port is {MAX_PORT}")
    else:
        return int(value)
    return None


def _group(name: str, value: Any, groups: Mapping[str, Any], problems: _Problems) -> tuple[str, list[str]]:
    where = f"{name}.group"
    group = _string(where, value, problems, "group: fleet")
    if not group:
        return "", []
    if group not in groups:
        known = ", ".join(sorted(str(g) for g in groups if g not in ("all", "ungrouped")))
        problems.add(where, f"'{group}' is not an inventory group; known groups are: {known or '(none)'}")
        return group, []
    hosts = sorted({str(h) for h in groups[group] or []})
    if not hosts:
        problems.add(where, f"group '{group}' has no hosts in the inventory; "
                            "add hosts to it or pick another group")
    return group, hosts


def _health(name: str, value: Any, problems: _Problems) -> dict[str, Any]:
    where = f"{name}.health"
    raw = _mapping(where, value, problems, "health: {path: /health}")
    _check_keys(where, raw, HEALTH_DEFAULTS, problems)
    path = _string(f"{where}.path", raw.get("path"), problems, "path: /health", HEALTH_DEFAULTS["path"])
    if path and not path.startswith("/"):
        problems.add(f"{where}.path", f"'{path}' must start with '/'; e.g. path: /{path.lstrip('/')}")
    body = raw.get("body")
    if body is not None and not isinstance(body, str):
        problems.add(f"{where}.body", f"must be a string the response must contain, got {_kind(body)}; "
                                      "quote it")
    return {
        "path": path,
        "status": _integer(f"{where}.status", raw.get("status"), problems,
                           HEALTH_DEFAULTS["status"], 100, 599),
        "body": body if isinstance(body, str) else "",
        "timeout": _seconds(f"{where}.timeout", raw.get("timeout"), problems, HEALTH_DEFAULTS["timeout"]),
        "interval": _seconds(f"{where}.interval", raw.get("interval"), problems, HEALTH_DEFAULTS["interval"]),
        "start_grace": _seconds(f"{where}.start_grace", raw.get("start_grace"), problems,
                                HEALTH_DEFAULTS["start_grace"], allow_zero=True),
    }


def _release(name: str, value: Any, problems: _Problems) -> dict[str, Any]:
    where = f"{name}.release"
    example = 'release: {version: "1.0.0", archive: /srv/releases/app-{version}.tar.gz}'
    if value is None:
        problems.add(where, f"is required; e.g. {example}")
    raw = _mapping(where, value, problems, example)
    _check_keys(where, raw, RELEASE_KEYS, problems)
    keep = _integer(f"{where}.keep", raw.get("keep"), problems, 5, 2)
    release: dict[str, Any] = {"version": "", "archive": "", "keep": keep}
    if not raw:
        return release

    version = raw.get("version")
    if _is_number(version):
        problems.add(f"{where}.version", f"must be a string, got {_kind(version)}; YAML reads it as a number "
                                         f"(1.10 becomes 1.1), so quote it: version: \"{version}\"")
    else:
        release["version"] = _string(f"{where}.version", version, problems, 'version: "1.0.0"')
        if release["version"] and not _VERSION_RE.match(release["version"]):
            problems.add(f"{where}.version", f"'{version}' names a release directory, so it may only hold "
                                             "letters, digits and . _ + ~ - (no '/' or spaces)")

    archive = _string(f"{where}.archive", raw.get("archive"), problems,
                      "archive: /srv/releases/app-{version}.tar.gz")
    if archive:
        is_url = "://" in archive
        url = urlparse(archive)
        if is_url and url.scheme not in ("http", "https"):
            problems.add(f"{where}.archive", f"'{archive}' uses '{url.scheme}://'; use an http(s) URL "
                                             "or an absolute path on the controller")
        elif not is_url and not archive.startswith("/"):
            problems.add(f"{where}.archive", f"'{archive}' must be an absolute path on the controller or "
                                             "an http(s) URL; e.g. {{ playbook_dir }}/releases/"
                                             "app-{version}.tar.gz")
        if not (url.path if is_url else archive).endswith(".tar.gz"):
            problems.add(f"{where}.archive", f"'{archive}' must point to a .tar.gz archive")
        release["archive"] = archive
    return release


def _environment(name: str, value: Any, problems: _Problems) -> dict[str, str]:
    where = f"{name}.environment"
    raw = _mapping(where, value, problems, "environment: {LOG_LEVEL: info}")
    env: dict[str, str] = {}
    for key, val in raw.items():
        if not isinstance(key, str) or not _ENV_NAME_RE.match(key):
            problems.add(f"{where}.{key}", f"'{key}' is not a valid variable name; use letters, digits "
                                           "and '_', not starting with a digit")
        elif not (isinstance(val, str) or _is_number(val)):
            problems.add(f"{where}.{key}", f"must be a string or a number, got {_kind(val)}; quote it, "
                                           f"e.g. {key}: \"{val}\"")
        elif "\n" in str(val):
            problems.add(f"{where}.{key}", "must be a single line (it goes into a systemd environment file)")
        else:
            env[key] = str(val)
    return env


def _nginx(name: str, value: Any, problems: _Problems) -> dict[str, Any]:
    where = f"{name}.nginx"
    raw = _mapping(where, value, problems, "nginx: {server_names: [app.example.com]}")
    _check_keys(where, raw, NGINX_KEYS, problems)

    names = raw.get("server_names")
    server_names: list[str] = []
    if names is not None and not isinstance(names, (list, tuple)):
        problems.add(f"{where}.server_names", f"must be a list of host names, got {_kind(names)}; "
                                              "e.g. server_names: [app.example.com]")
    for entry in names if isinstance(names, (list, tuple)) else []:
        if not isinstance(entry, str) or not entry or any(c.isspace() for c in entry):
            problems.add(f"{where}.server_names", f"{_kind(entry)} is not a host name; "
                                                  "use names without spaces, e.g. app.example.com")
        else:
            server_names.append(entry)

    location = _string(f"{where}.location", raw.get("location"), problems, f"location: /{name}/", "/")
    if not location.startswith("/"):
        problems.add(f"{where}.location", f"'{location}' must start with '/'; e.g. location: /{name}/")
    elif location == "/" and not (isinstance(names, (list, tuple)) and names):
        problems.add(f"{where}.location", "a service with no server_names is routed by location on "
                                          "nginx's default server, so it needs a location other than '/', "
                                          f"e.g. /{name}/; or give it server_names")
    return {"server_names": server_names, "location": location}


def _service(name: str, raw: Any, groups: Mapping[str, Any], problems: _Problems) -> dict[str, Any] | None:
    if not _SERVICE_NAME_RE.match(name):
        fixed = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "my-service"
        problems.add(name, f"service name '{name}' must match ^[a-z0-9][a-z0-9-]*$ (it becomes a systemd "
                           f"unit and an nginx upstream name); rename it, e.g. '{fixed}'")
    if not isinstance(raw, Mapping):
        problems.add(name, "must be a mapping of settings (port, group, release, command, ...), "
                           f"got {_kind(raw)}")
        return None
    _check_keys(name, raw, SERVICE_KEYS, problems)

    port = _port(name, raw.get("port"), problems)
    group, hosts = _group(name, raw.get("group"), groups, problems)
    service: dict[str, Any] = {
        "name": name,
        "port": port,
        "group": group,
        "description": _string(f"{name}.description", raw.get("description"), problems,
                               "description: Zapier MCP bridge", f"{name} (fleet service)"),
        "health": _health(name, raw.get("health"), problems),
        "release": _release(name, raw.get("release"), problems),
        "command": _string(f"{name}.command", raw.get("command"), problems,
                           "command: /usr/bin/python3 app.py --port {port}"),
        "environment": _environment(name, raw.get("environment"), problems),
        "nginx": _nginx(name, raw.get("nginx"), problems),
        "drain_timeout": _integer(f"{name}.drain_timeout", raw.get("drain_timeout"), problems, 30, 1),
        "user": _string(f"{name}.user", raw.get("user"), problems, "user: fleet", "fleet"),
        "hosts": hosts,
        "unit": f"{name}@",
        "upstream": "fleet_" + name.replace("-", "_"),
    }
    if service["user"] and not _USER_RE.match(service["user"]):
        problems.add(f"{name}.user", f"'{service['user']}' is not a valid system user name; use lowercase "
                                     "letters, digits, '_' and '-' (at most 32), e.g. fleet")
    if port is not None:
        service.update(blue_port=port, green_port=port + GREEN_OFFSET, slots=[port, port + GREEN_OFFSET])
    return service


# --------------------------------------------------------------------------- cross-service checks

def _free_port(taken: set[int]) -> int:
    """A port whose two slots are both free; steps of 10 from 8000 keep to the operators' habit."""
    for port in [*range(8000, MAX_PORT + 1, 10), *range(1024, MAX_PORT + 1)]:
        if port not in taken and port + GREEN_OFFSET not in taken:
            return port
    return 0  # pragma: no cover - every port is taken


def _check_slots(
    catalog: Mapping[str, dict[str, Any]], reserved: tuple[int, ...], problems: _Problems
) -> None:
    taken = set(reserved) | {slot for svc in catalog.values() for slot in svc.get("slots", [])}
    reserved_text = ", ".join(str(p) for p in reserved)
    claimed: dict[int, tuple[str, str]] = {}
    for name, svc in catalog.items():
        for colour, slot in zip(("blue", "green"), svc.get("slots", []), strict=False):
            which = f"{slot}" if colour == "blue" else f"its green slot {slot} (port+1000)"
            if slot in reserved:
                problems.add(f"{name}.port", f"{which} is reserved (ssh/nginx use {reserved_text}); "
                                             f"pick a free port such as {_free_port(taken)}")
            elif slot in claimed:
                other, other_colour = claimed[slot]
                problems.add(f"{name}.port", f"slot {slot} ({colour}) collides with slot {slot} of service "
                                             f"'{other}' ({other_colour}); every service needs port and "
                                             f"port+1000 free, pick a free port such as {_free_port(taken)}")
            else:
                claimed[slot] = (name, colour)


def _check_routes(catalog: Mapping[str, dict[str, Any]], problems: _Problems) -> None:
    claimed: dict[tuple[str, str], str] = {}
    for name, svc in catalog.items():
        nginx = svc["nginx"]
        for server_name in nginx["server_names"] or [""]:
            route = (server_name, nginx["location"])
            other = claimed.setdefault(route, name)
            if other == name:
                continue
            if server_name:
                problems.add(f"{name}.nginx.server_names",
                             f"server_name '{server_name}' location '{route[1]}' is already routed to "
                             f"service '{other}'; give one of them another server_name or location")
            else:
                problems.add(f"{name}.nginx.location",
                             f"location '{route[1]}' on nginx's default server is already routed to "
                             f"service '{other}'; give one of them another location or server_names")


def _reserved_ports(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Iterable):
        raise AnsibleFilterError("fleet_validated_catalog: reserved_ports must be a list of ports, "
                                 f"got {_kind(value)}")
    ports = list(value)
    if not all(_is_int(p) and 1 <= p <= 65535 for p in ports):
        raise AnsibleFilterError("fleet_validated_catalog: reserved_ports must hold ports 1-65535, "
                                 f"got {ports!r}")
    return tuple(sorted({int(p) for p in ports}))


# --------------------------------------------------------------------------- filters

def fleet_validated_catalog(
    services: Any, groups: Any, reserved_ports: Iterable[int] = DEFAULT_RESERVED_PORTS,
) -> dict[str, dict[str, Any]]:
    """A new, normalised catalog; raises with every problem, one per line, when any is found."""
    if not isinstance(services, Mapping):
        raise AnsibleFilterError(f"fleet_services: must be a mapping of service name to its settings "
                                 f"(port, group, release, command, ...), got {_kind(services)}")
    if not services:
        raise AnsibleFilterError("fleet_services: is empty; define at least one service in the inventory "
                                 "(group_vars/all/fleet_services.yml)")
    if not isinstance(groups, Mapping):
        raise AnsibleFilterError("fleet_validated_catalog: the second argument must be Ansible's 'groups' "
                                 f"variable (group name -> hosts), got {_kind(groups)}")
    reserved = _reserved_ports(reserved_ports)

    problems = _Problems()
    catalog: dict[str, dict[str, Any]] = {}
    for raw_name in sorted(services, key=str):
        service = _service(str(raw_name), services[raw_name], groups, problems)
        if service is not None:
            catalog[str(raw_name)] = service
    _check_slots(catalog, reserved, problems)
    _check_routes(catalog, problems)
    if problems.lines:
        raise AnsibleFilterError("\n".join(problems.lines))
    return catalog


def _require_service(service: Any, filter_name: str, *keys: str) -> Mapping[str, Any]:
    if not isinstance(service, Mapping) or not all(k in service for k in ("name", *keys)):
        raise AnsibleFilterError(f"{filter_name}: expects one service from fleet_validated_catalog "
                                 f"(e.g. fleet_catalog['zapier-mcp']), got {_kind(service)}")
    return service


def fleet_release_archive(service: Any, version: Any = None) -> str:
    """`release.archive` with `{version}` filled in from `version` or, when empty, `release.version`."""
    svc = _require_service(service, "fleet_release_archive", "release")
    name, release = svc["name"], svc["release"]
    archive, pinned = release["archive"], release["version"]
    if version is not None and version != "" and not isinstance(version, str):
        raise AnsibleFilterError(f"fleet_release_archive: version for '{name}' must be a string, got "
                                 f"{_kind(version)}; quote it, e.g. -e 'version=\"{version}\"'")
    chosen = version or pinned
    if not chosen:
        raise AnsibleFilterError(f"fleet_release_archive: no version for '{name}'; pass one "
                                 f"(-e version=1.2.3) or set fleet_services.{name}.release.version")
    if not _VERSION_RE.match(chosen):
        raise AnsibleFilterError(f"fleet_release_archive: version '{chosen}' for '{name}' may only hold "
                                 "letters, digits and . _ + ~ - (it names a release directory)")
    if "{version}" not in archive and chosen != pinned:
        raise AnsibleFilterError(f"fleet_release_archive: fleet_services.{name}.release.archive "
                                 f"'{archive}' has no {{version}} placeholder, so version '{chosen}' cannot "
                                 "be selected; add {version} to the archive or change release.version")
    return str(archive.replace("{version}", chosen))


def fleet_idle_slot(service: Any, live_port: Any) -> int:
    """The other slot: green when `live_port` is blue, blue when it is green."""
    svc = _require_service(service, "fleet_idle_slot", "blue_port", "green_port")
    blue, green = svc["blue_port"], svc["green_port"]
    live = int(live_port) if isinstance(live_port, str) and live_port.strip().isdigit() else live_port
    if _is_int(live) and live == blue:
        return int(green)
    if _is_int(live) and live == green:
        return int(blue)
    raise AnsibleFilterError(f"fleet_idle_slot: live port {live_port!r} is not a slot of service "
                             f"'{svc['name']}'; valid slots are {blue} (blue) and {green} (green)")


def fleet_services_on_host(catalog: Any, inventory_hostname: Any) -> list[dict[str, Any]]:
    """The services whose hosts include `inventory_hostname`, sorted by name."""
    if not isinstance(catalog, Mapping):
        raise AnsibleFilterError("fleet_services_on_host: expects the result of fleet_validated_catalog, "
                                 f"got {_kind(catalog)}")
    on_host = []
    for name in sorted(catalog):
        service = _require_service(catalog[name], "fleet_services_on_host", "hosts")
        if inventory_hostname in service["hosts"]:
            on_host.append(dict(service))
    return on_host


class FilterModule:
    """Fleet catalog filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "fleet_validated_catalog": fleet_validated_catalog,
            "fleet_release_archive": fleet_release_archive,
            "fleet_idle_slot": fleet_idle_slot,
            "fleet_services_on_host": fleet_services_on_host,
        }
