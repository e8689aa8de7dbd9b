"""A running lab as tests and benchmarks use it: hosts, playbook runs, ssh.

Needs the project's virtualenv (PyYAML); the `python3 -m lab` CLI itself does not import this.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from .dockerctl import LabError
from .files import REPO_ROOT, Paths

DEFAULT_INVENTORY = Paths(REPO_ROOT).inventory


class Lab:
    """The hosts of a lab inventory and ways to run playbooks and commands against them."""

    def __init__(self, inventory: Path = DEFAULT_INVENTORY) -> None:
        if not inventory.exists():
            raise LabError(f"{inventory} does not exist: start the lab first (python3 -m lab up)")
        self.inventory = inventory
        data = yaml.safe_load(inventory.read_text())
        self.vars = data["all"]["vars"]
        self.hosts: dict[str, str] = {}
        self.groups: dict[str, list[str]] = {}
        for group, body in data["all"]["children"]["fleet"]["children"].items():
            self.groups[group] = sorted(body.get("hosts") or {})
            for name, host_vars in (body.get("hosts") or {}).items():
                self.hosts[name] = host_vars["ansible_host"]

    def argv(self, *args: str) -> list[str]:
        """The ansible-playbook command line for this lab (-i unless it is the default lab's)."""
        inventory = () if self.inventory == DEFAULT_INVENTORY else ("-i", str(self.inventory))
        return ["ansible-playbook", *inventory, *args]

    def playbook(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run ansible-playbook from the repository root, as a user types it; with check, fail loudly."""
        env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0"}
        result = subprocess.run(self.argv(*args), cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise LabError(f"ansible-playbook {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr}")
        return result

    def ssh(self, host: str, command: str, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a shell command on a lab host over SSH; with check, fail loudly."""
        result = subprocess.run(
            ["ssh", "-i", self.vars["ansible_ssh_private_key_file"], "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             # One connection per host, reused: ufw rate-limits new SSH connections (6 per 30 s).
             "-o", "ControlMaster=auto", "-o", "ControlPath=/tmp/fleet-lab-ssh-%C", "-o", "ControlPersist=60s",
             f"root@{self.hosts[host]}", command],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise LabError(f"{host}: {command} failed ({result.returncode}): {result.stderr}")
        return result
