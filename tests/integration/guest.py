"""One booted container of the lab image, for checks that need a real systemd (and no lab)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lab import model
from lab.dockerctl import daemon_answers, docker

from .conftest import ROOT


@contextmanager
def booted_container(prefix: str, *run_flags: str) -> Iterator[str]:
    """A fresh container of the lab image, named `<prefix>-<random>`, once systemd in it has booted;
    removed afterwards. No lab's container is touched."""
    if not daemon_answers():
        pytest.skip("no Docker daemon answers: start one with `python3 -m lab dockerd`")
    # Builds the lab image when it is missing; a cached image costs well under a second.
    subprocess.run([sys.executable, "-m", "lab", "build"], cwd=ROOT, check=True, timeout=2400,
                   stdout=subprocess.DEVNULL)
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, *run_flags, *model.RUN_FLAGS, model.STABLE_TAG)
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
