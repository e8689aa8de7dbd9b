"""Property tests of filter_plugins/fleet_catalog.py: generated catalogs, hostile values in every field.

Each generated catalog knows which of its values are hostile (a valid value with a forbidden
character put in, a trailing newline, a plain-http archive, ...). The validator must refuse every
catalog holding one, naming each hostile field, and accept every other; an accepted command must
come out of fleet_exec_command as an ExecStart= line that systemd reads back word for word.
tests/integration/test_catalog_render_guest.py renders accepted ones and checks them with nginx
and systemd themselves.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from ansible.errors import AnsibleFilterError
from hypothesis import Phase, event, given, settings
from hypothesis import strategies as st

from filter_plugins.fleet_catalog import (
    DEPLOY_DEFAULTS,
    _control_char,
    _printable,
    fleet_exec_command,
    fleet_validated_catalog,
)

GROUPS = {"fleet": ["h1", "h2"]}
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
# Programs the guest test can create (absolute paths) or that Debian has (bare names).
PROGRAMS = ("/usr/bin/python3", "python3", "/opt/fleet/venvs/app/bin/gunicorn", "/usr/local/bin/app-1.2+x_y")
CONTROL = ("\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85")
# Free text: anything printable in one line, quotes, backslashes, %, $ and non-ASCII included.
TEXT = st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=20)
LINE = TEXT.filter(str.strip)  # a required field: not only spaces
# Fixed examples (derandomize, no example database), about 15 s on 2 cores; no explain phase, which
# takes minutes on a failure and adds little to a shrunk catalog.
PROFILE = settings(derandomize=True, max_examples=400, deadline=None, database=None,
                   phases=(Phase.explicit, Phase.generate, Phase.shrink))


@dataclass
class Generated:
    """A raw catalog and, for each hostile value in it, the problem prefixes that may name it."""

    services: dict[str, Any] = field(default_factory=dict)
    hostile: list[tuple[str, ...]] = field(default_factory=list)


def _inserted(draw: st.DrawFn, value: str, bad: tuple[str, ...]) -> str:
    """`value` with one of `bad` put in at any place."""
    at = draw(st.integers(0, len(value)))
    return value[:at] + draw(st.sampled_from(bad)) + value[at:]


def _version(draw: st.DrawFn, hostile: bool) -> str:
    version = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,10}", fullmatch=True))
    if not hostile:
        return version
    return draw(st.sampled_from([version + "\n", _inserted(draw, version, ("/", " ", "\n", "\x00", ";", "$"))]))


def _release(draw: st.DrawFn, name: str, hostile: bool) -> dict[str, Any]:
    version = _version(draw, False)
    local = {"version": version, "archive": f"/srv/releases/{name}-{{version}}.tar.gz"}
    if draw(st.booleans()):
        local["sha256"] = draw(st.sampled_from([SHA, SHA.upper()]))
    https = {"version": version, "archive": f"https://artifacts.test/{name}/{name}-{{version}}.tar.gz",
             "sha256": SHA}
    if not hostile:
        return draw(st.sampled_from([local, https]))
    bad_archive = _inserted(draw, local["archive"], CONTROL)
    return draw(st.sampled_from([
        {**https, "archive": https["archive"].replace("https:", "http:")},
        {**https, "archive": https["archive"].replace("https:", "ftp:")},
        {key: value for key, value in https.items() if key != "sha256"},
        {**https, "sha256": draw(st.sampled_from([SHA[:-1], SHA + "\n", "g" * 64, ""]))},
        {**local, "archive": local["archive"].lstrip("/")},
        {**local, "archive": bad_archive},
        {**local, "version": _version(draw, True)},
    ]))


def _command(draw: st.DrawFn, hostile: bool) -> str:
    words = draw(st.lists(st.one_of(TEXT, st.sampled_from(["{port}", "--port={port}", "50%", "$HOME", ";", "",
                                                           "it's", 'say "hi"', "a\\b", "%i", "${X}"])),
                          max_size=5))
    command = shlex.join([draw(st.sampled_from(PROGRAMS)), *words])
    if not hostile:
        return command
    return draw(st.sampled_from([
        _inserted(draw, command, CONTROL),
        draw(st.sampled_from("+-!@:")) + command,
        "./" + command.lstrip("/"),
        command + " '",
        command + " \\",
    ]))


def _environment(draw: st.DrawFn, hostile: bool) -> dict[str, Any]:
    name = draw(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True))
    # Anything an environment file carries: all but C0 controls (tab excepted), DEL, surrogates.
    text = st.text(st.characters(exclude_categories=["Cs"],
                                 exclude_characters=[*map(chr, range(9)), *map(chr, range(10, 32)), "\x7f"]))
    value = draw(st.one_of(st.integers(), text))
    if not hostile:
        return {name: value}
    if draw(st.booleans()):
        return {draw(st.sampled_from(["1" + name, name + "-X", name + "\n", name + " "])): "x"}
    return {name: _inserted(draw, str(value), ("\n", "\r", "\x00", "\x1b", "\x7f"))}


def _nginx(draw: st.DrawFn, index: int, hostile: list[str]) -> dict[str, Any]:
    """Server names unique to the service, and a location of its own: no route collides."""
    labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
    names = [f"{'*.' if draw(st.booleans()) else ''}{label}.s{index}.test"
             for label in draw(st.lists(labels, max_size=2, unique=True))]
    segments = draw(st.lists(st.from_regex(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,6}", fullmatch=True), max_size=2))
    at_root: bool = draw(st.booleans()) and bool(names)  # '/' needs server names
    location = "/" if at_root else "/" + "".join(f"{s}/" for s in [f"s{index}", *segments])
    if "nginx.server_names" in hostile:
        names = [*names, _inserted(draw, f"a.s{index}.test", (";", " ", "\n", "{", "}", "_", "#", "'", "$", "\x00"))]
    if "nginx.location" in hostile:
        location = draw(st.sampled_from([
            location.rstrip("/") or "",
            location + "../",
            _inserted(draw, location, (" ", ";", "{", "}", "#", "'", '"', "\n", "\t", "$", "\\", "\x00")),
        ]))
    rate_limit: Any = draw(st.one_of(st.none(), st.fixed_dictionaries(
        {"rate": st.integers(1, 1_000_000)}, optional={"burst": st.integers(0, 1_000_000)})))
    if "nginx.rate_limit" in hostile:
        valid = rate_limit or {"rate": 10}
        rate_limit = draw(st.sampled_from([
            {**valid, "rate": draw(st.sampled_from([0, -1, 1_000_001, "10", "10r/s", 2.5, 10.0, True, None, [10]]))},
            {**valid, "burst": draw(st.sampled_from([-1, 1_000_001, "5", 1.5, False, {"n": 1}]))},
            {**valid, draw(st.sampled_from(["per", "zone", "Rate", "rate\n"])): 1},
            draw(st.sampled_from(["10r/s", 10, [10], True])),
        ]))
    return {"server_names": names, "location": location,
            **({} if rate_limit is None and draw(st.booleans()) else {"rate_limit": rate_limit})}


def _deploy(draw: st.DrawFn, hostile: bool) -> dict[str, Any] | None:
    """The watch's section: any subset of its keys, or none at all; hostile: one key out of range."""
    valid = draw(st.fixed_dictionaries({}, optional={
        "watch": st.one_of(st.integers(0, 600), st.floats(0, 600)),
        "max_error_share": st.one_of(st.just(0), st.just(1), st.floats(0, 1)),
        "max_p99_ms": st.one_of(st.none(), st.integers(1, 10_000), st.floats(0.5, 1e6)),
        "min_requests": st.integers(1, 1_000_000)}))
    if not hostile:
        return draw(st.sampled_from([None, valid]))
    key, value = draw(st.sampled_from([
        ("watch", -1), ("watch", 601), ("watch", "30"), ("watch", "30s"), ("watch", True), ("watch", float("nan")),
        ("max_error_share", 1.5), ("max_error_share", -0.1), ("max_error_share", "1%"),
        ("max_p99_ms", 0), ("max_p99_ms", -5), ("max_p99_ms", "100ms"), ("max_p99_ms", float("inf")),
        ("min_requests", 0), ("min_requests", 2.5), ("min_requests", "100"), ("min_requests", False),
        ("watch_seconds", 30)]))
    return {**valid, key: value}


FIELDS = ("name", "description", "health.path", "health.body", "release", "command", "environment",
          "nginx.server_names", "nginx.location", "nginx.rate_limit", "user", "deploy")


@st.composite
def generated_catalogs(draw: st.DrawFn) -> Generated:
    """One to three services; about half the catalogs hold hostile values, in any field."""
    generated = Generated()
    count = draw(st.integers(1, 3))
    hostile_mode = draw(st.booleans())
    forced = (draw(st.integers(0, count - 1)), draw(st.sampled_from(FIELDS))) if hostile_mode else None
    for index in range(count):
        def bad(name: str, index: int = index) -> bool:
            return hostile_mode and ((index, name) == forced or draw(st.integers(0, 7)) == 0)

        hostile = [name for name in FIELDS if bad(name)]
        name = draw(st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True)) + f"-{index}"
        if "name" in hostile:
            name = draw(st.sampled_from([_inserted(draw, name, ("_", ".", " ", "\n", "A", "/", ";")), "-" + name]))
        where = _printable(name)
        path = "/health" + draw(st.sampled_from(["", "/", "z", "?x=1&y=%2F", "/(ok)", "/a:b@c"]))
        if "health.path" in hostile:
            path = draw(st.sampled_from(["health", _inserted(draw, path, (*CONTROL, " ", '"', "'", "{", "}", ";",
                                                                          "\\", "#", "<", "%zz"))]))
        body = draw(st.one_of(st.just(""), TEXT))
        user = draw(st.from_regex(r"[a-z_][a-z0-9_-]{0,10}", fullmatch=True))
        generated.services[name] = {
            "port": 8000 + 10 * index,
            "group": "fleet",
            "description": _inserted(draw, draw(LINE), CONTROL) if "description" in hostile else draw(LINE),
            "health": {"path": path, "body": _inserted(draw, body, CONTROL) if "health.body" in hostile else body},
            "release": _release(draw, name, "release" in hostile),
            "command": _command(draw, "command" in hostile),
            "environment": _environment(draw, "environment" in hostile),
            "nginx": _nginx(draw, index, hostile),
            "user": _inserted(draw, user, ("\n", " ", "A", ";", "$", ".")) if "user" in hostile else user,
        }
        deploy = _deploy(draw, "deploy" in hostile)
        if deploy is not None:
            generated.services[name]["deploy"] = deploy
        # Where the problem of each hostile value is reported.
        for name_of_field in hostile:
            if name_of_field == "name":
                generated.hostile.append((f"fleet_services.{where}:",))
            elif name_of_field == "environment":
                key = next(iter(generated.services[name]["environment"]))
                generated.hostile.append((f"fleet_services.{where}.environment.{_printable(key)}:",))
            elif name_of_field == "nginx.rate_limit":  # the mapping, or the key in it that is wrong
                generated.hostile.append((f"fleet_services.{where}.nginx.rate_limit:",
                                          f"fleet_services.{where}.nginx.rate_limit.",))
            elif name_of_field == "deploy":  # the key in it that is wrong
                generated.hostile.append((f"fleet_services.{where}.deploy.",))
            elif name_of_field == "release":
                generated.hostile.append(tuple(f"fleet_services.{where}.release.{key}:"
                                               for key in ("archive", "sha256", "version")))
            else:
                generated.hostile.append((f"fleet_services.{where}.{name_of_field}:",))
    return generated


def systemd_argv(exec_start: str, port: int) -> list[str]:
    """The argv systemd runs for `exec_start` (ExecStart= of instance `port`), following
    systemd.service(5) "Command lines" and systemd.unit(5) "Specifiers" for what the filter writes:
    words split at unquoted spaces, "..." with \\\\ and \\" escapes, %% and %i, then $$."""
    argv: list[str] = []
    word: list[str] | None = None
    quoted = escaped = False
    for char in exec_start:
        if escaped:
            assert char in '\\"', f"unexpected escape \\{char} in {exec_start!r}"
            word, escaped = [*(word or []), char], False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted, word = not quoted, word or []
        elif char == " " and not quoted:
            if word is not None:
                argv.append("".join(word))
            word = None
        else:
            word = [*(word or []), char]
    assert not quoted and not escaped, exec_start
    if word is not None:
        argv.append("".join(word))
    return [_resolved(arg, port) for arg in argv]


def _resolved(arg: str, port: int) -> str:
    out, i = [], 0
    while i < len(arg):
        pair = arg[i:i + 2]
        if pair in ("%%", "$$"):
            out.append(pair[0])
            i += 2
        elif pair == "%i":
            out.append(str(port))
            i += 2
        else:
            assert arg[i] not in "%$", f"unescaped {arg[i]!r} in {arg!r}"
            out.append(arg[i])
            i += 1
    return "".join(out)


@PROFILE
@given(generated_catalogs())
def test_generated_catalog_is_refused_naming_each_hostile_field_or_accepted(generated: Generated) -> None:
    try:
        catalog = fleet_validated_catalog(generated.services, GROUPS)
    except AnsibleFilterError as err:
        event("refused")
        lines = str(err.message).splitlines()
        assert generated.hostile, f"a catalog of valid values was refused: {lines}"
        names = [f"fleet_services.{_printable(name)}" for name in generated.services]
        for line in lines:
            assert any(line.startswith((f"{prefix}.", f"{prefix}:")) for prefix in names), line
        for prefixes in generated.hostile:
            assert any(line.startswith(prefixes) for line in lines), f"no line starts with {prefixes}: {lines}"
        return
    event("accepted")
    assert not generated.hostile, f"hostile values were accepted: {generated.hostile}"
    for name, service in catalog.items():
        line = fleet_exec_command(service["command"])
        assert _control_char(line) is None, line
        expected = [w.replace("{port}", str(service["port"])) for w in shlex.split(generated.services[name]["command"])]
        assert systemd_argv(line, service["port"]) == expected
        given = generated.services[name]["nginx"].get("rate_limit")
        assert service["nginx"]["rate_limit"] == (None if given is None else {
            "rate": given["rate"], "burst": given.get("burst", given["rate"]),
            "zone": "fleet_rate_" + name.replace("-", "_")})
        watched = {key: value for key, value in service["deploy"].items() if key in DEPLOY_DEFAULTS}
        assert watched == {**DEPLOY_DEFAULTS, **(generated.services[name].get("deploy") or {})}
