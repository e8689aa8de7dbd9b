"""Integration tests run against a lab fleet of their own: real hosts over SSH, converged by site.yml.

The suite's lab is named `fleet-test` (FLEET_TEST_LAB overrides it), so `make test` never touches
the lab `make lab` starts (named `fleet-lab`) or any other. The session starts it on fresh hosts
(`python3 -m lab --name fleet-test down`, then `up`: a lab of that name is this suite's own, left
by an earlier run with FLEET_KEEP_LAB=1), builds the releases, converges site.yml once and hands
the tests a `Lab` handle (lab/client.py); it takes the lab down afterwards unless FLEET_KEEP_LAB=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.client import REPO_ROOT as ROOT
from lab.client import Lab

LAB_NAME = os.environ.get("FLEET_TEST_LAB", "fleet-test")


def lab_command(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "lab", "--name", LAB_NAME, *args], cwd=ROOT, check=True,
                            timeout=900, stdout=subprocess.PIPE, text=True)
    return result.stdout


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    lab_command("down")
    lab_command("up")
    subprocess.run([sys.executable, "tools/build_release.py", "--all-lab"], cwd=ROOT, check=True)
    handle = Lab(Path(lab_command("inventory").strip().splitlines()[-1]))
    handle.playbook("site.yml")
    yield handle
    if os.environ.get("FLEET_KEEP_LAB") != "1":
        lab_command("down")


__all__ = ["LAB_NAME", "ROOT", "Lab"]
