"""Catalogs the validator accepts render files that nginx and systemd accept, read as intended.

Draws catalogs with the property test's generator (tests/unit/test_catalog_properties.py), keeps
those fleet_validated_catalog accepts, renders every file the nginx and service roles write for
them with Ansible and the roles' own templates and defaults (tests/catalog_render/render.yml), and
checks them in one container of the lab image (systemd as PID 1; nginx installed from Debian's
mirror, which the lab's guests reach):

- `nginx -t` on each catalog's whole nginx configuration, with no warning (rate-limited services
  among them, routed by name, over TLS, and by location);
- `systemd-analyze verify` on each service's unit, with nothing said about it;
- systemd's own reading of each unit (busctl): Description= and the argv of ExecStart= are the
  catalog's description and the words of its command;
- one probe unit really started, whose process prints the argv it got: `%`, `$`, quotes,
  backslashes and `;` arrive as written, `{port}` as the port.

Environment files are tested through systemd by test_env_file_systemd.py. The container is ours
alone (a unique name) and is removed at the end; no lab is touched. About a minute.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import Phase, given, settings

from filter_plugins.fleet_catalog import fleet_validated_catalog
from lab.dockerctl import docker
from tests.unit.test_catalog_properties import GROUPS, PROFILE, PROGRAMS, SHA, Generated, generated_catalogs

from .conftest import ROOT
from .guest import booted_container

DRAWN = 100  # catalogs drawn, the same on every run; about 35 pass validation and are all checked
PROBE_COMMAND = (
    "/usr/bin/python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]), flush=True)' "
    "100% '$HOME' '${HOME}' %i %% {port} --port={port} ';' 'a b' \"it's\" 'back\\slash' 'say \"hi\"' Zoë ''"
)
PROBE = {"probe": {
    "port": 8000, "group": "fleet", "description": "Probe: 100% of $HOME", "command": PROBE_COMMAND,
    "release": {"version": "1.0.0", "archive": "https://artifacts.test/probe-{version}.tar.gz", "sha256": SHA},
    "nginx": {"server_names": ["probe.test"], "rate_limit": {"rate": 5}},
}}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("docker") is None,
    reason="needs root and the docker CLI (a container of the lab image runs systemd)",
)

# Runs in the guest (its python3, standard library only). Installs each catalog's files where the
# roles put them, checks them and prints one JSON document of what nginx and systemd said.
GUEST_CHECK = r'''
import glob, json, os, shutil, subprocess, sys, time

doc = json.load(open(sys.argv[1]))
host = doc["host"]

def run(*argv):
    proc = subprocess.run(argv, capture_output=True, text=True)
    return proc.returncode, (proc.stdout + proc.stderr).strip()

def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)

def prop(unit, interface, name):
    label = "".join(c if c.isalnum() else "_%02x" % ord(c) for c in unit)
    code, out = run("busctl", "--json=short", "get-property", "org.freedesktop.systemd1",
                    "/org/freedesktop/systemd1/unit/" + label, "org.freedesktop.systemd1." + interface, name)
    return json.loads(out)["data"] if code == 0 else out

for program in doc["programs"]:
    write(program, "#!/bin/sh\n", 0o755)
write(host["nginx_lua_dir"] + "/fleet_slots.lua", doc["lua"])
write(host["nginx_lua_dir"] + "/fleet_metrics.lua", doc["lua_metrics"])
os.makedirs(os.path.dirname(host["control_socket"]), exist_ok=True)  # nginx -t binds it
run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=fleet.test", "-days", "2",
    "-keyout", "/root/key.pem", "-out", "/root/cert.pem")

results = []
for index, entry in enumerate(doc["catalogs"]):
    shutil.rmtree("/etc/nginx/fleet", ignore_errors=True)
    for old in glob.glob("/etc/nginx/conf.d/fleet-*.conf"):
        os.remove(old)
    for name in entry["tls"]:
        os.makedirs(f"{host['certificate_dir']}/{name}", exist_ok=True)
        shutil.copy("/root/cert.pem", f"{host['certificate_dir']}/{name}/fullchain.pem")
        shutil.copy("/root/key.pem", f"{host['certificate_dir']}/{name}/privkey.pem")
    prefix = "" if entry["probe"] else f"c{index}-"  # unit names of different catalogs must not collide
    for path, text in entry["files"].items():
        if path.startswith("/etc/systemd/system/"):
            path = "/etc/systemd/system/" + prefix + path.rsplit("/", 1)[1]
        write(path, text, 0o600 if path.endswith(".env") else 0o644)
    results.append({"nginx": run("nginx", "-t"), "units": {}})
    for name, service in entry["catalog"].items():
        results[-1]["units"][name] = f"{prefix}{name}@{service['port']}.service"

run("systemctl", "daemon-reload")
for entry, result in zip(doc["catalogs"], results):
    units = list(result["units"].values())
    result["verify"] = run("systemd-analyze", "verify", *units)
    result["read"] = {unit: {"description": prop(unit, "Unit", "Description"),
                             "exec_start": prop(unit, "Service", "ExecStart")} for unit in units}
    if entry["probe"]:
        service = next(iter(entry["catalog"].values()))
        unit, port = units[0], service["port"]
        run("useradd", "--system", "--user-group", "--no-create-home", host["user"])
        os.makedirs(f"{host['service_root']}/{service['name']}/slots/{port}", exist_ok=True)
        os.makedirs(f"{host['log_dir']}/{service['name']}", exist_ok=True)
        log = f"{host['log_dir']}/{service['name']}/{port}.log"
        result["start"] = run("systemctl", "start", unit)
        for _ in range(100):
            if os.path.exists(log) and open(log).read().endswith("\n"):
                break
            time.sleep(0.1)
        result["printed"] = open(log).read() if os.path.exists(log) else run("journalctl", "-u", unit)[1]
print(json.dumps(results))
'''


def accepted_catalogs() -> tuple[list[dict[str, Any]], int]:
    """The catalogs fleet_validated_catalog accepts of DRAWN generated ones, and how many it refused."""
    accepted: list[dict[str, Any]] = []
    refused = 0

    @settings(PROFILE, max_examples=DRAWN, phases=(Phase.generate,))
    @given(generated_catalogs())
    def draw(generated: Generated) -> None:
        nonlocal refused
        try:
            fleet_validated_catalog(generated.services, GROUPS)
        except AnsibleFilterError:
            refused += 1
        else:
            accepted.append(generated.services)

    draw()
    return accepted, refused


def render(catalogs: list[dict[str, Any]], tmp_path: Path) -> dict[str, Any]:
    """Every file the nginx and service roles write for each catalog, rendered by Ansible."""
    (tmp_path / "catalogs.json").write_text(json.dumps(catalogs))
    subprocess.run(
        ["ansible-playbook", "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
         "-e", f"render_input={tmp_path / 'catalogs.json'}", "-e", f"render_dest={tmp_path / 'rendered.json'}",
         "tests/catalog_render/render.yml"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=300,
    )
    return json.loads((tmp_path / "rendered.json").read_text())


@pytest.fixture(scope="module")
def guest() -> Iterator[str]:
    """A container of the lab image, booted (the test installs the nginx role's packages)."""
    with booted_container("fleet-catalog-render") as name:
        yield name


def test_accepted_catalogs_render_configs_nginx_and_systemd_accept(guest: str, tmp_path: Path) -> None:
    catalogs, refused = accepted_catalogs()
    assert len(catalogs) >= 20, f"only {len(catalogs)} of {DRAWN} generated catalogs were accepted"
    rendered = render([*catalogs, PROBE], tmp_path)
    packages = rendered["host"]["nginx_packages"]
    docker("exec", guest, "sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
           f"apt-get install -qq -y --no-install-recommends {' '.join(packages)} >/dev/null "
           "&& systemctl stop nginx", timeout=600)
    doc = {
        **rendered,
        "catalogs": [{**entry, "probe": entry["catalog"].keys() == PROBE.keys()} for entry in rendered["catalogs"]],
        "programs": [p for p in PROGRAMS if p.startswith("/") and p != "/usr/bin/python3"],
        "lua": (ROOT / "roles/nginx/files/fleet_slots.lua").read_text(),
        "lua_metrics": (ROOT / "roles/nginx/files/fleet_metrics.lua").read_text(),
    }
    docker("exec", "-i", guest, "sh", "-c", "cat > /root/render.json", input=json.dumps(doc))
    results = json.loads(docker("exec", "-i", guest, "python3", "-", "/root/render.json",
                                input=GUEST_CHECK, timeout=600).stdout)

    # Rate limits rendered in each kind of route: by name, by name over TLS, by location.
    limited = [(name in entry["tls"], bool(service["nginx"]["server_names"]))
               for entry in rendered["catalogs"] for name, service in entry["catalog"].items()
               if service["nginx"]["rate_limit"]]
    assert {(False, True), (True, True), (False, False)} <= set(limited), limited

    units = 0
    for entry, result in zip(rendered["catalogs"], results, strict=True):
        where = json.dumps(entry["catalog"], ensure_ascii=False)[:2000]
        code, said = result["nginx"]
        assert code == 0 and "[warn]" not in said and "[emerg]" not in said, f"nginx -t: {said}\n{where}"
        code, said = result["verify"]
        assert code == 0 and not any(u.split("@")[0] in said for u in result["units"].values()), \
            f"systemd-analyze verify: {said}\n{where}"
        for name, unit in result["units"].items():
            service, port = entry["catalog"][name], entry["catalog"][name]["port"]
            read = result["read"][unit]
            assert read["description"] == f"{service['description']}, slot {port}", where
            expected = [w.replace("{port}", str(port)) for w in shlex.split(service["command"])]
            # systemd keeps $$ until it starts the process (then it is one $).
            assert [a.replace("$$", "$") for a in read["exec_start"][0][1]] == expected, where
            units += 1
    probe = results[-1]
    assert probe["start"][0] == 0, probe["start"]
    assert json.loads(probe["printed"]) == [w.replace("{port}", "8000") for w in shlex.split(PROBE_COMMAND)][3:]
    print(f"\n{DRAWN} catalogs drawn: {refused} refused, {len(catalogs)} accepted and rendered; with the probe, "
          f"{len(results)} nginx configurations ({len(limited)} rate-limited services) passed nginx -t and "
          f"{units} units systemd-analyze verify and "
          "systemd's reading of Description= and ExecStart=; the probe ran")
