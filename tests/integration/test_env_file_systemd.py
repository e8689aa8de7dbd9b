"""A real systemd reads what fleet_systemd_env_value writes: the process gets exactly the original values.

The test starts one container of the lab image (systemd as PID 1, as the lab's hosts run it; no
network, no SSH, no lab), runs a transient unit with EnvironmentFile= inside it, and removes the
container at the end. It needs root and a Docker daemon (`python3 -m lab dockerd`), as the other
integration tests do.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from filter_plugins.fleet_systemd import fleet_systemd_env_value
from lab.dockerctl import docker

from .guest import booted_container

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
    with booted_container("fleet-envfile", "--network", "none") as name:
        yield name


def test_systemd_gives_the_process_exactly_the_original_values(systemd_container: str):
    env_file = "".join(f"{key}={fleet_systemd_env_value(value, key)}\n" for key, value in VALUES.items())
    docker("exec", "-i", systemd_container, "sh", "-c", "cat > /root/test.env", input=env_file)
    # env -0: NUL-separated, so values with spaces, tabs or '=' come back unambiguous.
    result = docker("exec", systemd_container, "systemd-run", "--wait", "--pipe", "--quiet", "--collect",
                    "-p", "EnvironmentFile=/root/test.env", "/usr/bin/env", "-0", timeout=60)
    received = dict(entry.split("=", 1) for entry in result.stdout.split("\0") if "=" in entry)
    assert {key: received.get(key) for key in VALUES} == VALUES
