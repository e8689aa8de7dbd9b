"""Integration tests run against the lab fleet: real hosts over SSH, converged by site.yml.

The session starts the lab (`python3 -m lab up`), builds the releases, converges site.yml once and
hands the tests a `Lab` handle; it takes the lab down afterwards unless FLEET_KEEP_LAB=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"


class Lab:
    """The running lab: its hosts and ways to run playbooks and commands against them."""

    def __init__(self) -> None:
        inventory = yaml.safe_load(INVENTORY.read_text())
        self.vars = inventory["all"]["vars"]
        self.hosts: dict[str, str] = {}
        self.groups: dict[str, list[str]] = {}
        for group, body in inventory["all"]["children"]["fleet"]["children"].items():
            self.groups[group] = sorted(body["hosts"])
            for name, host_vars in body["hosts"].items():
                self.hosts[name] = host_vars["ansible_host"]

    def playbook(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ansible-playbook from the repository root, as a user types it."""
        env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0"}
        result = subprocess.run(
            ["ansible-playbook", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        if check and result.returncode != 0:
            pytest.fail(f"ansible-playbook {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr}")
        return result

    def ssh(self, host: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ssh", "-i", self.vars["ansible_ssh_private_key_file"], "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{self.hosts[host]}", command],
            capture_output=True, text=True, timeout=120,
        )
        if check and result.returncode != 0:
            pytest.fail(f"{host}: {command} failed ({result.returncode}): {result.stderr}")
        return result


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
