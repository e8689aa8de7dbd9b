"""What the lab tests ask of the lab's hosts: deploy state, what nginx serves, the audit log."""

from __future__ import annotations

import json
import subprocess
import urllib.request

from .conftest import LAB_NAME, ROOT, Lab

SERVER_NAME = "{}.fleet.test"
# The suite's lab: host 1 is in group gpu, hosts 2 and 3 in group web.
HOST1, HOST2, HOST3 = (f"{LAB_NAME}-{n}" for n in (1, 2, 3))


def state(lab: Lab, host: str, service: str) -> dict:
    return json.loads(lab.ssh(host, f"cat /var/lib/fleet/state/{service}.json").stdout)


def served(lab: Lab, host: str, service: str) -> dict:
    """What nginx on `host` serves for the service right now (demo JSON: version, port)."""
    request = urllib.request.Request(f"http://{lab.hosts[host]}/", headers={"Host": SERVER_NAME.format(service)})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def upstream(lab: Lab, host: str, service: str) -> str:
    return lab.ssh(host, f"cat /etc/nginx/fleet/upstreams/{service}.conf").stdout


def audit(lab: Lab, host: str) -> list[dict]:
    out = lab.ssh(host, "cat /var/log/fleet/deploy.log 2>/dev/null || true").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def flat(output: str) -> str:
    """Output with its line folding undone (the yaml result format folds long messages)."""
    return " ".join(output.split())


def summary_of(output: str) -> str:
    return output.split("SUMMARY", 1)[1] if "SUMMARY" in output else ""


def start_playbook(lab: Lab, log, *args: str) -> subprocess.Popen:
    """ansible-playbook in the background, its output in a file: an ssh ControlPersist master
    outlives the run, so waiting for EOF on a pipe would wait for the master too."""
    return subprocess.Popen(lab.argv(*args), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            text=True)
