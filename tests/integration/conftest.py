"""Integration tests run against the lab fleet: real hosts over SSH, converged by site.yml.

The session starts the lab (`python3 -m lab up`), builds the releases, converges site.yml once and
hands the tests a `Lab` handle (lab/client.py); it takes the lab down afterwards unless
FLEET_KEEP_LAB=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lab.client import REPO_ROOT as ROOT
from lab.client import Lab


def lab_command(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, check=True, timeout=900)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    lab_command("up")
    subprocess.run([sys.executable, "tools/build_release.py", "--all-lab"], cwd=ROOT, check=True)
    handle = Lab()
    handle.playbook("site.yml")
    yield handle
    if os.environ.get("FLEET_KEEP_LAB") != "1":
        lab_command("down")


__all__ = ["ROOT", "Lab"]
