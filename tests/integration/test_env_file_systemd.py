"""A real systemd reads what fleet_systemd_env_value writes: the process gets exactly the original values.

The test starts one container of the lab image (systemd as PID 1, as the lab's hosts run it; no
network, no SSH, no lab), runs a transient unit with EnvironmentFile= inside it, and removes the
container at the end. It needs root and a Docker daemon (`python3 -m lab dockerd`), as the other
integration tests do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from filter_plugins.fleet_systemd import fleet_systemd_env_value
from lab import model
from lab.dockerctl import daemon_answers, docker

from .conftest import ROOT

VALUES = {
    "BACKSLASH": "back\\slash",
    "DOUBLE": '"double"',
    "SINGLE": "'single'",
    "DOLLAR": "$HOME",
    "BRACED": "${X}",
    "BACKTICK": "`id` and \\`",
    "SPECIFIERS": "%i %% %n",
    "UNICODE": "é ü 漢字",
    "TRAILING": "trailing  ",
    "LEADING": "  leading",
    "HASH": "#not a comment",
    "EQUALS": "a=b",
    "ESCAPES": "\\n \\t \\u00e9 \\\\ \\",
    "TAB": "a\tb",
    "EMPTY": "",
}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("docker") is None,
    reason="needs root and the docker CLI (a container of the lab image runs systemd)",
)


@pytest.fixture(scope="module")
def systemd_container() -> Iterator[str]:
    if not daemon_answers():
        pytest.skip("no Docker daemon answers: start one with `python3 -m lab dockerd`")
    # Builds the lab image when it is missing; a cached image costs well under a second.
    subprocess.run([sys.executable, "-m", "lab", "build"], cwd=ROOT, check=True, timeout=2400,
                   stdout=subprocess.DEVNULL)
    name = f"fleet-envfile-{uuid.uuid4().hex[:8]}"  # ours alone: no lab's container is touched
    docker("run", "-d", "--name", name, "--network", "none", *model.RUN_FLAGS, model.STABLE_TAG)
    try:
        deadline = time.monotonic() + 120
        while True:
            state = docker("exec", name, "systemctl", "is-system-running", check=False, timeout=10).stdout
            if model.is_booted(model.parse_system_state(state)):
                break
            assert time.monotonic() < deadline, f"systemd in {name} did not finish booting: {state!r}"
            time.sleep(0.3)
        yield name
    finally:
        docker("rm", "-f", name, check=False, timeout=60)


def test_systemd_gives_the_process_exactly_the_original_values(systemd_container: str):
    env_file = "".join(f"{key}={fleet_systemd_env_value(value, key)}\n" for key, value in VALUES.items())
    docker("exec", "-i", systemd_container, "sh", "-c", "cat > /root/test.env", input=env_file)
    # env -0: NUL-separated, so values with spaces, tabs or '=' come back unambiguous.
    result = docker("exec", systemd_container, "systemd-run", "--wait", "--pipe", "--quiet", "--collect",
                    "-p", "EnvironmentFile=/root/test.env", "/usr/bin/env", "-0", timeout=60)
    received = dict(entry.split("=", 1) for entry in result.stdout.split("\0") if "=" in entry)
    assert {key: received.get(key) for key in VALUES} == VALUES
