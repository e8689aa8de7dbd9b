"""The service units are hardened: `systemd-analyze security` rates every slot below 2.0 ("OK"),
`systemd-analyze verify` is clean, the sandbox is in force on the running process, and the
services still answer."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

CATALOG = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "inventories/lab/group_vars/all/fleet_services.yml"
SERVICES = {name: spec["port"] for name, spec in yaml.safe_load(CATALOG.read_text())["fleet_services"].items()}
SLOTS = [f"{service}@{slot}.service" for service, port in SERVICES.items() for slot in (port, port + 1000)]
EXPOSURE_BAR = 2.0
OVERALL = re.compile(r"Overall exposure level for \S+: (\d+\.\d+) (\S+)")


@pytest.mark.parametrize("unit", SLOTS)
def test_exposure_is_below_the_bar(host, unit):
    out = host.check_output(f"systemd-analyze security --no-pager {unit}")
    found = OVERALL.search(out)
    assert found, out
    exposure = float(found.group(1))
    print(f"{unit}: exposure {exposure} {found.group(2)}")
    assert exposure < EXPOSURE_BAR, f"{unit} exposure {exposure} is above {EXPOSURE_BAR}:\n{out}"


@pytest.mark.parametrize("unit", SLOTS)
def test_unit_verifies_clean(host, unit):
    result = host.run(f"systemd-analyze verify {unit}")
    assert (result.rc, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("service,port", SERVICES.items())
def test_sandbox_is_in_force_on_the_live_slot(host, service, port):
    pid = host.check_output(f"systemctl show -p MainPID --value {service}@{port}.service")
    status = dict(
        line.split(":", 1) for line in host.file(f"/proc/{pid}/status").content_string.splitlines() if ":" in line
    )
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    # ProtectSystem=strict: the service sees the whole file system read-only.
    mounts = [line.split() for line in host.file(f"/proc/{pid}/mountinfo").content_string.splitlines()]
    root_options = [fields[5].split(",") for fields in mounts if fields[4] == "/"]
    assert root_options and all("ro" in options for options in root_options), root_options


@pytest.mark.parametrize("service,port", SERVICES.items())
def test_hardened_service_still_answers(host, service, port):
    out = host.check_output(f"curl -fsS --max-time 5 http://127.0.0.1:{port}/health")
    assert f'"service": "{service}"' in out
