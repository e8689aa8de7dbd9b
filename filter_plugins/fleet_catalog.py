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
import shlex
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlparse, urlunparse

from ansible.errors import AnsibleFilterError

GREEN_OFFSET = 1000
MAX_PORT = 65535 - GREEN_OFFSET  # the green slot must still be a valid port
DEFAULT_RESERVED_PORTS = (22, 80, 443)

SERVICE_KEYS = (
    "port", "group", "description", "health", "release", "command",
    "environment", "nginx", "drain_timeout", "user", "deploy",
)
HEALTH_DEFAULTS: dict[str, Any] = {
    "path": "/health", "status": 200, "body": "", "timeout": 60, "interval": 0.1, "start_grace": 0,
}
# The watch after a deploy's switch (fleet_slots.watch): seconds, and what a breach is. 30 s: at
# moderate traffic (10 requests/s) that is 300 requests, enough to judge a 1% share, and a rollout
# of one host at a time pays it once per batch. p99 is not judged by default: the right bound is the
# service's own (a GPU inference service answers in seconds).
DEPLOY_DEFAULTS: dict[str, Any] = {"watch": 30, "max_error_share": 0.01, "max_p99_ms": None, "min_requests": 100}
# A longer observation is a canary's job, and the deploy lock is held all along.
WATCH_MAX = 600
# The deploy's hooks (deploy.pre_deploy, deploy.smoke, deploy.notify): none by default.
HOOK_KEYS = ("pre_deploy", "smoke", "notify")
PRE_DEPLOY_KEYS = ("command", "timeout", "backup")
PRE_DEPLOY_TIMEOUT = 300  # seconds a pre_deploy command may run, by default
PRE_DEPLOY_TIMEOUT_MAX = 3600
SMOKE_KEYS = ("method", "path", "status", "body")
SMOKE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SMOKE_MAX = 20  # checks per service: each runs twice per host, before and after the switch
NOTIFY_KEYS = ("webhook",)
# Set by the unit template for each slot; EnvironmentFile= would win over them.
RESERVED_ENVIRONMENT = ("FLEET_SERVICE", "FLEET_SLOT_PORT")
RELEASE_KEYS = ("version", "archive", "sha256", "keep")
NGINX_KEYS = ("server_names", "location", "rate_limit", "maintenance_page")
RATE_LIMIT_KEYS = ("rate", "burst")
# The longest maintenance page (nginx.maintenance_page), in characters: a page, not a site.
MAINTENANCE_PAGE_MAX = 65536
# What a maintenance page may not hold: C0 controls but tab, newline and carriage return, and DEL.
_PAGE_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Far above any real per-client rate, and far below what overflows nginx's integer parsing.
RATE_LIMIT_MAX = 1_000_000

# Every pattern is matched with fullmatch: `$` would also match before a trailing newline, and a
# newline is exactly what would add a line to a unit file or an nginx configuration.
_SERVICE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
# nginx server_name: an exact DNS name, or `*.` and a DNS name; none of nginx's other forms
# (regular expressions, `.example.com`, `www.example.*`), which mean more than they seem to.
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SERVER_NAME_RE = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
# nginx location: path segments of URL-safe characters, each closed by '/'. Nothing nginx's
# configuration parser gives a meaning to ({ } ; # quotes spaces $), and no '.' or '..'
# segment, which never match because nginx normalises request paths first.
_LOCATION_RE = re.compile(r"/(?:(?!\.\.?/)[A-Za-z0-9._~-]+/)*")
# Health path: a URL path and query (RFC 3986 characters, %XX escapes), nothing that needs quoting.
_HEALTH_PATH_RE = re.compile(r"/(?:[A-Za-z0-9._~!$&()*+,=:@/?-]|%[0-9A-Fa-f]{2})*")
# The program of `command`: an absolute path or a bare name systemd looks up. Not relative (systemd
# refuses it) and not starting with one of ExecStart's prefixes ('+' or '!' would run it as root,
# outside the sandbox).
_EXECUTABLE_RE = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._+@~-]+)+|[A-Za-z0-9_][A-Za-z0-9._+@~-]*")
_URL_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# What an environment file cannot carry: C0 controls and DEL, tab excepted. The same rule as
# fleet_systemd_env_value (filter_plugins/fleet_systemd.py), which writes the file.
_ENV_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# An argument that systemd's ExecStart= parser would split, unquote or unescape.
_NEEDS_QUOTES_RE = re.compile(r"[\s\"'\\]")


# --------------------------------------------------------------------------- documentation

FLEET_VALIDATED_CATALOG_DOCUMENTATION = r"""
name: fleet_validated_catalog
short_description: Validate and normalise the fleet service catalog
description:
  - Checks every service in O(fleet_services) and returns a new mapping with all defaults
    filled in and derived keys added (V(name), V(blue_port), V(green_port), V(slots), V(hosts),
    V(certificate_issuer), V(unit), V(upstream)).
  - V(certificate_issuer) is the first of the service's hosts (sorted), the one host that requests
    the service's TLS certificate; the others receive a copy and pass it the ACME challenges they
    are asked for, so a name served by many hosts is certified once.
  - C(environment) values are checked but not returned, only their names (V(environment_names)) -
    they are secrets, and the result becomes a fact that Ansible prints (at -v, and in AWX's job
    events). The service role reads the values from O(fleet_services) when it writes a slot's
    environment file.
  - Collects every problem and raises once; each line starts with
    C(fleet_services.<service>.<field>:) and says how to fix it.
  - Rejects ports colliding with O(reserved_ports) or with any slot (blue or green) of another
    service, ports whose green slot (port+1000) would exceed 65535, and unknown keys.
  - Every value that lands in an nginx configuration, a systemd unit or an environment file is
    checked against a strict character set, on the whole string (no trailing newline), namely
    names, server names, locations, versions, health paths and users; free text (C(command),
    C(description), C(health.body)) may hold no control characters, environment values none but
    tab.
  - C(release.archive) is an C(https://) URL, which needs C(release.sha256), or an absolute path
    on the controller.
  - C(deploy) is optional - the watch after each host's switch of a deploy - C(watch) (seconds, 0 to 600, 0 for
    none; default 30), C(max_error_share) (0 to 1, default 0.01), C(max_p99_ms) (milliseconds above 0, or null,
    the default, for latency not judged) and C(min_requests) (a whole number from 1, default 100); all are
    filled in.
  - C(deploy) also holds the deploy's hooks, none by default. C(pre_deploy) - C(command) (one line, run by
    C(/bin/sh -c) once per deploy before the first switch, in the new release's directory, as the service's
    user, with its environment file), C(timeout) (seconds, 1 to 3600, default 300) and C(backup) (true runs the
    backup role's job on the service's hosts first); at least one of C(command) and C(backup). C(smoke) - a
    list (at most 20) of C(method) (default GET), C(path), C(status) (default 200) and C(body) (a text the
    answer must contain; optional), checked against each host's new slot before its switch and through nginx
    after it. C(notify) - C(webhook), an http(s) URL the deploy's events are posted to; a secret, so the result
    holds only V(webhook_set) and the deploy reads the URL from O(fleet_services).
  - C(nginx.maintenance_page) is optional, the HTML nginx answers with (503) while the service is
    in maintenance (maintenance.yml), at most 65536 characters, no control characters but tab,
    newline and carriage return; absent, the result holds an empty string and the nginx role writes
    a default page.
  - C(nginx.rate_limit) is optional; absent (or null), the service has no limit and the result
    holds V(null). Given, it is C(rate) (requests per second per client address, a whole number
    from 1 to 1000000) and C(burst) (requests a client may send at once above the rate, a whole
    number from 0 to 1000000, default C(rate)); the result adds V(zone), the name of its nginx
    C(limit_req_zone) (V(fleet_rate_) and the service name with C(-) as C(_)).
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
  description: Controller path or https URL of the archive.
  type: str
"""

FLEET_RELEASE_CHECKSUM_DOCUMENTATION = r"""
name: fleet_release_checksum
short_description: How to verify the release archive of a service for a given version
description:
  - C(release.sha256) is the checksum of the archive of the catalog's C(release.version) only.
    Returns V(sha256:<release.sha256>) when the archive for O(version) is that archive.
  - When C(release.sha256) is the https URL of a checksum file (C({version}) replaced), returns
    V(sha256:<that URL>) for every version.
  - For another version of an C(https://) archive, returns V(sha256:<archive URL>.sha256), the
    checksum file published beside the archive and fetched over https (plain hex, or the output
    of C(sha256sum) naming the archive).
  - For another version of a controller path, returns an empty string, as the archive is the
    controller's own file and there is nothing to verify it against.
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

FLEET_RELEASE_CHECKSUM_EXAMPLES = r"""
- name: Download the release archive, verified before anything is unpacked
  ansible.builtin.get_url:
    url: "{{ fleet_catalog[service] | fleet_release_archive(version | default('')) }}"
    checksum: "{{ fleet_catalog[service] | fleet_release_checksum(version | default('')) }}"
    dest: /var/tmp/release.tar.gz
    mode: "0600"
"""

FLEET_RELEASE_CHECKSUM_RETURN = r"""
_value:
  description: The C(checksum) argument of M(ansible.builtin.get_url), or an empty string.
  type: str
"""

FLEET_EXEC_COMMAND_DOCUMENTATION = r"""
name: fleet_exec_command
short_description: A service's command as a systemd ExecStart= line
description:
  - Splits C(command) into words as a POSIX shell would (quotes, backslashes; no shell runs it,
    so no pipes, redirections or variables), and writes each word so that it reaches the process
    exactly as written.
  - C({port}) becomes systemd's C(%i), the instance (slot port); every other C(%) becomes C(%%)
    and every C($) becomes C($$), so systemd expands neither specifiers nor environment variables.
  - Words holding spaces, quotes or backslashes are double-quoted for systemd.
options:
  _input:
    description: C(command) of one normalised service from P(fleet_validated_catalog#filter).
    type: str
    required: true
"""

FLEET_EXEC_COMMAND_EXAMPLES = r"""
# "/usr/bin/app --label 'a b' --ratio 50% --port {port}" gives
# ExecStart=/usr/bin/app --label "a b" --ratio 50%% --port %i
- name: Show the ExecStart line of a service's unit (roles/service/templates/unit.service.j2)
  ansible.builtin.debug:
    msg: "ExecStart={{ fleet_catalog['main-api'].command | fleet_exec_command }}"
"""

FLEET_EXEC_COMMAND_RETURN = r"""
_value:
  description: The value of an ExecStart= line.
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
        # A value quoted back (a name, a path) must not break the one-line-per-problem contract.
        self.lines.append(_printable(f"fleet_services.{where}: {message}"))


def _printable(text: str) -> str:
    """`text` with every character Python would not print (newline, NUL, U+2028, ...) escaped."""
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(char: str) -> str:
    """`char` as Python writes it in a string literal: \\n, \\x00, \\u2028."""
    return repr(char)[1:-1]


def _control_char(text: str) -> str | None:
    """The first character of `text` that no line of a config file may hold, escaped; else None.

    Control characters (below 0x20, 0x7f, 0x80-0x9f: newline, tab, NUL, ...) end or corrupt a line;
    lone surrogates cannot be written as UTF-8 at all.
    """
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cs"):
            return _escaped(char)
    return None


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


def _text(where: str, value: Any, problems: _Problems, example: str, default: str | None = None) -> str:
    """A non-empty string of one line (see `_string`); '' when it holds a control character."""
    text = _string(where, value, problems, example, default)
    bad = _control_char(text)
    if bad is not None:
        problems.add(where, f"holds the control character '{bad}'; it goes into a config file line by "
                            "line, so write it on one line without control characters")
        return ""
    return text


def _integer(
    where: str, value: Any, problems: _Problems, default: int, low: int, high: int | None = None,
    example: str = "",
) -> int:
    if value is None:
        return default
    bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
    hint = f"; e.g. {example}" if example else ""
    if not _is_int(value):
        problems.add(where, f"must be a whole number {bounds}, got {_kind(value)}{hint}")
    elif value < low or (high is not None and value > high):
        problems.add(where, f"must be {bounds}, got {value}{hint}")
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
    elif path and not _HEALTH_PATH_RE.fullmatch(path):
        problems.add(f"{where}.path", f"'{path}' is not a URL path: use letters, digits and - . _ ~ / ? = & : @ "
                                      "! $ ( ) * + , or %XX escapes; no spaces, quotes, braces, ';' or "
                                      "control characters")
    body = raw.get("body")
    if body is not None and not isinstance(body, str):
        problems.add(f"{where}.body", f"must be a string the response must contain, got {_kind(body)}; "
                                      "quote it")
    elif body and (bad := _control_char(body)) is not None:
        problems.add(f"{where}.body", f"holds the control character '{bad}'; give one line of text the "
                                      "response must contain")
        body = ""
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


def _number(where: str, value: Any, problems: _Problems, default: Any, fits: Callable[[float], bool],
            must_be: str, example: str) -> Any:
    """A number (int or float) that `fits`, or `default` when absent (null) or refused."""
    if value is None:
        return default
    if not _is_number(value) or not fits(value):
        problems.add(where, f"must be {must_be}, got {_kind(value)}; e.g. {example}")
        return default
    return value


def _deploy(name: str, value: Any, problems: _Problems) -> dict[str, Any]:
    """The deploy section: the watch after each host's switch (how long, and the limits whose breach
    reverts the host) and the deploy's hooks."""
    where = f"{name}.deploy"
    raw = _mapping(where, value, problems, "deploy: {watch: 30, max_error_share: 0.01}")
    _check_keys(where, raw, [*DEPLOY_DEFAULTS, *HOOK_KEYS], problems)
    deploy = dict(DEPLOY_DEFAULTS)
    deploy["watch"] = _number(f"{where}.watch", raw.get("watch"), problems, DEPLOY_DEFAULTS["watch"],
                              lambda v: 0 <= v <= WATCH_MAX, f"a number of seconds from 0 (no watch) to {WATCH_MAX}",
                              "watch: 30")
    deploy["max_error_share"] = _number(f"{where}.max_error_share", raw.get("max_error_share"), problems,
                                        DEPLOY_DEFAULTS["max_error_share"], lambda v: 0 <= v <= 1,
                                        "a share of requests from 0 to 1 (0.01 is 1%)", "max_error_share: 0.01")
    deploy["max_p99_ms"] = _number(f"{where}.max_p99_ms", raw.get("max_p99_ms"), problems,
                                   DEPLOY_DEFAULTS["max_p99_ms"], lambda v: 0 < v < float("inf"),
                                   "a number of milliseconds above 0, or null (latency not judged)",
                                   "max_p99_ms: 500")
    deploy["min_requests"] = _integer(f"{where}.min_requests", raw.get("min_requests"), problems,
                                      DEPLOY_DEFAULTS["min_requests"], 1, 1_000_000, example="min_requests: 100")
    deploy["pre_deploy"] = _pre_deploy(where, raw.get("pre_deploy"), problems)
    deploy["smoke"] = _smoke(where, raw.get("smoke"), problems)
    deploy["notify"] = _notify(where, raw.get("notify"), problems)
    return deploy


def _pre_deploy(where: str, value: Any, problems: _Problems) -> dict[str, Any]:
    """Run once per deploy before the first host's switch: a command in the new release and/or a backup."""
    where = f"{where}.pre_deploy"
    example = "pre_deploy: {command: ./manage.py migrate, timeout: 300, backup: true}"
    raw = _mapping(where, value, problems, example)
    _check_keys(where, raw, PRE_DEPLOY_KEYS, problems)
    hook: dict[str, Any] = {"command": "", "timeout": PRE_DEPLOY_TIMEOUT, "backup": False}
    if raw.get("command") is not None:
        hook["command"] = _text(f"{where}.command", raw.get("command"), problems, "command: ./manage.py migrate")
    hook["timeout"] = _integer(f"{where}.timeout", raw.get("timeout"), problems, PRE_DEPLOY_TIMEOUT, 1,
                               PRE_DEPLOY_TIMEOUT_MAX, example="timeout: 300 (seconds, unquoted)")
    backup = raw.get("backup")
    if backup is not None and not isinstance(backup, bool):
        problems.add(f"{where}.backup", f"must be true or false, got {_kind(backup)}; e.g. backup: true (the "
                                        "backup role's job runs on the service's hosts before the first switch)")
    elif backup is not None:
        hook["backup"] = backup
    if isinstance(value, Mapping) and "command" not in raw and backup is None:
        problems.add(where, f"says nothing to run: give it a command, backup: true or both; e.g. {example}")
    return hook


def _smoke(where: str, value: Any, problems: _Problems) -> list[dict[str, Any]]:
    """Requests each host's new slot must answer as expected, before its switch and through nginx after it."""
    where = f"{where}.smoke"
    example = "smoke: [{method: GET, path: /api/ping, status: 200, body: pong}]"
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        problems.add(where, f"must be a list of checks, got {_kind(value)}; e.g. {example}")
        return []
    if len(value) > SMOKE_MAX:
        problems.add(where, f"has {len(value)} checks, more than {SMOKE_MAX}: each runs on every host before and "
                            "after its switch; keep the few that prove the release works")
        return []
    checks = []
    for index, entry in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            problems.add(at, f"must be a mapping, got {_kind(entry)}; e.g. {{method: GET, path: /api/ping, "
                             "status: 200, body: pong}")
            continue
        _check_keys(at, entry, SMOKE_KEYS, problems)
        method = _string(f"{at}.method", entry.get("method"), problems, "method: GET", "GET")
        if method.upper() not in SMOKE_METHODS:
            problems.add(f"{at}.method", f"'{method}' is not one of {', '.join(SMOKE_METHODS)}; e.g. method: GET")
        path = _string(f"{at}.path", entry.get("path"), problems, "path: /api/ping")
        if path and not _HEALTH_PATH_RE.fullmatch(path):
            problems.add(f"{at}.path", f"'{path}' must start with '/' and hold only URL characters (no spaces; "
                                       "escape others as %XX); e.g. path: /api/ping")
        status = _integer(f"{at}.status", entry.get("status"), problems, 200, 100, 599,
                          example="status: 200 (unquoted)")
        body = ""
        if entry.get("body") is not None:
            body = _text(f"{at}.body", entry.get("body"), problems, "body: pong (a text the answer must contain)")
        checks.append({"method": method.upper(), "path": path, "status": status, "body": body})
    return checks


def _notify(where: str, value: Any, problems: _Problems) -> dict[str, Any]:
    """Where the deploy's events go. The URL itself is a secret (a Slack webhook's path is its key), so,
    as environment values, it is checked but not returned: the deploy reads it from fleet_services."""
    where = f"{where}.notify"
    example = "notify: {webhook: \"{{ vault_deploy_webhook_url }}\"}"
    raw = _mapping(where, value, problems, example)
    _check_keys(where, raw, NOTIFY_KEYS, problems)
    url = raw.get("webhook")
    if url is None or url == "":
        return {"webhook_set": False}
    if not isinstance(url, str) or not _webhook_url_ok(url):
        # Not quoted back: a webhook URL is a secret.
        shown = "a text that is not one (not shown: it may be a secret)" if isinstance(url, str) else _kind(url)
        problems.add(f"{where}.webhook", f"must be an http:// or https:// URL with a host and no spaces, got {shown}; "
                                         f"e.g. {example}")
        return {"webhook_set": False}
    return {"webhook_set": True}


def _webhook_url_ok(url: str) -> bool:
    parsed = urlparse(url)
    return (parsed.scheme in ("http", "https") and bool(parsed.hostname) and _control_char(url) is None
            and not any(c.isspace() for c in url))


def _release(name: str, value: Any, problems: _Problems) -> dict[str, Any]:
    where = f"{name}.release"
    example = 'release: {version: "1.0.0", archive: /srv/releases/app-{version}.tar.gz}'
    if value is None:
        problems.add(where, f"is required; e.g. {example}")
    raw = _mapping(where, value, problems, example)
    _check_keys(where, raw, RELEASE_KEYS, problems)
    keep = _integer(f"{where}.keep", raw.get("keep"), problems, 5, 2)
    release: dict[str, Any] = {"version": "", "archive": "", "sha256": "", "keep": keep}
    if not raw:
        return release

    version = raw.get("version")
    if _is_number(version):
        problems.add(f"{where}.version", f"must be a string, got {_kind(version)}; YAML reads it as a number "
                                         f"(1.10 becomes 1.1), so quote it: version: \"{version}\"")
    else:
        release["version"] = _string(f"{where}.version", version, problems, 'version: "1.0.0"')
        if release["version"] and not _VERSION_RE.fullmatch(release["version"]):
            problems.add(f"{where}.version", f"'{version}' names a release directory, so it may only hold "
                                             "letters, digits and . _ + ~ - (no '/', spaces or newlines)")

    archive = _text(f"{where}.archive", raw.get("archive"), problems,
                    "archive: /srv/releases/app-{version}.tar.gz")
    release["archive"] = archive
    release["sha256"] = _sha256(where, raw.get("sha256"), archive, problems)
    if not archive:
        return release
    scheme = _URL_SCHEME_RE.match(archive)
    if archive.startswith("https://"):
        url = urlparse(archive)
        if not url.netloc or any(c.isspace() for c in archive):
            problems.add(f"{where}.archive", f"'{archive}' is not a valid https URL (a host, no spaces); "
                                             "e.g. https://artifacts.example.com/app/app-{version}.tar.gz")
        path = url.path
    elif scheme:
        # Plain http can be altered on the way; file://, ftp:// and the rest are not fetched by the roles.
        problems.add(f"{where}.archive", f"'{archive}' uses '{scheme.group(0)}'; releases are fetched over "
                                         "https:// only (checked against release.sha256), or copied from an "
                                         "absolute path on the controller")
        path = ""
    elif not archive.startswith("/"):
        problems.add(f"{where}.archive", f"'{archive}' must be an absolute path on the controller or "
                                         "an https URL; e.g. {{ playbook_dir }}/releases/"
                                         "app-{version}.tar.gz")
        path = ""
    else:
        path = archive
    if path and not path.endswith(".tar.gz"):
        problems.add(f"{where}.archive", f"'{archive}' must point to a .tar.gz archive")
    return release


def _sha256(where: str, value: Any, archive: str, problems: _Problems) -> str:
    """The archive's checksum in lower case, or the https URL of its checksum file (the artifact
    store's, for every version); required for an https archive, optional for a path."""
    how = ("64 hex digits, as `sha256sum <archive>` prints them, or the https URL of the checksum file "
           "published beside each archive (e.g. https://artifacts.example.com/app/app-{version}.tar.gz.sha256)")
    if isinstance(value, str) and value.startswith("https://"):
        if _control_char(value) is not None or any(c.isspace() for c in value):
            problems.add(f"{where}.sha256", "the checksum file's URL may hold no spaces or control characters")
            return ""
        if archive and not archive.startswith("https://"):
            # A file published beside an https archive; a path on the controller has none to fetch.
            problems.add(f"{where}.sha256", f"'{value}' is the URL of a checksum file, which goes with an https "
                                            f"archive; for the controller path '{archive}' give the archive's "
                                            "64 hex digits (`sha256sum <archive>`), or leave sha256 out")
            return ""
        return value
    if value is None:
        if archive.startswith("https://"):
            problems.add(f"{where}.sha256", f"is required with an https archive: the SHA-256 of the archive "
                                            f"of release.version, {how}; every download is checked against it")
        return ""
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        problems.add(f"{where}.sha256", f"must be the archive's SHA-256, {how}, got {_kind(value)}; quote it")
        return ""
    return value.lower()


def _environment(name: str, value: Any, problems: _Problems) -> list[str]:
    """The names of the service's environment variables; the values (secrets) are only checked,
    and never quoted in a message."""
    where = f"{name}.environment"
    raw = _mapping(where, value, problems, "environment: {LOG_LEVEL: info}")
    names: list[str] = []
    for key, val in raw.items():
        if not isinstance(key, str) or not _ENV_NAME_RE.fullmatch(key):
            problems.add(f"{where}.{key}", f"'{key}' is not a valid variable name; use letters, digits "
                                           "and '_', not starting with a digit")
        elif key in RESERVED_ENVIRONMENT:
            problems.add(f"{where}.{key}", f"{key} is set by fleet for every slot (the unit's Environment=), "
                                           "and an environment file would override it; use another name")
        elif not (isinstance(val, str) or _is_number(val)):
            problems.add(f"{where}.{key}", f"must be a string or a number, got {_kind(val)}; quote it, "
                                           f"e.g. {key}: \"...\"")
        elif control := _ENV_CONTROL_RE.search(str(val)):
            problems.add(f"{where}.{key}", f"holds the control character '{_escaped(control.group())}', which a "
                                           "systemd environment file cannot carry; put the value on one line "
                                           "(encode it, e.g. base64, if it must hold such characters)")
        else:
            names.append(key)
    return sorted(names)


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
        if not isinstance(entry, str) or len(entry) > 253 or not _SERVER_NAME_RE.fullmatch(entry):
            shown = f"'{entry}'" if isinstance(entry, str) else _kind(entry)
            problems.add(f"{where}.server_names", f"{shown} is not a host name nginx matches literally: use "
                                                  "lower-case DNS names (labels of letters, digits and '-', "
                                                  "joined by '.'), optionally after '*.', e.g. app.example.com "
                                                  "or *.example.com")
        elif entry in server_names:
            problems.add(f"{where}.server_names", f"'{entry}' is listed twice; list each name once")
        else:
            server_names.append(entry)

    location = _string(f"{where}.location", raw.get("location"), problems, f"location: /{name}/", "/")
    if not location.startswith("/"):
        problems.add(f"{where}.location", f"'{location}' must start with '/'; e.g. location: /{name}/")
    elif not location.endswith("/"):
        # proxy_pass http://<upstream>/ replaces the location with '/': /api would send /api/health
        # to the service as //health.
        problems.add(f"{where}.location", f"'{location}' must end with '/', or requests reach the service "
                                          f"with a doubled slash; e.g. location: {location}/")
    elif not _LOCATION_RE.fullmatch(location):
        problems.add(f"{where}.location", f"'{location}' may only hold path segments of letters, digits and "
                                          "- . _ ~, each followed by '/' (no '.' or '..' segment, no spaces, "
                                          "braces, ';', '#', '$' or quotes), e.g. location: /api/v1/")
    elif location == "/" and not (isinstance(names, (list, tuple)) and names):
        problems.add(f"{where}.location", "a service with no server_names is routed by location on "
                                          "nginx's default server, so it needs a location other than '/', "
                                          f"e.g. /{name}/; or give it server_names")
    return {"server_names": server_names, "location": location,
            "rate_limit": _rate_limit(name, raw.get("rate_limit"), problems),
            "maintenance_page": _maintenance_page(name, raw.get("maintenance_page"), problems)}


def _maintenance_page(name: str, value: Any, problems: _Problems) -> str:
    """The HTML nginx answers with while the service is in maintenance; '' for the nginx role's default."""
    where = f"{name}.nginx.maintenance_page"
    example = "maintenance_page: \"{{ lookup('file', 'maintenance/" + name + ".html') }}\""
    if value is None:
        return ""
    if not isinstance(value, str) or not value.strip():
        got = _kind(value) if not isinstance(value, str) else "blank text"
        problems.add(where, f"must be the page's HTML as text, got {got}; e.g. {example}, or leave it out "
                            "for the default page")
        return ""
    if len(value) > MAINTENANCE_PAGE_MAX:
        problems.add(where, f"is {len(value)} characters long, more than {MAINTENANCE_PAGE_MAX}: keep the page small "
                            "(link to images and styles hosted elsewhere)")
        return ""
    if control := _PAGE_CONTROL_RE.search(value):
        problems.add(where, f"holds the control character '{_escaped(control.group())}'; only tab, newline and "
                            "carriage return may appear in it")
        return ""
    return value


def _rate_limit(name: str, value: Any, problems: _Problems) -> dict[str, Any] | None:
    """nginx's limit_req for the service, per client address; None (no limit) when absent.

    burst defaults to rate: a client may send one second's worth of requests at once (a page and
    its assets, a batch of API calls) before it is held to the rate. nginx's own default, 0,
    refuses any request that follows the previous one within 1/rate seconds.
    """
    where = f"{name}.nginx.rate_limit"
    example = "rate_limit: {rate: 10, burst: 20}"
    if value is None:
        return None
    raw = _mapping(where, value, problems, example)
    if not isinstance(value, Mapping):
        return None
    _check_keys(where, raw, RATE_LIMIT_KEYS, problems)
    if raw.get("rate") is None:
        problems.add(f"{where}.rate", f"is required: requests per second per client address; e.g. {example}, "
                                      "or remove rate_limit for no limit")
        return None
    rate = _integer(f"{where}.rate", raw.get("rate"), problems, 0, 1, RATE_LIMIT_MAX,
                    example="rate: 10 (requests per second, unquoted)")
    burst = _integer(f"{where}.burst", raw.get("burst"), problems, rate, 0, RATE_LIMIT_MAX,
                     example="burst: 20 (requests at once above the rate, unquoted)")
    # A distinct prefix: a zone named like another module's (lua_shared_dict fleet_slots) fails nginx -t.
    return {"rate": rate, "burst": burst, "zone": "fleet_rate_" + name.replace("-", "_")}


def _command(name: str, value: Any, problems: _Problems) -> str:
    where = f"{name}.command"
    command = _text(where, value, problems, "command: /usr/bin/python3 app.py --port {port}")
    if not command:
        return ""
    try:
        program = shlex.split(command)[0]  # a non-blank command has a first word
    except ValueError:
        problems.add(where, "has an unbalanced quote or a trailing backslash; it is split into words like a "
                            "shell would (no shell runs it), e.g. command: /usr/bin/app --name 'my app'")
        return command
    if not _EXECUTABLE_RE.fullmatch(program):
        problems.add(where, f"starts with '{program}': give the program as an absolute path (/usr/bin/python3) "
                            "or a name systemd looks up (python3), of letters, digits and . _ + @ ~ - "
                            "(no relative path, and none of systemd's ExecStart prefixes - + ! @ :)")
    return command


def _service(name: str, raw: Any, groups: Mapping[str, Any], problems: _Problems) -> dict[str, Any] | None:
    if not _SERVICE_NAME_RE.fullmatch(name):
        fixed = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:64] or "my-service"
        problems.add(name, f"service name '{name}' must match ^[a-z0-9][a-z0-9-]*$ and be at most 64 long "
                           f"(it becomes a systemd unit and an nginx upstream name); rename it, e.g. '{fixed}'")
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
        "description": _text(f"{name}.description", raw.get("description"), problems,
                             "description: Zapier MCP bridge", f"{name} (fleet service)"),
        "health": _health(name, raw.get("health"), problems),
        "release": _release(name, raw.get("release"), problems),
        "command": _command(name, raw.get("command"), problems),
        "environment_names": _environment(name, raw.get("environment"), problems),
        "nginx": _nginx(name, raw.get("nginx"), problems),
        "drain_timeout": _integer(f"{name}.drain_timeout", raw.get("drain_timeout"), problems, 30, 1),
        "user": _string(f"{name}.user", raw.get("user"), problems, "user: fleet", "fleet"),
        "deploy": _deploy(name, raw.get("deploy"), problems),
        "hosts": hosts,
        # One host requests the certificate of names served by many (certbot, nginx).
        "certificate_issuer": hosts[0] if hosts else None,
        "unit": f"{name}@",
        "upstream": "fleet_" + name.replace("-", "_"),
    }
    if service["user"] and not _USER_RE.fullmatch(service["user"]):
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
    """A server name belongs to one service (the nginx role writes one server block per service, and
    nginx ignores a second block of the same name); on the default server, one service per location."""
    named: dict[str, str] = {}
    located: dict[str, str] = {}
    for name, svc in catalog.items():
        nginx = svc["nginx"]
        for server_name in nginx["server_names"]:
            other = named.setdefault(server_name, name)
            if other != name:
                problems.add(f"{name}.nginx.server_names",
                             f"server_name '{server_name}' is already served by service '{other}' (nginx serves a "
                             "name from one server block); give this service its own server_name, or route both "
                             "services by location on nginx's default server (no server_names)")
        if not nginx["server_names"]:
            other = located.setdefault(nginx["location"], name)
            if other != name:
                problems.add(f"{name}.nginx.location",
                             f"location '{nginx['location']}' on nginx's default server is already routed to "
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


def _archive_for(service: Any, version: Any, filter_name: str) -> tuple[Mapping[str, Any], str]:
    """The service, and its archive with `{version}` filled in from `version` or `release.version`."""
    svc = _require_service(service, filter_name, "release")
    name, release = svc["name"], svc["release"]
    archive, pinned = release["archive"], release["version"]
    if version is not None and version != "" and not isinstance(version, str):
        raise AnsibleFilterError(f"{filter_name}: version for '{name}' must be a string, got "
                                 f"{_kind(version)}; quote it, e.g. -e 'version=\"{version}\"'")
    chosen = version or pinned
    if not chosen:
        raise AnsibleFilterError(f"{filter_name}: no version for '{name}'; pass one "
                                 f"(-e version=1.2.3) or set fleet_services.{name}.release.version")
    if not _VERSION_RE.fullmatch(chosen):
        raise AnsibleFilterError(f"{filter_name}: version {chosen!r} for '{name}' may only hold "
                                 "letters, digits and . _ + ~ - (it names a release directory)")
    if "{version}" not in archive and chosen != pinned:
        raise AnsibleFilterError(f"{filter_name}: fleet_services.{name}.release.archive "
                                 f"'{archive}' has no {{version}} placeholder, so version '{chosen}' cannot "
                                 "be selected; add {version} to the archive or change release.version")
    return svc, str(archive.replace("{version}", chosen))


def fleet_release_archive(service: Any, version: Any = None) -> str:
    """`release.archive` with `{version}` filled in from `version` or, when empty, `release.version`."""
    return _archive_for(service, version, "fleet_release_archive")[1]


def fleet_release_checksum(service: Any, version: Any = None) -> str:
    """get_url's `checksum` for the archive of `version`: the catalog's sha256 where it applies, else
    the https archive's `.sha256` file; '' for another version of a controller path."""
    svc, archive = _archive_for(service, version, "fleet_release_checksum")
    release = svc["release"]
    if release.get("sha256", "").startswith("https://"):  # the checksum file of every version
        return "sha256:" + release["sha256"].replace("{version}", version or release["version"])
    # release.sha256 is the checksum of one file: the archive of the catalog's own version.
    if release.get("sha256") and archive == release["archive"].replace("{version}", release["version"]):
        return f"sha256:{release['sha256']}"
    if archive.startswith("https://"):
        url = urlparse(archive)
        return "sha256:" + urlunparse(url._replace(path=url.path + ".sha256"))
    return ""


def fleet_exec_command(command: Any) -> str:
    """`command` as an ExecStart= value whose every word reaches the process as written."""
    if not isinstance(command, str) or _control_char(command) is not None:
        raise AnsibleFilterError("fleet_exec_command: expects the command of a service from "
                                 f"fleet_validated_catalog (one line of text), got {_kind(command)}")
    try:
        words = shlex.split(command)
    except ValueError as err:
        raise AnsibleFilterError(f"fleet_exec_command: cannot split {command!r} into words: {err}") from None
    line = []
    for word in words:
        # Specifiers first, so that the %i given for {port} is not doubled.
        word = word.replace("%", "%%").replace("$", "$$").replace("{port}", "%i")
        if word in ("", ";") or _NEEDS_QUOTES_RE.search(word):
            # systemd C-unescapes inside double quotes, so backslashes and quotes are escaped;
            # a bare ';' word would separate two commands.
            word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
        line.append(word)
    return " ".join(line)


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
            "fleet_release_checksum": fleet_release_checksum,
            "fleet_exec_command": fleet_exec_command,
            "fleet_idle_slot": fleet_idle_slot,
            "fleet_services_on_host": fleet_services_on_host,
        }
